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
import gc
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from threadpoolctl import threadpool_limits

from recsvc import compaction, index, retention, session_kernels
from recsvc.config import Settings
from recsvc.erasure import read_erasure_list
from recsvc.errors import ArtifactError, ConfigError, RecsvcError, StoreError
from recsvc.model import Model
from recsvc.objectstore import ObjectStoreModels
from recsvc.pseudonyms import pseudonyms_from
from recsvc.store import KeyScheme, async_client_from_url, open_live_state
from recsvc.store.catalog import CatalogStore
from recsvc.store.cooccur import CoOccurrence
from recsvc.store.embedded import PrivateRedis, start_private_redis
from recsvc.store.erasures import ErasureStore
from recsvc.store.experiments import ExperimentStore
from recsvc.store.rules import RuleStore
from recsvc.store.trending import Trending
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

from . import follow
from . import rules as merchandising
from .catalog import LiveCatalog
from .engine import Engine
from .erasures import SharedErasures
from .eventlog import EventLog
from .experiments import LiveExperiments
from .interceptors import server_interceptors
from .metrics import ServingMetrics, start_metrics_http_server
from .newitems import NewItems
from .popularity import LivePopularity
from .reflection import enable_server_reflection
from .reload import LoadedModel, ModelHolder, ReloadOutcome
from .rules import LiveRules
from .servicer import RecommenderServicer

