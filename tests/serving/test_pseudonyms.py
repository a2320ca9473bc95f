"""Pseudonymous ids: with ``[privacy] pseudonymous_ids`` no raw customer id reaches
Redis, the event log, the erasure list or a model version, and everything still
works: training, recommendations, events, links, consent, export, erasure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from recsvc import artifact as art
from recsvc.errors import ConfigError
from recsvc.pseudonyms import Pseudonyms, pseudonyms_from
from recsvc.training.pipeline import DataSpec, train
from recsvc.v1 import recommender_pb2 as pb

from factories import block_shop, small_settings
from server_harness import ServerThread, clients_of, soon

KEY = bytes(range(32))
TOKEN = "pseudo-token"


def test_a_pseudonym_is_a_keyed_hash_stable_and_idempotent(tmp_path: Path) -> None:
    p, other = Pseudonyms(KEY), Pseudonyms(bytes(range(1, 33)))
    alias = p("alice@example.com")
    assert alias.startswith("~p") and len(alias) == 34
    assert p("alice@example.com") == alias != other("alice@example.com")
    assert p(alias) == alias and p("") == ""  # a pseudonym (or no customer) stays
    column = p.column(pa.chunked_array([["a", None, "b", "a"]]))
    assert column.to_pylist() == [p("a"), None, p("b"), p("a")]
    with pytest.raises(ConfigError, match="32 bytes"):
        Pseudonyms(b"short")
    with pytest.raises(ConfigError, match="id_key_file"):
        pseudonyms_from(small_settings(None, privacy={"pseudonymous_ids": True}))


@pytest.fixture()
def shop(tmp_path: Path) -> Path:
    """The block shop's raw export, trained and published with pseudonymous ids."""
    key = tmp_path / "id.key"
    key.write_bytes(KEY)
    events = tmp_path / "export.parquet"
    pq.write_table(block_shop(), events)
    return events


@pytest.fixture()
def server(tmp_path: Path, shop: Path, redis_url: str, redis_prefix: str) -> Iterator[ServerThread]:
    root = tmp_path / "artifacts"
    settings = small_settings(
        None,
        artifact_root=str(root),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={"port": 0, "metrics_port": None, "auth_token": TOKEN,
                "compact_interval_seconds": 0.2},
        privacy={"pseudonymous_ids": True, "id_key_file": str(tmp_path / "id.key")},
    )  # fmt: skip
    result = train(DataSpec(events=[shop]), settings)
    art.publish_version(root, result.path.name)
    running = ServerThread(settings)
    try:
        yield running
    finally:
        running.stop()


def raw_traces(tmp_path: Path, r: redis.Redis, prefix: str, ids: list[str]) -> list[str]:
    """Where any of ``ids`` appears: a file under ``tmp_path`` (but the raw export and
    the key) as UTF-8 or as a NumPy unicode array, or a Redis key or value."""
    found = []
    needles = [n for i in ids for n in (i.encode(), i.encode("utf-32-le"))]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name not in ("export.parquet", "id.key"):
            data = path.read_bytes()
            found += [f"{path.name}" for n in needles if n in data]
    for key in r.scan_iter(match=f"{prefix}:*"):
        kind = r.type(key)
        values: list[bytes] = [key]
        if kind == b"string":
            values.append(r.get(key) or b"")
        elif kind == b"list":
            values += r.lrange(key, 0, -1)
        elif kind == b"zset":
            values += r.zrange(key, 0, -1)
        found += [key.decode() for v in values for n in needles if n in v]
    return found


@pytest.mark.integration
def test_no_raw_id_is_stored_anywhere_and_everything_works(
    server: ServerThread, tmp_path: Path, redis_client: redis.Redis, redis_prefix: str
) -> None:
    root = tmp_path / "artifacts"
    version = art.current_version(root)
    assert version is not None
    trained = art.read_artifact(root / version).user_ids
    assert all(u.startswith("~p") for u in trained) and len(trained) == 60
    with clients_of([server], TOKEN) as (client,):
        # a trained customer, asked for by their raw id: their trained answer
        answer = client.recommend("g0u01", k=5)
        assert answer.strategy == pb.STRATEGY_PERSONALIZED
        assert all(i.item_id.startswith("g0") for i in answer.items)
        client.record_events(
            [client.event("g0i01", "view", user_id="g0u01", session_id="s1"),
             client.event("g1i02", "purchase", user_id="new-shopper-7")]
        )  # fmt: skip
        linked = client.link_ids("g0u01", ["app-g0u01", "card-g0u01"])
        assert list(linked.linked_ids) == ["app-g0u01", "card-g0u01"]  # as sent
        assert client.recommend("app-g0u01", k=5).strategy == pb.STRATEGY_PERSONALIZED
        client.set_consent("g1u05", "session_only")
        document = client.export_user("card-g0u01")
        assert document["requested_id"] == "card-g0u01"
        assert document["user_id"] == Pseudonyms(KEY)("g0u01")
        assert document["model_versions"] == [version]
        gone = client.forget_user("g1u09")
        assert gone.added_to_erasure_list
        soon(
            lambda: client.forget_user("g1u09").erasure_status == pb.ERASURE_STATUS_COMPLETE,
            within=10.0,
        )
    raw = ["g0u01", "g1u05", "g1u09", "new-shopper-7", "app-g0u01", "card-g0u01"]
    assert raw_traces(tmp_path, redis_client, redis_prefix, raw) == []
    # the pseudonyms are there: the state is kept, under them
    p = Pseudonyms(KEY)
    assert redis_client.exists(f"{redis_prefix}:{{u:{p('g0u01')}}}:hist") == 1
    assert p("g1u09") not in art.read_artifact(root / version).user_ids
