"""The offline trainer end to end: events → weights → ALS → index → artifact.

:func:`build_model` is the in-memory core that ``recsvc train`` and
``recsvc evaluate`` share, so the model evaluated is built exactly like the model
shipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from recsvc.artifact import (
    ModelArtifact,
    current_version,
    new_model_version,
    read_artifact,
    resolve,
    write_artifact,
)
from recsvc.catalog import CatalogItem
from recsvc.cobuy import MAX_BASKET, MAX_PARTNERS, MIN_SUPPORT, count_co_purchases
from recsvc.config import NeighborSettings, RepeatPolicy, Settings
from recsvc.errors import ArtifactError, ConfigError, DataError
from recsvc.events import EventType
from recsvc.foldin import FoldIn
from recsvc.index import ItemIndex, measure_recall
from recsvc.manifest import (
    BlendFitReport,
    BlendWeights,
    BoughtTogetherSection,
    DataSection,
    IndexSection,
    Manifest,
    NeighborsSection,
    PeersSection,
    RankingSection,
    SourceSummary,
    TrainedSettings,
)
from recsvc.model import Blend, Model
from recsvc.neighbors import NeighborModel
from recsvc.peers import PeerLists
from recsvc.pseudonyms import pseudonyms_from
from recsvc.store import KeyScheme
from recsvc.store.catalog import CatalogStore
from recsvc.store.erasures import erased_users

from .blend import fit_user_blend
from .fit import fit_als
from .interactions import (
    Interactions,
    build_interactions,
    drop_erased_users,
    net_of_returns,
    trending_popularity,
    visit_arrays,
)
from .loading import (
    Catalog,
    ColumnMapping,
    LoadSummary,
    load_catalog,
    load_events,
)
from .neighbors import PairCounter, build_neighbor_model, cores
from .peers import build_peers, fit_peers

if TYPE_CHECKING:
    from .evaluation import HoldoutSplit

__all__ = [
    "BuiltModel",
    "DataSpec",
    "LoadedData",
    "TrainResult",
    "build_model",
    "load_data",
    "repeat_share",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """Where the training data comes from."""

    events: tuple[Path, ...]
    format: str = "events"
    mapping: ColumnMapping | None = None
    catalog: Path | None = None
    skip_bad_rows: bool = False
    live_catalog: bool = False
    """Read the live catalogue from ``[redis] url`` (what the servers serve): its
    categories and availability win over the file's, and withdrawn items' events are
    dropped."""
    event_logs: tuple[Path, ...] = ()
    """Servers' event-log files (``events-*.csv``), read beside ``events`` in the
    canonical layout whatever ``format`` says, a bad row skipped and counted (a log
    cut by a power loss ends mid-row)."""


@dataclass(frozen=True)
class LoadedData:
    table: pa.Table
    catalog: Catalog | None
    summaries: tuple[LoadSummary, ...]
    erased_events: int


@dataclass(frozen=True)
class BuiltModel:
    """A model fitted in memory, with the matrices it was fitted on."""

    artifact: ModelArtifact
    interactions: Interactions
    timings: dict[str, float]


@dataclass(frozen=True)
class TrainResult:
    path: Path
    artifact: ModelArtifact
    seconds: dict[str, float]


def load_data(spec: DataSpec, settings: Settings) -> LoadedData:
    """Read every events file (plus the catalogue) and drop erased users' events."""
    if not spec.events and not spec.event_logs:
        raise DataError("no events file given")
    tables, summaries = [], []
    # ids of the events kept so far: a retried RecordEvents may sit in two replicas' logs
    seen_event_ids: set[str] = set()
    sources = [(p, spec.format, spec.mapping, spec.skip_bad_rows) for p in spec.events]
    sources += [(p, "events", None, True) for p in spec.event_logs]
    for path, layout, mapping, skip in sources:
        table, summary = load_events(
            path,
            format=layout,  # type: ignore[arg-type]
            mapping=mapping,
            skip_bad_rows=skip,
            seen_event_ids=seen_event_ids,
        )
        tables.append(table)
        summaries.append(summary)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    pseudonyms = pseudonyms_from(settings)
    if pseudonyms is not None:  # as the server stores them: no raw id past this line
        column = table.schema.get_field_index("user_id")
        table = table.set_column(column, "user_id", pseudonyms.column(table["user_id"]))
    erased = erased_users(settings)
    table, n_erased = drop_erased_users(table, erased)
    if n_erased:
        log.info("dropped %d events of %d erased users", n_erased, len(erased))
    if settings.retention.training_days is not None:
        oldest = int(time.time() - settings.retention.training_days * 86_400)
        recent = pc.greater_equal(table["timestamp"], oldest)
        n_old = table.num_rows - pc.sum(recent).as_py()
        if n_old:
            log.info("retention: %d events older than %g days not read", n_old,
                     settings.retention.training_days)  # fmt: skip
            table = table.filter(recent)
        if table.num_rows == 0:
            raise DataError(
                f"every event is older than [retention] training_days "
                f"({settings.retention.training_days:g}): nothing to train on"
            )
    table, n_returned = net_of_returns(table)
    if n_returned:
        log.info("returns took back %d purchased units", n_returned)
    catalog = load_catalog(spec.catalog, skip_bad_rows=spec.skip_bad_rows) if spec.catalog else None
    if spec.live_catalog:
        live = read_live_catalog(settings)
        withdrawn = sorted(i.item_id for i in live.values() if i.withdrawn)
        if withdrawn:
            kept = pc.invert(pc.is_in(table["item_id"], value_set=pa.array(withdrawn, pa.string())))
            log.info(
                "dropped %d events of %d withdrawn items",
                table.num_rows - pc.sum(kept).as_py(),
                len(withdrawn),
            )
            table = table.filter(kept)
        catalog = merge_live_catalog(catalog, live)
    return LoadedData(table, catalog, tuple(summaries), n_erased)


