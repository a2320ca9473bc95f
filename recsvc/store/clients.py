"""Redis URLs into clients: the one place settings become connection options.

Two redis-py clients, built by one function (:func:`connection_pool`) that differ only
in how long a retry may wait:

- :func:`client_from_url` (blocking): the publisher, tools, tests. A 0.5 s socket
  timeout by default and a retry backoff capped at 50 ms: a bulk write can afford it.
- :func:`async_client_from_url` (asyncio): the server's request path, whose budget is
  tens of milliseconds. A 50 ms socket timeout by default and a 5 ms backoff cap.

Both: connect, read and pool-wait timeouts of ``socket_timeout``; a pool of at most
``max_connections`` where callers wait instead of opening more; one quick retry on a
connection error (a pooled socket Redis closed) and none on a timeout — redis-py's
default is 10 retries with backoff up to 1 s, timeouts included: seconds of stall per
call while Redis is down or slow; RESP2 replies (the same shapes across redis-py and
server versions); bytes values, never decoded. Query parameters in the URL win over
these defaults (``?socket_timeout=2``).

The URL chooses the backend: ``redis://`` and ``rediss://`` (TLS) one Redis over TCP,
``unix://`` one over a socket, and ``redis+cluster://host:port[,host:port...]`` (or
``rediss+cluster://``) a Redis Cluster, given any of its nodes: the clients are then
redis-py's ``RedisCluster`` (sync or asyncio), which learn the slot map from those
nodes, route every command to the primary of its key's slot, follow MOVED/ASK and
re-read the map when it changes (failover, resharding). The same options apply per
node, except that a cluster node's pool does not wait: more than ``max_connections``
calls in flight to one node fail (redis-py's cluster pools refuse rather than queue).
Cluster URLs carry no database number (a cluster has only database 0).

:class:`Endpoint` is the URL read once for the thin reader
(:mod:`recsvc.store.thinreader`), through redis-py's own URL parser: it refuses, loudly,
any option it would not honour.

Every redis-py error is translated into :class:`~recsvc.errors.StoreError` by
:func:`translated_errors`, naming the action, never a key (keys hold customer ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.cluster
import redis.exceptions
from redis.backoff import EqualJitterBackoff
from redis.connection import UnixDomainSocketConnection, parse_url
from redis.retry import Retry

from recsvc.errors import ConfigError, StoreError

__all__ = [
    "REDIS_ERRORS",
    "ClusterURL",
    "Endpoint",
    "async_client_from_url",
    "client_from_url",
    "connection_pool",
    "is_cluster_url",
    "redacted_url",
    "store_error",
    "translated_errors",
]

REDIS_ERRORS: Final = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
    AttributeError,
    TypeError,
)
"""What a failed redis-py call may raise, to be passed to :func:`store_error`: its own
errors; its cluster client's ``RedisClusterException`` (not a ``RedisError``), e.g.
``SlotNotCoveredError`` while a failed primary's slots wait for a replica; and the
AttributeError/TypeError its asyncio connection leaks when a connection is closed under
a write (a peer reset, or its cluster client dropping connections of a failed node while
another task connects: redis/redis-py#4287), which :func:`store_error` tells apart from
a bug of ours by where it was raised."""

#: cluster URL scheme -> the scheme of one node's URL
_CLUSTER_SCHEMES: Final = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

_BLOCKING_BACKOFF_CAP: Final = 0.05
_ASYNC_BACKOFF_CAP: Final = 0.005
#: what Endpoint.from_url accepts from redis-py's URL parser
_THIN_READER_OPTIONS: Final = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "client_name",
        "socket_timeout",
        "socket_connect_timeout",
        "connection_class",
    }
)


def connection_pool(
    url: str,
    *,
    asyncio: bool,
    socket_timeout: float,
    max_connections: int,
    backoff_cap: float,
) -> Any:
    """A blocking connection pool (redis-py's sync or asyncio flavour) for ``url``, with
    the options of the module docstring. Raises ConfigError for a URL or an option that
    cannot be used (the password never appears in the message)."""
    if socket_timeout <= 0 or max_connections <= 0:
        raise ConfigError("socket_timeout and max_connections must be positive")
    backoff = EqualJitterBackoff(cap=backoff_cap, base=backoff_cap / 5)
    pool_class: Any
    if asyncio:
        pool_class = redis.asyncio.BlockingConnectionPool
        retry: Any = redis.asyncio.retry.Retry(
            backoff, retries=1, supported_errors=(redis.ConnectionError,)
        )
    else:
        pool_class = redis.BlockingConnectionPool
        retry = Retry(backoff, retries=1, supported_errors=(redis.ConnectionError,))
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


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterURL:
    """A ``redis+cluster://`` URL read once: the nodes to start from, and the options
    (credentials, TLS, timeouts from the query) that apply to every node."""

    nodes: tuple[tuple[str, int], ...]
    options: dict[str, Any]
    """redis-py connection keyword arguments (``ssl=True`` for ``rediss+cluster``)."""

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        """Raises ConfigError for a URL that is not a usable cluster URL (the password
        never appears in the message)."""
        parts = urlsplit(url)
        scheme = _CLUSTER_SCHEMES.get(parts.scheme)
        if scheme is None:
            raise ConfigError(f"{redacted_url(url)} is not a redis+cluster:// URL")
        credentials, at, hosts = parts.netloc.rpartition("@")
        nodes: list[tuple[str, int]] = []
        for where in hosts.split(","):
            host, colon, port = where.rpartition(":")
            if not colon:
                host, port = where, "6379"
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"Redis Cluster URL {redacted_url(url)}: node {where!r} is not host:port"
                )
            nodes.append((host, int(port)))
        first = hosts.split(",")[0]
        node_url = urlunsplit((scheme, f"{credentials}{at}{first}", parts.path, parts.query, ""))
        try:
            options = dict(parse_url(node_url))  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(f"invalid Redis Cluster URL {redacted_url(url)}: {exc}") from exc
        if int(options.pop("db", 0) or 0) != 0:
            raise ConfigError(
                f"Redis Cluster URL {redacted_url(url)}: a cluster has database 0 only"
            )
        for name in ("host", "port", "path"):
            options.pop(name, None)
        if options.pop("connection_class", None) is redis.SSLConnection:
            options["ssl"] = True
        if options.get("decode_responses"):
            raise ConfigError(f"Redis URL {redacted_url(url)}: decode_responses must be off")
        return cls(tuple(nodes), options)


def _cluster(url: str, *, asyncio: bool, socket_timeout: float, max_connections: int) -> Any:
    """redis-py's RedisCluster (sync or asyncio) for a cluster URL, with the options
    of the module docstring (the URL's query wins)."""
    if socket_timeout <= 0 or max_connections <= 0:
        raise ConfigError("socket_timeout and max_connections must be positive")
    parsed = ClusterURL.parse(url)
    cap = _ASYNC_BACKOFF_CAP if asyncio else _BLOCKING_BACKOFF_CAP
    backoff = EqualJitterBackoff(cap=cap, base=cap / 5)
    retry_class: Any = redis.asyncio.retry.Retry if asyncio else Retry
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "max_connections": max_connections,
        "retry": retry_class(backoff, retries=1),
        "protocol": 2,
        **parsed.options,
    }
    flavour: Any = redis.asyncio.cluster if asyncio else redis.cluster
    nodes = [flavour.ClusterNode(host, port) for host, port in parsed.nodes]
    return flavour.RedisCluster(startup_nodes=nodes, **options)


def client_from_url(
    url: str, *, socket_timeout: float = 0.5, max_connections: int = 64
) -> redis.Redis:
    """A blocking client for ``redis://``, ``rediss://`` (TLS) or ``unix://`` URLs, and
    a ``redis.RedisCluster`` for ``redis+cluster://`` ones (typed as the plain client:
    it answers the same commands; cluster-only paths check ``isinstance``).

    Nothing is sent until the first command (a cluster client asks its nodes for the
    slot map when built). Raises ConfigError for a bad URL, StoreError when no node of
    a cluster answers.
    """
    if is_cluster_url(url):
        with translated_errors(f"connecting to the Redis Cluster at {redacted_url(url)}"):
            cluster = _cluster(
                url, asyncio=False, socket_timeout=socket_timeout, max_connections=max_connections
            )
        return cast("redis.Redis", cluster)
    pool = connection_pool(
        url,
        asyncio=False,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        backoff_cap=_BLOCKING_BACKOFF_CAP,
    )
    return redis.Redis.from_pool(pool)


def async_client_from_url(
    url: str, *, socket_timeout: float = 0.05, max_connections: int = 64
) -> redis.asyncio.Redis:
    """An asyncio client for the request path (``redis://``, ``rediss://``, ``unix://``;
    ``redis.asyncio.RedisCluster`` for ``redis+cluster://``, typed as the plain client).

    Nothing is sent until the first command; close it with ``await client.aclose()``.
    Raises ConfigError for a bad URL.
    """
    if is_cluster_url(url):
        cluster = _cluster(
            url, asyncio=True, socket_timeout=socket_timeout, max_connections=max_connections
        )
        return cast("redis.asyncio.Redis", cluster)
    pool = connection_pool(
        url,
        asyncio=True,
        socket_timeout=socket_timeout,
        max_connections=max_connections,
        backoff_cap=_ASYNC_BACKOFF_CAP,
    )
    return redis.asyncio.Redis.from_pool(pool)


@dataclass(frozen=True)
class Endpoint:
    """Where a Redis is and how to log in, read from its URL once (for the thin reader)."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    """Unix socket path (``unix://``); host and port are then unused."""
    db: int = 0
    username: str | None = None
    password: str | None = None
    client_name: str | None = None
    socket_timeout: float | None = None
    """From the URL's query (``?socket_timeout=``), which wins over the caller's."""
    socket_connect_timeout: float | None = None

    @property
    def where(self) -> str:
        """``host:port`` or the socket path: safe to log (no credentials)."""
        return self.path if self.path else f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Raises ConfigError for a URL the thin reader cannot speak: TLS (``rediss://``),
        or a query option it would not honour (``protocol``, ``decode_responses``, any
        ``ssl_*``, ...) — never a silent fallback. A cluster URL is not one endpoint:
        :class:`recsvc.store.clusterreader.ClusterReader` reads a cluster."""
        if is_cluster_url(url):
            raise ConfigError(
                f"{redacted_url(url)} is a Redis Cluster, not one endpoint (read it "
                "through the cluster reader)"
            )
        try:
            options = dict(parse_url(url))  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {redacted_url(url)}: {exc}") from exc
        connection_class = options.get("connection_class")
        if connection_class not in (None, UnixDomainSocketConnection):
            raise ConfigError(
                f"Redis URL {redacted_url(url)}: the thin reader speaks plain TCP and unix "
                "sockets only (read through redis-py for TLS: [redis] read_client = "
                '"redis-py", or "auto")'
            )
        unknown = sorted(set(options) - _THIN_READER_OPTIONS)
        if unknown:
            raise ConfigError(
                f"Redis URL {redacted_url(url)}: the thin reader does not honour "
                f'{", ".join(unknown)} ([redis] read_client = "redis-py" reads through '
                "redis-py, which does)"
            )
        options.pop("connection_class", None)
        return cls(**options)


def redacted_url(url: str) -> str:
    """``url`` with any password replaced, safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(urlunsplit(parts._replace(netloc=netloc)))


def store_error(action: str, exc: BaseException) -> StoreError:
    """The StoreError naming ``action`` for ``exc``, one of :data:`REDIS_ERRORS`;
    ``exc`` itself, raised again, when it is an AttributeError or TypeError that did not
    come out of redis-py's connection code (a bug, never a Redis failure)."""
    if isinstance(exc, AttributeError | TypeError) and not _from_a_connection(exc):
        raise exc
    return StoreError(f"Redis {action} failed: {exc}")


def _from_a_connection(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in _CONNECTION_MODULES:
            return True
        tb = tb.tb_next
    return False


_CONNECTION_MODULES: Final = frozenset({"redis.asyncio.connection", "redis.connection"})


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Turn any redis-py error raised inside into a StoreError naming ``action``."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise store_error(action, exc) from exc
