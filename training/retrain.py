"""The retraining loop (``recsvc retrain``, ``make retrain``): the model stays fresh
without anyone passing files by hand.

One run: the shop's base data plus every event-log file of the given directories (one
per replica, or a shared location), erased and expired rows dropped (the pipeline's
load), a model trained and written, published through the same quality gate as
``recsvc publish``, then ``[retention]`` applied (``recsvc gc``). A run that fails at
any step publishes nothing: the served model stays as it was (a version trained but
refused stays on disk, unpublished, until retention removes it).

Runs never overlap: each holds an ``flock`` on ``<artifact root>/.retrain.lock``; a
second one started meanwhile (a timer firing while a long run goes on, two hosts
sharing the root) stops at once with :class:`RetrainBusy`. ``recsvc retrain --every
SECONDS`` is the scheduler: it runs, sleeps, runs again, until SIGTERM or SIGINT,
logging a failed run and trying again at the next interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from recsvc import retention
from recsvc.compaction import CompactionBusy, event_files, exclusive
from recsvc.config import Settings

from .pipeline import DataSpec, train
from .publish import publish

__all__ = ["RetrainBusy", "RetrainReport", "retrain"]

log = logging.getLogger(__name__)

LOCK_NAME = ".retrain.lock"


class RetrainBusy(Exception):  # noqa: N818 (a state, reported)
    """Another retrain holds the artifact root's retrain lock."""


@dataclass
class RetrainReport:
    """What one :func:`retrain` did."""

    version: str
    previous: str | None
    event_log_files: int
    """Event-log files read beside the base data."""
    events: int
    """Events the model was trained on (after erasure, retention and returns)."""
    vectors_written: int
    deleted_versions: list[str]
    """Versions retention removed after publishing."""
    seconds: float
    forced: str | None = None
    """The gate's refusal that ``force`` overrode; None when the gate passed."""


def retrain(
    spec: DataSpec,
    settings: Settings,
    event_log_dirs: Sequence[Path],
    *,
    progress: bool = False,
    force: bool = False,
) -> RetrainReport:
    """One run (see the module docstring). Raises RetrainBusy, or whatever training
    or the publish gate raised (nothing published then); ``force`` publishes a model
    the gate's quality checks refuse (``recsvc publish --force``)."""
    started = time.monotonic()
    root = settings.artifact_root
    with exclusive(root / LOCK_NAME, RetrainBusy(f"another retrain is running on {root}")):
        logs = tuple(p for d in event_log_dirs for p in event_files(d))
        log.info("retraining on %d base files and %d event-log files", len(spec.events),
                 len(logs))  # fmt: skip
        result = train(replace(spec, event_logs=logs), settings, progress=progress)
        published = publish(settings, result.artifact.model_version, progress=progress, force=force)
        deleted: list[str] = []
        try:
            gone = retention.collect(settings.retention, root, event_log_dirs)
            deleted = gone.versions
        except CompactionBusy:
            log.info("retention skipped: a server is compacting the artifact root")
    return RetrainReport(
        version=published.version,
        previous=published.previous,
        event_log_files=len(logs),
        events=result.artifact.manifest.data.events,
        vectors_written=published.vectors_written,
        deleted_versions=deleted,
        seconds=time.monotonic() - started,
        forced=published.forced,
    )
