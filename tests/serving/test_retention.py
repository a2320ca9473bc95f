"""Retention: what is older than the limits goes, what is served or may be rolled back
to never does."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsvc import artifact as art
from recsvc.config import RetentionSettings, Settings
from recsvc.errors import DataError
from recsvc.retention import collect
from recsvc.serving.eventlog import EventLog, EventRow
from recsvc.training.pipeline import DataSpec, load_data

from factories import event_table
from server_harness import publish_block_model

DAY = 86_400


def versions_aged(root: Path, ages_days: list[float]) -> list[str]:
    """Versions of the block shop created ``ages_days`` ago (oldest first), the last
    two published (so the one before the last is the rollback target)."""
    made = []
    for seed, age in enumerate(ages_days):
        version = publish_block_model(root, seed=seed, publish=False)
        path = root / version
        manifest = art.read_manifest(path)
        created = datetime.now(UTC) - timedelta(days=age)
        (path / "manifest.json").write_text(
            manifest.model_copy(update={"created_at": created}).to_json()
        )
        made.append(version)
    return made


def test_versions_beyond_the_limits_go_but_never_current_or_rollback(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    v = versions_aged(root, [90, 80, 70, 60, 50, 40, 3, 2])
    art.publish_version(root, v[1])  # an old one published, then the current one
    art.publish_version(root, v[2])
    assert art.rollback_target(root) == v[1]
    kept_by_count = RetentionSettings(keep_versions=2, keep_days=30, event_log_days=None)
    dry = collect(kept_by_count, root, [], dry_run=True)
    assert dry.versions == [v[0], v[3], v[4], v[5]] and art.list_versions(root) == v
    report = collect(kept_by_count, root, [])
    # v1, v2: the rollback target and CURRENT; v6, v7: the newest two (and < 30 days)
    assert report.versions == [v[0], v[3], v[4], v[5]]
    assert art.list_versions(root) == [v[1], v[2], v[6], v[7]] == report.kept_versions
    assert not list(root.glob(".deleted-*"))
    # younger than keep_days are kept whatever keep_versions says
    young = RetentionSettings(keep_versions=1, keep_days=3.5, event_log_days=None)
    assert collect(young, root, []).versions == []  # v6 is 3 days old
    younger = RetentionSettings(keep_versions=1, keep_days=2.5, event_log_days=None)
    assert collect(younger, root, []).versions == [v[6]]
    assert art.read_artifact(root / v[2]).model_version == v[2]


def test_event_log_files_not_appended_to_for_the_limit_go(tmp_path: Path) -> None:
    logs = tmp_path / "eventlog"
    with EventLog(logs, max_bytes=1_000_000) as log:
        for _ in range(3):
            log.append([EventRow("u1", "i1", 1_700_000_000, "view")])
            log.rotate()
        old, middle, fresh = log.files()
        log.append([EventRow("u1", "i1", 1_700_000_000, "view")])
        open_file = log.current
        assert open_file is not None
        now = time.time()
        os.utime(old, (now - 10 * DAY, now - 10 * DAY))
        os.utime(middle, (now - 5 * DAY, now - 5 * DAY))
        os.utime(open_file, (now - 10 * DAY, now - 10 * DAY))
        limits = RetentionSettings(event_log_days=7)
        report = collect(limits, tmp_path / "artifacts", [logs])
        assert report.event_log_files == [str(old)]
        assert report.in_use == [str(open_file)]  # a server still writes to it
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        p.name for p in (middle, fresh, open_file)
    )


def test_training_reads_no_event_older_than_training_days(tmp_path: Path) -> None:
    now = int(time.time())
    rows = [(f"u{u}", f"i{i}", now - age * DAY, "purchase", 1.0, f"b{u}-{age}")
            for u in range(3) for i in range(3) for age in (1, 40)]  # fmt: skip
    path = tmp_path / "events.parquet"
    pq.write_table(event_table(rows), path)
    spec = DataSpec(events=[path])
    base = Settings(artifact_root=tmp_path / "artifacts")
    assert load_data(spec, base).table.num_rows == 18
    recent = base.model_copy(update={"retention": RetentionSettings(training_days=30)})
    loaded = load_data(spec, recent)
    assert loaded.table.num_rows == 9
    assert min(loaded.table["timestamp"].to_pylist()) >= now - 30 * DAY
    none = base.model_copy(update={"retention": RetentionSettings(training_days=0.5)})
    with pytest.raises(DataError, match="training_days"):
        load_data(spec, none)


def test_artifact_files_are_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    version = publish_block_model(root)
    assert oct((root / version).stat().st_mode & 0o777) == "0o700"
    modes = {oct(p.stat().st_mode & 0o777) for p in (root / version).iterdir()}
    assert modes == {"0o600"}
