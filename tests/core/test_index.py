"""Contract tests every index kind must pass (exact, HNSW, IVF)."""

from pathlib import Path

import numpy as np
import pytest

from recsvc.config import IndexSettings
from recsvc.index import (
    ItemIndex,
    NormScan,
    ScanMask,
    choose_kind,
    exact_search,
    measure_recall,
)
from recsvc.ranking import Filters

KINDS = ["exact", "normscan", "hnsw", "ivf"]


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    rng = np.random.default_rng(11)
    # varying norms, as ALS item factors have: popular items are longer
    y = rng.normal(size=(3000, 16)).astype(np.float32)
    return y * rng.uniform(0.2, 2.0, size=(3000, 1)).astype(np.float32)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return np.random.default_rng(12).normal(size=(50, 16)).astype(np.float32)


def build(kind: str, y: np.ndarray) -> ItemIndex:
    return ItemIndex.build(y, IndexSettings(kind=kind))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_true_inner_products_best_first(
    kind: str, factors: np.ndarray, queries: np.ndarray
) -> None:
    index = build(kind, factors)
    scores, ids = index.search(queries, 20)
    assert ids.shape == scores.shape == (50, 20)
    assert (ids >= 0).all()
    expected = np.einsum("qd,qkd->qk", queries, factors[ids])
    assert scores == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert (np.diff(scores, axis=1) <= 1e-4).all()


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact(kind: str, factors: np.ndarray, queries: np.ndarray) -> None:
    index = build(kind, factors)
    assert measure_recall(index, factors, queries, 20) >= 0.9


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(
    kind: str, factors: np.ndarray, queries: np.ndarray, tmp_path: Path
) -> None:
    index = build(kind, factors)
    index.save(tmp_path / "i.faiss")
    loaded = ItemIndex.load(tmp_path / "i.faiss", index.kind, index.max_norm_sq, 128)
    a, ia = index.search(queries, 10)
    b, ib = loaded.search(queries, 10)
    assert (ia == ib).all()
    assert a == pytest.approx(b)


def test_k_larger_than_catalogue_is_clamped() -> None:
    y = np.eye(3, dtype=np.float32)
    _, ids = build("exact", y).search(np.array([[0, 1, 0]], np.float32), 10)
    assert ids.shape == (1, 3)
    assert ids[0, 0] == 1


def test_auto_picks_exact_then_hnsw() -> None:
    s = IndexSettings(exact_max_items=100)
    assert choose_kind(100, s) == "exact"
    assert choose_kind(101, s) == "normscan"
    assert choose_kind(10, IndexSettings(kind="ivf")) == "ivf"


def test_a_poor_index_measures_poor_recall(factors: np.ndarray, queries: np.ndarray) -> None:
    # one probe of many cells misses most true neighbours: the gate must see that
    poor = ItemIndex.build(factors, IndexSettings(kind="ivf", ivf_nlist=64, ivf_nprobe=1))
    assert measure_recall(poor, factors, queries, 20) < 0.9
    assert exact_search(factors, queries, 5).shape == (50, 5)


def test_normscan_is_exact_on_skewed_norms_and_stops_early() -> None:
    rng = np.random.default_rng(21)
    # ALS-like: a few long vectors, a long tail of short ones
    y = rng.normal(size=(20_000, 16)).astype(np.float32)
    y *= rng.lognormal(mean=-3.0, sigma=1.2, size=(20_000, 1)).astype(np.float32)
    q = rng.normal(size=(40, 16)).astype(np.float32)
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    scores, _ = index.search(q, 20)
    truth = exact_search(y, q, 20)
    exact_scores = np.einsum("qd,qkd->qk", q, y[truth])
    assert scores == pytest.approx(exact_scores, rel=1e-5, abs=1e-6)
    ns = index.index
    assert isinstance(ns, NormScan)
    # the early stop is what makes it fast: most queries read a short prefix
    depths = [ns.depth(row, float(np.sort(y @ row)[-20])) for row in q]
    assert np.median(depths) < len(y) / 4


@pytest.mark.parametrize("share", [0.8, 0.05, 0.0005])
def test_normscan_searches_exactly_under_a_mask(share: float) -> None:
    rng = np.random.default_rng(22)
    y = rng.normal(size=(20_000, 16)).astype(np.float32)
    y *= rng.lognormal(mean=-3.0, sigma=1.2, size=(20_000, 1)).astype(np.float32)
    q = rng.normal(size=(30, 16)).astype(np.float32)
    allowed = rng.random(len(y)) < share
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    assert index.masks
    k = 20
    scores, ids = index.search(q, k, allowed)
    # the same mask in the scan's row order (what the server searches with): the same
    in_order = index.in_scan_order(allowed)
    assert isinstance(in_order, ScanMask)
    same_scores, same_ids = index.search(q, k, in_order)
    assert np.array_equal(same_ids, ids) and np.array_equal(same_scores, scores)
    for row in range(len(q)):
        full = y @ q[row]
        full[~allowed] = -np.inf
        want = np.sort(full)[::-1][: min(k, int(allowed.sum()))]
        got = ids[row][ids[row] >= 0]
        assert len(got) == len(want)  # every allowed item when fewer than k are
        assert allowed[got].all()
        assert scores[row][: len(got)] == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert (ids[row][len(got) :] == -1).all()


