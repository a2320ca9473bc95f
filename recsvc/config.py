"""One typed settings object for every role, built once in ``main`` and passed down.

Sources, later ones winning: defaults < TOML file (``--config``) < environment
(``RECSVC_`` prefix, ``__`` between levels, e.g. ``RECSVC_ALS__FACTORS=128``) <
command-line flags. Everything is validated when the object is built, so a bad
deploy fails before it trains or serves. ``config.example.toml`` documents every
field with its default.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsvc.errors import ConfigError
from recsvc.events import EventType

__all__ = [
    "ALSSettings",
    "BlendSettings",
    "EvaluationSettings",
    "IndexSettings",
    "NeighborParams",
    "NeighborSettings",
    "PeerSettings",
    "PlacementSettings",
    "PrivacySettings",
    "RankingSettings",
    "RedisSettings",
    "RepeatPolicy",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "SimilarMode",
    "WeightingSettings",
    "example_toml",
    "load_settings",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class WeightingSettings(_Section):
    """How raw events become interaction weights (before ALS confidence)."""

    event_weights: dict[EventType, float] = Field(
        default_factory=lambda: {t: t.spec.default_weight for t in EventType}
    )
    """Weight of one event of each type; types left out weigh 0 (ignored)."""

    half_life_days: float = Field(default=180.0, ge=0.0)
    """Exponential time decay: an event this many days older than the data cut-off
    weighs half as much. 0 switches decay off."""

    popularity_half_life_days: float | None = Field(default=None, ge=0.0)
    """Half-life of the time decay of item popularity (the ranking's prior and the
    popular fallback): shorter than ``half_life_days``, because what sells now predicts
    the next purchases better than what sold all year. 0 = no decay; None = chosen by
    the trainer with the blend (0.25, 1, 7 or 30 days; 7 when it cannot fit)."""

    log_quantity: bool = True
    """Scale by 1 + ln(quantity) rather than quantity, so bulk orders do not dominate."""

    @field_validator("event_weights")
    @classmethod
    def _non_negative(cls, value: dict[EventType, float]) -> dict[EventType, float]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"event weights must be >= 0, got {bad}")
        return value


class ALSSettings(_Section):
    """implicit's AlternatingLeastSquares, under implicit's own parameter names."""

    factors: int = Field(default=64, ge=1, le=1024)
    """Latent dimensions."""
    regularization: float = Field(default=0.05, ge=0.0)
    """L2 regularization (lambda)."""
    alpha: float = Field(default=10.0, gt=0.0)
    """Confidence scale: C_ui = 1 + alpha * weight_ui (Hu, Koren & Volinsky 2008)."""
    iterations: int = Field(default=15, ge=1, le=500)
    """ALS sweeps."""
    random_state: int = 42
    """Seed of the initial factors."""
    num_threads: int = Field(default=0, ge=0)
    """Threads for the fit; 0 = one per core."""
    use_cg: bool = True
    """Conjugate-gradient solver (faster; Cholesky when false)."""
    engine: Literal["implicit", "spark"] = "implicit"
    """What fits the factors: implicit on this machine, or Spark MLlib's ALS
    (``implicitPrefs``, the same Hu-Koren-Volinsky model; the ``spark`` extra and a Java
    runtime) on ``spark_master`` (training/spark.py). The artifact is the same either
    way; its manifest records the engine."""
    spark_master: str = "local[*]"
    """Spark master URL for ``engine = "spark"``: ``local[*]`` (this machine's cores),
    ``spark://host:7077`` (a standalone cluster), ``yarn``, ``k8s://...``."""
    spark_driver_memory: str = "4g"
    """``spark.driver.memory`` of the session the trainer starts (local mode runs the
    executors inside the driver)."""


class IndexSettings(_Section):
    """The FAISS index over item vectors (maximum inner product)."""

    kind: Literal["auto", "exact", "normscan", "hnsw", "ivf"] = "auto"
    """``auto`` = exact up to ``exact_max_items`` items, ``normscan`` (exact search that
    stops early on ALS's skewed item norms) beyond; ``hnsw`` and ``ivf`` are
    approximate and must pass the recall floor."""
    exact_max_items: int = Field(default=50_000, ge=1)
    """Largest catalogue served by exact search when ``kind`` is ``auto``."""
    hnsw_m: int = Field(default=32, ge=4, le=256)
    """HNSW graph degree."""
    hnsw_ef_construction: int = Field(default=200, ge=8)
    """HNSW build-time beam width."""
    hnsw_ef_search: int = Field(default=128, ge=8)
    """HNSW query-time beam width (recall vs latency)."""
    ivf_nlist: int = Field(default=0, ge=0)
    """IVF cells; 0 = 4·sqrt(items)."""
    ivf_nprobe: int = Field(default=32, ge=1)
    """IVF cells visited per query."""
    recall_k: int = Field(default=20, ge=1)
    """k of the recall@k measured against exact search at build time."""
    recall_queries: int = Field(default=1000, ge=10)
    """Sampled user vectors used as queries for that measurement."""
    recall_floor: float = Field(default=0.95, ge=0.0, le=1.0)
    """Publishing is refused when the measured recall is below this."""


class RepeatPolicy(StrEnum):
    """Whether items the user already bought may be recommended again."""

    AUTO = "auto"
    """Decided by the trainer from the shop's measured repeat behaviour."""
    ALLOW = "allow"
    EXCLUDE = "exclude"


class SimilarMode(StrEnum):
    """What SimilarItems looks for."""

    SIMILAR = "similar"
    """Items close in the model's item space (substitutes)."""
    BOUGHT_TOGETHER = "bought_together"
    """Items the shop's baskets hold with the given ones (complements)."""


class NeighborParams(_Section):
    """Hyperparameters of the item-neighbour model (:mod:`recsvc.neighbors`): the
    neighbour search over past visits, the sequential rules and the re-ranker.
    Defaults tuned on a Diginetica validation split; "build" fields are baked into the
    arrays at training time, the others act at scoring time. The artifact records the
    values it was built with."""

    neighbors: int = Field(default=200, ge=1)
    """How many of the most similar past visits vote (STAN's ``k``)."""
    sample_size: int = Field(default=1000, ge=1)
    """How many of the most recent past visits that share an item with the live
    session are compared with it (V-SKNN's ``m``)."""
    session_decay: float = Field(default=4.0, gt=0.0)
    """Live-session item recency: the item ``d`` clicks before the last weighs
    ``exp(-d / session_decay)`` in the similarity (STAN's ``lambda1``)."""
    recency_decay: float = Field(default=80_000.0, ge=0.0)
    """Neighbour recency: a past visit ``a`` visits older than the newest weighs
    ``exp(-a / recency_decay)`` (STAN's ``lambda2`` over visit order); 0 = off."""
    neighbor_decay: float = Field(default=2.0, gt=0.0)
    """Neighbour item position: an item ``d`` clicks from an anchor in a neighbour gets
    ``exp(-d / neighbor_decay)`` of its vote (STAN's ``lambda3``)."""
    before_weight: float = Field(default=0.75, ge=0.0)
    """Extra factor for a neighbour's items clicked before the anchor (items after it are
    what tends to come next)."""
    anchor_decay: float = Field(default=2.0, ge=0.0)
    """0: a neighbour's votes are anchored at the most recent shared item (STAN).
    Positive: every shared item anchors votes, the one ``d`` clicks before the session's
    last weighted ``exp(-d / anchor_decay)``."""
    idf: float = Field(default=1.0, ge=0.0)
    """Exponent of the items' IDF in the similarity (0 = plain STAN, 1 = V-STAN)."""
    length_exponent: float = Field(default=0.25, ge=0.0)
    """A past visit of ``L`` distinct items has its similarity divided by
    ``L ** length_exponent`` (0.5: cosine)."""
    candidates: int = Field(default=100, ge=1)
    """How many of the best neighbour items are re-ranked."""
    rule_candidates: int = Field(default=50, ge=1)
    """How many of the last item's strongest rule successors join the candidates."""
    rule_window: int = Field(default=3, ge=1)
    """The ``rule_window`` feature's rules come from this many last items."""
    rule_decay: float = Field(default=0.5, ge=0.0)
    """... the item ``d`` clicks before the last scaled by ``rule_decay ** d``."""
    embedding_decay: float = Field(default=1.0, gt=0.0)
    """The session's embedding: its clicks' vectors weighted ``exp(-d / embedding_decay)``
    for the click ``d`` before the last."""
    rule_steps: int = Field(default=10, ge=1)
    """Build: ``b`` counts as following ``a`` when at most this many clicks later."""
    rule_successors: int = Field(default=200, ge=1)
    """Build: the strongest successors kept per item."""
    embedding_dim: int = Field(default=64, ge=0)
    """Build: item embedding size (0 = no embedding features)."""
    embedding_window: int = Field(default=3, ge=1)
    """Build: items at most this many clicks apart co-occur (weight ``1 / gap``)."""
    recent_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    """Build: the ``recent`` feature counts clicks in this newest share of visits."""
    rerank: bool = True
    """Build: fit re-ranking weights (false: the neighbour score alone)."""
    rerank_holdout: float = Field(default=0.1, gt=0.0, lt=1.0)
    """Build: the re-ranker is fitted on prefix->next cases of this newest share of the
    past visits, with a model built from the older ones."""
    rerank_cases: int = Field(default=3_000, ge=1)
    """Build: about this many such cases are used (every ``n // rerank_cases``-th of the
    ``n``; fewer than twice as many). Each costs a neighbour search (~1 ms); 3,000 score
    within 0.001 HR@20 / MRR@20 of 10,000 on the Diginetica validation split."""
    rerank_l2: float = Field(default=1e-3, ge=0.0)
    """Build: L2 penalty of the re-ranker (on standardised features)."""


class NeighborSettings(NeighborParams):
    """The item-neighbour model: session-kNN over the shop's past visits, sequential
    rules and a re-ranker (:mod:`recsvc.neighbors`); its hyperparameters
    (:class:`NeighborParams`) and how training builds it."""

    enabled: bool = True
    """Build it. Without it the session path folds the session into an ALS vector
    and no blend can weigh neighbours (training is then ALS + index only)."""
    visit_gap_minutes: float = Field(
        default=30.0,
        gt=0.0,
        validation_alias=AliasChoices("visit_gap_minutes", "session_gap_minutes"),
    )
    """A known customer's past events further apart than this start a new visit (the
    "sessions" of session-kNN; ``session_gap_minutes`` is accepted as its old name)."""
    max_visit_length: int = Field(
        default=200,
        ge=2,
        validation_alias=AliasChoices("max_visit_length", "max_session_length"),
    )
    """A longer visit keeps its last this many events (``max_session_length`` is accepted
    as its old name)."""
    parallel_build: bool = True
    """With more than one core, build it on a thread beside the blend fit, and the
    re-ranker's model beside the final one (taking turns in their memory-heaviest
    steps): ~25% less training time at 10M events (the same artifact), for a higher
    peak memory; false builds one step at a time."""

    def params(self) -> NeighborParams:
        """The hyperparameters alone (what the model and its artifact keep)."""
        return NeighborParams(**{name: getattr(self, name) for name in NeighborParams.model_fields})


class BlendSettings(_Section):
    """Weights of the ranking signals; each signal is scaled to [0, 1] first."""

    cf: float = Field(default=1.0, ge=0.0)
    """Inner product of the user's (or session's) ALS vector with the item."""
    repeat: float = Field(default=0.0, ge=0.0)
    """The user's own decayed purchase weight of the item (buy again)."""
    neighbors: float = Field(default=0.0, ge=0.0)
    """The item-neighbour model's score for the session's (or user's) items."""
    popularity: float = Field(default=0.0, ge=0.0)
    """The item's decayed popularity (a prior)."""


class PeerSettings(_Section):
    """Customers like you: each known customer's list of what their nearest customers
    buy (TIFU-KNN's neighbour part, :mod:`recsvc.peers`), a fourth signal of the
    fitted user blend. The trainer fits its weight (and the neighbour count and basket
    decay) on the blend's held-out last baskets, keeping the blend's other weights;
    where it does not help, the weight is 0 and no lists are kept."""

    enabled: bool = True
    """Fit the signal (only with a fitted user blend: ``[ranking] user_blend`` unset)."""
    pool_size: int = Field(default=30_000, ge=2)
    """Only the most recently active this many customers (by their last purchase) can
    be anyone's neighbour: the search costs customers × pool, never customers²."""
    max_lists: int = Field(default=50_000, ge=1)
    """Only the most recently active this many customers get a list (the others are
    served without the signal): each list costs its k neighbours' items (at 10M
    synthetic events and k = 1000, ~6 s per 1,000 lists)."""
    length: int = Field(default=200, ge=1)
    """Items kept in each customer's list (4 bytes of score and 4 of item each, per
    customer, in the artifact and the server's memory)."""


class RankingSettings(_Section):
    """The served ranking: candidates from the index, the user's purchases and the
    item neighbours, scored by a weighted blend of their signals."""

    repeat_policy: RepeatPolicy = RepeatPolicy.AUTO
    """Default repeat policy of the shop; requests may override it."""
    repeat_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    """Blend weight of the buy-again signal against the rest (0 = never, 1 = buy-again
    first). None = chosen by the trainer from the shop's measured repeat share."""
    user_blend: BlendSettings | None = None
    """The blend for known users; None = chosen by the trainer (``recsvc tune`` writes
    a fitted one). ``repeat_weight``, when set, overrides its ``repeat``."""
    session_blend: BlendSettings | None = None
    """The blend for anonymous sessions; None = chosen by the trainer."""
    session_repeats: bool | None = None
    """Whether items of the live session may be recommended again by default; None =
    when at least ``auto_repeat_threshold`` of the shop's session clicks revisit an
    item of the same session (measured by the trainer)."""
    overfetch: int = Field(default=4, ge=1, le=64)
    """Candidates fetched from the index per requested item, so filters still leave k
    (k + 60 at most; a search that still falls short widens). Without filters at most
    2 per item: the blend's headroom."""
    live_popularity_weight: float = Field(default=1.0, ge=0.0)
    """Weight of live popularity (what sells now, counted from RecordEvents by every
    replica) beside the trained popularity, in the ranking's prior and the popular
    lists: 1 = equal footing; 0 = trained popularity only."""
    live_popularity_half_life_hours: float = Field(default=6.0, gt=0.0)
    """Live popularity halves every this many hours: short enough that a trend shows
    within minutes and fades within a day."""
    new_item_evidence: float = Field(default=2.0, gt=0.0)
    """New products (live catalogue items the model lacks): what their attributes'
    guess of their place is worth, in shoppers' meetings (co-views, co-purchases).
    Their place mixes the two as ``(n·met + evidence·attributes) / (n + evidence)``,
    and a trained item's similar list weighs them by ``n / (n + evidence)``."""
    max_new_items: int = Field(default=10_000, ge=0)
    """At most this many new products are placed and served (the newest by their
    catalogue update); 0 = none."""
    auto_repeat_threshold: float = Field(default=0.15, ge=0.0, le=1.0)
    """``auto`` allows repeats when at least this share of a user's next purchases
    are items they bought before (measured by the trainer)."""


class RedisSettings(_Section):
    """Where user vectors and live state are kept."""

    url: str | None = None
    """redis://, rediss:// or unix:// URL of one Redis, or
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS) of a
    Redis Cluster given any of its nodes; None = no external Redis (``serve`` starts a
    private one; ``publish`` then skips loading vectors)."""
    prefix: str = Field(default="recsvc", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Namespace of every key."""
    vector_ttl_seconds: int = Field(default=14 * 24 * 3600, ge=60)
    """Lifetime of a published user vector."""
    socket_timeout_seconds: float = Field(default=0.5, gt=0.0)
    """Per-command timeout; the request path must not wait on a slow Redis."""
    read_client: Literal["auto", "thin", "redis-py"] = "auto"
    """What reads a Recommend's state (recsvc/store/reader.py): ``thin``, a pipelined
    asyncio/hiredis reader with a client-side cache (plain TCP and unix sockets; a fifth
    of redis-py's CPU per read); ``redis-py``, a redis-py pipeline (any URL, TLS
    included; no cache); ``auto``, thin where it can speak the URL, else redis-py."""
    publish_batch_size: int = Field(default=1_000, ge=1)
    """Vectors per pipelined batch when publishing. 1,000 SETs are ~2 ms of Redis's
    thread and ~7 ms of the publisher's CPU, in 5 bursts a second at the default rate;
    10,000 were ~20 ms and 70 ms (benchmarks/results/publish)."""
    publish_rate_per_second: float = Field(default=5_000.0, ge=0.0, allow_inf_nan=False)
    """Most user vectors ``recsvc publish`` writes per second, so that loading a new
    model leaves Redis and the servers their CPU; 0 = as fast as Redis answers (an
    offline load into an idle Redis). A vector costs ~9 µs of CPU (7 in the publisher,
    2 in Redis): 5,000/s is 1% of Redis's thread and 0.05 of a core, little enough
    that a server sharing 2 cores with Redis and the publisher keeps >= 0.9x its
    throughput even if it pays for all of it; 1M users take 200 s
    (benchmarks/results/publish)."""


class ServerSettings(_Section):
    """The gRPC server (``recsvc serve``)."""

    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 / [::] to serve beyond this machine."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 = any free port (tests)."""
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    """HTTP port of /metrics; None = no metrics endpoint."""
    processes: int = Field(default=1, ge=1, le=64)
    """Server processes sharing the port (SO_REUSEPORT); process i serves /metrics on
    ``metrics_port + i``. Helps only with spare cores: the kernel spreads client
    connections, not calls (benchmarks/results/levers.md)."""
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """Event loop of each server process; uvloop measured slower under grpc.aio 1.85."""
    max_concurrency: int = Field(default=256, ge=1)
    """Calls in flight above this are refused with RESOURCE_EXHAUSTED."""
    grace_seconds: float = Field(default=10.0, ge=0.0)
    """On SIGTERM, after the drain, how long calls in flight may take to finish."""
    drain_seconds: float = Field(default=5.0, ge=0.0)
    """On SIGTERM, health turns NOT_SERVING at once and the server keeps serving this
    long, so load balancers (a Kubernetes readiness probe, clients' health-checked
    round robin) take it out of rotation before it stops accepting calls; then calls in
    flight finish within ``grace_seconds``. SIGINT (Ctrl-C) skips the drain."""
    reload_poll_seconds: float = Field(default=5.0, gt=0.0)
    """How often the CURRENT pointer is checked for a new model (SIGHUP checks at once)."""
    artifact_url: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://.+")
    """Object-store URL of the published models (``s3://bucket/shop``; any fsspec URL,
    the ``object-store`` extra): the server mirrors its CURRENT version into the
    artifact root (a local directory then) every ``reload_poll_seconds``, checksums
    verified (:mod:`recsvc.objectstore`; ``recsvc push`` uploads). None: the artifact
    root is where models are published (a shared directory for several replicas)."""
    default_k: int = Field(default=10, ge=1)
    """k when a request leaves it 0."""
    max_k: int = Field(default=500, ge=1)
    """Largest k a request may ask for."""
    max_session_events: int = Field(default=100, ge=1)
    """Most inline session events a Recommend may carry."""
    max_batch_events: int = Field(default=1000, ge=1)
    """Most events a RecordEvents batch may carry."""
    max_id_bytes: int = Field(default=256, ge=8)
    """Longest user, session or item id (UTF-8 bytes)."""
    clock_skew_seconds: float = Field(default=300.0, ge=0.0)
    """How far in the future an event time may lie."""
    lru_size: int = Field(default=100_000, ge=0)
    """User vectors kept in process memory (0 = no in-process cache)."""
    lru_ttl_seconds: float = Field(default=30.0, gt=0.0)
    """How long an in-process vector is trusted before Redis is asked again."""
    degraded_reserve_seconds: float = Field(default=0.03, ge=0.0)
    """Recommend waits for the live state only as long as the call's deadline leaves
    after this reserve, then answers degraded (from the request and the artifact) in
    the time reserved: a slow Redis makes answers degraded, never late."""
    degraded_retry_seconds: float = Field(default=0.25, gt=0.0)
    """After the live state failed or was too slow, Recommend answers degraded without
    asking it for this long, then tries again: an outage costs one wait, not one per
    call, and recovery comes within this time of Redis returning."""
    state_cache_size: int = Field(default=50_000, ge=0)
    """Redis keys (user vectors, histories, sessions) whose values each process keeps,
    invalidated by Redis's pushes as soon as another process or replica writes them
    (server-assisted client-side caching, RESP3); 0 = read Redis on every Recommend.
    A customer's read is 5 keys (vector, history, consent, link, dismissed items; 6
    with rotation, 7-8 with a session), so 50,000 keep about 10,000 customers: 31 MB
    measured with 20-event histories (an LRU: past its size, the least recently read
    go)."""
    state_cache_seconds: float = Field(default=30.0, gt=0.0)
    """Longest a kept Redis value answers without being read again."""
    history_max_events: int = Field(default=200, ge=1)
    """Recent events kept per user in Redis."""
    history_ttl_seconds: int = Field(default=90 * 24 * 3600, ge=60)
    """A user's recent history expires this long after their last event."""
    session_max_events: int = Field(default=50, ge=1)
    """Events kept per session."""
    session_ttl_seconds: int = Field(default=30 * 60, ge=60)
    """A session expires this long after its last event."""
    shown_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """Impression counts (for rotation, ``[placements.*] rotate_after``) expire this
    long after the shopper's last impression."""
    shown_max_items: int = Field(default=500, ge=1)
    """Items whose impressions are counted per shopper (the least shown go first)."""
    dismiss_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    """An item the shopper turned down (NOT_INTERESTED or RETURN events) is not
    recommended to them for this long."""
    dismissed_max_items: int = Field(default=200, ge=1)
    """Items whose dismissal is kept per shopper (the ones ending soonest go first)."""
    dismiss_similar_cosine: float = Field(default=0.8, ge=-1.0, le=1.0)
    """Items whose factors' cosine with a dismissed item is at least this sink too
    (their score times ``dismiss_similar_weight``); 1: only the item itself."""
    dismiss_similar_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """What the score of an item like a dismissed one is multiplied by."""
    experiments_file: Path | None = None
    """A TOML file of ``[[experiment]]`` tables (docs/experiments.md) this server sets
    as the shared A/B experiments whenever it changes (checked every
    ``reload_poll_seconds``); one that does not parse or check is logged and the
    running experiments stay. None: experiments come only from SetExperiments."""
    attribution_window_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """An impression, click, add to cart or purchase carrying a recommendation id is
    attributed to its answer's variant within this long after the answer."""
    link_max_ids: int = Field(default=20, ge=1)
    """Most ids (device, card, app id, hashed e-mail) linked to one customer (LinkIds)."""
    link_ttl_seconds: int = Field(default=180 * 24 * 3600, ge=60)
    """A linked id is forgotten this long after it was last linked (LinkIds again
    renews it: a shop links at each login), like the rest of the live state."""
    event_dedupe_seconds: int = Field(default=24 * 3600, ge=60)
    """How long the ids of applied events are remembered per user (or anonymous
    session), so RecordEvents retried within it applies each event once."""
    session_weight_boost: float = Field(default=3.0, gt=0.0)
    """Session events weigh this much more than stored history in the fold-in:
    what the shopper did seconds ago says most about what they want now."""
    placements: tuple[str, ...] = ("home", "pdp", "cart", "search", "email", "checkout")
    """Placement labels counted as themselves in metrics; others count as "other"."""
    event_log_dir: Path | None = None
    """Where accepted events are appended for retraining; None =
    ``<artifact_root>/eventlog``."""
    event_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """The event log rotates to a new file past this size."""
    compact_interval_seconds: float = Field(default=3600.0, ge=0.0)
    """How often the server removes erased customers from its event log and the kept
    model versions (:mod:`recsvc.compaction`; ``recsvc compact`` does it on demand),
    then applies ``[retention]`` (``recsvc gc``). 0 = never."""
    tls_cert: Path | None = None
    """PEM certificate chain; with ``tls_key``, the server speaks TLS only."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed."""
    auth_token: str | None = Field(default=None, repr=False)
    """Bearer token required (``authorization: Bearer <token>``) for RecordEvents and
    ForgetUser; None = no authentication."""
    auth_all_rpcs: bool = False
    """Require the token on every RPC, not just the writing ones."""


class PlacementSettings(_Section):
    """What one placement's answers get (``[placements.<name>]``)."""

    max_per_category: int = Field(default=0, ge=0, le=500)
    """Diversity: at most this many items of one category in an answer for this
    placement (an item's most specific category); 0: no cap. A request's
    max_per_category overrides it."""
    similar_mode: SimilarMode = SimilarMode.SIMILAR
    """What SimilarItems answers for this placement when the request names no mode:
    ``similar`` (substitutes) or ``bought_together`` (a product page's "bought
    together", a cart's complements)."""
    trending_weight: float | None = Field(default=None, ge=0.0, le=1.0)
    """Recommend: the share of popularity (the trained one blended with what sells
    now) in this placement's blend, the other signals sharing the rest (a home page:
    personal + trending); None = the model's blend."""
    rotate_after: int = Field(default=0, ge=0, le=100)
    """Recommend: an item shown to the shopper this many times (IMPRESSION events
    carrying their user or session id, in any placement, within
    ``[server] shown_ttl_seconds``) with no click, add to cart or purchase of it since
    is demoted (its score times ``rotation_weight``), so the list rotates; 0: off."""
    rotation_weight: float = Field(default=0.2, gt=0.0, lt=1.0)
    """What a rotated-out item's score is multiplied by (see ``rotate_after``)."""


class RetentionSettings(_Section):
    """How long files are kept (``recsvc gc``, and servers every
    ``[server] compact_interval_seconds``; docs/data-protection.md). Live state in
    Redis expires by its own TTLs (``[server] history_ttl_seconds`` and the like)."""

    event_log_days: float | None = Field(default=400.0, gt=0.0)
    """Event-log files not appended to for this long are deleted: a year of events (a
    yearly season) plus the time to retrain on it. None = kept until deleted by hand."""
    training_days: float | None = Field(default=None, gt=0.0)
    """Training reads no event older than this (counted back from now); None = every
    event the input files hold (the shop's own exports carry their own retention,
    and a public dataset's events are years old)."""
    keep_versions: int = Field(default=5, ge=1)
    """The newest model versions kept, whatever their age."""
    keep_days: float | None = Field(default=30.0, gt=0.0)
    """Versions younger than this are kept too; older ones beyond ``keep_versions``
    are deleted. CURRENT and the rollback target are never deleted. None = only
    ``keep_versions`` counts."""


class EvaluationSettings(_Section):
    """Offline evaluation."""

    ks: tuple[int, ...] = (10, 20)
    """Cut-offs reported."""
    validation_share: float = Field(default=0.1, gt=0.0, lt=0.5)
    """Share of the training period held out (by time) to choose the blend, and the
    trainer's holdout that the publish gate reads (docs/evaluation.md)."""
    publish_tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Publishing is refused when the model's holdout Recall@20 or NDCG@20 is below the
    current model's, on the same held-out customers, by more than this share of it
    (relative: 0.05 = 5 %; two seeds of one model differ by up to 2-3 %).
    ``recsvc publish --force`` overrides."""


class PrivacySettings(_Section):
    """Pseudonymous customer ids (docs/data-protection.md)."""

    pseudonymous_ids: bool = False
    """Replace every customer id at the boundary (each RPC, each file training reads)
    with a keyed hash of it (HMAC-SHA256 with ``id_key_file``'s secret), so no raw id is
    stored in Redis, the event log, the erasure list or a model version. Session and
    item ids are kept as given."""
    id_key_file: Path | None = None
    """File holding the secret of the keyed hash (at least 32 bytes; ``head -c 32
    /dev/urandom > id.key``). Required with ``pseudonymous_ids``; every replica and the
    trainer must use the same one."""


class Settings(BaseSettings):
    """Everything recsvc can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="RECSVC_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    artifact_root: Path = Path("artifacts")
    """Directory holding one sub-directory per model version, plus CURRENT."""
    erasure_list: Path | None = None
    """File of erased user ids, one per line (written by ForgetUser); None =
    ``<artifact_root>/erased_users.txt``."""
    weighting: WeightingSettings = WeightingSettings()
    als: ALSSettings = ALSSettings()
    index: IndexSettings = IndexSettings()
    ranking: RankingSettings = RankingSettings()
    neighbors: NeighborSettings = NeighborSettings()
    peers: PeerSettings = PeerSettings()
    redis: RedisSettings = RedisSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    retention: RetentionSettings = RetentionSettings()
    privacy: PrivacySettings = PrivacySettings()
    server: ServerSettings = ServerSettings()
    placements: dict[str, PlacementSettings] = {}
    """Per-placement settings by placement name (``[placements.pdp]``,
    ``max_per_category = 2``); a placement not named here gets the defaults."""
    placements_file: Path | None = None
    """A TOML file of ``[placements.<name>]`` tables that replaces ``placements``,
    read again by a running server whenever it changes (checked every
    ``server.reload_poll_seconds``, and on SIGHUP): placements change without a
    restart. A file that does not parse is logged and the last good one kept."""

    @property
    def erasure_path(self) -> Path:
        """Where the erasure list lives."""
        return self.erasure_list or self.artifact_root / "erased_users.txt"

    @property
    def event_log_path(self) -> Path:
        """Where the server appends accepted events."""
        return self.server.event_log_dir or self.artifact_root / "eventlog"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; flags come in as nested ``overrides``.

    Raises :class:`ConfigError` with every problem on one line.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    cls: type[Settings] = Settings
    if config_file is not None:

        class _FromFile(Settings):
            model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})

        cls = _FromFile
    try:
        settings = cls(**_drop_none(overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        source = f" (file {config_file})" if config_file else ""
        raise ConfigError(f"invalid settings{source}: {problems}") from exc
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"cannot read settings from {config_file}: {exc}") from exc
    return settings


def example_toml() -> str:
    """``config.example.toml``: every setting with its default and its docstring.

    Generated, so the example can never drift from the code (a test compares them);
    regenerate with ``python -m recsvc.config > config.example.toml``.
    """
    lines = [
        "# recsvc settings: every field with its default. Pass with `recsvc --config FILE`.",
        "# Environment variables override this file: RECSVC_<FIELD>, nested with __,",
        "# e.g. RECSVC_ALS__FACTORS=128; command-line flags override both.",
        "# Generated by `python -m recsvc.config`; do not edit by hand.",
        "",
    ]
    defaults = Settings.model_construct()
    sections = []
    for name, info in Settings.model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
        elif name == "placements":
            continue  # a table of sections: shown, commented, at the end
        else:
            lines += _toml_field(name, info.description, value)
    for name, section in sections:
        lines += ["", f"[{name}]"]
        for field_name, info in type(section).model_fields.items():
            lines += _toml_field(field_name, info.description, getattr(section, field_name))
    doc = " ".join((Settings.model_fields["placements"].description or "").split())
    lines += ["", f"# {doc}", "# [placements.pdp]"]
    example = {
        "max_per_category": 2,
        "similar_mode": SimilarMode.BOUGHT_TOGETHER.value,
        "trending_weight": 0.3,
        "rotate_after": 3,
        "rotation_weight": 0.2,
    }
    for field_name, info in PlacementSettings.model_fields.items():
        lines += [
            line if line.startswith("#") else f"# {line}"
            for line in _toml_field(field_name, info.description, example[field_name])
        ]
    return "\n".join(lines) + "\n"


def _toml_field(name: str, doc: str | None, value: Any) -> list[str]:
    out = [f"# {line}" for line in " ".join((doc or "").split()).split("\n") if line]
    if value is None:
        return [*out, f"# {name} ="]
    return [*out, f"{name} = {_toml_value(value)}"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Flags left unset arrive as None; they must not override lower sources."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


if __name__ == "__main__":  # pragma: no cover
    print(example_toml(), end="")
