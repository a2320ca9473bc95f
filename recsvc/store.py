"""User vectors in Redis, and the Redis key scheme every part of recsvc shares.

Key scheme (pinned by a golden test; change it only with a migration)::

    {prefix}:{u:<user_id>}:vec:<model_version>   user factors of one model version   (TTL)
    {prefix}:{u:<user_id>}:hist                  the user's recent history          (server)
    {prefix}:{s:<session_id>}:items              one session's recent items         (server)

``prefix`` defaults to ``recsvc``. The ``{u:<user_id>}`` part is a Redis Cluster *hash
tag*: Cluster hashes only the text between the first ``{`` and the next ``}``, so every
key of one user lands in the same slot and ForgetUser can remove them all with one
multi-key ``UNLINK``. That is also why ``prefix`` may not contain braces (the tag would
move into the prefix and put every user in one slot). A user id that itself contains
``}`` still works: the tag ends early, but identically for all of that user's keys.

A vector value is the factors as raw little-endian float32 bytes, exactly
``4 * factors`` bytes, no header: the reader knows ``factors`` from the model manifest,
and a length mismatch (a version published with other factors) is reported, never
guessed at. Vectors carry a TTL so superseded versions expire on their own;
:meth:`UserVectorStore.delete_version` removes one version at once (rollback, cleanup).

Cluster note: ``publish`` and ``get`` send single-key commands only. ``get_many`` (MGET)
and ``delete_version`` (SCAN + multi-key UNLINK) span many users, hence many slots, and
assume one Redis node, which is what :class:`redis.Redis` talks to. A cluster client
would route these per slot (``RedisCluster.mget_nonatomic``, a SCAN per primary).

Every redis-py error is translated here, once, into :class:`~recsvc.errors.StoreError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis
from numpy.typing import NDArray
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry
from tqdm import tqdm

from recsvc.errors import ConfigError, DataError, StoreError

__all__ = [
    "DEFAULT_PREFIX",
    "UserVectorStore",
    "checked_prefix",
    "client_from_url",
    "decode_vector",
    "encode_vector",
    "redacted_url",
    "serving_pool",
    "session_items_key",
    "translated_errors",
    "user_history_key",
    "user_tag",
    "user_vector_key",
]

#: A single user's factors, shape ``(factors,)``, float32.
Vector: TypeAlias = NDArray[np.float32]
#: One row per user, shape ``(n_users, factors)``, float32.
FactorMatrix: TypeAlias = NDArray[np.float32]

DEFAULT_PREFIX: Final = "recsvc"

# Little-endian float32 whatever the host: the bytes are the on-wire contract.
_WIRE_DTYPE: Final = np.dtype("<f4")
# Prefixes and versions become part of SCAN MATCH patterns and of the hash-tag layout:
# no braces, no glob metacharacters, and no ':' in a version (keeps "vec:<V>" the last
# segment, so one version's pattern can never match another version's key).
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9._:-]+")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------- keys


def user_vector_key(user_id: str, model_version: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of ``user_id``'s vector under ``model_version``: ``{prefix}:{u:<id>}:vec:<V>``."""
    return f"{user_tag(user_id, prefix)}:vec:{_checked_version(model_version)}"