def read_live_catalog(settings: Settings) -> dict[str, CatalogItem]:
    """Every record of the live catalogue at ``[redis] url`` (ConfigError without one,
    StoreError when it cannot be read)."""
    url = settings.redis.url
    if url is None:
        raise ConfigError("the live catalogue is read from [redis] url (--redis-url)")

    async def snapshot() -> dict[str, CatalogItem]:
        store = CatalogStore.open(url, KeyScheme(settings.redis.prefix), socket_timeout=10.0)
        try:
            return (await store.snapshot()).records
        finally:
            await store.aclose()

    return asyncio.run(snapshot())


def merge_live_catalog(catalog: Catalog | None, live: dict[str, CatalogItem]) -> Catalog:
    """``catalog`` (a file's, maybe none) with the live records laid over it: an item's
    category is the most specific level of its live path, its availability whether it
    is shown now."""
    rows: dict[str, tuple[str | None, bool, str | None]] = {}
    if catalog is not None:
        for item_id, category, available, title in zip(
            catalog.item_id.to_pylist(),
            catalog.category.to_pylist(),
            catalog.available.to_pylist(),
            catalog.title.to_pylist(),
            strict=True,
        ):
            rows[item_id] = (category, bool(available), title)
    now = time.time()
    for item in live.values():
        category = item.category[-1] if item.category else None
        rows[item.item_id] = (category, item.shown(now), item.title or None)
    ids = list(rows)
    return Catalog(
        item_id=pa.array(ids, pa.string()),
        category=pa.array([rows[i][0] for i in ids], pa.string()),
        available=pa.array([rows[i][1] for i in ids], pa.bool_()),
        title=pa.array([rows[i][2] for i in ids], pa.string()),
    )


