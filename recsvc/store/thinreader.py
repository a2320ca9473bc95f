"""A thin asyncio Redis client for the one read on Recommend's hot path.

The state read of every Recommend (:meth:`recsvc.store.state.RedisLiveState.read_user`:
a user's vector, history and session, GET + LRANGE + LRANGE) goes through a
:class:`~recsvc.store.reader.StateReader`; this is the fast one. Through redis-py's asyncio
pipeline that read costs ~100 µs of client CPU per call; the exchange itself (pack,
one write, one read, parse with hiredis) costs a fifth of it. :class:`RedisReader`
does only that exchange, and leaves everything else (writes, MULTI, WATCH, PING,
admin) to redis-py.

How it works:

- An :class:`asyncio.Protocol` per connection, RESP2 over TCP or a unix socket.
  Commands are packed by ``hiredis.pack_command`` and replies parsed by
  ``hiredis.Reader`` (bytes, never decoded), as redis-py does with hiredis.
- Requests are *pipelined*: each call appends its commands to the connection's
  output buffer and a future to a FIFO; Redis answers in order, so replies are
  handed back in order. Calls made in the same event-loop iteration share one
  ``write`` (flushed by ``call_soon``), so under load many requests cost one syscall.
- A few connections (``connections``, round robin), opened lazily, each with
  AUTH / SELECT / CLIENT SETNAME from the URL sent first.
- Failure: a connection that fails (refused, reset, closed by Redis, protocol
  error) fails every call waiting on it with :class:`redis.ConnectionError` and is
  replaced by the next call. A call whose reply has not come ``socket_timeout``
  seconds after it was sent fails the connection with :class:`redis.TimeoutError`
  (as redis-py's read timeout does; one timer per connection, not per call). An
  error reply (WRONGTYPE, ...) raises :class:`redis.ResponseError` for that call
  only. These are redis-py's own exception classes, so callers translate them the
  same way (:func:`recsvc.store.translated_errors`). Reads are idempotent: a call
  that hit a pooled connection Redis had closed is retried once on a fresh one (the
  same single retry :func:`recsvc.store.clients.async_client_from_url` configures).
- Cancelling a call (a gRPC deadline) drops its future; its replies are read and
  discarded when they come, so the FIFO stays aligned.
- Client-side cache (``cache_entries`` > 0): Redis's server-assisted client-side
  caching. Each connection speaks RESP3 (``HELLO 3``) with ``CLIENT TRACKING ON``, so
  Redis remembers which keys it read and pushes an ``invalidate`` message on that same
  connection when one of them changes, expires, is evicted or flushed. Replies of
  GET, LRANGE and ZRANGEBYSCORE (rotation) are kept, per key, for at most
  ``cache_seconds``, and a call whose every command is kept is answered without Redis
  (and without a suspension). What
  keeps it right:

  * on one connection a reply and a later invalidation of its key arrive in order, so
    an entry never outlives the next write to its key by more than the push's trip;
  * a hit is answered only when every tracking connection's socket holds nothing the
    event loop has not read yet; otherwise the call lets the loop read it first (two
    turns), then looks again. Redis pushes an invalidation as it runs the write, so
    a write another replica made before this call (its client heard back, then asked
    here) is already in the socket: a call that follows it is never answered from
    before it, even when both reach this process in the same turn of its loop;
  * a reply is kept only if no invalidation of its keys (pushed, or local through
    :meth:`RedisReader.invalidate`, which this process's own writers call once their
    write is done) came between sending the call and reading the reply: a read racing
    a write is answered but not kept (the "in-progress" case of the Redis docs);
  * a connection that fails or closes takes its tracking with it, so the whole cache
    is dropped; a Redis that refuses ``HELLO 3`` or ``CLIENT TRACKING`` (older than 6,
    or an ACL without CLIENT) is read without a cache.

Where it connects comes from the same Redis URL the redis-py clients use, read by
:meth:`recsvc.store.clients.Endpoint.from_url`: a URL option it would not honour (TLS,
RESP3, ``ssl_*``, ...) is a ConfigError at start-up, never a silent fallback; such URLs
are read through redis-py (:class:`~recsvc.store.reader.PipelineReader`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import select
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import hiredis
import redis

from recsvc.store.clients import Endpoint

__all__ = ["RedisReader"]

log = logging.getLogger(__name__)

Command = tuple[Any, ...]


class _Call:
    """One call's place in a connection's FIFO."""

    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.deadline = deadline
        self.replies: list[Any] = []


Invalidate = Callable[[Iterable[str] | None], None]
"""Drops cache entries: of these keys, or every one (None)."""

_CACHEABLE: Final = frozenset({"GET", "LRANGE", "ZRANGEBYSCORE"})
"""Read-only single-key commands (key second) whose replies the cache may keep."""


class _Connection(asyncio.Protocol):
    """One Redis connection carrying pipelined calls (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        where: str,
        invalidate: Invalidate | None = None,
    ) -> None:
        self._loop = loop
        self._timeout = timeout
        self._where = where
        self._invalidate = invalidate
        self.tracking = False
        """True once Redis tracks the keys this connection reads (RESP3 pushes on)."""
        self._reader = hiredis.Reader(replyError=redis.ResponseError)
        self._transport: asyncio.Transport | None = None
        self._pending: collections.deque[_Call] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.alive = False
        self.fileno = -1
        """The socket's descriptor (-1 until connected)."""
        self.used = False
        """True once a call on it has been answered (so a failure may be a stale socket)."""

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1
        self.alive = True

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                error = f"Protocol error from Redis at {self._where}: {exc}"
                self._fail(redis.ConnectionError(error))
                return
            if reply is False:  # no complete reply yet (RESP2 has no booleans)
                return
            if isinstance(reply, hiredis.PushNotification):
                self._pushed(reply)
                continue
            if not pending:
                self._fail(redis.ConnectionError(f"Unexpected reply from Redis at {self._where}"))
                return
            call = pending[0]
            call.replies.append(reply)
            if len(call.replies) == call.expected:
                pending.popleft()
                self.used = True
                if not call.future.done():  # a cancelled caller's replies are dropped
                    call.future.set_result(call.replies)

    def _pushed(self, push: list[Any]) -> None:
        """A RESP3 push: ``invalidate`` with the changed keys, or None for all of them
        (FLUSHALL, FLUSHDB, or a full tracking table)."""
        if self._invalidate is None or not push or push[0] != b"invalidate":
            return
        keys = push[1] if len(push) > 1 else None
        if keys is None:
            self._invalidate(None)
        else:
            self._invalidate(k.decode("utf-8", "surrogateescape") for k in keys)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.ConnectionError(f"Connection to Redis at {self._where} lost: {exc}"))

    # --- calls -----------------------------------------------------------------------

    def send(self, packed: list[bytes]) -> asyncio.Future[list[Any]]:
        """Queue ``packed`` commands; the future gets their replies, in order."""
        if not self.alive:
            raise redis.ConnectionError(f"Connection to Redis at {self._where} is closed")
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._pending.append(_Call(future, len(packed), deadline))
        self._out += packed
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and self.alive:
            data = b"".join(self._out)
            self._out.clear()
            self._transport.write(data)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        head = self._pending[0].deadline
        if head <= self._loop.time():
            self._fail(
                redis.TimeoutError(f"Timeout reading from Redis at {self._where}"), abort=True
            )
        else:
            self._timer = self._loop.call_at(head, self._check_deadline)

    def _fail(self, exc: redis.RedisError, *, abort: bool = True) -> None:
        """Fail every waiting call with ``exc`` and drop the connection."""
        self.alive = False
        if self.tracking and self._invalidate is not None:
            # Redis forgets what this connection read: nothing kept may be trusted
            self.tracking = False
            self._invalidate(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        if abort and self._transport is not None:
            self._transport.abort()
        while self._pending:
            call = self._pending.popleft()
            if not call.future.done():
                call.future.set_exception(exc)

    def close(self) -> None:
        self._fail(redis.ConnectionError("Connection closed by the client"), abort=False)
        if self._transport is not None:
            self._transport.close()


class RedisReader:
    """Pipelined reads over a few connections to one Redis (see the module docstring).

    Use it from one event loop. ``socket_timeout`` bounds the wait for a reply,
    ``connect_timeout`` the connect and handshake. ``cache_entries`` > 0 keeps that
    many keys' replies in a client-side cache (LRU), each for at most
    ``cache_seconds``; ``cache_hits`` and ``cache_misses`` count calls by whether the
    cache answered them (calls with a command it cannot keep are not counted).
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        socket_timeout: float = 0.05,
        connect_timeout: float | None = None,
        connections: int = 1,
        cache_entries: int = 0,
        cache_seconds: float = 30.0,
    ) -> None:
        if socket_timeout <= 0 or connections <= 0:
            raise ValueError("socket_timeout and connections must be positive")
        if cache_entries < 0 or cache_seconds <= 0:
            raise ValueError("cache_entries must be >= 0 and cache_seconds positive")
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = int(db), username, password
        self._client_name = client_name
        self._timeout = float(socket_timeout)
        self._connect_timeout = float(connect_timeout or socket_timeout)
        self._slots: list[_Connection | None] = [None] * connections
        self._locks = [asyncio.Lock() for _ in range(connections)]
        self._next = itertools.cycle(range(connections))
        self._closed = False
        self.where = path if path else f"{host}:{port}"
        # client-side cache: key -> (stored at, command, reply), least recently used first
        self._cache: collections.OrderedDict[str, tuple[float, Command, Any]] | None = (
            collections.OrderedDict() if cache_entries else None
        )
        self._cache_entries = cache_entries
        self._cache_seconds = float(cache_seconds)
        self._epoch = 0
        """Bumped by every invalidation; a call notes it when sent."""
        self._flushed_at = 0
        """Epoch of the last invalidation of every key."""
        self._invalidated: dict[str, int] = {}
        """Epoch of each key's last invalidation, kept while calls are in flight."""
        self._in_flight = 0
        self._refused_tracking = False
        self.caches = cache_entries > 0
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float,
        connections: int = 1,
        cache_entries: int = 0,
        cache_seconds: float = 30.0,
    ) -> RedisReader:
        """A reader of the Redis at ``url`` (the URL's own ``socket_timeout`` and
        ``socket_connect_timeout`` win). Raises ConfigError for a URL it cannot speak
        (see :meth:`recsvc.store.clients.Endpoint.from_url`)."""
        e = Endpoint.from_url(url)
        timeout = e.socket_timeout or socket_timeout
        return cls(
            host=e.host,
            port=e.port,
            path=e.path,
            db=e.db,
            username=e.username,
            password=e.password,
            client_name=e.client_name,
            socket_timeout=timeout,
            connect_timeout=e.socket_connect_timeout or timeout,
            connections=connections,
            cache_entries=cache_entries,
            cache_seconds=cache_seconds,
        )

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Replies of ``commands``, sent together, in order (from the cache when it
        holds every one of them).

        Raises :class:`redis.ResponseError` for an error reply (the first one),
        :class:`redis.ConnectionError` or :class:`redis.TimeoutError` when Redis
        cannot be reached or does not answer in time.
        """
        cache = self._cache
        cacheable = cache is not None and all(c[0] in _CACHEABLE for c in commands)
        if cacheable:
            kept = self._cached(commands)
            if kept is not None and self._unread():
                # an invalidation may be waiting in a socket: let the loop read it (the
                # first turn runs this call again before the loop reads; the second
                # after), then look again
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                kept = self._cached(commands)
            if kept is not None:
                self.cache_hits += 1
                return kept
            self.cache_misses += 1
        packed = [hiredis.pack_command(c) for c in commands]
        slot = next(self._next)
        conn = self._slots[slot]
        if conn is None or not conn.alive:
            conn = await self._connection(slot)
            fresh = True
        else:
            fresh = False
        sent_at = self._epoch
        self._in_flight += 1
        try:
            try:
                replies = await conn.send(packed)
            except redis.TimeoutError:
                raise
            except redis.ConnectionError:
                if fresh or conn.used is False:
                    raise
                # a pooled socket Redis closed meanwhile: once more, on a new connection
                conn = await self._connection(slot)
                replies = await conn.send(packed)
            for reply in replies:
                if isinstance(reply, redis.ResponseError):
                    raise reply
            if cacheable and conn.tracking:
                self._keep(commands, replies, sent_at)
            return replies
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._invalidated.clear()

    def _unread(self) -> bool:
        """Whether Redis sent a tracking connection bytes the event loop has not read
        yet (a reply, or an invalidation push): one ``select`` with no wait."""
        fds = [c.fileno for c in self._slots if c is not None and c.tracking and c.fileno >= 0]
        if not fds:
            return False
        try:
            return bool(select.select(fds, (), (), 0)[0])
        except (OSError, ValueError):  # a socket closing under it: its failure drops the cache
            return False

    def invalidate(self, keys: Iterable[str] | None = None) -> None:
        """Drop what the cache holds for ``keys`` (every key if None), and keep replies
        in flight for them out of it. Writers call this once their write is done, so
        this process reads its own writes without waiting for Redis's push."""
        cache = self._cache
        if cache is None:
            return
        self._epoch += 1
        if keys is None:
            cache.clear()
            self._flushed_at = self._epoch
            return
        for key in keys:
            cache.pop(key, None)
            if self._in_flight:
                self._invalidated[key] = self._epoch

    def _cached(self, commands: Sequence[Command]) -> list[Any] | None:
        """Every command's kept reply, or None if one is missing or too old."""
        cache = self._cache
        assert cache is not None
        oldest = time.monotonic() - self._cache_seconds
        replies = []
        for command in commands:
            entry = cache.get(command[1])
            if entry is None or entry[0] < oldest or entry[1] != command:
                return None
            reply = entry[2]  # a list is kept as a tuple (_keep): given back as a list
            replies.append(list(reply) if type(reply) is tuple else reply)
        for command in commands:
            cache.move_to_end(command[1])
        return replies

    def _keep(self, commands: Sequence[Command], replies: list[Any], sent_at: int) -> None:
        """Keep the replies of a call sent at epoch ``sent_at`` unless one of its keys
        was invalidated since (the reply may predate the write that invalidated it)."""
        cache = self._cache
        assert cache is not None
        if self._flushed_at > sent_at:
            return
        invalidated = self._invalidated
        if invalidated and any(invalidated.get(c[1], -1) > sent_at for c in commands):
            return
        now = time.monotonic()
        for command, reply in zip(commands, replies, strict=True):
            # a list reply is kept as a tuple: a tuple of bytes leaves the garbage
            # collector's lists (a list never does), so a full collection with 50,000
            # kept keys takes 0.3 ms instead of 30 (measured)
            kept = tuple(reply) if type(reply) is list else reply
            cache[command[1]] = (now, command, kept)
            cache.move_to_end(command[1])
        while len(cache) > self._cache_entries:
            cache.popitem(last=False)

    async def _connection(self, slot: int) -> _Connection:
        async with self._locks[slot]:
            conn = self._slots[slot]
            if conn is not None and conn.alive:
                return conn
            if self._closed:
                raise redis.ConnectionError("the reader is closed")
            conn = await self._connect()
            self._slots[slot] = conn
            return conn

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        caching = self._cache is not None
        conn = _Connection(loop, self._timeout, self.where, self.invalidate if caching else None)
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    await loop.create_unix_connection(lambda: conn, self._path)
                else:
                    await loop.create_connection(lambda: conn, self._host, self._port)
                handshake: list[Command] = []
                if self._password is not None:
                    if self._username:
                        handshake.append(("AUTH", self._username, self._password))
                    else:
                        handshake.append(("AUTH", self._password))
                if self._db:
                    handshake.append(("SELECT", self._db))
                if self._client_name:
                    handshake.append(("CLIENT", "SETNAME", self._client_name))
                if handshake:
                    replies = await conn.send([hiredis.pack_command(c) for c in handshake])
                    for reply in replies:
                        if isinstance(reply, redis.ResponseError):
                            raise _handshake_error(reply)
                if caching:
                    await self._track(conn)
        except TimeoutError as exc:
            conn.close()
            raise redis.TimeoutError(f"Timeout connecting to Redis at {self.where}") from exc
        except OSError as exc:
            conn.close()
            raise redis.ConnectionError(
                f"Error connecting to Redis at {self.where}: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        conn.used = False
        return conn

    async def _track(self, conn: _Connection) -> None:
        """Switch ``conn`` to RESP3 with key tracking; leave it uncached (and say so
        once) if Redis refuses either."""
        steps: tuple[Command, ...] = (("HELLO", 3), ("CLIENT", "TRACKING", "ON"))
        for command in steps:
            (reply,) = await conn.send([hiredis.pack_command(command)])
            if isinstance(reply, redis.ResponseError):
                if not self._refused_tracking:
                    self._refused_tracking = True
                    log.warning(
                        "Redis at %s refused %s (%s): reading without a client-side cache",
                        self.where,
                        " ".join(map(str, command)),
                        reply,
                    )
                return
        conn.tracking = True

    async def aclose(self) -> None:
        """Close every connection; calls waiting on them fail with ConnectionError."""
        self._closed = True
        for i, conn in enumerate(self._slots):
            if conn is not None:
                conn.close()
            self._slots[i] = None


def _handshake_error(reply: redis.ResponseError) -> redis.RedisError:
    text = str(reply)
    if "WRONGPASS" in text or "invalid password" in text or "NOAUTH" in text:
        return redis.AuthenticationError(text)
    return redis.ConnectionError(f"Redis refused the connection setup: {text}")
