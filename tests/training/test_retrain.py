"""The retraining loop: base data plus the servers' event logs, erased rows dropped,
trained, published through the gate, retention applied; never two at once, and a failed
run leaves the served model as it was."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import recsvc.training.publish as publishing
from recsvc import artifact as art
from recsvc.config import Settings
from recsvc.erasure import append_erasure
from recsvc.errors import QualityGateError
from recsvc.serving.eventlog import EventLog, EventRow
from recsvc.training.pipeline import DataSpec
from recsvc.training.retrain import LOCK_NAME, RetrainBusy, retrain

from factories import block_shop, small_settings


def setup(tmp_path: Path) -> tuple[Settings, DataSpec, Path]:
    root = tmp_path / "artifacts"
    base = tmp_path / "base.parquet"
    pq.write_table(block_shop(), base)
    settings = small_settings(None, artifact_root=str(root))
    logs = root / "eventlog"
    now = int(time.time())
    with EventLog(logs, max_bytes=1_000_000) as log:
        # a customer the base data never saw, and more of an erased one
        log.append([EventRow("live-1", f"g1i0{i}", now - 60 + i, "purchase") for i in range(4)])
        log.append([EventRow("g0u09", "g0i01", now - 30, "purchase")])
    append_erasure(settings.erasure_path, "g0u09")
    return settings, DataSpec(events=(base,)), logs


def test_a_run_trains_on_base_and_logs_publishes_and_applies_retention(tmp_path: Path) -> None:
    settings, spec, logs = setup(tmp_path)
    first = retrain(spec, settings, [logs])
    root = settings.artifact_root
    assert art.current_version(root) == first.version and first.previous is None
    assert first.event_log_files == 1
    users = set(art.read_artifact(root / first.version).user_ids)
    assert "live-1" in users and "g0u09" not in users  # the log read, the erased dropped
    assert first.events == 60 * 6 - 6 + 4  # block shop (6 purchases each) less g0u09, + live
    # a second run replaces it; retention keeps what it must
    time.sleep(1.1)  # versions are named by the second
    second = retrain(spec, settings, [logs])
    assert second.previous == first.version and art.current_version(root) == second.version
    assert art.rollback_target(root) == first.version


def test_never_two_at_once(tmp_path: Path) -> None:
    settings, spec, logs = setup(tmp_path)
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(settings.artifact_root / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a run in progress
        with pytest.raises(RetrainBusy):
            retrain(spec, settings, [logs])
    finally:
        os.close(fd)
    assert art.current_version(settings.artifact_root) is None


def test_a_failed_run_leaves_the_served_model_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, spec, logs = setup(tmp_path)
    served = retrain(spec, settings, [logs]).version
    time.sleep(1.1)

    def refuse(path: Path, settings: Settings) -> None:
        raise QualityGateError(f"{path.name}: refused by the gate")

    with monkeypatch.context() as m:  # the gate says no (tests/training: the gate itself)
        m.setattr(publishing, "_check_gate", refuse)
        with pytest.raises(QualityGateError):
            retrain(spec, settings, [logs])
    assert art.current_version(settings.artifact_root) == served
    assert len(art.list_versions(settings.artifact_root)) == 2  # trained, not published
    missing = DataSpec(events=(tmp_path / "no-such-file.csv",))
    with pytest.raises(Exception, match="no-such-file"):
        retrain(missing, settings, [logs])
    assert art.current_version(settings.artifact_root) == served


@pytest.mark.slow
def test_the_scheduler_runs_again_and_stops_on_sigterm(tmp_path: Path) -> None:
    settings, spec, _ = setup(tmp_path)
    root = settings.artifact_root
    config = tmp_path / "small.toml"
    config.write_text("[als]\nfactors = 2\niterations = 5\nnum_threads = 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsvc", "retrain", "--config", str(config),
         "--events", str(spec.events[0]), "--artifacts", str(root), "--every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(art.list_versions(root)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("published ") >= 2