def test_only_normscan_takes_a_mask() -> None:
    y = np.random.default_rng(23).normal(size=(500, 8)).astype(np.float32)
    exact = ItemIndex.build(y, IndexSettings(kind="exact"))
    assert not exact.masks
    with pytest.raises(ValueError, match="mask"):
        exact.search(y[:2], 5, np.ones(len(y), dtype=bool))


def test_normscan_reads_every_row_when_the_best_scores_are_negative() -> None:
    # every item points away from the query: the best scores are the shortest vectors,
    # at the end of the norm order, so the scan must not stop at a norm bound
    rng = np.random.default_rng(24)
    y = np.abs(rng.normal(size=(5_000, 8))).astype(np.float32)
    y *= rng.lognormal(mean=-2.0, sigma=1.0, size=(5_000, 1)).astype(np.float32)
    q = -np.abs(rng.normal(size=(3, 8))).astype(np.float32)
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    for mask in (None, rng.random(len(y)) < 0.3):
        scores, ids = index.search(q, 10, mask)
        for row in range(len(q)):
            assert mask is None or mask[ids[row]].all()
            full = y @ q[row]
            if mask is not None:
                full[~mask] = -np.inf
            assert (scores[row] < 0).all()
            assert scores[row] == pytest.approx(np.sort(full)[::-1][:10], rel=1e-5, abs=1e-7)


def test_normscan_answers_a_zero_query_with_the_longest_allowed_vectors() -> None:
    rng = np.random.default_rng(25)
    y = rng.normal(size=(1_000, 4)).astype(np.float32)
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    allowed = rng.random(len(y)) < 0.5
    scores, ids = index.search(np.zeros((1, 4), dtype=np.float32), 5, allowed)
    assert (scores == 0).all()
    longest = np.argsort(-np.linalg.norm(y, axis=1), kind="stable")
    assert ids[0].tolist() == longest[allowed[longest]][:5].tolist()  # ties: longer first


def test_normscan_breaks_ties_for_the_longer_vector() -> None:
    # items 0 and 2 score the same for the query; 2 is longer: it comes first
    y = np.array([[1.0, 0.0], [0.5, 0.0], [1.0, 3.0], [0.0, 1.0]], dtype=np.float32)
    scan = NormScan.build(y)
    scores, ids = scan.search(np.array([[1.0, 0.0]], dtype=np.float32), 3)
    assert ids[0].tolist() == [2, 0, 1]
    assert scores[0].tolist() == [1.0, 1.0, 0.5]


def test_normscan_refuses_queries_and_masks_of_the_wrong_shape() -> None:
    # the compiled scan reads without bounds checks: a wrong shape must fail loudly
    y = np.random.default_rng(26).normal(size=(300, 6)).astype(np.float32)
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    with pytest.raises(ValueError, match="factors"):
        index.search(np.ones((1, 5), dtype=np.float32), 5)
    with pytest.raises(ValueError, match="mask"):
        index.search(np.ones((1, 6), dtype=np.float32), 5, np.ones(299, dtype=bool))
    _, ids = index.search(np.ones((1, 6), dtype=np.float32), 5, np.ones(300, dtype=bool))
    assert (ids >= 0).all()


def test_a_mask_in_row_order_is_for_its_own_index_and_kept_by_the_filters() -> None:
    rng = np.random.default_rng(27)
    y = rng.normal(size=(400, 6)).astype(np.float32)
    index = ItemIndex.build(y, IndexSettings(kind="normscan"))
    other = ItemIndex.build(y[::-1].copy(), IndexSettings(kind="normscan"))
    allowed = rng.random(len(y)) < 0.5
    with pytest.raises(ValueError, match="another index"):
        index.search(y[:1], 5, other.in_scan_order(allowed))
    with pytest.raises(ValueError, match="mask"):
        index.in_scan_order(allowed[:-1])
    filters = Filters(shown=allowed)
    first = filters.shown_for(index)
    assert filters.shown_for(index) is first  # made once per filters and index
    assert isinstance(first, ScanMask) and first.rows.sum() == allowed.sum()
    assert filters.shown_for(other) is not first
    exact = ItemIndex.build(y, IndexSettings(kind="exact"))
    assert Filters(shown=allowed).shown_for(exact) is allowed  # as it is
    assert Filters().shown_for(index) is None
