"""RecordEvents: acknowledged means durable and applied once, whatever failed before.

The defect this pins: RecordEvents wrote Redis first and the event log last, so a
failure in between (reproduced with ``ACL SETUSER default -lrange``) answered
UNAVAILABLE yet left the event in Redis, and the client's retry applied it twice.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from recsvc.client import RecommenderClient
from recsvc.store import KeyScheme, client_from_url, decode_event
from recsvc.store.embedded import PrivateRedis, start_private_redis
from recsvc.training.loading import load_events
from recsvc.v1 import recommender_pb2 as pb

from factories import small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.integration

PREFIX = "once"


@pytest.fixture()
def private() -> Iterator[PrivateRedis]:
    with start_private_redis() as server:
        yield server


@pytest.fixture()
def server(tmp_path: Path, private: PrivateRedis) -> Iterator[ServerThread]:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    settings = small_settings(
        None,
        artifact_root=str(root),
        redis={"url": private.url, "prefix": PREFIX},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "log")},
    )
    running = ServerThread(settings)
    yield running
    running.stop()


def _history(admin: redis.Redis, user: str) -> list[str]:
    raw = admin.lrange(KeyScheme(PREFIX).history(user), 0, -1)
    return [decode_event(r).item_id for r in raw]


def _logged(tmp_path: Path) -> list[tuple[str, str]]:
    rows = []
    for path in sorted((tmp_path / "log").glob("events-*.csv")):
        with path.open(newline="") as fh:
            rows += [(r["item_id"], r["event_id"]) for r in csv.DictReader(fh)]
    return rows


def test_a_retry_after_a_failure_between_the_writes_applies_once(
    server: ServerThread, private: PrivateRedis, tmp_path: Path
) -> None:
    admin = client_from_url(private.url, socket_timeout=5.0)
    try:
        with RecommenderClient(server.target, timeout=5.0) as c:
            first = c.event("g0i01", "view", user_id="g0u01", session_id="s1")
            first.event_id = "e1"
            assert c.record_events([first]).accepted_count == 1
            second = c.event("g0i02", "purchase", user_id="g0u01", session_id="s1")
            second.event_id = "e2"
            # a failure after the live state took the event (its vector refresh reads it)
            admin.execute_command("ACL", "SETUSER", "default", "-lrange")
            with pytest.raises(grpc.RpcError) as failed:
                c.record_events([second])
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
            admin.execute_command("ACL", "SETUSER", "default", "+lrange")
            for _ in range(2):  # the client's retry, and a stray second one
                assert c.record_events([second]).accepted_count == 1
            # the next answer reflects both events, each once
            answer = c.recommend("g0u01", session_id="s1", k=3)
            assert answer.strategy == pb.STRATEGY_PERSONALIZED
        assert _history(admin, "g0u01") == ["g0i02", "g0i01"]
        logged = _logged(tmp_path)
        assert {event_id for _, event_id in logged} == {"e1", "e2"}
        assert logged.count(("g0i01", "e1")) == 1
        # training reads each event once, however often a retry logged it
        seen: set[str] = set()
        files = sorted((tmp_path / "log").glob("events-*.csv"))
        loaded = [load_events(f, seen_event_ids=seen)[0] for f in files]
        items = [i for table in loaded for i in table["item_id"].to_pylist()]
        assert sorted(items) == ["g0i01", "g0i02"]
    finally:
        admin.close()


def test_an_exact_repeat_without_an_id_is_applied_once(
    server: ServerThread, private: PrivateRedis
) -> None:
    admin = client_from_url(private.url, socket_timeout=5.0)
    try:
        with RecommenderClient(server.target, timeout=5.0) as c:
            event = c.event("g0i03", "view", user_id="g0u02")
            event.event_time.FromSeconds(1_700_000_000)
            for _ in range(3):
                assert c.record_events([event]).accepted_count == 1
            later = c.event("g0i03", "view", user_id="g0u02")  # another time: another event
            later.event_time.FromSeconds(1_700_000_060)
            c.record_events([later])
        assert _history(admin, "g0u02") == ["g0i03", "g0i03"]
    finally:
        admin.close()
