"""The Spark engine's weighting and aggregations (training/spark_data.py) equal the
driver's: the same ids in the same order, the same matrices (to float rounding), the
same popularity at every half-life, the same visits, the same errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsvc.config import ALSSettings, WeightingSettings
from recsvc.errors import DataError
from recsvc.neighbors import NeighborParams
from recsvc.training.interactions import build_interactions, trending_popularity, visit_arrays
from recsvc.training.neighbors import _pair_sums, build_neighbor_model
from recsvc.training.spark import spark_session
from recsvc.training.spark_data import spark_data

from factories import DAY, T0, event_table

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

HALF_LIVES = (0.25, 1.0, 7.0, 30.0)


@pytest.fixture(scope="module")
def session() -> Any:
    # the master and memory test_spark_engine trains with: one Spark context a process
    return spark_session("local[2]", ALSSettings().spark_driver_memory)


def _shop(seed: int, n: int = 3_000) -> pa.Table:
    """Known users and guests, every event type, multi-unit lines, a basket listing an
    item twice, equal timestamps, visits longer than the cap and split by gaps."""
    rng = np.random.default_rng(seed)
    kinds = ["view", "add_to_cart", "purchase", "purchase", "purchase"]
    rows = []
    clock = {u: T0 + int(rng.integers(0, 30 * DAY)) for u in range(40)}
    for _ in range(n):
        u = int(rng.integers(0, 45))
        user = None if u >= 40 else f"u{u}"
        if user is not None:
            # mostly seconds apart (one visit), sometimes hours (a new one), some ties
            clock[u] += int(rng.choice([0, 30, 60, 4 * 3600]))
            stamp = clock[u]
        else:
            stamp = T0 + int(rng.integers(0, 30 * DAY))
        kind = str(rng.choice(kinds))
        basket = f"g{int(rng.integers(0, 60))}" if user is None else f"{user}@{stamp // 3600}"
        item = f"i{int(rng.zipf(1.3)) % 150}"
        rows.append((user, item, stamp, kind, float(rng.integers(1, 4)), basket))
    rows.append(rows[-1])  # the same line twice in one basket
    return event_table(rows)


@pytest.mark.parametrize(
    "weighting",
    [
        WeightingSettings(),
        WeightingSettings(half_life_days=0, popularity_half_life_days=3, log_quantity=False),
    ],
    ids=["defaults", "no-decay-units"],
)
def test_spark_aggregates_equal_the_drivers(session: Any, weighting: WeightingSettings) -> None:
    table = _shop(seed=4)
    gap, cap = 1_800, 5
    got = spark_data(
        session, table, weighting, popularity_half_lives=HALF_LIVES, gap_seconds=gap,
        max_length=cap,
    )  # fmt: skip
    want = build_interactions(table, weighting)
    inter = got.interactions
    assert inter.user_ids.tolist() == want.user_ids.tolist()
    assert inter.item_ids.tolist() == want.item_ids.tolist()
    assert inter.reference_time == want.reference_time
    assert inter.stats == want.stats
    assert inter.stats["guest_events"] > 0
    for name in ("weights", "counts", "purchases"):
        a, b = getattr(inter, name), getattr(want, name)
        assert a.dtype == b.dtype == np.float32, name
        assert (a != 0).nnz == (b != 0).nnz and ((a != 0) != (b != 0)).nnz == 0, name
        np.testing.assert_allclose(a.toarray(), b.toarray(), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(inter.popularity, want.popularity, rtol=1e-5)
    assert inter.popularity_half_life_days == want.popularity_half_life_days
    for half_life in HALF_LIVES:
        np.testing.assert_allclose(
            got.popularity_by_half_life[half_life],
            trending_popularity(table, want, weighting, half_life),
            rtol=1e-5,
        )
    # the matrix ALS fits is the one the driver holds
    frame = got.weights_frame.toArrow()
    assert frame.num_rows == inter.weights.nnz

    indptr, items = visit_arrays(table, want.item_ids, gap_seconds=gap, max_length=cap)
    assert got.visit_indptr.dtype == np.int64 and got.visit_items.dtype == np.int32
    visits = _visits(got.visit_indptr, got.visit_items)
    assert sorted(visits) == sorted(_visits(indptr, items))
    assert max(len(v) for v in visits) == cap  # long visits keep their last events
    assert any(len(v) < cap for v in visits)


@pytest.mark.parametrize(
    ("max_gap", "symmetric", "distinct"), [(1, False, True), (3, False, True), (4, True, False)]
)
def test_spark_pair_counts_equal_the_drivers_to_the_bit(
    session: Any, max_gap: int, symmetric: bool, distinct: bool
) -> None:
    got = spark_data(
        session, _shop(seed=9), WeightingSettings(), popularity_half_lives=(7.0,),
        gap_seconds=1_800, max_length=8,
    )  # fmt: skip
    indptr, items, n_items = got.visit_indptr, got.visit_items, got.interactions.n_items
    for sessions in (len(indptr) - 1, (len(indptr) - 1) // 2):  # all, and the older half
        clicks = items[: indptr[sessions]]
        session_of = np.repeat(np.arange(sessions), np.diff(indptr[: sessions + 1]))
        want = _pair_sums(
            clicks, session_of, n_items, max_gap, symmetric=symmetric, distinct=distinct
        )
        spark = got.pair_counter(sessions, max_gap, symmetric=symmetric, distinct=distinct)
        assert want.nnz > 0 and spark.has_sorted_indices
        assert np.array_equal(spark.indptr, want.indptr)
        assert np.array_equal(spark.indices, want.indices)
        assert np.array_equal(spark.data, want.data)
    assert got.pair_counter(0, max_gap).nnz == 0


def test_the_session_model_built_on_spark_counts_is_the_drivers(session: Any) -> None:
    got = spark_data(
        session, _shop(seed=2), WeightingSettings(), popularity_half_lives=(7.0,),
        gap_seconds=1_800, max_length=8,
    )  # fmt: skip
    params = NeighborParams(embedding_dim=4, rerank_cases=200)
    n_items = got.interactions.n_items
    want = build_neighbor_model(got.visit_indptr, got.visit_items, n_items, params)
    spark = build_neighbor_model(
        got.visit_indptr, got.visit_items, n_items, params, pair_counter=got.pair_counter
    )
    a, b = spark.to_arrays(), want.to_arrays()
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert len(want.rule_items) > 0
    # both builds' rules and co-occurrences (the re-ranker's older sessions and all)
    # came from one Spark job
    assert got.pair_counter.jobs == 1


def _visits(indptr: np.ndarray, items: np.ndarray) -> list[tuple[int, ...]]:
    return [tuple(items[indptr[k] : indptr[k + 1]].tolist()) for k in range(len(indptr) - 1)]


def test_spark_refuses_what_the_driver_refuses(session: Any) -> None:
    def refusal(table: pa.Table, weighting: WeightingSettings) -> tuple[str, str]:
        with pytest.raises(DataError) as driver:
            build_interactions(table, weighting)
        with pytest.raises(DataError) as spark:
            spark_data(
                session, table, weighting, popularity_half_lives=(7.0,), gap_seconds=60,
                max_length=10,
            )  # fmt: skip
        return str(spark.value), str(driver.value)

    guests = event_table([(None, "a", T0, "purchase", 1, "g1"), (None, "b", T0, "view", 1, "g2")])
    got, want = refusal(guests, WeightingSettings())
    assert got == want and "no event has a user id" in got
    views = event_table([("u", "a", T0, "view", 1, "b1"), ("u", "b", T0 + 5, "view", 1, "b1")])
    weightless = WeightingSettings(event_weights={"view": 0.0, "purchase": 1.0})
    got, want = refusal(views, weightless)
    assert got == want and "weighs 0" in got