__all__ = [
    "EVENT_LOOPS",
    "SERVICE_NAME",
    "RunningServer",
    "create_server",
    "run",
    "run_event_loop",
    "serve",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    _draining: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once shutdown began: a model loaded from then on leaves health NOT_SERVING."""

    async def reload(self) -> ReloadOutcome:
        """Check for a new model now (and re-read the placements file, if any)."""
        self.engine.placements.check(force=True)
        return await self.models.reload()

    async def set_not_serving(self) -> None:
        """Health NOT_SERVING (load balancers stop sending), calls still answered; a
        model reloaded from now on does not turn it back to SERVING."""
        self._draining.set()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let calls in flight finish within
        ``grace`` seconds, then release Redis, the event log and /metrics."""
        await self.set_not_serving()
        self._stop_watch.set()
        await self.server.stop(grace)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await _release(self._owned)

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


async def _release(owned: list[Any]) -> None:
    """Close what a server owns, newest first: /metrics, the event log, the live
    state's connections, a private Redis."""
    for resource in reversed(owned):
        close = getattr(resource, "aclose", None)
        if close is not None:
            await close()
        elif isinstance(resource, PrivateRedis):
            await asyncio.to_thread(resource.stop)
        else:
            resource.close() if hasattr(resource, "close") else resource.shutdown()


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


async def create_server(settings: Settings, *, reuse_port: bool = False) -> RunningServer:
    """Start a server for ``settings`` and return it (model loaded if one is published).

    ``reuse_port``: bind with SO_REUSEPORT, so several processes share the port and the
    kernel spreads incoming connections over them (see :func:`run`).
    """
    s = settings.server
    # one query at a time: threads only add overhead (and BLAS threads spinning for a
    # matrix-vector product cost several times its work while other requests run)
    faiss.omp_set_num_threads(1)
    threadpool_limits(1, user_api="blas")
    started = time.perf_counter()
    # compiled (or loaded from the cache) before any request
    session_kernels.warm_up()
    index.warm_up()
    merchandising.warm_up()
    log.info("compiled kernels ready in %.1fs", time.perf_counter() - started)
    root = settings.artifact_root
    remote = None
    if s.artifact_url is not None:  # models from an object store, mirrored into root
        remote = ObjectStoreModels(s.artifact_url)
        root.mkdir(parents=True, exist_ok=True)
        await _mirror(remote, root)
    if not root.is_dir():
        # a mistyped --artifacts would otherwise be created and served without a model
        raise ConfigError(
            f"artifact root {root} is not a directory: train and publish a model there "
            "first (recsvc train --publish), or fix --artifacts"
        )
    owned: list[Any] = []
    try:
        redis_url = settings.redis.url
        if redis_url is None:
            private = await asyncio.to_thread(start_private_redis)
            owned.append(private)
            redis_url = private.url
            log.info("no Redis URL configured: started a private Redis at %s", redis_url)
        state = open_live_state(redis_url, settings)
        owned.append(state)
        timeout = max(settings.redis.socket_timeout_seconds, 1.0)
        keys = KeyScheme(settings.redis.prefix)
        catalog_store = CatalogStore.open(redis_url, keys, socket_timeout=timeout)
        rule_store = RuleStore.open(redis_url, keys, socket_timeout=timeout)
        experiment_store = ExperimentStore.open(redis_url, keys, socket_timeout=timeout)
        erasure_store = ErasureStore.open(redis_url, keys, socket_timeout=timeout)
        owned += [catalog_store, rule_store, experiment_store, erasure_store]
        catalog = LiveCatalog(catalog_store)
        rules = LiveRules(rule_store)
        trending_client = async_client_from_url(redis_url, socket_timeout=timeout)
        owned.append(trending_client)
        popularity = LivePopularity(
            Trending(
                trending_client, keys, settings.ranking.live_popularity_half_life_hours * 3600.0
            ),
            settings.ranking.live_popularity_weight,
        )
        new_items = NewItems(
            catalog,
            CoOccurrence(trending_client, keys),
            popularity,
            evidence=settings.ranking.new_item_evidence,
            max_items=settings.ranking.max_new_items,
        )
        event_log = EventLog(settings.event_log_path, max_bytes=s.event_log_max_bytes)
        owned.append(event_log)

        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        metrics.follow_live("catalogue", catalog)
        metrics.follow_live("rules", rules)
        metrics.watch_new_items(lambda: new_items.lane)
        reader = state.reader
        if reader.caches:
            metrics.watch_state_cache(lambda: (reader.cache_hits, reader.cache_misses))
        health_servicer = health.aio.HealthServicer()
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()  # keep references: the loop holds tasks weakly
        draining = asyncio.Event()

        def on_reload(outcome: ReloadOutcome, loaded: LoadedModel | None) -> None:
            metrics.model_reloads.labels(outcome=outcome.value).inc()
            if loaded is not None:
                metrics.set_model(
                    loaded.version,
                    loaded.model.artifact.index.kind,
                    loaded.loaded_at.timestamp(),
                    loaded.trained_at.timestamp(),
                )
                engine.retain_models()
                pending.add(task := loop.create_task(_serving(health_servicer, draining)))
                task.add_done_callback(pending.discard)

        models = ModelHolder(
            settings.artifact_root, overfetch=settings.ranking.overfetch, on_reload=on_reload
        )
        experiments = LiveExperiments(experiment_store, models, metrics, s.experiments_file)
        experiments.new_items = lambda: NewItems(  # a variant model's own new products
            catalog,
            CoOccurrence(trending_client, keys),
            popularity,
            evidence=settings.ranking.new_item_evidence,
            max_items=settings.ranking.max_new_items,
        )
        metrics.follow_live("experiments", experiments)
        engine = Engine(
            settings, models, state, event_log, metrics, catalog, popularity, rules, new_items,
            CoOccurrence(trending_client, keys, kind="b"), experiments, erasure_store,
        )  # fmt: skip
        shared_erasures = SharedErasures(erasure_store, engine.erasures, engine.profiles.forget)
        metrics.follow_live("erasures", shared_erasures)

        server = grpc.aio.server(
            interceptors=server_interceptors(s, metrics),
            options=[
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ],
        )
        pb_grpc.add_RecommenderServiceServicer_to_server(  # type: ignore[no-untyped-call]
            RecommenderServicer(engine, s, pseudonyms_from(settings)), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
        )
        address = f"{s.host}:{s.port}"
        credentials = _credentials(settings)
        if s.port:
            # a taken port is said in one line (grpc's own refusal is a log line from
            # its C core and a RuntimeError without the reason)
            _reserve_port(s.host, s.port, reuse=reuse_port).close()
        try:
            port = (
                server.add_secure_port(address, credentials)
                if credentials
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
            raise ConfigError(f"cannot serve on {address}: grpc could not bind it") from exc
        metrics_port = None
        if s.metrics_port is not None:
            try:
                http_server, metrics_port = start_metrics_http_server(
                    registry, s.host, s.metrics_port
                )
            except OSError as exc:
                where = f"{s.host}:{s.metrics_port}"
                raise ConfigError(f"cannot serve /metrics on {where}: {exc.strerror}") from exc
            owned.append(http_server)

        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        metrics.initialize_grpc_methods(
            SERVICE_NAME,
            [m.name for m in pb.DESCRIPTOR.services_by_name["RecommenderService"].methods],
        )
        await server.start()
        running = RunningServer(
            server,
            port,
            metrics_port,
            engine,
            models,
            health_servicer,
            registry,
            redis_url,
            owned,
            _draining=draining,
        )
        for follower in (catalog, rules, experiments):
            with contextlib.suppress(StoreError):  # a Redis down at start: it retries
                await follower.load()
        await models.reload()
        with contextlib.suppress(StoreError):
            await experiments.check_file()
        await experiments.sync_models()
        running._tasks.append(asyncio.create_task(catalog.follow(running._stop_watch)))
        running._tasks.append(asyncio.create_task(rules.follow(running._stop_watch)))
        running._tasks.append(asyncio.create_task(experiments.follow(running._stop_watch)))
        running._tasks.append(asyncio.create_task(shared_erasures.follow(running._stop_watch)))
        running._tasks.append(
            asyncio.create_task(experiments.watch(s.reload_poll_seconds, running._stop_watch))
        )
        running._tasks.append(asyncio.create_task(popularity.follow(running._stop_watch)))

        def served() -> Model | None:
            loaded = models.current
            return None if loaded is None else loaded.model

        running._tasks.append(asyncio.create_task(new_items.follow(running._stop_watch, served)))
        running._tasks.append(
            asyncio.create_task(models.watch(s.reload_poll_seconds, running._stop_watch))
        )
        running._tasks.append(
            asyncio.create_task(engine.placements.watch(s.reload_poll_seconds, running._stop_watch))
        )
        running._tasks.append(
            asyncio.create_task(_sync_periodically(event_log, running._stop_watch))
        )
        running._tasks.append(
            asyncio.create_task(
                _follow_erasures(engine, s.reload_poll_seconds, running._stop_watch)
            )
        )
        if remote is not None:
            running._tasks.append(
                asyncio.create_task(
                    _mirror_periodically(
                        remote, root, models, s.reload_poll_seconds, running._stop_watch
                    )
                )
            )
        if s.compact_interval_seconds > 0:
            running._tasks.append(
                asyncio.create_task(
                    _compact_periodically(settings, event_log, metrics, running._stop_watch)
                )
            )
        log.info(
            "serving %s on %s:%d (metrics :%s), model %s",
            SERVICE_NAME, s.host, port, metrics_port,
            models.current.version if models.current else "none yet",
        )  # fmt: skip
        return running
    except BaseException:
        # a failed start leaves nothing behind: no private redis-server, no temp dir
        await _release(owned)
        raise


async def _sync_periodically(event_log: EventLog, stop: asyncio.Event, every: float = 1.0) -> None:
    """Bound the event log's loss window on power failure even when traffic stops."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        await asyncio.to_thread(event_log.sync)


async def _mirror(remote: ObjectStoreModels, root: Path) -> str | None:
    """One mirroring of the object store's published model into ``root`` (see
    :mod:`recsvc.objectstore`); a failure is logged, and what ``root`` holds is served."""
    try:
        return await asyncio.to_thread(remote.sync, root)
    except (StoreError, ArtifactError) as exc:
        log.warning("mirroring models from %s failed, serving what %s holds: %s",
                    remote.url, root, exc)  # fmt: skip
        return None


async def _mirror_periodically(
    remote: ObjectStoreModels, root: Path, models: ModelHolder, every: float, stop: asyncio.Event
) -> None:
    """A model published to the object store is mirrored and loaded within ``every`` s."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if not stop.is_set() and await _mirror(remote, root) is not None:
            await models.reload()


async def _follow_erasures(engine: Engine, every: float, stop: asyncio.Event) -> None:
    """Erasures made through another replica take effect here within ``every`` s."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        await asyncio.to_thread(engine.refresh_erasures)


async def _compact_periodically(
    settings: Settings, event_log: EventLog, metrics: ServingMetrics, stop: asyncio.Event
) -> None:
    """Files kept as long as they may be, every ``compact_interval_seconds``: erasure
    that deletes (:mod:`recsvc.compaction`: when an erasure is pending, the event log
    is rotated, so no file of it is open, and the erased customers are removed from
    its files and the kept model versions), then retention (:mod:`recsvc.retention`).
    A round another replica holds is skipped; a failed one is logged and retried at
    the next interval."""
    every = settings.server.compact_interval_seconds
    done = compaction.completion_path(settings.erasure_path)
    dirs = [settings.event_log_path]
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if stop.is_set():
            return
        try:
            pending = await asyncio.to_thread(
                lambda: read_erasure_list(settings.erasure_path) - read_erasure_list(done)
            )
            if pending:
                await asyncio.to_thread(event_log.rotate)
                report = await asyncio.to_thread(
                    compaction.compact, settings.artifact_root, settings.erasure_path, dirs
                )
                log.info(
                    "compaction: %d customers complete, %d pending; %d rows removed from %d "
                    "files, %d versions rewritten, in %.1f s",
                    len(report.completed), len(report.pending), report.rows_removed,
                    report.files_rewritten, report.versions_rewritten, report.seconds,
                )  # fmt: skip
                pending = frozenset(report.pending)
            metrics.erasures_pending.set(len(pending))
            gone = await asyncio.to_thread(
                retention.collect, settings.retention, settings.artifact_root, dirs
            )
            if gone.event_log_files or gone.versions:
                log.info(
                    "retention: deleted %d event-log files and versions %s",
                    len(gone.event_log_files), ", ".join(gone.versions) or "none",
                )  # fmt: skip
        except compaction.CompactionBusy:
            continue
        except (RecsvcError, OSError) as exc:
            log.warning("compaction or retention failed (retried in %.0f s): %s", every, exc)


async def _serving(health_servicer: health.aio.HealthServicer, draining: asyncio.Event) -> None:
    if draining.is_set():
        return
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the model at once.

    SIGTERM drains as Kubernetes expects: health NOT_SERVING at once, calls still
    served for ``[server] drain_seconds`` while load balancers take the replica out,
    then no new calls and those in flight finish within ``grace_seconds``. SIGINT
    (Ctrl-C) skips the drain; a second signal ends the drain early.
    """
    s = settings.server
    running = await create_server(settings, reuse_port=reuse_port)
    freeze_heap()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain = asyncio.Event()
    drain.set()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            drain.set()  # a second signal: stop draining now
            return
        if signum == signal.SIGTERM and s.drain_seconds > 0:
            drain.clear()
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(running.reload()))
    print(f"recsvc serving on {s.host}:{running.port}", flush=True)
    await stop.wait()
    await running.set_not_serving()
    if not drain.is_set():
        log.info("draining: NOT_SERVING, still answering for %.1fs", s.drain_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain.wait(), timeout=s.drain_seconds)
    log.info("shutting down: calls in flight have %.1fs to finish", s.grace_seconds)
    await running.stop(s.grace_seconds)