def repeat_share(table: pa.Table, share: float) -> float:
    """Of the purchases in the last ``share`` of the time span, by users who bought
    before it, the fraction that are items the same user bought before.

    This is how much "buy it again" a shop has: ~0.5 for groceries, ~0.1 for gifts.
    """
    purchases = table.filter(
        pa.compute.and_(
            pa.compute.equal(table["event_type"], EventType.PURCHASE.value),
            pa.compute.is_valid(table["user_id"]),
        )
    )
    if purchases.num_rows == 0:
        return 0.0
    ts = purchases["timestamp"].to_numpy()
    split = np.quantile(ts, 1.0 - share)
    users = pa.compute.dictionary_encode(purchases["user_id"]).combine_chunks().indices
    items = pa.compute.dictionary_encode(purchases["item_id"]).combine_chunks().indices
    u = users.to_numpy(zero_copy_only=False).astype(np.int64)
    i = items.to_numpy(zero_copy_only=False).astype(np.int64)
    key = u * (int(i.max()) + 1) + i
    before, after = ts < split, ts >= split
    earlier_users = np.unique(u[before])
    later = np.unique(key[after & np.isin(u, earlier_users)])
    if len(later) == 0:
        return 0.0
    return float(np.isin(later, np.unique(key[before])).mean())