def user_history_key(user_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of ``user_id``'s recent history: ``{prefix}:{u:<id>}:hist``.

    Same hash slot as the user's vectors, so ForgetUser deletes both in one call.
    """
    return f"{user_tag(user_id, prefix)}:hist"


def session_items_key(session_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of a session's recent items: ``{prefix}:{s:<session_id>}:items``."""
    if not session_id:
        raise ValueError("session_id must be a non-empty string")
    return f"{checked_prefix(prefix)}:{{s:{session_id}}}:items"


def user_tag(user_id: str, prefix: str) -> str:
    if not user_id:
        raise ValueError("user_id must be a non-empty string (anonymous users have no keys)")
    return f"{checked_prefix(prefix)}:{{u:{user_id}}}"


def checked_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"key prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    return prefix


def _checked_version(model_version: str) -> str:
    if not _VERSION_RE.fullmatch(model_version):
        raise ValueError(f"model_version must match {_VERSION_RE.pattern}, got {model_version!r}")
    return model_version


def _version_pattern(model_version: str, prefix: str) -> str:
    # Both parts are validated to hold no glob metacharacters, so no escaping is needed.
    return f"{checked_prefix(prefix)}:{{u:*}}:vec:{_checked_version(model_version)}"


# --------------------------------------------------------------------------- values


def encode_vector(vec: Vector) -> bytes:
    """The stored form of one vector: its values as little-endian float32 bytes.

    ``vec`` has shape ``(factors,)``; other float dtypes are converted to float32.
    """
    if vec.ndim != 1:
        raise ValueError(f"expected a 1-d vector, got shape {vec.shape}")
    return np.ascontiguousarray(vec, dtype=_WIRE_DTYPE).tobytes()


def decode_vector(raw: bytes, factors: int) -> Vector:
    """Inverse of :func:`encode_vector`: a new, writable float32 array of shape ``(factors,)``.

    Raises :class:`StoreError` when ``raw`` is not exactly ``4 * factors`` bytes.
    """
    expected = _WIRE_DTYPE.itemsize * factors
    if len(raw) != expected:
        raise StoreError(
            f"stored vector has {len(raw)} bytes, expected {expected} "
            f"({factors} float32 factors); was it published by a model with other factors?"
        )
    # astype copies: the result is native-endian, owns its memory and is writable.
    return np.frombuffer(raw, dtype=_WIRE_DTYPE).astype(np.float32)


# --------------------------------------------------------------------------- client


def serving_pool(
    pool_class: Any, url: str, *, socket_timeout: float, max_connections: int, retry: Any
) -> Any:
    """A blocking connection pool of ``pool_class`` (sync or asyncio) for ``url``.

    Connect, read and pool-wait timeouts of ``socket_timeout``; at most
    ``max_connections``; the given ``retry`` — redis-py's default is 10 retries with
    backoff up to 1 s, timeouts included: seconds of stall per call while Redis is
    down or slow. One quick retry on a connection error covers a pooled socket Redis
    has closed; a timeout is not retried, so a call never takes much longer than
    ``socket_timeout``. RESP2, bytes values. Raises ConfigError for a URL that cannot
    be used.
    """
    if socket_timeout <= 0 or max_connections <= 0:
        raise ConfigError("socket_timeout and max_connections must be positive")
    try:
        pool = pool_class.from_url(
            url,
            max_connections=max_connections,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=retry,
            protocol=2,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redacted_url(url)}: {exc}") from exc
    if pool.connection_kwargs.get("decode_responses"):
        raise ConfigError(f"Redis URL {redacted_url(url)}: decode_responses must be off")
    return pool


def client_from_url(
    url: str, *, socket_timeout: float = 0.5, max_connections: int = 64
) -> redis.Redis:
    """A Redis client for ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs.

    Built for the serving path: connect and read timeouts of ``socket_timeout`` seconds,
    one quick retry on a connection error (none on a timeout), and a
    pool of at most ``max_connections`` that makes callers wait up to ``socket_timeout``
    for a free connection instead of opening more. Query parameters in the URL win over
    these defaults (e.g. ``?socket_timeout=2``). Replies use RESP2, whose shapes are the
    same across redis-py and server versions; ``?protocol=3`` opts into RESP3. redis-py
    uses hiredis for parsing when it is installed.

    Nothing is sent until the first command. Raises :class:`ConfigError` for a URL that
    cannot be used.
    """
    pool = serving_pool(
        redis.BlockingConnectionPool,
        url,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        retry=Retry(
            EqualJitterBackoff(cap=0.05, base=0.005),
            retries=1,
            supported_errors=(redis.ConnectionError,),
        ),
    )
    return redis.Redis.from_pool(pool)


def redacted_url(url: str) -> str:
    """``url`` with any password replaced, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(urlunsplit(parts._replace(netloc=netloc)))


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Turn any redis-py error raised inside into a StoreError naming ``action``."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"Redis {action} failed: {exc}") from exc


# --------------------------------------------------------------------------- store


class UserVectorStore:
    """User factors per model version in Redis, under the key scheme of this module.

    Thread-safe as far as the client is (redis-py's pooled client is). Every method
    raises :class:`StoreError` when Redis fails or times out.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.prefix = checked_prefix(prefix)

    def key(self, model_version: str, user_id: str) -> str:
        """The key of ``user_id``'s vector under ``model_version``."""
        return user_vector_key(user_id, model_version, self.prefix)

    def publish(
        self,
        model_version: str,
        user_ids: Sequence[str],
        factors: FactorMatrix,
        *,
        ttl_seconds: int,
        batch_size: int = 10_000,
        progress: bool = False,
    ) -> int:
        """Write every user's vector of ``model_version`` with a TTL; return how many.

        ``factors`` has shape ``(len(user_ids), n_factors)``; row ``i`` belongs to
        ``user_ids[i]``. Writes go in non-transactional pipelines of ``batch_size``
        SETs: a failure part-way leaves the earlier batches written, which is harmless
        because readers only use a version once it is complete and current, and a
        re-run overwrites. Existing keys of the version are overwritten.

        Raises ValueError for mismatched shapes or bad arguments, DataError for
        non-finite factors, StoreError when Redis fails.
        """
        _checked_version(model_version)
        if factors.ndim != 2 or factors.shape[0] != len(user_ids):
            raise ValueError(
                f"factors must have shape (len(user_ids)={len(user_ids)}, n_factors), "
                f"got {factors.shape}"
            )
        if ttl_seconds <= 0 or batch_size <= 0:
            raise ValueError("ttl_seconds and batch_size must be positive")
        if not all(user_ids):
            raise ValueError("user_ids must be non-empty strings")
        # Block by block: factors may be a memory-mapped file larger than we want to copy.
        for start in range(0, len(user_ids), batch_size):
            if not np.isfinite(factors[start : start + batch_size]).all():
                raise DataError(f"factors of model {model_version} contain NaN or infinity")

        row_bytes = factors.shape[1] * _WIRE_DTYPE.itemsize
        head = f"{self.prefix}:{{u:"
        tail = f"}}:vec:{model_version}"
        written = 0
        with (
            tqdm(total=len(user_ids), unit="vec", disable=not progress) as bar,
            translated_errors(f"publish of model {model_version}"),
        ):
            for start in range(0, len(user_ids), batch_size):
                stop = min(start + batch_size, len(user_ids))
                # One bytes object per batch, sliced per row: far cheaper than
                # encode_vector() per row, with the same layout.
                blob = np.ascontiguousarray(factors[start:stop], dtype=_WIRE_DTYPE).tobytes()
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

        One MGET per ``batch_size`` users. The keys span many hash slots, so this needs
        a single-node Redis (see the module docstring for Redis Cluster).
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        keys = [self.key(model_version, user_id) for user_id in user_ids]
        found: list[Vector | None] = []
        with translated_errors(f"MGET of {len(keys)} vectors of model {model_version}"):
            for start in range(0, len(keys), batch_size):
                chunk = keys[start : start + batch_size]
                raws = self._client.mget(chunk)
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
        pattern = _version_pattern(model_version, self.prefix)
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
