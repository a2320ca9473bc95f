"""Every Prometheus metric the serving role exports, declared in one place.

:class:`ServingMetrics` declares them all on a :class:`~prometheus_client.CollectorRegistry`
that the caller builds and passes in (never the process-global default registry), so a
test or a second server in one process gets its own, independent set.

Conventions (STYLE.md, practice 9):

- units in names (``_seconds``, ``_timestamp_seconds``), counters end in ``_total``;
- explicit buckets on every histogram;
- labels take values from small closed sets only. Never a user, session, item or
  recommendation id. Values that reach a label from a request (placement, model
  version in a click) go through :func:`placement_label` or
  :meth:`ServingMetrics.model_version_label` first, so a client cannot grow the
  number of series.

The ``grpc_server_*`` metrics are named and labelled as go-grpc-prometheus names them,
so the usual gRPC dashboards and alert rules work unchanged; :mod:`serving.interceptors`
maintains them. The ``recsvc_*`` metrics are updated by the serving code itself. The
``process_*`` and ``python_*`` series are prometheus_client's standard collectors, the
names every Python exporter uses, registered on the same registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from recsvc.events import EventType

if TYPE_CHECKING:
    from .follow import Follower

__all__ = [
    "FALLBACK_REASONS",
    "ITEM_COUNT_BUCKETS",
    "LATENCY_BUCKETS_SECONDS",
    "LOOKUP_LAYERS",
    "LOOKUP_RESULTS",
    "RELOAD_OUTCOMES",
    "UNPARSEABLE_REASONS",
    "Children",
    "MetricsHTTPServer",
    "ServingMetrics",
    "Tally",
    "placement_label",
    "start_metrics_http_server",
]

LATENCY_BUCKETS_SECONDS: Final[tuple[float, ...]] = (
    0.00005,
    0.0001,
    0.00015,
    0.0002,
    0.00025,
    0.0003,
    0.0004,
    0.0005,
    0.0006,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds for every ``*_seconds`` histogram: fine below a millisecond, where the
server is meant to answer (0.1 ms apart from 0.2 to 0.6 ms, where a Recommend's
handling falls: a quantile interpolated in a 0.25 ms bucket could be off by a
quarter), and coarse up to 10 s, where a call is clearly broken."""

ITEM_COUNT_BUCKETS: Final[tuple[float, ...]] = (0, 1, 5, 10, 20, 50, 100, 500)
"""Upper bounds of ``recsvc_recommended_items``; the 0 bucket counts empty answers."""

LOOKUP_LAYERS: Final[tuple[str, ...]] = ("lru", "redis", "foldin", "artifact")
"""Where a user vector is looked for, in order: in-process cache, Redis, fold-in from
stored history, the vectors shipped in the artifact."""

LOOKUP_RESULTS: Final[tuple[str, ...]] = ("hit", "miss", "error")
"""Outcome of one user-vector lookup in one layer."""

RELOAD_OUTCOMES: Final[tuple[str, ...]] = ("success", "failure", "unchanged")
"""Outcome of one check of the CURRENT pointer for a new model."""

FALLBACK_REASONS: Final[tuple[str, ...]] = ("no_signal", "store_unavailable", "unknown_user")
"""Fallback reasons whose series exist (at 0) from start-up; others may be added."""

UNPARSEABLE_REASONS: Final[tuple[str, ...]] = ("decode_error", "other")
"""Why request bytes did not parse: protobuf's DecodeError (corrupt wire format, a
string field that is not UTF-8, nesting too deep), or any other error of the parser."""

_GRPC_LABELS: Final = ("grpc_type", "grpc_service", "grpc_method")
_MODEL_VERSIONS_KEPT: Final = 16
"""Model versions still accepted as a label value after newer ones were loaded: clicks
on an answer arrive after the answer, possibly after a reload."""


def placement_label(raw: str, allowed: Sequence[str]) -> str:
    """The ``placement`` label for a placement a client sent.

    ``""`` → ``"unknown"``, a configured placement → itself, anything else →
    ``"other"``: the number of series stays bounded whatever clients send.
    """
    if not raw:
        return "unknown"
    return raw if raw in allowed else "other"


