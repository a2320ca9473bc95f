"""Build, run and stop the gRPC server.

``create_server`` wires everything from one :class:`~recsvc.config.Settings` and
returns a started :class:`RunningServer` with the bound ports, so tests bind port 0
and run a real server in-process. ``serve`` is ``recsvc serve``: it adds signal
handling (SIGTERM/SIGINT: drain and stop; SIGHUP: reload the model now).

Health (``grpc.health.v1``) reports SERVING for ``""`` and
``recsvc.v1.RecommenderService`` only once a model is loaded, and NOT_SERVING as
soon as shutdown begins, so a load balancer stops sending before calls are cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from recsvc.config import Settings
from recsvc.errors import ConfigError
from recsvc.redis_server import PrivateRedis, start_private_redis
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving.engine import Engine
from serving.eventlog import EventLog
from serving.interceptors import server_interceptors
from serving.metrics import ServingMetrics, start_metrics_http_server
from serving.models import LoadedModel, ModelHolder, ReloadOutcome
from serving.redisread import RedisReader
from serving.servicer import RecommenderServicer
from serving.state import LiveState, async_client_from_url

__all__ = ["SERVICE_NAME", "RunningServer", "create_server", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommenderService"].full_name


@dataclass
class RunningServer:
    """A started server and everything it owns; ``stop`` releases all of it."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    engine: Engine
    models: ModelHolder
    health: health.aio.HealthServicer
    registry: CollectorRegistry
    redis_url: str
    _owned: list[Any] = field(default_factory=list)
    _stop_watch: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def reload(self) -> ReloadOutcome:
        return await self.models.reload()

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish within
        ``grace`` seconds, then release Redis, the event log and /metrics."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stop_watch.set()
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for resource in reversed(self._owned):
            close = getattr(resource, "aclose", None)
            if close is not None:
                await close()
            elif isinstance(resource, PrivateRedis):
                await asyncio.to_thread(resource.stop)
            else:
                resource.close() if hasattr(resource, "close") else resource.shutdown()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    s = settings.server
    if s.tls_cert is None and s.tls_key is None:
        return None
    if s.tls_cert is None or s.tls_key is None:
        raise ConfigError("server.tls_cert and server.tls_key go together")
    ca = s.tls_client_ca.read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


async def create_server(settings: Settings) -> RunningServer:
    """Start a server for ``settings`` and return it (model loaded if one is published)."""
    s = settings.server
    faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
    owned: list[Any] = []
    redis_url = settings.redis.url
    if redis_url is None:
        private = await asyncio.to_thread(start_private_redis)
        owned.append(private)
        redis_url = private.url
        log.info("no Redis URL configured: started a private Redis at %s", redis_url)
    client = async_client_from_url(redis_url, socket_timeout=settings.redis.socket_timeout_seconds)
    owned.append(client)
    # the hot read (vector + history + session of each Recommend) over a thin pipelined
    # client; None for URLs it does not speak (TLS, RESP3), which stay on redis-py
    reader = RedisReader.for_client(client)
    if reader is not None:
        owned.append(reader)
    state = LiveState(
        client,
        prefix=settings.redis.prefix,
        history_max_events=s.history_max_events,
        history_ttl_seconds=s.history_ttl_seconds,
        session_max_events=s.session_max_events,
        session_ttl_seconds=s.session_ttl_seconds,
        vector_ttl_seconds=settings.redis.vector_ttl_seconds,
        reader=reader,
    )
    event_log = EventLog(settings.event_log_path, max_bytes=s.event_log_max_bytes)
    owned.append(event_log)

    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    health_servicer = health.aio.HealthServicer()
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()  # keep references: the loop holds tasks weakly

    def on_reload(outcome: ReloadOutcome, loaded: LoadedModel | None) -> None:
        metrics.model_reloads.labels(outcome=outcome.value).inc()
        if loaded is not None:
            metrics.set_model(
                loaded.version, loaded.model.artifact.index.kind, loaded.loaded_at.timestamp()
            )
            pending.add(task := loop.create_task(_serving(health_servicer)))
            task.add_done_callback(pending.discard)

    models = ModelHolder(
        settings.artifact_root, overfetch=settings.ranking.overfetch, on_reload=on_reload
    )
    engine = Engine(settings, models, state, event_log, metrics)

    server = grpc.aio.server(
        interceptors=server_interceptors(s, metrics),
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)],
    )
    pb_grpc.add_RecommenderServiceServicer_to_server(  # type: ignore[no-untyped-call]
        RecommenderServicer(engine, s), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{s.host}:{s.port}"
    credentials = _credentials(settings)
    port = (
        server.add_secure_port(address, credentials)
        if credentials
        else server.add_insecure_port(address)
    )
    metrics_port = None
    if s.metrics_port is not None:
        http_server, metrics_port = start_metrics_http_server(registry, s.host, s.metrics_port)
        owned.append(http_server)

    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    metrics.initialize_grpc_methods(
        SERVICE_NAME, [m.name for m in pb.DESCRIPTOR.services_by_name["RecommenderService"].methods]
    )
    await server.start()
    running = RunningServer(
        server, port, metrics_port, engine, models, health_servicer, registry, redis_url, owned
    )
    await models.reload()
    running._tasks.append(
        asyncio.create_task(models.watch(s.reload_poll_seconds, running._stop_watch))
    )
    running._tasks.append(asyncio.create_task(_sync_periodically(event_log, running._stop_watch)))
    running._tasks.append(
        asyncio.create_task(_follow_erasures(engine, s.reload_poll_seconds, running._stop_watch))
    )
    log.info(
        "serving %s on %s:%d (metrics :%s), model %s",
        SERVICE_NAME, s.host, port, metrics_port,
        models.current.version if models.current else "none yet",
    )  # fmt: skip
    return running


async def _sync_periodically(event_log: EventLog, stop: asyncio.Event, every: float = 1.0) -> None:
    """Bound the event log's loss window on power failure even when traffic stops."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        await asyncio.to_thread(event_log.sync)


async def _follow_erasures(engine: Engine, every: float, stop: asyncio.Event) -> None:
    """Erasures made through another replica take effect here within ``every`` s."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        await asyncio.to_thread(engine.refresh_erasures)


async def _serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the model at once."""
    running = await create_server(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(running.reload()))
    print(f"recsvc serving on {settings.server.host}:{running.port}", flush=True)
    await stop.wait()
    log.info("shutting down: draining calls for up to %.1fs", settings.server.grace_seconds)
    await running.stop(settings.server.grace_seconds)
