"""Placements: a file of [placements.<name>] tables read at start and again when it
changes; a placement's trending share, SimilarItems mode and cap reach the next answer
of a running server without a restart; a bad file keeps the last good placements."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from recsvc.client import RecommenderClient
from recsvc.config import SimilarMode
from recsvc.errors import ConfigError
from recsvc.model import Blend
from recsvc.serving.placements import Placements, read_placements
from recsvc.v1 import recommender_pb2 as pb

from factories import small_settings
from server_harness import ServerThread, publish_block_model, soon


def _write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    st = path.stat()  # a new modification time even within the clock's resolution
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_a_placements_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "placements.toml"
    _write(path, '[placements.cart]\nsimilar_mode = "bought_together"\n')
    placements = Placements(small_settings(None, placements_file=str(path)))
    cart = placements.get("cart")
    assert cart is not None and cart.similar_mode is SimilarMode.BOUGHT_TOGETHER
    assert not placements.check()  # unchanged: not read again
    _write(path, "[placements.home]\ntrending_weight = 0.4\nmax_per_category = 2\n", bump=1)
    assert placements.check()
    assert placements.get("cart") is None
    home = placements.get("home")
    assert home is not None and home.trending_weight == 0.4 and home.max_per_category == 2
    # a bad file is logged and the last good placements stay
    _write(path, "[placements.home]\ntrending_weight = 3\n", bump=2)
    assert not placements.check()
    assert placements.get("home") == home


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[placements.home\n", "cannot read placements"),
        ("[server]\nport = 1\n", "only [placements.<name>] tables, not server"),
        ('[placements.pdp]\nsimilar_mode = "both"\n', "placements.pdp.similar_mode"),
        ("[placements.pdp]\ncolour = 1\n", "placements.pdp.colour"),
    ],
)
def test_a_bad_placements_file_is_named_with_its_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"p\.toml") as caught:
        read_placements(path)
    assert problem in str(caught.value)
    with pytest.raises(ConfigError) as refused:
        Placements(small_settings(None, placements_file=str(path)))
    assert problem in str(refused.value)


def test_a_trending_share_moves_the_blend_toward_popularity() -> None:
    blend = Blend(cf=0.5, repeat=0.5)
    assert blend.with_popularity_weight(None) == blend
    assert blend.with_popularity_weight(0.2) == Blend(cf=0.4, repeat=0.4, popularity=0.2)
    assert Blend(cf=0.0).with_popularity_weight(0.3) == Blend(cf=0.7, popularity=0.3)


@pytest.mark.integration
def test_a_running_server_takes_a_changed_placements_file(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    path = tmp_path / "placements.toml"
    _write(path, "[placements.home]\nmax_per_category = 0\n")
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(tmp_path / "erased.txt"),
        placements_file=str(path),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={
            "port": 0,
            "metrics_port": None,
            "event_log_dir": str(tmp_path / "log"),
            "reload_poll_seconds": 0.1,
        },
    )
    running = ServerThread(settings)
    try:
        with RecommenderClient(running.target, timeout=5.0) as c:
            personal = c.recommend("g0u01", k=6, placement="home")
            groups = Counter(i.item_id[:2] for i in personal.items)
            assert groups["g0"] == 6  # the user's own group

            # the shop gives its home page all to what sells, and caps categories at 3
            _write(path, "[placements.home]\ntrending_weight = 1.0\nmax_per_category = 3\n", 1)

            def trending() -> bool:
                answer = c.recommend("g0u01", k=6, placement="home")
                return {i.reason for i in answer.items} == {pb.REASON_POPULAR}

            soon(trending, within=3.0)
            answer = c.recommend("g0u01", k=6, placement="home")
            assert Counter(i.item_id[:2] for i in answer.items) == {"g0": 3, "g1": 3}
            # other placements keep the model's blend
            assert c.recommend("g0u01", k=6, placement="pdp").items[0].reason != pb.REASON_POPULAR

            # a broken file changes nothing; SIGHUP's reload reads the file at once
            _write(path, "[placements.home\n", 2)
            running.call(running.running.reload())
            assert {i.reason for i in c.recommend("g0u01", k=6, placement="home").items} == {
                pb.REASON_POPULAR
            }
            _write(path, '[placements.cart]\nsimilar_mode = "bought_together"\n', 3)
            running.call(running.running.reload())
            assert c.similar(["g0i01"], k=3, placement="cart").mode == (
                pb.SIMILAR_MODE_BOUGHT_TOGETHER
            )
            assert c.recommend("g0u01", k=6, placement="home").items[0].reason != (
                pb.REASON_POPULAR
            )
    finally:
        running.stop()
