"""The thin reader on a Redis Cluster: the same exchange, routed by hash slot.

A Recommend's state read (:meth:`recsvc.store.state.RedisLiveState.read_user`) touches
one or two hash slots: the customer's keys share one (their ``{u:<id>}`` tag), the
anonymous session of the same id another. :class:`ClusterReader` sends each command to
the primary serving its key's slot through a :class:`~recsvc.store.thinreader.RedisReader`
per primary (pipelined, hiredis, and the server-assisted client-side cache, which Redis
keeps per connection and so per node), in parallel when a call spans two nodes, and
hands the replies back in order.

The slot map is redis-py's: the cluster client (:func:`recsvc.store.clients.async_client_from_url`)
reads it from the nodes and keeps it, and this reader asks it where each slot is. What
keeps it right when the cluster changes:

- A node that answers ``MOVED``/``ASK``/``TRYAGAIN``/``CLUSTERDOWN`` or cannot be
  reached makes the reader answer *that* call through redis-py's cluster pipeline,
  which follows redirections and re-reads the slot map itself; later calls use the
  new map. A timeout is raised as it is: the call's budget is spent.
- The cache of a node's reader goes with its connection (a dead primary takes it
  along); a slot that moves away is deleted from the old node, whose push drops the
  entries; readers of nodes that are no longer primaries are closed at the refresh.
- :meth:`invalidate` (this process's own writes) reaches every node's reader.

Replicas are not read (``READONLY``): a replica may lag its primary, and a Recommend
must see the event its RecordEvents just acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

import redis
import redis.asyncio.cluster
from redis.crc import key_slot

from recsvc.errors import ConfigError
from recsvc.store.clients import ClusterURL, redacted_url
from recsvc.store.thinreader import RedisReader

__all__ = ["REFRESH_SECONDS", "ClusterReader"]

log = logging.getLogger(__name__)

Command = tuple[Any, ...]


class Fallback(Protocol):
    """What answers a call the slot map got wrong: redis-py's cluster pipeline."""

    async def execute(self, commands: Sequence[Command]) -> list[Any]: ...


REFRESH_SECONDS: Final = 0.1
"""Readers of former primaries are looked for at most this often."""

_LOG_SECONDS: Final = 10.0
"""A failing or changing cluster is logged at most this often."""

_REDIRECTS: Final = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")

#: URL options the per-node thin readers honour (the rest: read through redis-py)
_NODE_OPTIONS: Final = frozenset(
    {"username", "password", "client_name", "socket_timeout", "socket_connect_timeout"}
)