# BLAS on one thread for the whole build (the ALS fit sets it too): the blend fit's and
# the session model's products are small, and with 2 OpenBLAS threads on a shared
# 2-core host each took 2-3x longer (threads spinning against other work). Here rather
# than in ``train`` so that ``evaluate`` and ``tune`` build at the same speed.
@threadpool_limits.wrap(limits=1, user_api="blas")  # type: ignore[untyped-decorator]
def build_model(
    data: LoadedData, settings: Settings, *, progress: bool = False, now: datetime | None = None
) -> BuiltModel:
    """Fit and index in memory; the artifact is not written."""
    timings: dict[str, float] = {}
    ns = settings.neighbors
    half_lives = (
        POPULARITY_HALF_LIVES
        if settings.weighting.popularity_half_life_days is None
        else (settings.weighting.popularity_half_life_days,)
    )
    spark = None
    if settings.als.engine == "spark":
        # the weighting and the aggregations in Spark SQL; the matrix stays there for
        # the fit (training/spark_data.py)
        from .spark import spark_session  # noqa: PLC0415 (the spark extra, optional)
        from .spark_data import spark_data  # noqa: PLC0415

        spark = spark_data(
            spark_session(settings.als.spark_master, settings.als.spark_driver_memory),
            data.table,
            settings.weighting,
            popularity_half_lives=half_lives,
            gap_seconds=int(ns.visit_gap_minutes * 60),
            max_length=ns.max_visit_length,
            neighbor_params=ns.params(),
        )
        inter, indptr, session_items = spark.interactions, spark.visit_indptr, spark.visit_items
        pair_counter: PairCounter | None = spark.pair_counter
        timings.update({f"spark_{k}": v for k, v in spark.seconds.items()})
    else:
        pair_counter = None
        t = time.perf_counter()
        inter = build_interactions(data.table, settings.weighting)
        timings["weighting_seconds"] = time.perf_counter() - t

        # the visits too before the fit: the last pass of Arrow kernels over the whole
        # table, so that one release hands back what they all left in Arrow's allocator
        t = time.perf_counter()
        indptr, session_items = visit_arrays(
            data.table,
            inter.item_ids,
            gap_seconds=int(ns.visit_gap_minutes * 60),
            max_length=ns.max_visit_length,
        )
        timings["visits_seconds"] = time.perf_counter() - t
        _release_arrow_memory()

    factors = fit_als(
        inter.weights,
        settings.als,
        progress=progress,
        spark_frame=spark.weights_frame if spark is not None else None,
    )
    timings["fit_seconds"] = factors.seconds

    t = time.perf_counter()
    index = ItemIndex.build(factors.item_factors, settings.index)
    timings["index_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    recall = _index_recall(index, factors.item_factors, factors.user_factors, settings)
    timings["index_recall_seconds"] = time.perf_counter() - t

    # the session model is built beside the ranking defaults and the blend fit (which
    # do not read it): most of its time is in NumPy and SciPy code that releases the
    # GIL, so with two cores the blend fit comes almost for free (docs/design.md)
    with ThreadPoolExecutor(1, thread_name_prefix="session-model") as pool:
        session_model = (
            pool.submit(
                _session_model,
                indptr,
                session_items,
                inter.n_items,
                ns,
                pair_counter=pair_counter,
            )
            if ns.enabled and ns.parallel_build and cores() > 1
            else None
        )
        t = time.perf_counter()
        ranking = _ranking_defaults(
            data.table, settings, session_revisit_share(indptr, session_items)
        )
        timings["ranking_seconds"] = time.perf_counter() - t
        popularity = inter.popularity
        peers: PeerLists | None = None
        peers_section: PeersSection | None = None
        if settings.ranking.user_blend is None:
            t = time.perf_counter()
            fitted = fit_user_blend(
                data.table,
                inter.item_ids,
                factors.item_factors,
                FoldIn(factors.item_factors, settings.als.regularization, settings.als.alpha),
                settings.weighting,
                allow_repeats=ranking.repeat_policy is RepeatPolicy.ALLOW,
                half_lives=half_lives,
                seed=settings.als.random_state,
            )
            timings["blend_seconds"] = time.perf_counter() - t
            if fitted is not None:
                if fitted.popularity_half_life_days != inter.popularity_half_life_days:
                    popularity = (
                        spark.popularity_by_half_life[fitted.popularity_half_life_days]
                        if spark is not None
                        else trending_popularity(
                            data.table, inter, settings.weighting, fitted.popularity_half_life_days
                        )
                    )
                user = fitted.blend
                if settings.peers.enabled and fitted.held is not None:
                    t = time.perf_counter()
                    peer_fit = fit_peers(
                        data.table,
                        inter.user_ids,
                        inter.item_ids,
                        factors.item_factors,
                        fitted.held,
                        settings.peers,
                    )
                    timings["peers_fit_seconds"] = time.perf_counter() - t
                    if peer_fit.weight > 0:
                        t = time.perf_counter()
                        peers = build_peers(
                            data.table, inter.user_ids, inter.item_ids, peer_fit.config,
                            settings.peers,
                        )  # fmt: skip
                        timings["peers_seconds"] = time.perf_counter() - t
                        user = peer_fit.blend
                        c = peer_fit.config
                        peers_section = PeersSection(
                            k=c.k,
                            groups=c.m,
                            basket_decay=c.r_b,
                            group_decay=c.r_g,
                            length=settings.peers.length,
                            pool=int(peers.pool.sum()),
                            customers=int(np.count_nonzero(np.diff(peers.lists.indptr))),
                            recall_at_20=peer_fit.recall,
                            recall_at_20_without=peer_fit.recall_without,
                        )
                if settings.ranking.repeat_weight is not None:
                    user = user.with_repeat_weight(settings.ranking.repeat_weight)
                ranking = ranking.model_copy(
                    update={
                        "user_blend": BlendWeights(**asdict(user)),
                        "user_blend_fit": BlendFitReport(
                            recall_at_20=fitted.recall,
                            users=fitted.users,
                            popularity_half_life_days=fitted.popularity_half_life_days,
                        ),
                    }
                )
        # the bought-together counts and the catalogue arrays, while the session
        # model is still being built (they are small: purchases only, one row an item)
        t = time.perf_counter()
        co = count_co_purchases(data.table, inter.item_ids)
        timings["bought_together_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        category, categories, available, n_catalog_only = _catalog_arrays(inter, data.catalog)
        created = now or datetime.now(UTC)
        version = new_model_version(factors.item_factors, created)
        timings["catalog_version_seconds"] = time.perf_counter() - t
        _release_arrow_memory()  # the blend fit's, before the session model's peak
        t = time.perf_counter()
        if session_model is not None:
            neighbors, timings["neighbors_seconds"] = session_model.result()
            timings["neighbors_wait_seconds"] = time.perf_counter() - t
        elif ns.enabled:
            neighbors, timings["neighbors_seconds"] = _session_model(
                indptr, session_items, inter.n_items, ns, parallel=False, pair_counter=pair_counter
            )
        else:
            neighbors = None
    if spark is not None:
        spark.release()
    neighbor_arrays = neighbors.to_arrays() if neighbors is not None else None
    rerank_weights = neighbor_arrays.pop("rerank_weights") if neighbor_arrays else None
    manifest = Manifest(
        model_version=version,
        created_at=created,
        data=DataSection(
            cutoff=datetime.fromtimestamp(inter.reference_time, UTC),
            cutoff_unix=inter.reference_time,
            **inter.stats,
            erased_events=data.erased_events,
            catalog_items_without_events=n_catalog_only,
            sources=tuple(SourceSummary(**asdict(s)) for s in data.summaries),
        ),
        config=TrainedSettings.of(settings),
        index=IndexSection(
            kind=index.kind,
            max_norm_sq=index.max_norm_sq,
            ef_search=settings.index.hnsw_ef_search,
            recall_k=settings.index.recall_k,
            recall=recall,
        ),
        ranking=ranking,
        neighbors=(
            NeighborsSection.from_vector(rerank_weights) if rerank_weights is not None else None
        ),
        bought_together=BoughtTogetherSection(
            baskets=co.n_baskets,
            pairs=int(co.partners.nnz),
            max_partners=MAX_PARTNERS,
            min_support=MIN_SUPPORT,
            max_basket=MAX_BASKET,
        ),
        peers=peers_section,
        metrics={f"index_recall_at_{settings.index.recall_k}": recall},
        timings=timings,
        files={},
    )
    artifact = ModelArtifact(
        manifest=manifest,
        item_factors=factors.item_factors,
        user_factors=factors.user_factors,
        item_ids=inter.item_ids,
        user_ids=inter.user_ids,
        popularity=popularity,
        user_items=inter.weights,
        user_purchases=inter.purchases,
        item_category=category,
        categories=categories,
        item_available=available,
        index=index,
        neighbors=neighbor_arrays,
        bought_together=co.to_arrays(),
        peers=peers,
    )
    return BuiltModel(artifact, inter, timings)


def _session_model(
    indptr: NDArray[np.int64],
    items: NDArray[np.int32],
    n_items: int,
    ns: NeighborSettings,
    *,
    parallel: bool = True,
    pair_counter: PairCounter | None = None,
) -> tuple[NeighborModel, float]:
    """The session model and the seconds its build took."""
    t = time.perf_counter()
    model = build_neighbor_model(
        indptr, items, n_items, ns.params(), parallel=parallel, pair_counter=pair_counter
    )
    return model, time.perf_counter() - t


def _release_arrow_memory() -> None:
    """Hand the pages Arrow's allocator keeps after freeing back to the system: after
    the table-wide Arrow kernels (~0.4 GiB at 10M events) they would otherwise sit
    under the NumPy and SciPy steps that follow, which allocate elsewhere."""
    pa.default_memory_pool().release_unused()


def train(spec: DataSpec, settings: Settings, *, progress: bool = False) -> TrainResult:
    """Load, fit, index, score on the trainer's holdout and write a new artifact
    version (not published)."""
    t = time.perf_counter()
    data = load_data(spec, settings)
    load_seconds = time.perf_counter() - t
    built = build_model(data, settings, progress=progress)
    artifact = built.artifact
    timings = {"load_seconds": load_seconds, **built.timings}
    t = time.perf_counter()
    split = _holdout_split(data, settings)
    # the gate reads the split's copy of the events before the cut: the whole table
    # goes before the holdout's weights are built beside that copy (at 10M events,
    # ~0.6 GiB off the trainer's peak then)
    del data
    _release_arrow_memory()
    metrics = {**artifact.manifest.metrics, **_gate_metrics(split, artifact, settings)}
    timings["holdout_seconds"] = time.perf_counter() - t
    # a copy: write_seconds, added below, cannot be in the manifest it times
    artifact.manifest = artifact.manifest.model_copy(
        update={"timings": dict(timings), "metrics": metrics}
    )
    t = time.perf_counter()
    path = write_artifact(artifact, settings.artifact_root)
    timings["write_seconds"] = time.perf_counter() - t
    log.info("wrote %s", path)
    return TrainResult(path, artifact, timings)


def _holdout_split(data: LoadedData, settings: Settings) -> HoldoutSplit | None:
    """The events of the publish gate's holdout (:func:`training.evaluation.holdout_split`)."""
    # here, not at the top: training.evaluation imports this module
    from .evaluation import holdout_split  # noqa: PLC0415

    return holdout_split(data.table, settings)


def _gate_metrics(
    split: HoldoutSplit | None, artifact: ModelArtifact, settings: Settings
) -> dict[str, float]:
    """The publish gate's metrics of the new model on the trainer's time-split holdout
    ``split``, and of the model CURRENT names now on the same customers
    (docs/evaluation.md)."""
    from .evaluation import HOLDOUT_USERS, holdout_metrics, holdout_of  # noqa: PLC0415

    holdout = holdout_of(split, settings) if split is not None else None
    root = settings.artifact_root
    current_name = current_version(root)
    current = None
    if current_name is not None and holdout is not None and holdout.cases:
        try:
            current = Model(read_artifact(resolve(root, current_name)))
        except ArtifactError as exc:
            log.warning("the current model %s cannot be compared with: %s", current_name, exc)
    metrics: dict[str, float] = holdout_metrics(holdout, artifact, settings, current, current_name)
    if not metrics[HOLDOUT_USERS]:
        log.warning("no held-out customer to score the model on: the publish gate cannot judge it")
    else:
        log.info(
            "holdout (%d of %d customers): served recall@20 %.4f ndcg@20 %.4f; popularity "
            "%.4f / %.4f; buy again %.4f / %.4f",
            metrics[HOLDOUT_USERS], holdout.held_out_users if holdout else 0,
            metrics["holdout_recall_at_20"], metrics["holdout_ndcg_at_20"],
            metrics["popularity_recall_at_20"], metrics["popularity_ndcg_at_20"],
            metrics["buy_again_recall_at_20"], metrics["buy_again_ndcg_at_20"],
        )  # fmt: skip
    return metrics


def _index_recall(
    index: ItemIndex,
    item_factors: NDArray[np.float32],
    user_factors: NDArray[np.float32],
    settings: Settings,
) -> float:
    if index.kind == "exact":
        return 1.0
    rng = np.random.default_rng(settings.als.random_state)
    n = min(settings.index.recall_queries, len(user_factors))
    queries = user_factors[rng.choice(len(user_factors), size=n, replace=False)]
    recall = measure_recall(index, item_factors, queries, settings.index.recall_k)
    log.info("index %s recall@%d vs exact: %.4f", index.kind, settings.index.recall_k, recall)
    return recall


#: The blends the trainer starts from when the config names none. The user blend is
#: then fitted on the shop's held-out last baskets (training/blend.py) when there are
#: enough; the session blend is the neighbour model's (docs/quality.md).
DEFAULT_USER_BLEND = Blend(cf=0.5, repeat=0.5, neighbors=0.0, popularity=0.0)
#: Popularity half-lives (days) the trainer chooses from with the blend: "what sold
#: in the last hours" (a grocery's next basket) to "this month" (a gift shop).
POPULARITY_HALF_LIVES = (0.25, 1.0, 7.0, 30.0)
DEFAULT_SESSION_BLEND = Blend(cf=0.0, repeat=0.0, neighbors=1.0, popularity=0.0)


def session_revisit_share(indptr: NDArray[np.int64], items: NDArray[np.int32]) -> float:
    """Of the session clicks after each session's first, the share that revisit an
    item clicked earlier in the same session (~0.2 on Diginetica's views)."""
    n_sessions = len(indptr) - 1
    later = len(items) - n_sessions
    if later <= 0:
        return 0.0
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), np.diff(indptr))
    pairs = session * (int(items.max()) + 1) + items
    # distinct pairs by a plain sort: np.unique (hash-based in numpy 2) took ~1 s at 1M;
    # the stable sort finds the runs (sorted but within sessions) as in the session model
    pairs.sort(kind="stable")
    distinct = 1 + int(np.count_nonzero(pairs[1:] != pairs[:-1]))
    return float((len(pairs) - distinct) / later)