def freeze_heap() -> None:
    """Collect, then move every object alive now (the imports' ~85k, the first model)
    out of the cyclic collector's reach. Its full collections otherwise walk them all:
    ~40 ms with the event loop stopped (docs/design.md, "Serving"). A model reloaded
    away later is still freed, by reference counting: it holds no cycles (tested)."""
    gc.collect()
    gc.freeze()
    follow.set_heap_frozen(True)


# --------------------------------------------------------------------------- processes

EVENT_LOOPS: Final = ("asyncio", "uvloop", "auto")


def run_event_loop(main: Coroutine[Any, Any, T], event_loop: str = "asyncio") -> T:
    """Run ``main`` on ``event_loop``: "asyncio" (the standard loop), "uvloop", or
    "auto" (uvloop when it is installed, else asyncio). Raises ConfigError for an
    unknown name, or "uvloop" when it is not installed."""
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}")
    if event_loop != "asyncio":
        try:
            # optional, not a dependency: measured slower than asyncio under grpc.aio
            # (benchmarks/results/levers), kept selectable to re-measure
            uvloop: Any = importlib.import_module("uvloop")
        except ImportError as exc:
            if event_loop == "uvloop":
                raise ConfigError("event loop 'uvloop' needs the uvloop package") from exc
        else:
            result: T = uvloop.run(main)
            return result
    return asyncio.run(main)


