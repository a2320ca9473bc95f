"""Publish a trained version: quality gate, user vectors into Redis, then CURRENT.

The order matters: vectors are written under keys that carry the model version, so
writing them before CURRENT moves is invisible to servers still on the old model,
and a failure part-way leaves the old model published and intact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsvc import artifact as art
from recsvc.config import Settings
from recsvc.erasure import read_erasure_list
from recsvc.errors import ArtifactError, QualityGateError
from recsvc.store import UserVectorStore, client_from_url

__all__ = ["PublishResult", "publish", "rollback"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    version: str
    previous: str | None
    vectors_written: int
    """User vectors loaded into Redis (0 when no Redis URL is configured)."""


def _latest(root: Path) -> str:
    versions = art.list_versions(root)
    if not versions:
        raise ArtifactError(f"no trained model under {root}; run `recsvc train` first")
    return versions[-1]


def _check_gate(path: Path, settings: Settings) -> None:
    manifest = art.read_manifest(path)
    art.verify(path, manifest)
    index = manifest.index
    floor = settings.index.recall_floor
    if index.recall < floor:
        raise QualityGateError(
            f"{path.name}: {index.kind} index recall@{index.recall_k}"
            f" is {index.recall:.4f}, below the floor {floor:.4f}; not published (index.kind"
            " 'normscan' or 'exact' are exact; or lower index.recall_floor)"
        )


def _load_vectors(path: Path, settings: Settings, *, progress: bool) -> int:
    if settings.redis.url is None:
        log.info("no Redis URL configured: user vectors not loaded (servers fold users in)")
        return 0
    user_ids = np.load(path / "user_ids.npy", allow_pickle=False)
    factors = np.load(path / "user_factors.npy", allow_pickle=False, mmap_mode="r")
    # users erased after this version was trained (e.g. on a rollback) stay forgotten
    erased = read_erasure_list(settings.erasure_path)
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
    settings: Settings, version: str | None = None, *, progress: bool = False
) -> PublishResult:
    """Publish ``version`` (default: the newest trained) after its quality gate."""
    root = settings.artifact_root
    name = version or _latest(root)
    path = art.resolve(root, name)
    _check_gate(path, settings)
    previous = art.current_version(root)
    written = _load_vectors(path, settings, progress=progress)
    art.publish_version(root, name)
    log.info("published %s (was %s)", name, previous or "nothing")
    return PublishResult(name, previous, written)


def rollback(settings: Settings, *, progress: bool = False) -> PublishResult:
    """Return to the version published before the current one, reloading its vectors."""
    root = settings.artifact_root
    previous = art.current_version(root)
    target = art.rollback_target(root)
    written = _load_vectors(art.resolve(root, target), settings, progress=progress)
    art.rollback(root)
    log.info("rolled back from %s to %s", previous, target)
    return PublishResult(target, previous, written)