def _ranking_defaults(table: pa.Table, settings: Settings, revisit_share: float) -> RankingSection:
    """The shop's repeat policy and blends, from its measured repeat behaviour."""
    rs = settings.ranking
    share = repeat_share(table, settings.evaluation.validation_share)
    policy = rs.repeat_policy
    if policy is RepeatPolicy.AUTO:
        policy = RepeatPolicy.ALLOW if share >= rs.auto_repeat_threshold else RepeatPolicy.EXCLUDE
    if rs.user_blend is not None:
        user = Blend(**rs.user_blend.model_dump())
    else:
        # a user's own history is the best predictor in proportion to the repeat share
        user = DEFAULT_USER_BLEND.with_repeat_weight(min(0.9, 2.0 * share))
    if rs.repeat_weight is not None:
        user = user.with_repeat_weight(rs.repeat_weight)
    session = (
        Blend(**rs.session_blend.model_dump())
        if rs.session_blend is not None
        else DEFAULT_SESSION_BLEND
    )
    session_repeats = (
        rs.session_repeats
        if rs.session_repeats is not None
        else revisit_share >= rs.auto_repeat_threshold
    )
    return RankingSection(
        repeat_policy=policy,
        repeat_share=share,
        session_revisit_share=revisit_share,
        user_blend=BlendWeights(**asdict(user)),
        session_blend=BlendWeights(**asdict(session)),
        session_repeats=session_repeats,
        user_blend_fit=None,
    )


