"""The trainer's weighting and aggregations in Spark SQL (``[als] engine = "spark"``).

What :func:`training.interactions.build_interactions`, ``trending_popularity`` and
``visit_arrays`` compute over the event table on the driver, computed here by Spark
over the same events, so that the ALS fit reads its matrix from Spark without it ever
being built on the driver:

- the event weights (event-type weight × ``1 + ln(quantity)`` × half-life decay, as
  :func:`recsvc.weighting.event_weights`), summed per (user, item): the matrix ALS fits
  (:func:`training.spark.fit_als_frame`), and the artifact's ``user_items``;
- buy-again: each purchase basket holding an item counts once (its newest line's
  weight, units not counted), per (user, item): plain and decayed;
- popularity (guests' events included) at every candidate popularity half-life in one
  pass (the blend fit picks one);
- the visits of the item-neighbour model: a known user's events split where more than
  the gap passes, a guest's basket as one visit, the last ``max_length`` events of each,
  visits ordered by their first event.

Ids are numbered in order of first appearance in the event table, as the driver's
``pc.dictionary_encode`` numbers them, so the arrays equal the implicit engine's (the
sums to float rounding: Spark adds in float64). What comes back to the driver is
aggregate-sized: ``(n_users + n_items)`` ids, the matrices' non-zeros, and the visits'
item positions (4 bytes an event in a visit). What still runs on the driver over the
event table (loading, the blend fit, the bought-together counts, the repeat share, the
publish gate's holdout) is listed in docs/design.md, "Training beyond one machine".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.config import WeightingSettings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.neighbors import NeighborParams
from recsvc.weighting import EVENT_TYPES, SECONDS_PER_DAY, event_type_weights

from .interactions import (
    DEFAULT_POPULARITY_HALF_LIFE,
    Interactions,
    _weightless,
    interaction_stats,
)
from .neighbors import gap_sums, pair_matrix, pair_plan

__all__ = ["SparkData", "spark_data"]

_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "quantity", "basket_id")


@dataclass
class SparkData:
    """The aggregates Spark computed, and the matrix it keeps for the fit."""

    interactions: Interactions
    popularity_by_half_life: dict[float, NDArray[np.float32]]
    """``(n_items,)`` popularity at each half-life asked for (days)."""
    visit_indptr: NDArray[np.int64]
    visit_items: NDArray[np.int32]
    pair_counter: SparkPairCounter
    """The session model's pair counts, over the visits Spark keeps (persisted)."""
    weights_frame: Any
    """Spark DataFrame ``(user int, item int, w float)``, cached: ALS's input."""
    seconds: dict[str, float]

    def release(self) -> None:
        """Drop what Spark keeps for the fit and the session model."""
        self.weights_frame.unpersist()
        self.pair_counter.release()