class Children:
    """The labelled children of one metric, each resolved once.

    ``metric.labels(...)`` costs microseconds; the request path calls this instead:
    ``lookups("redis", "hit").inc()``. Values go in the metric's label order, and must
    come from a closed set (the cache keeps every combination it has seen).
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram | Gauge) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class ServingMetrics:
    """The serving role's metrics, all declared on ``registry`` at construction.

    Attributes are the prometheus_client metric objects; update them with
    ``.labels(...).inc()`` / ``.observe(...)``. Label names and their allowed values
    are given in each attribute's comment; keep to them.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry

        # --- gRPC, as go-grpc-prometheus (maintained by serving.interceptors) ----------
        self.grpc_started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            _GRPC_LABELS,
            registry=r,
        )
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status code.",
            (*_GRPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.grpc_handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC's handler to its final status, in seconds.",
            _GRPC_LABELS,
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )

        # rpc: the method's name (Recommend, ..., Check, ServerReflectionInfo): only
        # methods the server has, never a name a client made up;
        # reason: UNPARSEABLE_REASONS
        self.unparseable_requests = Counter(
            "recsvc_unparseable_requests_total",
            "Requests whose bytes did not parse as the method's request message, answered "
            "INVALID_ARGUMENT, by RPC and reason (decode_error, other).",
            ("rpc", "reason"),
            registry=r,
        )

        # --- user and session vectors -------------------------------------------------
        # layer: lru | redis | foldin | artifact; result: hit | miss | error
        self.user_vector_lookups = Counter(
            "recsvc_user_vector_lookups_total",
            "User-vector lookups, by layer (lru, redis, foldin, artifact) and result "
            "(hit, miss, error).",
            ("layer", "result"),
            registry=r,
        )
        self.foldin_seconds = Histogram(
            "recsvc_foldin_seconds",
            "Time to fold a user's or session's items into a vector, in seconds "
            "(the count is the number of fold-ins).",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.index_search_seconds = Histogram(
            "recsvc_index_search_seconds",
            "Time of one nearest-neighbour search in the item index, in seconds.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )

        # --- answers -------------------------------------------------------------------
        # reason: no_signal | store_unavailable | unknown_user | ... (a closed set in code)
        self.fallbacks = Counter(
            "recsvc_fallbacks_total",
            "Answers that fell back from the strategy the request called for, by reason.",
            ("reason",),
            registry=r,
        )
        # rpc: the RPC's method name (Recommend, SimilarItems, RecordEvents, ...)
        self.degraded_responses = Counter(
            "recsvc_degraded_responses_total",
            "Answers given without the state store (degraded = true), by RPC.",
            ("rpc",),
            registry=r,
        )
        # consent: recsvc.consent.Consent values (full, session, off)
        self.consent_changes = Counter(
            "recsvc_consent_changes_total",
            "Consents stored by SetConsent, by the consent stored (full, session, off).",
            ("consent",),
            registry=r,
        )
        self.erasures_pending = Gauge(
            "recsvc_erasures_pending",
            "Customers erased (ForgetUser) whose rows the event log or a kept model version "
            "still held at the last compaction round.",
            registry=r,
        )
        # outcome: linked | renewed (linked already) | unlinked | refused (a request)
        self.identity_links = Counter(
            "recsvc_identity_links_total",
            "Ids linked to a customer by LinkIds (linked; renewed: linked already), "
            "unlinked by UnlinkIds, and LinkIds calls refused (taken, chain, too many).",
            ("outcome",),
            registry=r,
        )
        # outcome: merged (events applied now) | repeat (applied already) | failed
        self.session_merges = Counter(
            "recsvc_session_merges_total",
            "Logins that found an anonymous session of the same session id and joined it "
            "to the customer's history, by outcome (merged, repeat, failed).",
            ("outcome",),
            registry=r,
        )
        # strategy: recsvc.ranking.Strategy values (personalized, session, popular);
        # placement: see placement_label()
        # experiment, variant: the running experiments' names ("" outside one)
        self.recommendations = Counter(
            "recsvc_recommendations_total",
            "Recommendation answers, by the strategy that served them, placement, and "
            "the experiment and variant that answered.",
            ("strategy", "placement", "experiment", "variant"),
            registry=r,
        )
        self.recommended_items = Histogram(
            "recsvc_recommended_items",
            "Items returned per recommendation answer.",
            buckets=ITEM_COUNT_BUCKETS,
            registry=r,
        )

        # --- events --------------------------------------------------------------------
        # event_type: recsvc.events.EventType values
        self.events = Counter(
            "recsvc_events_total",
            "Live events accepted by RecordEvents, by event type.",
            ("event_type",),
            registry=r,
        )
        # reason: a closed set in code (e.g. unknown_item, non_personalized)
        self.events_ignored = Counter(
            "recsvc_events_ignored_total",
            "Live events received but not applied, by reason.",
            ("reason",),
            registry=r,
        )
        # placement: see placement_label(); model_version: see model_version_label()
        self.impressions = Counter(
            "recsvc_impressions_total",
            "Recommended items shown to shoppers (IMPRESSION events), by placement and "
            "model version.",
            ("placement", "model_version"),
            registry=r,
        )
        self.clicks = Counter(
            "recsvc_clicks_total",
            "Recommended items clicked (CLICK events), by placement and model version.",
            ("placement", "model_version"),
            registry=r,
        )
        # experiment, variant: names this replica ran ("other" for any other, "" outside
        # experiments); event_type: impression, click, add_to_cart, purchase
        self.attributed_events = Counter(
            "recsvc_attributed_events_total",
            "Events attributed to the recommendation that led to them (their "
            "recommendation_id, the shopper it was issued to, within the attribution "
            "window), by experiment, variant, placement and event type.",
            ("experiment", "variant", "placement", "event_type"),
            registry=r,
        )
        self.attributed_revenue = Counter(
            "recsvc_attributed_revenue_total",
            "Revenue (price x quantity) of attributed purchases, by experiment, variant "
            "and placement.",
            ("experiment", "variant", "placement"),
            registry=r,
        )
        # reason: foreign (another shopper's id), expired (outside the window),
        # unknown (no id of this server)
        self.attribution_refused = Counter(
            "recsvc_attribution_refused_total",
            "Events whose recommendation_id was not attributed, by reason.",
            ("reason",),
            registry=r,
        )
        # outcome: applied | refused
        self.experiment_file_loads = Counter(
            "recsvc_experiment_file_loads_total",
            "Changes of the watched experiments file, by outcome (applied; refused: the "
            "running experiments stayed).",
            ("outcome",),
            registry=r,
        )
        self.variant_model_bytes = Gauge(
            "recsvc_variant_model_bytes",
            "Resident bytes a model loaded for an experiment's variant added, by model version.",
            ("model_version",),
            registry=r,
        )

        # --- model -----------------------------------------------------------------------
        self.model_info = Gauge(
            "recsvc_model_info",
            "1 for the model this replica serves, labelled by its version and index type.",
            ("model_version", "index_type"),
            registry=r,
        )
        self.model_loaded_timestamp_seconds = Gauge(
            "recsvc_model_loaded_timestamp_seconds",
            "Unix time at which the served model was loaded, in seconds.",
            registry=r,
        )
        self.model_trained_timestamp_seconds = Gauge(
            "recsvc_model_trained_timestamp_seconds",
            "Unix time at which the served model was trained (its manifest's created_at), "
            "in seconds: how stale the model is, whatever restarts or reloads did since.",
            registry=r,
        )
        # outcome: success | failure | unchanged
        self.model_reloads = Counter(
            "recsvc_model_reloads_total",
            "Checks for a new model, by outcome (success, failure, unchanged).",
            ("outcome",),
            registry=r,
        )

        # --- the live world: catalogue, rules --------------------------------------------
        # collection: catalogue | rules (serving.follow.Follower); read at each scrape
        self.live_version = Gauge(
            "recsvc_live_version",
            "Version (number of the last change applied) of each shared collection this "
            "replica follows: the live catalogue, the merchandising rules.",
            ("collection",),
            registry=r,
        )
        self.live_records = Gauge(
            "recsvc_live_records",
            "Records this replica holds of each shared collection (catalogue items and "
            "rules, withdrawn and deleted ones included).",
            ("collection",),
            registry=r,
        )
        # action: boost | bury | pin
        self.rule_applications = Tally(
            "recsvc_rule_applications",
            "Answers a merchandising rule touched (moved, placed or buried an item of), "
            "by the rule's action.",
            "action",
            ("boost", "bury", "pin"),
        )
        r.register(self.rule_applications)
        # state: known | placed | met | selling
        self.new_items = Gauge(
            "recsvc_new_items",
            "New products (live catalogue items the served model lacks), by state: known, "
            "placed (has a direction: attributes or meetings), met (shoppers put it with "
            "trained items), selling (has live popularity).",
            ("state",),
            registry=r,
        )
        self.new_items_recommended = Counter(
            "recsvc_new_items_recommended_total",
            "New products placed in answers, by RPC.",
            ("rpc",),
            registry=r,
        )

        # --- load --------------------------------------------------------------------------
        self.inflight_requests = Gauge(
            "recsvc_inflight_requests",
            "RPCs admitted by the concurrency limit and not yet finished.",
            registry=r,
        )

        # --- the process (prometheus_client's standard collectors) -------------------
        # process_*: CPU seconds, resident and virtual memory, open and maximum file
        # descriptors, start time; read from /proc at each scrape (Linux). python_info:
        # the interpreter's version, as a label.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # python_gc_*: collections and collected objects per generation (0, 1, 2). The
        # server freezes the heap after loading because a full collection walks every
        # object with the event loop stopped (serving.server.freeze_heap); generation-2
        # collections are the counter to read when tail latency jumps without load.
        GCCollector(registry=r)

        # Series over closed label sets exist from start-up, so rate() and ratios
        # (cache hit rate, reload failures) are defined before the first event.
        for layer in LOOKUP_LAYERS:
            for result in LOOKUP_RESULTS:
                self.user_vector_lookups.labels(layer=layer, result=result)
        for outcome in RELOAD_OUTCOMES:
            self.model_reloads.labels(outcome=outcome)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason=reason)
        for event_type in EventType:
            self.events.labels(event_type=event_type.value)
        for state in ("known", "placed", "met", "selling"):
            self.new_items.labels(state=state)
        for rpc in ("Recommend", "SimilarItems"):
            self.new_items_recommended.labels(rpc=rpc)
        for outcome in ("merged", "repeat", "failed"):
            self.session_merges.labels(outcome=outcome)
        for consent in ("full", "session", "off"):
            self.consent_changes.labels(consent=consent)
        for outcome in ("linked", "renewed", "unlinked", "refused"):
            self.identity_links.labels(outcome=outcome)

        self._registry = r
        self._lock = threading.Lock()
        # Replaced, never mutated, so model_version_label() reads it without the lock.
        self._model_versions: tuple[str, ...] = ()

    def watch_state_cache(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Export ``recsvc_state_cache_lookups_total{result="hit|miss"}`` from
        ``counts()`` = (hits, misses) of the live-state client-side cache, read at each
        scrape (:class:`recsvc.store.thinreader.RedisReader` counts them itself)."""
        self._registry.register(_StateCacheCollector(counts))

    def initialize_grpc_methods(self, service: str, methods: Iterable[str]) -> None:
        """Create the ``grpc_server_*`` series of unary ``methods`` of ``service`` at 0,
        every status code included, as go-grpc-prometheus' ``InitializeMetrics`` does."""
        for method in methods:
            labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
            self.grpc_started.labels(**labels)
            self.grpc_handling_seconds.labels(**labels)
            for code in grpc.StatusCode:
                self.grpc_handled.labels(**labels, grpc_code=code.name)

    def set_model(
        self, model_version: str, index_type: str, loaded_at: float, trained_at: float
    ) -> None:
        """Record that the model ``model_version`` is now served, trained at
        ``trained_at`` and loaded at ``loaded_at`` (Unix seconds): ``recsvc_model_info``
        keeps only its label set."""
        with self._lock:
            self.model_info.clear()
            self.model_info.labels(model_version=model_version, index_type=index_type).set(1)
            self.model_loaded_timestamp_seconds.set(loaded_at)
            self.model_trained_timestamp_seconds.set(trained_at)
            kept = [v for v in self._model_versions if v != model_version]
            kept.append(model_version)
            self._model_versions = tuple(kept[-_MODEL_VERSIONS_KEPT:])

    def accept_model_version(self, model_version: str) -> None:
        """Let ``model_version`` label impressions and clicks though not the published
        one (an experiment's variant serves it)."""
        with self._lock:
            if model_version not in self._model_versions:
                kept = [*self._model_versions, model_version]
                self._model_versions = tuple(kept[-_MODEL_VERSIONS_KEPT:])

    def follow_live(self, collection: str, follower: Follower[Any]) -> None:
        """Export ``follower``'s version and record count as ``collection``'s, read at
        each scrape (nothing on the request path)."""
        self.live_version.labels(collection=collection).set_function(lambda: follower.version)
        self.live_records.labels(collection=collection).set_function(lambda: len(follower.records))

    def watch_new_items(self, lane: Callable[[], Any]) -> None:
        """Export the new products' counts of ``lane()`` (a
        :class:`serving.newitems.NewItemLane` or None), read at each scrape."""

        def counter(state: str) -> Callable[[], float]:
            def count() -> float:
                current = lane()
                return 0.0 if current is None else float(current.counts()[state])

            return count

        for state in ("known", "placed", "met", "selling"):
            self.new_items.labels(state=state).set_function(counter(state))

    def model_version_label(self, raw: str) -> str:
        """The ``model_version`` label for a version a client sent back (impressions,
        clicks): one of the last 16 versions loaded by this process → itself, ``""``
        → ``"unknown"``, anything else → ``"other"``."""
        if not raw:
            return "unknown"
        return raw if raw in self._model_versions else "other"


class Tally(Collector):
    """A counter by one label of a closed set of values (``{name}_total``), counted in
    plain integers by the one thread that counts (the event loop) and read at each
    scrape: no lock per increment, where a Counter's child takes one (~0.5 µs, a few
    times per answer on the Recommend path)."""

    def __init__(self, name: str, documentation: str, label: str, values: Sequence[str]) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._counts = dict.fromkeys(values, 0)

    def add(self, counts: Iterable[tuple[str, int]]) -> None:
        """Count ``n`` more for each (value, n) of ``counts``. Call from one thread only.
        KeyError for a value not declared."""
        totals = self._counts
        for value, n in counts:
            totals[value] += n

    def value(self, value: str) -> int:
        return self._counts[value]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=(self._label,))
        for value, n in tuple(self._counts.items()):  # the keys never change: no lock
            family.add_metric((value,), n)
        yield family


class _StateCacheCollector(Collector):
    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        hits, misses = self._counts()
        family = CounterMetricFamily(
            "recsvc_state_cache_lookups",
            "Recommend reads of live state from Redis, by whether the client-side cache "
            "answered them (hit) or Redis did (miss).",
            labels=("result",),
        )
        family.add_metric(("hit",), hits)
        family.add_metric(("miss",), misses)
        yield family


class MetricsHTTPServer:
    """The /metrics HTTP endpoint running on its own daemon thread.

    :meth:`shutdown` stops it, closes its socket and waits for the thread; it is also
    a context manager that does so on exit.
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The TCP port the endpoint listens on."""
        port: int = self._server.server_address[1]
        return port

    def shutdown(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        # shutdown() alone leaves the listening socket open (a ResourceWarning later).
        self._server.server_close()

    def __enter__(self) -> MetricsHTTPServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()


def start_metrics_http_server(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[MetricsHTTPServer, int]:
    """Serve ``registry`` in the Prometheus text format at ``http://host:port/metrics``.

    ``port`` 0 picks a free port. Returns the running server and the port it bound;
    stop it with ``server.shutdown()``.
    """
    # prometheus_client >= 0.20 returns (server, thread) and serves every path,
    # /metrics included, from a daemon thread.
    server, thread = start_http_server(port, addr=host, registry=registry)
    running = MetricsHTTPServer(server, thread)
    return running, running.port
