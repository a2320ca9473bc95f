"""The state read of every Recommend, behind one small interface with two implementations.

A :class:`StateReader` sends a few read-only commands of one request together (one
round trip) and returns their replies in order. :class:`~recsvc.store.state.RedisLiveState`
reads through one, so which client does the reading is a choice made once, at start-up
(:func:`open_reader`, ``[redis] read_client``):

- :class:`~recsvc.store.thinreader.RedisReader` ("thin"): pipelined asyncio + hiredis,
  with server-assisted client-side caching; a fifth of redis-py's client CPU per read
  (benchmarks/results/levers.md). Plain TCP and unix sockets.
- :class:`PipelineReader` ("redis-py"): a redis-py asyncio pipeline; speaks every URL
  redis-py does (TLS included), no cache.
- :class:`~recsvc.store.clusterreader.ClusterReader` ("thin" on a ``redis+cluster://``
  URL): a thin reader per primary, each command routed by its key's hash slot.

Both give the same replies and raise redis-py's exception classes
(:class:`redis.ConnectionError`, :class:`redis.TimeoutError`,
:class:`redis.ResponseError`), which the state translates; the contract suite
(tests/serving/test_state.py) runs against each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol

import redis.asyncio

from recsvc.errors import ConfigError
from recsvc.store.clients import is_cluster_url, redacted_url
from recsvc.store.clusterreader import ClusterReader
from recsvc.store.thinreader import RedisReader

__all__ = ["Command", "PipelineReader", "ReadClient", "StateReader", "open_reader"]

log = logging.getLogger(__name__)

Command = tuple[Any, ...]
"""One Redis command as its words: ``("LRANGE", key, 0, 9)``."""

ReadClient = Literal["auto", "thin", "redis-py"]


class StateReader(Protocol):
    """Read-only commands of one request, sent together; replies in order."""

    caches: bool
    """Whether it keeps a client-side cache (then the counts below mean something)."""

    @property
    def cache_hits(self) -> int:
        """Calls answered from a client-side cache (0 without one)."""
        ...

    @property
    def cache_misses(self) -> int:
        """Cacheable calls that went to Redis."""
        ...

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies of ``commands``; raises redis-py's errors."""
        ...

    def invalidate(self, keys: Iterable[str] | None = None) -> None:
        """This process wrote ``keys`` (None: every key): forget what is kept of them."""
        ...

    async def aclose(self) -> None:
        """Release the connections this reader owns."""
        ...


class PipelineReader:
    """A :class:`StateReader` over a redis-py asyncio client (which the caller owns)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self.caches = False
        self.cache_hits = 0
        self.cache_misses = 0

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            # execute_command, not pipe.lrange() & co.: their argument handling costs
            # more than the round trip on loopback.
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute()
        return replies

    def invalidate(self, keys: Iterable[str] | None = None) -> None:
        """Nothing is kept, so nothing to forget."""

    async def aclose(self) -> None:
        """The client is the caller's."""


def open_reader(
    url: str,
    client: redis.asyncio.Redis,
    choice: ReadClient,
    *,
    socket_timeout: float,
    cache_entries: int,
    cache_seconds: float,
) -> StateReader:
    """The reader ``choice`` names for ``url``: "thin", "redis-py" (over ``client``), or
    "auto" — thin where it speaks the URL (plain TCP, unix sockets, a cluster of
    those), redis-py where it does not (TLS, and URL options only redis-py honours),
    said once in the log. On a ``redis+cluster://`` URL ``client`` is the cluster
    client, and the thin reader is a :class:`~recsvc.store.clusterreader.ClusterReader`.

    Raises ConfigError when "thin" is asked for a URL it cannot speak.
    """
    if choice == "redis-py":
        return PipelineReader(client)
    try:
        if is_cluster_url(url):
            return ClusterReader.from_url(
                url,
                client,  # type: ignore[arg-type] # a RedisCluster on a cluster URL
                fallback=PipelineReader(client),
                socket_timeout=socket_timeout,
                cache_entries=cache_entries,
                cache_seconds=cache_seconds,
            )
        return RedisReader.from_url(
            url,
            socket_timeout=socket_timeout,
            cache_entries=cache_entries,
            cache_seconds=cache_seconds,
        )
    except ConfigError as exc:
        if choice == "thin":
            raise
        log.info("reading state through redis-py for %s: %s", redacted_url(url), exc)
        return PipelineReader(client)
