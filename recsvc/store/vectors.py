"""Published user vectors in Redis: one model version's factors for every trained user.

The publisher (``recsvc publish``) writes them before CURRENT moves; the server reads a
user's through the live state (:mod:`recsvc.store.state`), which shares the keys
(:class:`~recsvc.store.keys.KeyScheme`) and the byte layout (:mod:`recsvc.store.codec`).
Vectors carry a TTL so superseded versions expire on their own;
:meth:`UserVectorStore.delete_version` removes one version at once (rollback, cleanup).

On a Redis Cluster (a ``redis+cluster://`` client) every user's keys live in their own
slot, so nothing here is one multi-key command: ``publish`` pipelines single-key SETs,
which redis-py's cluster pipeline splits per node and sends to each node as one batch;
``get_many`` reads per slot (``mget_nonatomic``); ``delete_version`` SCANs every primary
and UNLINKs per slot (redis-py's cluster ``scan_iter`` and ``unlink``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeAlias

import numpy as np
import redis
import redis.cluster
from numpy.typing import NDArray

from recsvc.errors import DataError, StoreError
from recsvc.store.clients import translated_errors
from recsvc.store.codec import WIRE_DTYPE, decode_vector
from recsvc.store.keys import DEFAULT_PREFIX, KeyScheme, checked_version

__all__ = ["UserVectorStore"]

#: A single user's factors, shape ``(factors,)``, float32.
Vector: TypeAlias = NDArray[np.float32]
#: One row per user, shape ``(n_users, factors)``, float32.
FactorMatrix: TypeAlias = NDArray[np.float32]


class UserVectorStore:
    """User factors per model version in Redis, under the key scheme of this module.

    Thread-safe as far as the client is (redis-py's pooled client is). Every method
    raises :class:`StoreError` when Redis fails or times out.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.keys = KeyScheme(prefix)

    def key(self, model_version: str, user_id: str) -> str:
        """The key of ``user_id``'s vector under ``model_version``."""
        return self.keys.vector(user_id, model_version)

    def publish(
        self,
        model_version: str,
        user_ids: Sequence[str],
        factors: FactorMatrix,
        *,
        ttl_seconds: int,
        batch_size: int = 1_000,
        rate_per_second: float = 0.0,
        progress: bool = False,
    ) -> int:
        """Write every user's vector of ``model_version`` with a TTL; return how many.

        ``factors`` has shape ``(len(user_ids), n_factors)``; row ``i`` belongs to
        ``user_ids[i]``. Writes go in non-transactional pipelines of ``batch_size``
        SETs: a failure part-way leaves the earlier batches written, which is harmless
        because readers only use a version once it is complete and current, and a
        re-run overwrites. Existing keys of the version are overwritten.

        ``rate_per_second`` > 0 paces the writes for a Redis that is serving: each
        batch takes at least ``batch_size / rate_per_second`` seconds, its write
        included (the rest is slept), so ``n`` vectors take at least
        ``n / rate_per_second`` seconds, and time lost to a slow batch is not made up
        by a burst. 0 writes as fast as Redis answers (an idle Redis, an offline load).

        Raises ValueError for mismatched shapes or bad arguments, DataError for
        non-finite factors, StoreError when Redis fails.
        """
        checked_version(model_version)
        if factors.ndim != 2 or factors.shape[0] != len(user_ids):
            raise ValueError(
                f"factors must have shape (len(user_ids)={len(user_ids)}, n_factors), "
                f"got {factors.shape}"
            )
        if ttl_seconds <= 0 or batch_size <= 0:
            raise ValueError("ttl_seconds and batch_size must be positive")
        if not math.isfinite(rate_per_second) or rate_per_second < 0:
            raise ValueError(f"rate_per_second must be finite and >= 0, got {rate_per_second}")
        if not all(user_ids):
            raise ValueError("user_ids must be non-empty strings")
        # Block by block: factors may be a memory-mapped file larger than we want to copy.
        for start in range(0, len(user_ids), batch_size):
            if not np.isfinite(factors[start : start + batch_size]).all():
                raise DataError(f"factors of model {model_version} contain NaN or infinity")

        from tqdm import tqdm  # noqa: PLC0415 (the publisher's progress bar only)

        row_bytes = factors.shape[1] * WIRE_DTYPE.itemsize
        head, tail = self.keys.vector_parts(model_version)
        written = 0
        with (
            tqdm(total=len(user_ids), unit="vec", disable=not progress) as bar,
            translated_errors(f"publish of model {model_version}"),
        ):
            for start in range(0, len(user_ids), batch_size):
                began = time.monotonic()
                stop = min(start + batch_size, len(user_ids))
                # One bytes object per batch, sliced per row: far cheaper than
                # encode_vector() per row, with the same layout.
                blob = np.ascontiguousarray(factors[start:stop], dtype=WIRE_DTYPE).tobytes()
                with self._client.pipeline(transaction=False) as pipe:
                    # execute_command, not pipe.set(): set()'s argument handling doubles
                    # the client-side cost, which dominates publish time.
                    for i, user_id in enumerate(user_ids[start:stop]):
                        pipe.execute_command(  # type: ignore[no-untyped-call]
                            "SET",
                            f"{head}{user_id}{tail}",
                            blob[i * row_bytes : (i + 1) * row_bytes],
                            "EX",
                            ttl_seconds,
                        )
                    written += sum(1 for ok in pipe.execute() if ok)
                bar.update(stop - start)
                if rate_per_second:
                    # From this batch's own start, not the publish's: after a slow batch
                    # (Redis busy) the next waits its share instead of catching up at
                    # full speed just when Redis can least afford it.
                    pause = began + (stop - start) / rate_per_second - time.monotonic()
                    time.sleep(max(0.0, pause))
        return written

    def get(self, model_version: str, user_id: str, factors: int) -> Vector | None:
        """``user_id``'s vector under ``model_version``, or None if there is none."""
        key = self.key(model_version, user_id)
        with translated_errors(f"GET {key}"):
            raw = self._client.get(key)
        return None if raw is None else _decode_stored(key, raw, factors)

    def get_many(
        self,
        model_version: str,
        user_ids: Sequence[str],
        factors: int,
        *,
        batch_size: int = 1_000,
    ) -> list[Vector | None]:
        """Vectors of ``user_ids`` in order, None where a user has none.

        One MGET per ``batch_size`` users (on a cluster: per slot, nodes in parallel).
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        keys = [self.key(model_version, user_id) for user_id in user_ids]
        found: list[Vector | None] = []
        with translated_errors(f"MGET of {len(keys)} vectors of model {model_version}"):
            for start in range(0, len(keys), batch_size):
                chunk = keys[start : start + batch_size]
                raws = (
                    self._client.mget_nonatomic(chunk)
                    if isinstance(self._client, redis.cluster.RedisCluster)
                    else self._client.mget(chunk)
                )
                found.extend(
                    None if raw is None else _decode_stored(key, raw, factors)
                    for key, raw in zip(chunk, raws, strict=True)
                )
        return found

    def delete_version(self, model_version: str, batch_size: int = 10_000) -> int:
        """Remove every user vector of ``model_version``; return how many keys went.

        SCAN (never KEYS, which blocks the server) plus UNLINK (frees memory off the
        main thread), ``batch_size`` keys at a time. Safe while serving other versions.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        pattern = self.keys.vector_pattern(model_version)
        deleted = 0
        with translated_errors(f"deleting vectors of model {model_version}"):
            keys = self._client.scan_iter(match=pattern, count=batch_size)
            for chunk in _chunks(keys, batch_size):
                deleted += int(self._client.unlink(*chunk))
        return deleted


def _decode_stored(key: str, raw: bytes | str, factors: int) -> Vector:
    if not isinstance(raw, bytes):
        raise StoreError(f"{key}: got text, not bytes; the client must not decode responses")
    try:
        return decode_vector(raw, factors)
    except StoreError as exc:
        raise StoreError(f"{key}: {exc}") from exc


def _chunks(items: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