def spark_data(
    session: Any,
    table: pa.Table,
    settings: WeightingSettings,
    *,
    popularity_half_lives: tuple[float, ...],
    gap_seconds: int,
    max_length: int,
    neighbor_params: NeighborParams | None = None,
) -> SparkData:
    """Weigh and aggregate ``table`` (the canonical event table) in ``session``;
    ``neighbor_params``: the session model's, whose pair counts the visits will give
    (:func:`training.neighbors.pair_plan`)."""
    F, _ = _sql()  # noqa: N806

    if table.num_rows == 0:
        raise DataError("no events to train on")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    shipped = table.select(list(_COLUMNS)).append_column(
        "row", pa.array(np.arange(table.num_rows, dtype=np.int64))
    )
    events = session.createDataFrame(shipped).persist()
    seconds["ship_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    reference_time = int(events.agg(F.max("timestamp")).first()[0])
    type_weight = _type_weight_column(settings)
    ln_q = F.log(F.greatest(F.col("quantity"), F.lit(1.0)))
    units = 1.0 + ln_q if settings.log_quantity else F.col("quantity")
    age = F.greatest(F.lit(reference_time) - F.col("timestamp"), F.lit(0)).cast("double")

    def decayed(weight: Any, half_life_days: float) -> Any:
        if half_life_days <= 0:
            return weight
        return weight * F.pow(F.lit(2.0), -age / F.lit(half_life_days * SECONDS_PER_DAY))

    # ids in order of first appearance, as the driver's dictionary encoding numbers them
    items = _vocabulary(events, "item_id")
    known = events.filter(F.col("user_id").isNotNull())
    users = _vocabulary(known, "user_id")
    item_ids = _collect_ids(items, "item_id")
    user_ids = _collect_ids(users, "user_id")
    if len(user_ids) == 0:
        raise DataError("no event has a user id: nothing to fit user factors on")
    coded = events.join(F.broadcast(items), "item_id").join(users, "user_id", "left")
    coded = coded.withColumn("tw", type_weight).persist()
    seconds["encode_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    weights_frame = (
        coded.filter(F.col("user").isNotNull())
        .groupBy("user", "item")
        .agg(F.sum(decayed(F.col("tw") * units, settings.half_life_days)).alias("w"))
        .filter(F.col("w") != 0)
        .select("user", "item", F.col("w").cast("float").alias("w"))
        .persist()
    )
    n_users, n_items = len(user_ids), len(item_ids)
    weights = _csr(weights_frame, "w", n_users, n_items)
    if weights.nnz == 0:
        raise DataError(_weightless_message(coded, reference_time, settings))
    seconds["weights_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    purchase = EventType.PURCHASE.value
    per_order = (
        coded.filter(F.col("user").isNotNull() & (F.col("event_type") == purchase))
        .withColumn("w", decayed(F.col("tw"), settings.half_life_days).cast("float"))
        .groupBy("user", "item", "basket_id")
        .agg(F.max("w").alias("w"))  # a basket listing an item twice: its newest line
        .groupBy("user", "item")
        .agg(F.count(F.lit(1)).cast("float").alias("n"), F.sum("w").cast("float").alias("w"))
    )
    bought = per_order.toArrow()
    counts = _csr_of(bought, "n", n_users, n_items)
    purchases = _csr_of(bought, "w", n_users, n_items)
    purchases.eliminate_zeros()
    seconds["buy_again_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    default = settings.popularity_half_life_days
    half_life = DEFAULT_POPULARITY_HALF_LIFE if default is None else default
    half_lives = tuple(dict.fromkeys((half_life, *popularity_half_lives)))
    sums = [F.sum(decayed(F.col("tw") * units, h)).alias(f"p{k}") for k, h in enumerate(half_lives)]
    pop = coded.groupBy("item").agg(*sums).toArrow()
    popularity_by_half_life = {}
    positions = pop.column("item").to_numpy()
    for k, h in enumerate(half_lives):
        p = np.zeros(n_items, dtype=np.float32)
        p[positions] = pop.column(f"p{k}").to_numpy()
        popularity_by_half_life[h] = p
    seconds["popularity_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    indptr, visit_items, pair_counter = _visits(
        coded, n_items, gap_seconds, max_length, neighbor_params
    )
    seconds["visits_seconds"] = time.perf_counter() - t
    coded.unpersist()
    events.unpersist()

    n_guest = table.num_rows - int(pa.compute.sum(pa.compute.is_valid(table["user_id"])).as_py())
    inter = Interactions(
        user_ids=user_ids,
        item_ids=item_ids,
        weights=weights,
        counts=counts,
        purchases=purchases,
        popularity=popularity_by_half_life[half_life],
        reference_time=reference_time,
        popularity_half_life_days=float(half_life),
        stats=interaction_stats(table.num_rows, n_guest, weights),
    )
    return SparkData(
        inter,
        popularity_by_half_life,
        indptr,
        visit_items,
        pair_counter,
        weights_frame,
        seconds,
    )


def _sql() -> tuple[Any, Any]:
    """pyspark's ``functions`` module and ``Window`` (the spark extra: imported when used)."""
    from pyspark.sql import Window, functions  # noqa: PLC0415

    return functions, Window


def _type_weight_column(settings: WeightingSettings) -> Any:
    """The event type's weight, as :func:`recsvc.weighting.event_type_weights`; a type
    with no weight weighs 0."""
    F, _ = _sql()  # noqa: N806
    per_type = event_type_weights(settings)
    column = F.lit(0.0)
    for kind, weight in zip(EVENT_TYPES, per_type.tolist(), strict=True):
        column = F.when(F.col("event_type") == kind.value, F.lit(weight)).otherwise(column)
    return column


def _vocabulary(frame: Any, column: str) -> Any:
    """``(column, code)``: the distinct values numbered by their first row."""
    F, Window = _sql()  # noqa: N806
    firsts = frame.groupBy(column).agg(F.min("row").alias("first"))
    code = "item" if column == "item_id" else "user"
    # one partition: the vocabulary is ids, not events (the driver collects it anyway)
    return firsts.select(
        column, (F.row_number().over(Window.orderBy("first")) - 1).alias(code)
    ).persist()


def _collect_ids(vocabulary: Any, column: str) -> NDArray[np.str_]:
    code = "item" if column == "item_id" else "user"
    ids = vocabulary.orderBy(code).select(column).toArrow().column(column).to_pylist()
    return np.asarray(ids, dtype=np.str_)


def _csr(frame: Any, value: str, n_users: int, n_items: int) -> sp.csr_matrix:
    return _csr_of(frame.toArrow(), value, n_users, n_items)


def _csr_of(table: pa.Table, value: str, n_users: int, n_items: int) -> sp.csr_matrix:
    """A ``(user, item, value)`` table as float32 CSR (sorted indices)."""
    rows = table.column("user").to_numpy().astype(np.int64)
    cols = table.column("item").to_numpy().astype(np.int64)
    data = table.column(value).to_numpy().astype(np.float32)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(n_users, n_items), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


def _weightless_message(
    coded: Any,
    reference_time: int,
    settings: WeightingSettings,
) -> str:
    """:func:`training.interactions._weightless` on one row a type: the newest
    timestamp of each type is all it reads."""
    F, _ = _sql()  # noqa: N806
    rows = (
        coded.filter(F.col("user").isNotNull())
        .groupBy("event_type")
        .agg(F.max("timestamp").alias("t"))
        .collect()
    )
    position = {t.value: i for i, t in enumerate(EVENT_TYPES)}
    codes = np.array([position[r["event_type"]] for r in rows], dtype=np.int64)
    stamps = np.array([r["t"] for r in rows], dtype=np.int64)
    return _weightless(codes, stamps, reference_time, settings)


def _visits(
    coded: Any,
    n_items: int,
    gap_seconds: int,
    max_length: int,
    neighbor_params: NeighborParams | None,
) -> tuple[NDArray[np.int64], NDArray[np.int32], SparkPairCounter]:
    """:func:`training.interactions.visit_arrays`, as a window over each shopper's
    events, and the counter of their pairs. Visits starting at the same second are
    ordered by their first event's row."""
    F, Window = _sql()  # noqa: N806
    key_user = F.col("user").isNotNull()
    keyed = coded.select(
        F.when(key_user, F.col("user").cast("string"))
        .otherwise(F.concat(F.lit("guest:"), F.col("basket_id")))
        .alias("key"),
        "timestamp",
        "row",
        "item",
    )
    in_time = Window.partitionBy("key").orderBy("timestamp", "row")
    previous = F.lag("timestamp").over(in_time)
    new = F.when(previous.isNull() | (F.col("timestamp") - previous > gap_seconds), 1).otherwise(0)
    numbered = keyed.withColumn("new", new).withColumn(
        "visit", F.sum("new").over(in_time.rowsBetween(Window.unboundedPreceding, 0))
    )
    by_visit = Window.partitionBy("key", "visit")
    from_end = Window.partitionBy("key", "visit").orderBy(F.desc("timestamp"), F.desc("row"))
    visits = (
        numbered.withColumn("length", F.count(F.lit(1)).over(by_visit))
        .withColumn("start", F.min("timestamp").over(by_visit))
        .withColumn("first", F.min("row").over(by_visit))
        .withColumn("back", F.row_number().over(from_end))
        .filter((F.col("length") > 1) & (F.col("back") <= max_length))
        .groupBy("key", "visit")
        .agg(
            F.first("start").alias("start"),
            F.first("first").alias("first"),
            F.sort_array(F.collect_list(F.struct("timestamp", "row", "item"))).alias("events"),
        )
        .select("start", "first", F.col("events.item").alias("items"))
        .orderBy("start", "first")
        # increasing along the sort (partition index, then row): the visits' order
        # without a one-partition numbering; persisted, so it is computed once
        .select(F.monotonically_increasing_id().alias("oid"), "items")
        .persist()
    )
    table = visits.orderBy("oid").toArrow()
    lists = table.column("items").combine_chunks()
    order_ids = table.column("oid").to_numpy().astype(np.int64)
    if len(lists) == 0:
        indptr, items = np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    else:
        offsets = lists.offsets.to_numpy().astype(np.int64)
        values = lists.values.to_numpy().astype(np.int32)
        indptr, items = offsets - offsets[0], values[offsets[0] : offsets[-1]]
    prefixes, max_gap = pair_plan(len(indptr) - 1, neighbor_params or NeighborParams())
    return indptr, items, SparkPairCounter(visits, order_ids, n_items, max_gap, prefixes)


class SparkPairCounter:
    """The session model's co-occurrence and rule counts
    (:class:`training.neighbors.PairCounter`), counted by Spark over the visits it
    holds: each click joined to the clicks 1..``max_gap`` after it in its visit, counted
    per (item, item, gap) and per span of visits between the ``prefixes`` the build
    will ask for (all sessions, the re-ranker's older part): one Spark job for every
    matrix of the build, made on the first call. Each call then takes its gaps, spans
    and variant (distinct, symmetric) from those counts, and the driver sums ``count /
    gap`` per pair in the gaps' order (:func:`training.neighbors.gap_sums`), so the
    matrices equal the driver's own to the bit. A prefix not announced costs a job of
    its own."""

    def __init__(
        self,
        visits: Any,
        order_ids: NDArray[np.int64],
        n_items: int,
        max_gap: int,
        prefixes: tuple[int, ...],
    ) -> None:
        self._visits = visits
        self._order_ids = order_ids
        self._n_items = n_items
        self._max_gap = max_gap
        self._lock = threading.Lock()
        self._counted: dict[tuple[int, ...], dict[str, NDArray[np.int64]]] = {}
        self._prefixes = tuple(sorted({min(max(p, 0), len(order_ids)) for p in prefixes}))

    def release(self) -> None:
        self._visits.unpersist()

    @property
    def jobs(self) -> int:
        """Spark jobs run so far (one a distinct set of spans and gap)."""
        return len(self._counted)

    def __call__(
        self, sessions: int, max_gap: int, *, symmetric: bool = False, distinct: bool = False
    ) -> sp.csr_matrix:
        n = self._n_items
        sessions = min(max(sessions, 0), len(self._order_ids))
        if max_gap < 1 or sessions < 1:
            return pair_matrix(np.zeros(0, np.int64), np.zeros(0, np.float64), n)
        bounds = self._prefixes if sessions in self._prefixes else (sessions,)
        if max_gap > self._max_gap:
            bounds = (sessions,)
        counted = self._counts(bounds, max(max_gap, self._max_gap))
        kept = (counted["span"] <= bounds.index(sessions)) & (counted["gap"] <= max_gap)
        a, b = counted["a"][kept], counted["b"][kept]
        gap, count = counted["gap"][kept], counted["count"][kept]
        if distinct:
            other = a != b
            a, b, gap, count = a[other], b[other], gap[other], count[other]
        if symmetric:
            a, b = np.concatenate([a, b]), np.concatenate([b, a])
            gap, count = np.concatenate([gap, gap]), np.concatenate([count, count])
        # one row a (pair, gap): the spans' and both directions' counts added
        width = int(gap.max(initial=0)) + 1
        combined = (a * n + b) * width + gap
        order = np.argsort(combined, kind="stable")
        combined, count = combined[order], count[order]
        if len(combined):
            starts = np.flatnonzero(np.r_[True, combined[1:] != combined[:-1]])
            combined, count = combined[starts], np.add.reduceat(count, starts)
        pair, sums = gap_sums(combined // width, combined % width, count)
        return pair_matrix(pair, sums, n)

    def _counts(self, bounds: tuple[int, ...], max_gap: int) -> dict[str, NDArray[np.int64]]:
        """(span, a, b, gap, count) over the visits up to ``bounds[-1]``: span ``k`` is
        the visits from ``bounds[k - 1]`` to ``bounds[k]``. Counted once a ``bounds``."""
        F, _ = _sql()  # noqa: N806
        key = (*bounds, max_gap)
        with self._lock:
            if key in self._counted:
                return self._counted[key]
            ids = self._order_ids
            visits = self._visits
            if bounds[-1] < len(ids):
                visits = visits.filter(F.col("oid") < int(ids[bounds[-1]]))
            span = F.lit(len(bounds) - 1)
            for k in reversed(range(len(bounds) - 1)):
                span = F.when(F.col("oid") < int(ids[bounds[k]]), k).otherwise(span)
            clicks = visits.select(
                "oid", span.alias("span"), F.posexplode("items").alias("pos", "item")
            )
            after = clicks.select(
                "oid",
                "span",
                "pos",
                F.col("item").alias("a"),
                F.explode(F.sequence(F.lit(1), F.lit(max_gap))).alias("gap"),
            ).withColumn("at", F.col("pos") + F.col("gap"))
            later = clicks.select("oid", F.col("pos").alias("at"), F.col("item").alias("b"))
            table = (
                after.join(later, ["oid", "at"]).groupBy("span", "a", "b", "gap").count().toArrow()
            )
            counted = {
                name: table.column(name).to_numpy().astype(np.int64)
                for name in ("span", "a", "b", "gap", "count")
            }
            self._counted[key] = counted
            return counted
