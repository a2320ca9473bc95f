"""Publish a trained version: quality gate, user vectors into Redis, then CURRENT.

The order matters: vectors are written under keys that carry the model version, so
writing them before CURRENT moves is invisible to servers still on the old model,
and a failure part-way leaves the old model published and intact.

The gate (docs/evaluation.md, "The publish gate"): the files match their checksums
(never overridden); the index recall is at least ``index.recall_floor``; on the
trainer's holdout the served ranking beats popularity and buy-again on Recall@20 and
NDCG@20, and is not worse than the current model's, on the same customers, by more
than ``evaluation.publish_tolerance``. ``force`` publishes a model the quality checks
refuse. Every decision (published, forced, refused) is appended to the artifact
root's :data:`PUBLISH_LOG`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsvc import artifact as art
from recsvc.config import Settings
from recsvc.errors import ArtifactError, QualityGateError
from recsvc.manifest import Manifest
from recsvc.store import UserVectorStore, client_from_url
from recsvc.store.erasures import erased_users

from .evaluation import GATE_K, HOLDOUT_MIN_USERS, HOLDOUT_USERS, compared_keys

__all__ = ["PUBLISH_LOG", "PublishResult", "publish", "rollback"]

log = logging.getLogger(__name__)

PUBLISH_LOG = "publish_log.jsonl"
"""In the artifact root: one JSON object per line for each decision of the gate, oldest
first: ``at`` (UTC), ``version``, ``current`` (the version CURRENT named), ``outcome``
(``published``, ``forced`` or ``refused``), ``refusal`` (the gate's message, for a
forced or refused one) and ``notes`` (what the gate could not judge)."""


@dataclass(frozen=True)
class PublishResult:
    version: str
    previous: str | None
    vectors_written: int
    """User vectors loaded into Redis (0 when no Redis URL is configured)."""
    forced: str | None = None
    """The gate's refusal that ``force`` overrode; None when the gate passed."""
    notes: tuple[str, ...] = ()
    """What the gate could not judge (too few held-out customers, no comparison with
    the current model); logged as warnings and recorded in :data:`PUBLISH_LOG`."""


def _latest(root: Path) -> str:
    versions = art.list_versions(root)
    if not versions:
        raise ArtifactError(f"no trained model under {root}; run `recsvc train` first")
    return versions[-1]


def _check_gate(path: Path, settings: Settings) -> tuple[str, ...]:
    """Raise ChecksumError for a file that does not match the manifest, and
    QualityGateError naming every quality check that fails; else the notes of what
    could not be judged."""
    manifest = art.read_manifest(path)
    art.verify(path, manifest)
    failures: list[str] = []
    index = manifest.index
    floor = settings.index.recall_floor
    if index.recall < floor:
        failures.append(
            f"{index.kind} index recall@{index.recall_k} is {index.recall:.4f}, below the floor"
            f" {floor:.4f} (index.kind 'normscan' or 'exact' are exact; or lower"
            " index.recall_floor)"
        )
    root = settings.artifact_root
    current = art.current_version(root)
    holdout, notes = _holdout_checks(manifest)
    failures += holdout
    if current is not None and current != manifest.model_version and not notes:
        try:
            current_manifest: Manifest | None = art.read_manifest(art.resolve(root, current))
        except ArtifactError as exc:
            log.warning("the current model %s cannot be read: %s", current, exc)
            current_manifest = None
        compared, more = _current_checks(
            manifest, current, current_manifest, settings.evaluation.publish_tolerance
        )
        failures += compared
        notes += more
    if failures:
        raise QualityGateError(
            f"{path.name}: {'; '.join(failures)}; not published (--force publishes it anyway)"
        )
    return tuple(notes)


def _metric(metrics: dict[str, float], key: str, failures: list[str]) -> float:
    """``metrics[key]``; NaN (which no comparison passes) and a failure if it is missing."""
    if key not in metrics:
        failures.append(f"metric {key} is missing")
        return float("nan")
    return metrics[key]


