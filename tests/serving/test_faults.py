"""The fault suite: faults made under load from a process of its own.

Each case runs ``recsvc serve`` in a process of its own (server_harness.ServeProcess)
and a load generator in another (tests/loadgen.py through server_harness.LoadGenerator:
callers with the stock client and its 200 ms deadline, every call's status recorded,
and for RecordEvents every acknowledged event), makes one fault, and checks what the
product promises: Recommend degrades and never fails while Redis is gone or slow, a bad
model pointer never takes the served model away, and an acknowledged event is never
lost, whatever kills the server. Each case takes < 20 s.

``RECSVC_FAULT_REPORT=FILE`` appends each case's figures (load, fault, calls by status
code, events lost) as a JSON line; docs/reliability.md has them.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc import artifact as art
from recsvc.store import client_from_url
from recsvc.store.embedded import find_redis_server, start_private_redis

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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture()
def artifacts(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "artifacts"
    return root, publish_block_model(root, seed=0)


def serve(root: Path, redis_url: str, tmp_path: Path, **env: str) -> ServeProcess:
    settings = {"RECSVC_SERVER__EVENT_LOG_DIR": str(tmp_path / "eventlog"), **env}
    return ServeProcess(root, redis_url, tmp_path / "serve.log", env=settings).start()


@pytest.fixture()
def stopped() -> Iterator[list[ServeProcess]]:
    """Servers to stop after the test, whatever happened."""
    servers: list[ServeProcess] = []
    yield servers
    for server in servers:
        server.stop()


# --- 1. Redis killed, and back ------------------------------------------------------------


def test_redis_killed_and_restarted_under_recommend_load(
    artifacts: tuple[Path, str], tmp_path: Path, stopped: list[ServeProcess]
) -> None:
    root, _ = artifacts
    private = start_private_redis()
    restarted: subprocess.Popen[bytes] | None = None
    try:
        server = serve(root, private.url, tmp_path)
        stopped.append(server)
        with LoadGenerator(
            server.target, "recommend", tmp_path, callers=CALLERS, rate=RATE, duration=8
        ) as load:
            time.sleep(1.5)
            killed = time.time()
            os.kill(private.pid, 9)  # SIGKILL: no goodbye to its clients
            time.sleep(2.5)
            restarted = subprocess.Popen(
                [str(find_redis_server()), "--port", str(private.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            admin = client_from_url(private.url, socket_timeout=1.0)
            wait_for(lambda: _pings(admin), 10, "the restarted Redis")
            admin.close()
            back = time.time()
            load.wait()
        calls = load.calls()
        during = degraded_between(calls, killed + 0.05, back)
        late = [c for c in calls if c.start >= back and c.degraded]  # answered, so OK
        recovered = max((c.end for c in late), default=back) - back
        report(
            "redis killed and restarted",
            fault=f"SIGKILL of Redis at +1.5 s, a new one on its port {back - killed:.1f} s later",
            degraded_during=f"{sum(during)}/{len(during)}",
            last_degraded_after_return_s=round(recovered, 3),
            **load_figures(load),
        )
        assert_no_failed_recommend(load)
        assert during and all(during), "answers during the outage are flagged degraded"
        assert not [c for c in calls if c.start >= back + 1.0 and c.degraded]
    finally:
        if restarted is not None:
            restarted.terminate()
            restarted.wait(10)
        private.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:  # not up yet
        return False


# --- 2. Redis paused, Redis slow -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["CLIENT PAUSE 3000", "DEBUG SLEEP 2"])
def test_redis_paused_or_slow_under_recommend_load(
    artifacts: tuple[Path, str], tmp_path: Path, stopped: list[ServeProcess], fault: str
) -> None:
    root, _ = artifacts
    with start_private_redis(extra_args=["--enable-debug-command", "local"]) as private:
        server = serve(root, private.url, tmp_path)
        stopped.append(server)
        admin = client_from_url(private.url, socket_timeout=10.0)
        try:
            with LoadGenerator(
                server.target, "recommend", tmp_path, callers=CALLERS, rate=RATE, duration=7
            ) as load:
                time.sleep(1.5)
                began = time.time()
                # DEBUG SLEEP blocks Redis itself, and the connection that sent it
                command = threading.Thread(target=admin.execute_command, args=fault.split())
                command.start()
                command.join(10)
                ended = began + (3.0 if fault.startswith("CLIENT") else 2.0)
                load.wait()
        finally:
            admin.close()
        calls = load.calls()
        during = degraded_between(calls, began + 0.05, ended)
        after = degraded_between(calls, ended + 1.0, float("inf"))
        report(
            "redis " + " ".join(fault.lower().split()[:2]),
            fault=f"{fault} at +1.5 s",
            degraded_during=f"{sum(during)}/{len(during)}",
            degraded_1s_after=f"{sum(after)}/{len(after)}",
            **load_figures(load),
        )
        assert_no_failed_recommend(load)
        assert any(during)
        assert after and not any(after)


# --- 3. hot swap, and CURRENT pointing at what cannot be served ------------------------------


def test_hot_swap_and_bad_current_targets_under_recommend_load(
    artifacts: tuple[Path, str], tmp_path: Path, stopped: list[ServeProcess]
) -> None:
    root, first = artifacts
    outside = publish_block_model(tmp_path / "elsewhere", seed=3)  # valid, outside the root
    # trained before the load starts: publishing is then only the pointer's move
    second, third = (publish_block_model(root, seed=s, publish=False) for s in (1, 2))
    corrupt = publish_block_model(root, seed=4, publish=False)
    factors = root / corrupt / "item_factors.npy"
    factors.write_bytes(factors.read_bytes()[:-8] + b"\0" * 8)  # checksum mismatch
    with start_private_redis() as private:
        server = serve(root, private.url, tmp_path, RECSVC_SERVER__RELOAD_POLL_SECONDS="0.1")
        stopped.append(server)
        current = root / art.CURRENT
        bad_targets: list[tuple[str, bytes]] = [
            ("traversal to a valid model", f"../elsewhere/{outside}\n".encode()),
            ("absolute path to it", f"{tmp_path / 'elsewhere' / outside}\n".encode()),
            ("traversal out of the tree", b"../../etc\n"),
            ("empty", b""),
            ("garbage bytes", b"\xff\xfe\x00\x1b[31mgarbage\n"),
            ("truncated name", first[:-3].encode()),
            ("corrupt artifact (checksum)", f"{corrupt}\n".encode()),
        ]
        with LoadGenerator(
            server.target, "recommend", tmp_path, callers=CALLERS, rate=RATE, duration=9
        ) as load:
            time.sleep(0.8)
            art.publish_version(root, second)  # the hot swap
            swapped = time.time()
            time.sleep(0.8)
            for _, content in bad_targets:
                _replace(current, content)  # atomically: the content is the fault here
                time.sleep(0.6)
            art.publish_version(root, third)  # the watcher still follows CURRENT
            last = time.time()
            load.wait()
        log = server.log_text()
    calls = load.calls()
    answered = [c for c in calls if c.code == "OK"]
    refusals = [line for line in log.splitlines() if "model reload failed" in line]
    served_during = {c.version for c in answered if swapped + 0.5 <= c.start and c.end <= last}
    report(
        "hot swap and bad CURRENT targets",
        fault="publish v2, then CURRENT -> " + ", ".join(name for name, _ in bad_targets)
        + ", then publish v3 (0.6 s each, poll 0.1 s)",
        refusal_lines=len(refusals),
        answers_by_model={
            name: sum(c.version == v for c in calls)
            for name, v in (("v1", first), ("v2", second), ("v3", third))
        },
        **load_figures(load),
    )  # fmt: skip
    assert_no_failed_recommend(load)
    assert {c.version for c in answered} == {first, second, third}
    assert served_during == {second}  # the old model served through every bad target
    # one line per bad target; an empty CURRENT reads as "nothing published": none
    assert len(refusals) == len(bad_targets) - 1, refusals
    needles = (f"../elsewhere/{outside}", f"{tmp_path}/elsewhere/{outside}", "../../etc",
               "garbage", f"{first[:-3]}:", corrupt)  # fmt: skip
    for needle in needles:
        assert sum(needle in line for line in refusals) == 1, (needle, refusals)


def _replace(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.fault")
    tmp.write_bytes(content)
    os.replace(tmp, path)


# --- 4. kill -9 of the server during a RecordEvents stream -----------------------------------


def test_kill_9_during_record_events_loses_no_acknowledged_event(
    artifacts: tuple[Path, str], tmp_path: Path, stopped: list[ServeProcess]
) -> None:
    root, _ = artifacts
    with start_private_redis() as private:
        server = serve(root, private.url, tmp_path)
        stopped.append(server)
        with LoadGenerator(
            server.target, "record", tmp_path, callers=CALLERS, rate=25.0, duration=7, run="k9"
        ) as load:
            time.sleep(2.0)
            server.kill()  # SIGKILL mid-stream: no drain, no flush, no close
            killed = time.time()
            time.sleep(1.0)
            server.start()  # same port, same Redis, same event log directory
            back = time.time()
            load.wait()
        assert server.stop() == 0
        acked = load.acked()
        in_log = logged_events(tmp_path / "eventlog")
        in_redis = stored_events(private.url, {event.split("|")[0] for event in acked})
    log_copies, redis_copies = copies(acked, in_log), copies(acked, in_redis)
    report(
        "kill -9 during RecordEvents",
        fault=f"SIGKILL of recsvc serve at +2 s, restarted {back - killed:.1f} s later",
        events_acknowledged=len(acked),
        events_in_log=len(acked) - log_copies[0],
        events_in_redis=len(acked) - redis_copies[0],
        lost_from_log=log_copies[0],
        lost_from_redis=redis_copies[0],
        copies_in_log=dict(log_copies),
        copies_in_redis=dict(redis_copies),
        **load_figures(load),
    )
    assert len(acked) > 100
    assert log_copies[0] == 0, "acknowledged events missing from the event log"
    assert redis_copies[0] == 0, "acknowledged events missing from the user's history"
