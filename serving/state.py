"""The server's live state in Redis: user vectors, recent history, sessions, erasure.

Key layout (the first three come from :mod:`recsvc.store`; golden-tested)::

    {prefix}:{u:<user>}:vec:<V>          STRING  user factors of model version V     (TTL)
    {prefix}:{u:<user>}:hist             LIST    the user's recent events, newest first
    {prefix}:{s:<session>}:items         LIST    an anonymous session, newest first
    {prefix}:{u:<user>}:sess:<session>   LIST    a known user's session, newest first
    {prefix}:{u:<user>}:sessions         ZSET    the user's session ids, scored by last use

Every key of a user carries the ``{u:<user>}`` hash tag, so all of them sit in one Redis
Cluster slot: :meth:`LiveState.record` updates them in one MULTI and
:meth:`LiveState.forget` deletes them in one MULTI. A session recorded with a user id
is *tied* to that user (its key carries the user's tag and its id goes into the
``sessions`` index), which is how ForgetUser finds it without a SCAN. The index is a
sorted set rather than a plain set so ids of long-expired sessions can be pruned: a
client that mints a new session id per request would otherwise grow it without bound
for as long as the user stays active.

Lists are bounded (LTRIM to ``*_max_events``) and every write refreshes the TTL of the
keys it touches, so history expires ``history_ttl_seconds`` after the user's last event
and a session ``session_ttl_seconds`` after its last event.

A list entry is one :class:`StoredEvent`, encoded by :func:`encode_event` as UTF-8::

    1|<type code>|<timestamp>|<quantity>|<item_id>        e.g. b"1|p|1700000000|2|sku-42"

``1`` is the format version; the type code is one letter (:data:`EVENT_TYPE_CODES`);
the timestamp is integer Unix seconds; the quantity is the shortest text that reads back
to the same float (``2``, ``0.5``); the item id comes last, so it may contain ``|``.
Readers skip (and log) entries they cannot decode, e.g. a newer format version written
by another replica during a rolling deploy, instead of failing the request.

Failure: every method is bounded by the client's timeouts (see
:func:`async_client_from_url`) and raises :class:`~recsvc.errors.StoreError` for any
redis-py error, translated here with ``raise ... from exc``. Error messages name the
operation, never a user or session id, so they are safe to log and to return.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, cast

import numpy as np
import redis
import redis.asyncio
from numpy.typing import NDArray
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff

from recsvc.errors import DataError, StoreError
from recsvc.events import EventType
from recsvc.store import (
    DEFAULT_PREFIX,
    checked_prefix,
    decode_vector,
    encode_vector,
    serving_pool,
    session_items_key,
    translated_errors,
    user_history_key,
    user_tag,
    user_vector_key,
)

# The user tag, prefix validation, URL redaction and error translation exist once, in
# recsvc.store, shared with the publisher.
from .redisread import RedisReader

__all__ = [
    "EVENT_FORMAT_VERSION",
    "EVENT_TYPE_CODES",
    "ForgetResult",
    "LiveState",
    "StoredEvent",
    "async_client_from_url",
    "decode_event",
    "encode_event",
    "user_session_key",
    "user_sessions_key",
]

logger = logging.getLogger(__name__)

#: A single user's factors, shape ``(factors,)``, float32.
Vector: TypeAlias = NDArray[np.float32]

EVENT_FORMAT_VERSION: Final = "1"
"""Leading field of every encoded :class:`StoredEvent`; bump it when the layout changes."""

EVENT_TYPE_CODES: Final[dict[EventType, str]] = {
    EventType.PURCHASE: "p",
    EventType.ADD_TO_CART: "a",
    EventType.VIEW: "v",
    EventType.CLICK: "c",
    EventType.IMPRESSION: "i",
}
"""One-letter code of each event type in an encoded entry (part of the stored format)."""

_TYPES_BY_CODE: Final = {code: event_type for event_type, code in EVENT_TYPE_CODES.items()}

# Attempts of ForgetUser's WATCH/MULTI when a concurrent write touches the session
# index between reading it and deleting; each attempt is one bounded round trip pair.
_FORGET_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class StoredEvent:
    """One event as kept in a user's history and in sessions."""

    item_id: str
    """Product id (non-empty; may contain any character)."""
    event_type: EventType
    """What the shopper did."""
    timestamp: int
    """When, in Unix seconds (UTC)."""
    quantity: float = 1.0
    """Units (> 0, finite)."""


@dataclass(frozen=True)
class ForgetResult:
    """What :meth:`LiveState.forget` deleted."""

    deleted_vectors: int
    """Vector keys removed (at most one per model version asked for)."""
    deleted_history_events: int
    """Entries the user's history list held."""
    deleted_sessions: int
    """Sessions tied to the user that still existed."""