def run(settings: Settings, *, processes: int = 1, event_loop: str = "asyncio") -> int:
    """``recsvc serve``: ``processes`` server processes on one port, each on ``event_loop``.

    One process serves in this one. With more, this process starts them (spawned, each
    loads the model and opens its own Redis connections), and they bind the same port
    with SO_REUSEPORT, so the kernel spreads client *connections* over them (one HTTP/2
    connection stays with one process: it takes several clients, or a client with
    several channels, to use them all). Process ``i`` serves /metrics on
    ``metrics_port + i``. This process forwards SIGTERM/SIGINT (drain and stop) and
    SIGHUP (reload) to all of them, and stops them all if one dies; it returns the
    exit status. Without a Redis URL, one private Redis is started here for all.
    """
    if processes < 1:
        raise ConfigError("processes must be at least 1")
    if processes == 1:
        run_event_loop(serve(settings), event_loop)
        return 0
    private: PrivateRedis | None = None
    if settings.redis.url is None:
        private = start_private_redis()
        settings = settings.model_copy(
            update={"redis": settings.redis.model_copy(update={"url": private.url})}
        )
    s = settings.server
    # The port stays bound here (SO_REUSEPORT, not listening: it takes no connections)
    # until the processes are gone, so nothing else can take it while they start.
    reservation = _reserve_port(s.host, s.port)
    port: int = reservation.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    children = []
    try:
        for i in range(processes):
            server = s.model_copy(
                update={
                    "port": port,
                    "metrics_port": s.metrics_port + i if s.metrics_port else s.metrics_port,
                }
            )
            child = ctx.Process(
                target=_serve_child,
                args=(settings.model_copy(update={"server": server}), event_loop),
                name=f"recsvc-serve-{i}",
            )
            child.start()
            children.append(child)
        return _supervise(children)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join(s.grace_seconds + 10)
            if child.is_alive():
                child.kill()
                child.join()
        reservation.close()
        if private is not None:
            private.stop()


def _serve_child(settings: Settings, event_loop: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # serve() installs its own on the loop
    run_event_loop(serve(settings, reuse_port=True), event_loop)


def _supervise(children: list[Any]) -> int:
    """Forward signals to ``children`` until they have all exited; their worst status."""
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    }
    try:
        stopping = False
        while any(c.is_alive() for c in children):
            while received:
                signum = received.pop(0)
                forward = signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM
                stopping = stopping or forward == signal.SIGTERM
                for c in children:
                    if c.is_alive() and c.pid is not None:
                        os.kill(c.pid, forward)
            if not stopping and any(not c.is_alive() for c in children):
                log.error("a server process exited: stopping the others")
                stopping = True
                for c in children:
                    if c.is_alive() and c.pid is not None:
                        os.kill(c.pid, signal.SIGTERM)
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [c.exitcode or 0 for c in children]
    return max(codes, key=abs)


def _reserve_port(host: str, port: int, *, reuse: bool = True) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), with SO_REUSEPORT when
    ``reuse`` so server processes can bind the same port beside it; ConfigError (one
    line: "cannot serve on HOST:PORT: Address already in use") if it is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
    return sock
