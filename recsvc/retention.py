"""Retention: files older than the limits of ``[retention]`` are deleted.

- **Event-log files** not appended to for ``event_log_days`` (their modification
  time) go; a file a server still holds open (its shared ``flock``) is never touched.
- **Model versions** beyond the newest ``keep_versions`` and older than ``keep_days``
  (their manifest's creation time) go; CURRENT and the rollback target never do. A
  version is renamed aside (``.deleted-<version>``, which no reader takes for a
  version) before its files are removed, so a crash never leaves half a version under
  its name; the next round removes what is left aside.
- **Training input** older than ``training_days`` is not read
  (:func:`recsvc.training.pipeline.load_data` drops it); live state in Redis expires by
  its own TTLs.

:func:`collect` runs under the artifact root's maintenance lock
(:func:`recsvc.compaction.round_lock`), so replicas sharing a root never collect at
once, nor while one compacts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from recsvc import artifact as art
from recsvc.compaction import event_files, round_lock
from recsvc.config import RetentionSettings
from recsvc.errors import ArtifactError, StoreError

__all__ = ["GcReport", "collect"]

_DAY: Final = 86_400.0
_DELETED: Final = ".deleted-"


@dataclass
class GcReport:
    """What one :func:`collect` round deleted (or, dry, would delete)."""

    event_log_files: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    kept_versions: list[str] = field(default_factory=list)
    """Every version left, oldest first."""
    in_use: list[str] = field(default_factory=list)
    """Expired event-log files a server still holds open (left)."""
    dry_run: bool = False


def collect(
    retention: RetentionSettings,
    artifact_root: Path,
    event_log_dirs: Sequence[Path],
    *,
    now: float | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Delete what ``retention`` no longer keeps (see the module docstring); with
    ``dry_run``, only report it. Raises CompactionBusy when another process holds the
    maintenance lock, StoreError or ArtifactError when a file cannot be removed."""
    now = time.time() if now is None else now
    report = GcReport(dry_run=dry_run)
    with round_lock(artifact_root):
        if not dry_run:
            for aside in artifact_root.glob(f"{_DELETED}*"):
                shutil.rmtree(aside, ignore_errors=True)
        if retention.event_log_days is not None:
            limit = now - retention.event_log_days * _DAY
            for directory in event_log_dirs:
                for path in event_files(directory):
                    _expire_file(path, limit, report, dry_run)
        for version in _expired_versions(retention, artifact_root, now):
            report.versions.append(version)
            if not dry_run:
                _delete_version(artifact_root, version)
    report.kept_versions = [v for v in art.list_versions(artifact_root) if v not in report.versions]
    return report


def _expire_file(path: Path, limit: float, report: GcReport, dry_run: bool) -> None:
    try:
        if path.stat().st_mtime >= limit:
            return
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read event log file {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.in_use.append(str(path))  # a server still appends to it
            return
        report.event_log_files.append(str(path))
        if not dry_run:
            path.unlink()
    except OSError as exc:
        raise StoreError(f"cannot delete event log file {path}: {exc}") from exc
    finally:
        os.close(fd)


def _expired_versions(retention: RetentionSettings, root: Path, now: float) -> list[str]:
    versions = art.list_versions(root)  # oldest first
    keep = set(versions[-retention.keep_versions :])
    current = art.current_version(root)
    if current is not None:
        keep.add(current)
        with contextlib.suppress(ArtifactError):  # nothing to roll back to
            keep.add(art.rollback_target(root))
    expired = []
    for version in versions:
        if version in keep:
            continue
        if retention.keep_days is not None:
            created = art.read_manifest(root / version).created_at
            age_days = (datetime.fromtimestamp(now, UTC) - created).total_seconds() / _DAY
            if age_days < retention.keep_days:
                continue
        expired.append(version)
    return expired


def _delete_version(root: Path, version: str) -> None:
    aside = root / f"{_DELETED}{version}"
    try:
        os.rename(root / version, aside)
        shutil.rmtree(aside)
    except OSError as exc:
        raise ArtifactError(f"cannot delete model version {version}: {exc}") from exc