# --------------------------------------------------------------------------- keys
# Keys of sessions tied to a known user. recsvc.store has no builder for them (it
# knows anonymous sessions only); they live here with the code that writes them.


def user_session_key(user_id: str, session_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of a known user's session: ``{prefix}:{u:<user>}:sess:<session_id>``."""
    if not session_id:
        raise ValueError("session_id must be a non-empty string")
    return f"{user_tag(user_id, prefix)}:sess:{session_id}"


def user_sessions_key(user_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of the index of a user's session ids: ``{prefix}:{u:<user>}:sessions``."""
    return f"{user_tag(user_id, prefix)}:sessions"


# --------------------------------------------------------------------------- entries


def encode_event(event: StoredEvent) -> bytes:
    """The list entry of ``event``: ``b"1|<code>|<timestamp>|<quantity>|<item_id>"``.

    Raises ValueError for an empty item id or a quantity that is not finite and > 0.
    """
    if not event.item_id:
        raise ValueError("item_id must be a non-empty string")
    quantity = float(event.quantity)
    if not (math.isfinite(quantity) and quantity > 0):
        raise ValueError(f"quantity must be finite and > 0, got {event.quantity!r}")
    # Integral quantities (the common case) as "2", not "2.0"; others as repr, which
    # is the shortest text that parses back to the same float.
    qty = str(int(quantity)) if quantity.is_integer() and quantity < 2**53 else repr(quantity)
    code = EVENT_TYPE_CODES[EventType(event.event_type)]
    return f"{EVENT_FORMAT_VERSION}|{code}|{int(event.timestamp)}|{qty}|{event.item_id}".encode()


def decode_event(raw: bytes) -> StoredEvent:
    """Inverse of :func:`encode_event`. Raises ValueError for anything else."""
    version, code, timestamp, quantity, item_id = raw.decode().split("|", 4)
    if version != EVENT_FORMAT_VERSION:
        raise ValueError(f"unknown entry format version {version!r}")
    if not item_id:
        raise ValueError("empty item id")
    return StoredEvent(item_id, _TYPES_BY_CODE[code], int(timestamp), float(quantity))


def _decode_events(raws: Sequence[bytes | str], what: str) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    for raw in raws:
        try:
            if not isinstance(raw, bytes):
                raise TypeError("text entry: the client must not decode responses")
            events.append(decode_event(raw))
        except (ValueError, KeyError, TypeError):  # bad shape, code or type
            logger.warning("skipped an undecodable %s entry: %.60r", what, raw)
    return events


# --------------------------------------------------------------------------- client


def async_client_from_url(
    url: str, *, socket_timeout: float = 0.05, max_connections: int = 64
) -> redis.asyncio.Redis:
    """An asyncio Redis client for ``redis://``, ``rediss://`` or ``unix://`` URLs.

    The asyncio twin of :func:`recsvc.store.client_from_url`, tuned for the request
    path: connect and read timeouts of ``socket_timeout`` seconds (tens of ms), a pool
    of at most ``max_connections`` where a caller waits up to ``socket_timeout`` for a
    free connection, one quick retry on a connection error (a pooled socket the server
    closed) and none on a timeout, RESP2 replies, bytes (never decoded) values. Query
    parameters in the URL win over these defaults.

    Nothing is sent until the first command; close it with ``await client.aclose()``.
    Raises :class:`ConfigError` for a URL that cannot be used.
    """
    pool = serving_pool(
        redis.asyncio.BlockingConnectionPool,
        url,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        # the request path's budget is tens of ms: a 5 ms backoff cap, not 50
        retry=Retry(
            EqualJitterBackoff(cap=0.005, base=0.001),
            retries=1,
            supported_errors=(redis.ConnectionError,),
        ),
    )
    return redis.asyncio.Redis.from_pool(pool)


# --------------------------------------------------------------------------- state


class LiveState:
    """Live per-user and per-session state of the server, in Redis.

    Safe to share between the tasks of one event loop (the client's pool is). Each
    method is one round trip (``forget``: WATCH, ZRANGE and the MULTI, repeated if a
    concurrent write races it) and raises :class:`StoreError` when Redis fails or times out, and
    ValueError for an argument no key can be built from (empty user id where one is
    needed, a bad model version).

    With a ``reader`` (:class:`serving.redisread.RedisReader` on the same Redis),
    :meth:`get_user_state`, the read of every Recommend, goes through it instead of a
    redis-py pipeline (same replies, a fifth of the client CPU); everything else
    stays on ``client``. The caller owns the reader and closes it. If the reader keeps
    a client-side cache, every write here invalidates the keys it touched once it is
    done, so a Recommend after a RecordEvents of this process sees the event even
    before Redis's invalidation push arrives.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str,
        history_max_events: int,
        history_ttl_seconds: int,
        session_max_events: int,
        session_ttl_seconds: int,
        vector_ttl_seconds: int,
        reader: RedisReader | None = None,
    ) -> None:
        limits = {
            "history_max_events": history_max_events,
            "history_ttl_seconds": history_ttl_seconds,
            "session_max_events": session_max_events,
            "session_ttl_seconds": session_ttl_seconds,
            "vector_ttl_seconds": vector_ttl_seconds,
        }
        bad = [name for name, value in limits.items() if value <= 0]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be positive")
        self._client = client
        self._reader = reader
        self.prefix = checked_prefix(prefix)
        self.history_max_events = history_max_events
        self.history_ttl_seconds = history_ttl_seconds
        self.session_max_events = session_max_events
        self.session_ttl_seconds = session_ttl_seconds
        self.vector_ttl_seconds = vector_ttl_seconds
        self._checked_versions: set[str] = set()

    def session_key(self, session_id: str, user_id: str = "") -> str:
        """Key of a session: tied to ``user_id`` when given, anonymous otherwise."""
        if user_id:
            return user_session_key(user_id, session_id, self.prefix)
        return session_items_key(session_id, self.prefix)

    async def ping(self) -> None:
        """Check that Redis answers (readiness)."""
        with translated_errors("PING"):
            await self._client.ping()

    async def get_vector(self, model_version: str, user_id: str, factors: int) -> Vector | None:
        """The user's factors under ``model_version``, shape ``(factors,)``, or None."""
        key = user_vector_key(user_id, model_version, self.prefix)
        with translated_errors("reading a user vector"):
            raw = await self._client.get(key)
        return None if raw is None else _vector(raw, factors, model_version)

    async def set_vector(self, model_version: str, user_id: str, vector: Vector) -> None:
        """Store a folded-in vector, shape ``(factors,)``, for ``vector_ttl_seconds``.

        Raises DataError for NaN or infinite values (they would poison every answer).
        """
        key = user_vector_key(user_id, model_version, self.prefix)
        if not np.isfinite(vector).all():
            raise DataError(f"vector for model {model_version} contains NaN or infinity")
        value = encode_vector(vector)
        try:
            with translated_errors("writing a user vector"):
                await self._client.set(key, value, ex=self.vector_ttl_seconds)
        finally:
            self._written([key])

    async def get_user_state(
        self, model_version: str, user_id: str, session_id: str, factors: int
    ) -> tuple[Vector | None, list[StoredEvent], list[StoredEvent]]:
        """Vector, history and session of one request, in one round trip.

        ``user_id`` may be empty (anonymous: no vector, no history, the anonymous
        session) and so may ``session_id`` (no session). History and session come
        newest first; the vector has shape ``(factors,)`` or is None.
        """
        commands: list[tuple[Any, ...]] = []
        if user_id:
            # the keys of recsvc.store (user_vector_key, user_history_key), built without
            # re-validating the prefix (checked once, in __init__) and the version (once
            # per version) on every call
            tag = f"{self.prefix}:{{u:{user_id}}}"
            if model_version not in self._checked_versions:
                user_vector_key(user_id, model_version, self.prefix)  # raises if malformed
                self._checked_versions.add(model_version)
            commands.append(("GET", f"{tag}:vec:{model_version}"))
            commands.append(("LRANGE", f"{tag}:hist", 0, self.history_max_events - 1))
        if session_id:
            sess = self.session_key(session_id, user_id)
            commands.append(("LRANGE", sess, 0, self.session_max_events - 1))
        if not commands:
            return None, [], []
        if self._reader is not None:
            try:  # translated_errors, inlined: a context manager per call costs ~2 µs
                replies = await self._reader.execute(commands)
            except redis.RedisError as exc:
                raise StoreError(f"Redis reading user state failed: {exc}") from exc
        else:
            replies = await self._pipeline(commands, "reading user state", transaction=False)
        vector: Vector | None = None
        history: list[StoredEvent] = []
        if user_id:
            raw, raw_history = replies[0], replies[1]
            vector = None if raw is None else _vector(raw, factors, model_version)
            history = _decode_events(raw_history, "history") if raw_history else []
            session = _decode_events(replies[2], "session") if session_id else []
        else:
            session = _decode_events(replies[0], "session") if session_id else []
        return vector, history, session

    async def get_session(self, session_id: str, user_id: str = "") -> list[StoredEvent]:
        """A session's events, newest first (tied to ``user_id`` when given)."""
        key = self.session_key(session_id, user_id)
        with translated_errors("reading a session"):
            raws = await self._client.lrange(key, 0, self.session_max_events - 1)
        return _decode_events(raws, "session")

    async def record(self, user_id: str, session_id: str, events: Sequence[StoredEvent]) -> None:
        """Append ``events`` to the user's history and to the session, in one MULTI.

        Either id may be empty: no user = an anonymous session only; no session =
        history only. Within a batch, events are ordered by timestamp, so the newest
        ends up first; a batch arriving later counts as newer whatever its timestamps.
        Lists are trimmed to their bounds and their TTLs refreshed. Delivery is
        at-least-once: should the reply of an applied MULTI be lost with its connection,
        the client's one retry applies it again.
        """
        if not events or not (user_id or session_id):
            return
        encoded = [encode_event(e) for e in sorted(events, key=lambda e: e.timestamp)]
        commands: list[tuple[Any, ...]] = []
        if user_id:
            hist = user_history_key(user_id, self.prefix)
            commands += _push_bounded(
                hist, encoded, self.history_max_events, self.history_ttl_seconds
            )
        if session_id:
            sess = self.session_key(session_id, user_id)
            ttl = self.session_ttl_seconds
            commands += _push_bounded(sess, encoded, self.session_max_events, ttl)
            if user_id:
                index = user_sessions_key(user_id, self.prefix)
                now = int(time.time())
                # Prune ids idle for two TTLs: their keys expired long ago, even allowing
                # for clock skew between replicas. Pruning one whose key still lived
                # would hide it from ForgetUser. The index lives as long as its newest
                # session key, since both TTLs are refreshed in the same MULTI.
                commands += [
                    ("ZADD", index, now, session_id),
                    ("ZREMRANGEBYSCORE", index, "-inf", f"({now - 2 * ttl}"),
                    ("EXPIRE", index, ttl),
                ]
        try:
            await self._pipeline(commands, "recording events", transaction=True)
        finally:
            self._written(dict.fromkeys(c[1] for c in commands))

    async def forget(self, user_id: str, model_versions: Sequence[str]) -> ForgetResult:
        """Delete everything held for ``user_id`` at once (ForgetUser).

        In one MULTI: the user's vector under each of ``model_versions``, the history
        and every session tied to the user, plus the session index. The index is
        WATCHed between reading it and the MULTI, so a session tied concurrently is
        never left behind (the MULTI is retried). Anonymous sessions the user may have
        had before logging in carry no user id and are not touched.
        """
        vectors = [user_vector_key(user_id, v, self.prefix) for v in dict.fromkeys(model_versions)]
        hist = user_history_key(user_id, self.prefix)
        index = user_sessions_key(user_id, self.prefix)
        with translated_errors("forgetting a user"):
            async with self._client.pipeline(transaction=True) as pipe:
                for _ in range(_FORGET_ATTEMPTS):
                    try:
                        await pipe.watch(index)
                        # While watching, commands run at once (not queued).
                        session_ids = cast("list[bytes]", await pipe.zrange(index, 0, -1))
                        sessions = [
                            user_session_key(user_id, sid.decode(), self.prefix)
                            for sid in session_ids
                        ]
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.execute_command("LLEN", hist)
                        for keys in (vectors, sessions):
                            if keys:  # UNLINK needs at least one key
                                pipe.execute_command("UNLINK", *keys)
                        pipe.execute_command("UNLINK", hist, index)
                        try:
                            replies = iter(await pipe.execute())
                        finally:
                            self._written([*vectors, *sessions, hist, index])
                    except redis.WatchError:
                        continue
                    n_history = int(next(replies))
                    n_vectors = int(next(replies)) if vectors else 0
                    n_sessions = int(next(replies)) if sessions else 0
                    return ForgetResult(n_vectors, n_history, n_sessions)
        raise StoreError(
            f"forgetting a user failed: sessions kept changing over {_FORGET_ATTEMPTS} attempts"
        )

    def _written(self, keys: Iterable[str]) -> None:
        """After a write to ``keys`` (done, failed or unknown): the reader's client-side
        cache must not answer from what it held for them."""
        if self._reader is not None:
            self._reader.invalidate(keys)

    async def _pipeline(
        self, commands: list[tuple[Any, ...]], action: str, *, transaction: bool
    ) -> list[Any]:
        with translated_errors(action):
            async with self._client.pipeline(transaction=transaction) as pipe:
                # execute_command, not pipe.lrange() & co.: their argument handling
                # costs more than the round trip on loopback.
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute()


def _push_bounded(key: str, encoded: list[bytes], max_len: int, ttl: int) -> list[tuple[Any, ...]]:
    """LPUSH the newest ``max_len`` entries, LTRIM to ``max_len``, refresh the TTL."""
    return [
        ("LPUSH", key, *encoded[-max_len:]),
        ("LTRIM", key, 0, max_len - 1),
        ("EXPIRE", key, ttl),
    ]


def _vector(raw: object, factors: int, model_version: str) -> Vector:
    if not isinstance(raw, bytes):
        raise StoreError("got text, not bytes, from Redis: the client must not decode responses")
    try:
        return decode_vector(raw, factors)
    except StoreError as exc:
        raise StoreError(f"user vector of model {model_version}: {exc}") from exc
