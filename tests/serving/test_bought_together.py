"""Bought together through two real servers sharing one Redis: purchases recorded
through one server reach the other's next bought-together answer, once each; a
placement chooses the mode; without Redis the answer comes from the trained baskets,
marked degraded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.artifact import publish_version, write_artifact
from recsvc.client import RecommenderClient
from recsvc.store.embedded import start_private_redis
from recsvc.training.pipeline import LoadedData, build_model
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends, event_table, small_settings
from server_harness import ServerThread, clients_of, replicas, soon, violations


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "bought-together-token"


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    placements = {"cart": {"similar_mode": "bought_together"}}
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, placements=placements) as running:
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def ids(response: pb.SimilarItemsResponse) -> list[str]:
    return [i.item_id for i in response.items]


def test_purchases_through_one_server_reach_the_others_answer_once(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    before = b.similar(["g0i01"], k=5, mode="bought_together")
    # the block shop's baskets hold one item each: nothing bought together yet, so
    # similar items fill the list
    assert before.mode == pb.SIMILAR_MODE_BOUGHT_TOGETHER
    assert {i.reason for i in before.items} == {pb.REASON_SIMILAR}
    assert "g1i05" not in ids(before)  # the other group: never similar
    checkout = [
        a.event(item, "purchase", user_id="g0u03", session_id=f"order-{n}", quantity=1)
        for n in range(3)
        for item in ("g0i01", "g1i05")
    ]
    for e, n in zip(checkout, range(len(checkout)), strict=True):
        e.event_id = f"line-{n}"
    a.record_events(checkout)

    def listed() -> bool:
        return ids(b.similar(["g0i01"], k=5, mode="bought_together"))[:1] == ["g1i05"]

    soon(listed)
    first = b.similar(["g0i01"], k=5, mode="bought_together")
    assert first.items[0].reason == pb.REASON_BOUGHT_TOGETHER and not first.degraded
    a.record_events(checkout)  # a retry: applied once, counted once
    assert b.similar(["g0i01"], k=5, mode="bought_together").items[0].score == pytest.approx(
        first.items[0].score
    )
    # the other way round too, and the placement's mode when the request names none
    assert ids(a.similar(["g1i05"], k=3, placement="cart"))[0] == "g0i01"
    assert a.similar(["g1i05"], k=3, placement="cart").mode == pb.SIMILAR_MODE_BOUGHT_TOGETHER
    assert a.similar(["g1i05"], k=3).mode == pb.SIMILAR_MODE_SIMILAR
    assert "g0i01" not in ids(a.similar(["g1i05"], k=3))
    # filters apply: a live catalogue's unavailable item is never returned
    a.upsert_items([a.item("g1i05", available=False, category_path=["g1"])])
    soon(lambda: "g1i05" not in ids(b.similar(["g0i01"], k=5, mode="bought_together")))


def test_an_unknown_mode_is_invalid_argument(clients: list[RecommenderClient]) -> None:
    a, _ = clients
    bad = pb.SimilarItemsRequest(item_ids=["g0i01"], mode=7)  # type: ignore[arg-type]
    assert violations(lambda: a.stub.SimilarItems(bad, timeout=5, metadata=a._metadata)) == ["mode"]
    with pytest.raises(ValueError, match="unknown similar mode"):
        a.similar(["g0i01"], mode="complements")


def test_without_redis_the_trained_baskets_answer_marked_degraded(tmp_path: Path) -> None:
    rows = []
    for u in range(6):  # everyone buys x with y, two also z; w alone
        for item in ("x", "y", "z") if u < 2 else ("x", "y"):
            rows.append((f"u{u}", item, 1000 + u, "purchase", 1.0, f"o{u}"))
        rows.append((f"u{u}", "w", 2000 + u, "purchase", 1.0, f"p{u}"))
    root = tmp_path / "artifacts"
    built = build_model(LoadedData(event_table(rows), None, (), 0), small_settings(None))
    publish_version(root, write_artifact(built.artifact, root).name)
    private = start_private_redis()
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(tmp_path / "erased.txt"),
        redis={"url": private.url},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "log")},
    )
    running = ServerThread(settings)
    try:
        with RecommenderClient(running.target, timeout=5.0) as c:
            live = c.similar(["x"], k=2, mode="bought_together")
            assert ids(live) == ["y", "z"] and not live.degraded
            private.stop()
            down = c.similar(["x"], k=2, mode="bought_together")
        assert ids(down) == ["y", "z"] and down.degraded
        assert {i.reason for i in down.items} == {pb.REASON_BOUGHT_TOGETHER}
        assert [i.score for i in down.items] == [i.score for i in live.items]
    finally:
        running.stop()
        private.stop()