def _holdout_checks(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The failures and the notes of the holdout's checks against the baselines, from
    ``manifest``'s metrics (the trainer's: training.evaluation.holdout_metrics). A note
    means the model was not judged on the holdout at all."""
    metrics = manifest.metrics
    users = metrics.get(HOLDOUT_USERS)
    if users is None:
        return [], ["no holdout metrics (trained before the gate scored a holdout): not judged"]
    if users < HOLDOUT_MIN_USERS:
        return [], [
            f"{users:.0f} held-out customers, fewer than {HOLDOUT_MIN_USERS}: too few to judge"
            " the model on; not judged"
        ]
    failures: list[str] = []
    for measure in ("recall", "ndcg"):
        key = f"holdout_{measure}_at_{GATE_K}"
        served = _metric(metrics, key, failures)
        for baseline in ("popularity", "buy_again"):
            other = f"{baseline}_{measure}_at_{GATE_K}"
            score = _metric(metrics, other, failures)
            if not served > score:  # strictly
                failures.append(f"{key} {served:.4f} does not beat {other} {score:.4f}")
    return failures, []


def _current_checks(
    manifest: Manifest, current: str, current_manifest: Manifest | None, tolerance: float
) -> tuple[list[str], list[str]]:
    """The failures and the notes of the comparison with ``current`` (the version CURRENT
    names; its manifest None when it cannot be read): the one the trainer made when
    ``current`` was CURRENT, else, when both were trained on the same holdout, their
    own holdout metrics."""
    metrics = manifest.metrics
    failures: list[str] = []
    keys = compared_keys(current)
    if keys["users"] in metrics:
        pairs = [
            (keys[measure], keys[f"current_{measure}"], metrics) for measure in ("recall", "ndcg")
        ]
        shared = metrics[keys["users"]]
    elif current_manifest is not None and _same_holdout(manifest, current_manifest):
        recorded = current_manifest.metrics
        if HOLDOUT_USERS not in recorded:
            return [], [f"the current model {current} has no holdout metrics: not compared"]
        pairs = [
            (f"holdout_{measure}_at_{GATE_K}", f"holdout_{measure}_at_{GATE_K}", recorded)
            for measure in ("recall", "ndcg")
        ]
        shared = min(metrics[HOLDOUT_USERS], recorded.get(HOLDOUT_USERS, 0.0))
    elif current_manifest is None:
        return [], [f"the current model {current} cannot be read: not compared"]
    else:
        was = [k.split("@", 1)[1] for k in metrics if k.startswith("compared_users@")]
        failures.append(
            f"not compared with the current model {current}: this one was trained when "
            f"{was[0] if was else 'no model'} was current, on another holdout (other data "
            "or holdout settings; train it again to compare)"
        )
        return failures, []
    if shared < HOLDOUT_MIN_USERS:
        return [], [
            f"{shared:.0f} held-out customers compared with the current model {current}, "
            f"fewer than {HOLDOUT_MIN_USERS} (or it could not be read): not compared"
        ]
    for mine_key, theirs_key, theirs_metrics in pairs:
        mine = _metric(metrics, mine_key, failures)
        theirs = _metric(theirs_metrics, theirs_key, failures)
        if not mine >= theirs * (1.0 - tolerance):
            failures.append(
                f"{mine_key} {mine:.4f} is worse than the current model {current}'s "
                f"{theirs_key} {theirs:.4f} by more than evaluation.publish_tolerance "
                f"{tolerance:g}"
            )
    return failures, []


def _same_holdout(a: Manifest, b: Manifest) -> bool:
    """Whether the trainer drew the same holdout for both models: the same data, as far
    as the manifests tell, and the same holdout settings."""

    def holdout(m: Manifest) -> tuple[Any, ...]:
        d, c = m.data, m.config
        sources = [(s.path, s.rows_kept, s.min_timestamp, s.max_timestamp) for s in d.sources]
        data = (d.cutoff_unix, d.events, d.guest_events, d.users, d.items, d.erased_events)
        return data, sources, c.evaluation.validation_share, c.weighting

    return holdout(a) == holdout(b)


def _record(root: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the root's publish log (durably: a forced publish must stay
    on record)."""
    line = json.dumps({"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry})
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / PUBLISH_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_vectors(path: Path, settings: Settings, *, progress: bool) -> int:
    if settings.redis.url is None:
        log.info("no Redis URL configured: user vectors not loaded (servers fold users in)")
        return 0
    user_ids = np.load(path / "user_ids.npy", allow_pickle=False)
    factors = np.load(path / "user_factors.npy", allow_pickle=False, mmap_mode="r")
    # users erased after this version was trained (e.g. on a rollback) stay forgotten
    erased = erased_users(settings)
    if erased:
        keep = ~np.isin(user_ids, np.array(sorted(erased), dtype=user_ids.dtype))
        user_ids, factors = user_ids[keep], factors[keep]
    rate = settings.redis.publish_rate_per_second
    if rate:
        log.info(
            "loading %d user vectors of %s at %g/s, about %.0f s ([redis] publish_rate_per_second)",
            len(user_ids),
            path.name,
            rate,
            len(user_ids) / rate,
        )
    client = client_from_url(settings.redis.url, socket_timeout=10.0)
    try:
        store = UserVectorStore(client, prefix=settings.redis.prefix)
        written = store.publish(
            path.name,
            user_ids.tolist(),
            factors,
            ttl_seconds=settings.redis.vector_ttl_seconds,
            batch_size=settings.redis.publish_batch_size,
            rate_per_second=rate,
            progress=progress,
        )
    finally:
        client.close()
    log.info("loaded %d user vectors of %s into Redis", written, path.name)
    return written


def publish(
    settings: Settings,
    version: str | None = None,
    *,
    progress: bool = False,
    force: bool = False,
) -> PublishResult:
    """Publish ``version`` (default: the newest trained) after its quality gate;
    ``force`` publishes it even if the gate's quality checks refuse it (never with a
    checksum that does not match). Raises QualityGateError when refused."""
    root = settings.artifact_root
    name = version or _latest(root)
    path = art.resolve(root, name)
    previous = art.current_version(root)
    forced = None
    try:
        notes = _check_gate(path, settings)
    except QualityGateError as exc:
        if not force:
            _record(root, _entry(name, previous, "refused", str(exc)))
            raise
        forced, notes = str(exc), ()
        log.warning("publishing despite the publish gate (--force): %s", exc)
    for note in notes:
        log.warning("publish gate, %s: %s", name, note)
    written = _load_vectors(path, settings, progress=progress)
    # on record before CURRENT moves: no forced publish can go unrecorded
    _record(root, _entry(name, previous, "forced" if forced else "published", forced, notes))
    art.publish_version(root, name)
    log.info("published %s (was %s)", name, previous or "nothing")
    return PublishResult(name, previous, written, forced, notes)


def _entry(
    version: str,
    current: str | None,
    outcome: str,
    refusal: str | None,
    notes: tuple[str, ...] = (),
) -> dict[str, Any]:
    return {
        "version": version,
        "current": current,
        "outcome": outcome,
        "refusal": refusal,
        "notes": list(notes),
    }


def rollback(settings: Settings, *, progress: bool = False) -> PublishResult:
    """Return to the version published before the current one, reloading its vectors."""
    root = settings.artifact_root
    previous = art.current_version(root)
    target = art.rollback_target(root)
    written = _load_vectors(art.resolve(root, target), settings, progress=progress)
    art.rollback(root)
    log.info("rolled back from %s to %s", previous, target)
    return PublishResult(target, previous, written)