def _catalog_arrays(
    inter: Interactions, catalog: Catalog | None
) -> tuple[NDArray[np.int32], NDArray[np.str_], NDArray[np.bool_], int]:
    """Category codes and availability aligned with the model's item vocabulary."""
    n = inter.n_items
    if catalog is None:
        return (
            np.full(n, -1, dtype=np.int32),
            np.zeros(0, dtype=np.str_),
            np.ones(n, dtype=bool),
            0,
        )
    ids = _as_list(catalog.item_id)
    cats = _as_list(catalog.category)
    avail = _as_list(catalog.available)
    categories = sorted({c for c in cats if c})
    cat_pos = {c: i for i, c in enumerate(categories)}
    row = {str(item): r for r, item in enumerate(ids)}
    category = np.full(n, -1, dtype=np.int32)
    available = np.ones(n, dtype=bool)
    for pos, item in enumerate(inter.item_ids.tolist()):
        r = row.get(item)
        if r is None:
            continue
        if cats[r]:
            category[pos] = cat_pos[cats[r]]
        available[pos] = bool(avail[r]) if avail[r] is not None else True
    n_catalog_only = len(set(row) - set(inter.item_ids.tolist()))
    return category, np.asarray(categories, dtype=np.str_), available, n_catalog_only


def _as_list(values: Sequence[Any] | pa.Array | pa.ChunkedArray | None) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return list(values.to_pylist())
    return list(values)