class ClusterReader:
    """A :class:`~recsvc.store.reader.StateReader` on a Redis Cluster (see the module
    docstring). ``client`` is the cluster client of the same URL, which the caller
    owns; ``fallback`` reads through it (a :class:`~recsvc.store.reader.PipelineReader`);
    the per-node readers are this object's."""

    def __init__(
        self,
        client: redis.asyncio.cluster.RedisCluster,
        *,
        fallback: Fallback,
        socket_timeout: float,
        connect_timeout: float | None = None,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        cache_entries: int = 0,
        cache_seconds: float = 30.0,
    ) -> None:
        if cache_entries < 0 or cache_seconds <= 0 or socket_timeout <= 0:
            raise ValueError("cache_entries must be >= 0, socket_timeout and cache_seconds > 0")
        self._client = client
        self._node_options: dict[str, Any] = {
            "username": username,
            "password": password,
            "client_name": client_name,
            "socket_timeout": socket_timeout,
            "connect_timeout": connect_timeout,
            "cache_entries": cache_entries,
            "cache_seconds": cache_seconds,
        }
        self._readers: dict[str, RedisReader] = {}
        self._redis_py = fallback
        self._refreshed = -float("inf")
        self._logged = -float("inf")
        self._retired_hits = 0
        self._retired_misses = 0
        self.caches = cache_entries > 0
        self.refreshes = 0
        """Slot-map refreshes this reader asked for."""

    @classmethod
    def from_url(
        cls,
        url: str,
        client: redis.asyncio.cluster.RedisCluster,
        *,
        fallback: Fallback,
        socket_timeout: float,
        cache_entries: int = 0,
        cache_seconds: float = 30.0,
    ) -> ClusterReader:
        """Raises ConfigError for a cluster URL the thin readers cannot speak (TLS, or
        an option only redis-py honours)."""
        options = dict(ClusterURL.parse(url).options)
        unknown = sorted(set(options) - _NODE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"Redis Cluster URL {redacted_url(url)}: the thin reader does not honour "
                f'{", ".join(unknown)} ([redis] read_client = "redis-py" reads through '
                "redis-py, which does)"
            )
        timeout = options.pop("socket_timeout", None) or socket_timeout
        connect = options.pop("socket_connect_timeout", None) or timeout
        return cls(
            client,
            fallback=fallback,
            socket_timeout=timeout,
            connect_timeout=connect,
            cache_entries=cache_entries,
            cache_seconds=cache_seconds,
            **options,
        )

    @property
    def cache_hits(self) -> int:
        """Calls answered from a client-side cache, counted per node a call reached."""
        return self._retired_hits + sum(r.cache_hits for r in self._readers.values())

    @property
    def cache_misses(self) -> int:
        """Cacheable calls that went to Redis, counted per node a call reached."""
        return self._retired_misses + sum(r.cache_misses for r in self._readers.values())

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Replies of ``commands`` in order; raises redis-py's errors (see the module
        docstring for what a changing cluster does)."""
        nodes = self._client.nodes_manager
        if not nodes.slots_cache:
            await self._client.initialize()
        groups: dict[str, list[int]] = {}
        for i, command in enumerate(commands):
            key = command[1]
            slot = key_slot(key.encode() if isinstance(key, str) else key)
            groups.setdefault(nodes.get_node_from_slot(slot).name, []).append(i)
        try:
            if len(groups) == 1:
                (name,) = groups
                return await self._reader(name).execute(commands)
            parts = await asyncio.gather(
                *(
                    self._reader(name).execute([commands[i] for i in positions])
                    for name, positions in groups.items()
                )
            )
        except redis.TimeoutError:
            raise
        except (redis.ConnectionError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not str(exc).startswith(_REDIRECTS):
                raise
            await self._refresh(exc)
            return await self._redis_py.execute(commands)
        replies: list[Any] = [None] * len(commands)
        for positions, part in zip(groups.values(), parts, strict=True):
            for i, reply in zip(positions, part, strict=True):
                replies[i] = reply
        return replies

    def invalidate(self, keys: Iterable[str] | None = None) -> None:
        """This process wrote ``keys`` (None: every key): every node's reader forgets
        them."""
        if keys is not None and len(self._readers) > 1:
            keys = list(keys)
        for reader in self._readers.values():
            reader.invalidate(keys)

    async def aclose(self) -> None:
        """Close every node's reader (the cluster client is the caller's)."""
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            await reader.aclose()

    def _reader(self, name: str) -> RedisReader:
        reader = self._readers.get(name)
        if reader is None:
            host, _, port = name.rpartition(":")
            reader = RedisReader(host=host, port=int(port), **self._node_options)
            self._readers[name] = reader
        return reader

    async def _refresh(self, cause: BaseException) -> None:
        """Retire the readers of nodes that are no longer primaries (at most once per
        :data:`REFRESH_SECONDS`). The slot map itself is redis-py's to re-read: the
        call this follows goes through redis-py (``fallback``), whose
        cluster client re-reads it on the same error, under its own lock (re-reading it
        from here as well raced redis-py's own connects)."""
        now = time.monotonic()
        if now - self._refreshed < REFRESH_SECONDS:
            return
        self._refreshed = now
        self.refreshes += 1
        if now - self._logged > _LOG_SECONDS:
            self._logged = now
            log.info("the Redis Cluster changed or a node failed, following it: %s", cause)
        primaries = {
            n.name for n in self._client.nodes_manager.nodes_cache.values()
            if n.server_type == "primary"
        }  # fmt: skip
        for name in [n for n in self._readers if n not in primaries]:
            reader = self._readers.pop(name)
            self._retired_hits += reader.cache_hits
            self._retired_misses += reader.cache_misses
            await reader.aclose()
