"""A Redis Cluster primary killed under load: its replica takes over, Recommend keeps
answering (degraded while the primary's slots have no owner, and flagged), RecordEvents
answers OK or a retryable code, and no acknowledged event is lost, from the event log
or from the cluster.

``recsvc serve`` runs in a process of its own on a private cluster of its own (3
primaries, 3 replicas, ``cluster-node-timeout`` 1 s), with Recommend and RecordEvents
load generators (tests/loadgen.py) beside it; the primary that serves the Recommend
users' first customer is SIGKILLed. ``RECSVC_FAULT_REPORT=FILE`` appends the figures
(failover window, calls by status code, events lost) as a JSON line, as the fault
suite does (docs/reliability.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from recsvc.store import KeyScheme, client_from_url
from recsvc.store.embedded import PrivateCluster, start_private_cluster

from server_harness import (
    CALLERS,
    RATE,
    LoadGenerator,
    ServeProcess,
    assert_no_failed_recommend,
    copies,
    degraded_between,
    load_figures,
    logged_events,
    publish_block_model,
    report,
    stored_events,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RECOMMEND_USER = "g0u01"
"""The loadgen's first Recommend user: the primary serving its slot is the one killed."""


def _owner(cluster: PrivateCluster, key: str) -> int:
    """The port of the primary serving ``key``'s slot now."""
    client = client_from_url(cluster.url, socket_timeout=2.0)
    try:
        node = client.get_node_from_key(key)  # type: ignore[attr-defined]
        return int(node.port)
    finally:
        client.close()


def test_a_primary_killed_under_load_fails_no_recommend_and_loses_no_event(
    tmp_path: Path,
) -> None:
    root = tmp_path / "artifacts"
    publish_block_model(root, seed=0)
    with start_private_cluster(node_timeout_ms=1000) as cluster:
        env = {"RECSVC_SERVER__EVENT_LOG_DIR": str(tmp_path / "eventlog")}
        server = ServeProcess(root, cluster.url, tmp_path / "serve.log", env=env).start()
        try:
            key = KeyScheme().history(RECOMMEND_USER)
            victim = next(n for n in cluster.nodes if n.port == _owner(cluster, key))
            with (
                LoadGenerator(
                    server.target, "recommend", tmp_path, callers=CALLERS, rate=RATE,
                    duration=10, run="rc",
                ) as recommend,
                LoadGenerator(
                    server.target, "record", tmp_path, callers=CALLERS, rate=25.0,
                    duration=10, run="fo",
                ) as record,
            ):  # fmt: skip
                time.sleep(2.5)
                victim.kill()  # SIGKILL: no goodbye to clients or replicas
                killed = time.time()
                wait_for(lambda: _owner(cluster, key) != victim.port, 20, "the failover")
                cluster.wait_until_ok(timeout=20)
                recovered = time.time()
                recommend.wait()
                record.wait()
            assert server.stop() == 0
            acked = record.acked()
            in_log = logged_events(tmp_path / "eventlog")
            in_cluster = stored_events(cluster.url, {event.split("|")[0] for event in acked})
        finally:
            server.stop()

    calls = recommend.calls()
    during = degraded_between(calls, killed + 0.05, recovered)
    late_degraded = [c for c in calls if c.start >= recovered + 1.0 and c.degraded]
    record_codes = record.codes()
    log_copies, cluster_copies = copies(acked, in_log), copies(acked, in_cluster)
    report(
        "redis cluster primary killed",
        fault=f"SIGKILL of the primary of {RECOMMEND_USER}'s slot at +2.5 s, "
        f"cluster-node-timeout 1 s",
        failover_window_s=round(recovered - killed, 2),
        degraded_during=f"{sum(during)}/{len(during)}",
        record_calls=dict(record_codes),
        events_acknowledged=len(acked),
        lost_from_log=log_copies[0],
        lost_from_cluster=cluster_copies[0],
        **load_figures(recommend),
    )
    assert_no_failed_recommend(recommend)
    assert any(during), "answers while the slots had no owner are flagged degraded"
    assert not late_degraded, "a second after the failover, answers are whole again"
    # RecordEvents: acknowledged, or a code the client retries (nothing else)
    assert set(record_codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, record_codes
    assert record_codes["OK"] > 100
    assert log_copies[0] == 0, "acknowledged events missing from the event log"
    assert cluster_copies[0] == 0, "acknowledged events missing from the cluster"
