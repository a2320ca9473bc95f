"""redis-py's own client-side caching as the hot read's reader, for :mod:`bench_levers`.

Issue #13 asks whether redis-py's client-side cache (``cache_config``, RESP3 key
tracking) could replace :class:`recsvc.store.thinreader.RedisReader`. What redis-py 8.1 offers
decides the shape of this reader:

- Only the *sync* client caches: ``redis.Redis(protocol=3, cache_config=...)`` wraps
  each pooled connection in ``redis.connection.CacheProxyConnection``;
  ``redis.asyncio`` has neither the parameter nor the class.
- Only single commands are cached: a pipeline packs its commands and sends them with
  ``send_packed_command``, which the proxy passes through uncached
  (``Pipeline._execute_pipeline`` in ``redis/client.py``). So the state read becomes
  two or three single commands (GET, LRANGE, LRANGE) instead of one pipelined call.
- The proxy refuses a server older than Redis 7.4 (``MIN_ALLOWED_VERSION``) with a
  ConnectionError on connect.

The server runs on asyncio, so the sync client is called either directly on the
event-loop thread (``mode="loop"``: a hit costs no I/O, a miss blocks the loop for a
round trip), or through :func:`asyncio.to_thread` on every read (``mode="thread"``:
the default executor's threads, one pooled connection each), or on one dedicated
thread (``mode="worker"``: one connection, reads one after another).

``thread`` meets a redis-py race: two connections reading the same uncached key at
once. The second finds the first one's ``IN_PROGRESS`` placeholder in the pool-wide
cache, sends nothing (``CacheProxyConnection.send_command`` returns early), and then
waits on its own socket for a reply that never comes (``read_response``: an
``IN_PROGRESS`` entry is not a hit) until ``socket_timeout``; the timeout disconnects
the connection, which flushes the whole cache. ``worker`` avoids it by never having
two reads in flight.
The interface is :class:`recsvc.store.reader.StateReader`, what
:class:`recsvc.store.state.RedisLiveState` reads through: ``execute``, ``invalidate``,
``aclose``, ``caches``, ``cache_hits`` and ``cache_misses``; replies are the same bytes
and lists of bytes (RESP3 and RESP2 shape GET and LRANGE replies alike), errors are
redis-py's classes.

This is benchmark code, not a serving option: it exists to measure the alternative.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterable, Sequence
from typing import Any, Final

import redis
import redis.asyncio
from redis.backoff import EqualJitterBackoff
from redis.cache import CacheConfig, CacheEntryStatus, CacheKey
from redis.retry import Retry

__all__ = ["MODES", "RedisPyCacheReader"]

MODES: Final = ("loop", "thread", "worker")

Command = tuple[Any, ...]


_CACHED = frozenset({"GET", "LRANGE", "ZRANGEBYSCORE"})
"""The commands of the state's read, all in redis-py's cache allow list."""


class RedisPyCacheReader:
    """The state read through a sync ``redis.Redis(protocol=3, cache_config=...)``.

    ``cache_hits`` and ``cache_misses`` count calls whose every command was (or was
    not) held VALID in redis-py's cache just before the call, as :class:`RedisReader`
    counts its own; the check is one dict lookup per command (~1 µs).
    """

    def __init__(self, client: redis.Redis, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        cache = client.get_cache()
        if cache is None:
            raise ValueError("the client has no client-side cache (cache_config, protocol=3)")
        self._client = client
        self._cache = cache
        self._thread = mode == "thread"
        self._worker = (
            concurrent.futures.ThreadPoolExecutor(1, "redis-py-cache") if mode == "worker" else None
        )
        self.mode = mode
        self.caches = True
        self.cache_hits = 0
        self.cache_misses = 0

    @classmethod
    def for_client(
        cls, client: redis.asyncio.Redis, *, mode: str, cache_entries: int
    ) -> RedisPyCacheReader:
        """A reader on the Redis ``client`` talks to (host or socket, db, credentials,
        timeouts), keeping at most ``cache_entries`` replies. Connects at once, so a
        Redis older than 7.4 fails here rather than on every Recommend."""
        if cache_entries <= 0:
            raise ValueError("redis-py's cache needs cache_entries > 0")
        kw = client.connection_pool.connection_kwargs
        timeout = kw.get("socket_timeout") or 0.05
        where: dict[str, Any] = (
            {"unix_socket_path": kw["path"]}
            if kw.get("path")
            else {"host": kw.get("host", "localhost"), "port": int(kw.get("port", 6379))}
        )
        sync = redis.Redis(
            **where,
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            client_name=kw.get("client_name"),
            socket_timeout=timeout,
            socket_connect_timeout=kw.get("socket_connect_timeout") or timeout,
            # as recsvc.store.clients.async_client_from_url: one quick retry on a dropped socket
            retry=Retry(
                EqualJitterBackoff(cap=0.005, base=0.001),
                retries=1,
                supported_errors=(redis.ConnectionError,),
            ),
            protocol=3,
            cache_config=CacheConfig(max_size=cache_entries),
        )
        try:
            sync.ping()
        except BaseException:
            sync.close()
            raise
        return cls(sync, mode)

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Replies of ``commands`` (the reads of :data:`_CACHED` cached by redis-py;
        anything else sent uncached), in order."""
        if self._thread:
            return await asyncio.to_thread(self._read, commands)
        if self._worker is not None:
            return await asyncio.get_running_loop().run_in_executor(
                self._worker, self._read, commands
            )
        return self._read(commands)

    def _read(self, commands: Sequence[Command]) -> list[Any]:
        client = self._client
        cache = self._cache
        counted = True
        hit = True
        replies: list[Any] = []
        for command in commands:
            name, key = command[0], command[1]
            if name in _CACHED:
                if hit:
                    entry = cache.get(CacheKey(command=name, redis_keys=(key,), redis_args=command))
                    hit = entry is not None and entry.status is CacheEntryStatus.VALID
            else:
                counted = False
            # keys=: how redis-py's own get() and lrange() name the key it caches by
            replies.append(client.execute_command(*command, keys=[key]))
        if counted:
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses += 1
        return replies

    def invalidate(self, keys: Iterable[str] | None = None) -> None:
        """Drop what redis-py's cache holds for ``keys`` (every key if None): LiveState
        calls this after its own writes, as it does for :class:`RedisReader`.

        redis-py's ``delete_by_redis_keys`` scans every entry per key, and its cache is
        not locked across connections: if another thread changes it meanwhile (modes
        ``thread`` and ``worker``), the whole cache is dropped instead, which is always
        safe.
        """
        cache = self._cache
        if keys is None:
            cache.flush()
            return
        try:
            cache.delete_by_redis_keys(list(keys))
        except (RuntimeError, KeyError):
            cache.flush()

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self._client.close()
