import os
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from neighbors_reference import ReferenceScorer
from scipy import sparse

from recsvc.neighbors import N_FEATURES, NeighborModel, NeighborParams
from recsvc.training import neighbors as ts
from recsvc.training.neighbors import _pair_sums, _top_eigen, build_neighbor_model

# neighbour score alone: deterministic, no fitted weights
KNN = NeighborParams(rerank=False, embedding_dim=0, recency_decay=0.0)


def csr(sessions: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(sessions) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sessions], out=indptr[1:])
    items = np.array([i for s in sessions for i in s], dtype=np.int32)
    return indptr, items


def build(sessions: list[list[int]], n_items: int, params: NeighborParams = KNN) -> NeighborModel:
    indptr, items = csr(sessions)
    return build_neighbor_model(indptr, items, n_items, params)


def q(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int32)


def test_the_item_that_always_follows_ranks_first_after_the_session_item() -> None:
    m = build([[0, 1]] * 5 + [[2, 3]] * 5 + [[0, 4, 5]], 6)
    items, scores = m.score(q(0), limit=10)
    # the clicked item itself (repeat clicks) and then its usual successor
    assert items[:2].tolist() == [0, 1]
    assert set(items.tolist()) == {0, 1, 4, 5}
    assert items.dtype == np.int32 and scores.dtype == np.float32
    assert np.all(scores > 0) and np.all(np.diff(scores) <= 0)


def test_empty_and_unknown_sessions_give_empty_answers() -> None:
    m = build([[0, 1], [1, 2]], 4)
    for session in (q(), q(-1, 99), q(3)):  # 3 is in the catalogue but in no session
        items, scores = m.score(session)
        assert items.dtype == np.int32 and scores.dtype == np.float32
        assert len(items) == 0 and len(scores) == 0
    assert len(m.score(q(0), limit=0)[0]) == 0
    # unknown clicks are skipped, known ones still count
    assert m.score(q(-5, 0, 77))[0].tolist() == m.score(q(0))[0].tolist()


def test_limit_is_respected() -> None:
    m = build([list(range(10))] * 3, 10)
    assert len(m.score(q(0), limit=3)[0]) == 3
    assert len(m.score(q(0), limit=100)[0]) == 10


def test_recent_session_items_weigh_more() -> None:
    m = build([[0, 1]] * 5 + [[2, 3]] * 5, 4, KNN.model_copy(update=dict(session_decay=1.0)))
    first = m.score(q(0, 2))[0].tolist()
    assert first.index(3) < first.index(1)
    second = m.score(q(2, 0))[0].tolist()
    assert second.index(1) < second.index(3)


def test_neighbour_recency_prefers_newer_sessions() -> None:
    sessions = [[0, 1], [0, 2]]  # the second is newer
    fresh = build(sessions, 3, KNN.model_copy(update=dict(recency_decay=1.0)))
    assert fresh.score(q(0))[0].tolist()[1] == 2
    old = build(sessions, 3, KNN.model_copy(update=dict(recency_decay=0.0)))
    s1, s2 = (old.score(q(0))[1][old.score(q(0))[0] == i][0] for i in (1, 2))
    assert s1 == pytest.approx(s2)


def test_items_after_the_shared_item_beat_items_before_it() -> None:
    m = build([[5, 0, 6]] * 3, 7, KNN.model_copy(update=dict(before_weight=0.5)))
    items = m.score(q(0))[0].tolist()
    assert items.index(6) < items.index(5)


def test_sequential_rules_weigh_one_over_the_gap() -> None:
    m = build([[0, 1, 2], [0, 1]], 3)
    start, end = m.rule_indptr[0], m.rule_indptr[1]
    rules = dict(
        zip(m.rule_items[start:end].tolist(), m.rule_scores[start:end].tolist(), strict=True)
    )
    assert rules == {1: pytest.approx(2.0), 2: pytest.approx(0.5)}
    assert m.rule_items[start] == 1  # best first


def test_round_trip_through_npz_scores_identically(tmp_path: Path) -> None:
    m = _chain_model()
    path = tmp_path / "sessions.npz"
    np.savez(path, **m.to_arrays())
    with np.load(path, allow_pickle=False) as z:
        back = NeighborModel.from_arrays(dict(z))
    assert back.params == m.params
    assert back.nbytes() == m.nbytes()
    for session in (q(5), q(3, 4), q(7, 7, 8, 40)):
        a, b = m.score(session), back.score(session)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_fitted_reranker_predicts_the_usual_next_item() -> None:
    m = _chain_model()
    assert m.rerank_weights.shape == (N_FEATURES,)
    assert m.item_vectors.shape == (50, 8)
    hits = sum(int(m.score(q(i - 1, i), limit=1)[0][0] == (i + 1) % 50) for i in range(1, 50))
    assert hits >= 45
    # without the re-ranker the clicked item itself comes first
    plain = m.with_params(m.params, np.zeros(0))
    assert plain.score(q(4, 5), limit=1)[0][0] == 5


def test_one_core_and_two_threads_build_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # the re-ranker's part runs on a second thread only when there is a second core
    calls: list[str] = []
    real = ts.fit_reranker

    def spy(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ts, "fit_reranker", spy)
    indptr, items = _chain_sessions()
    params = NeighborParams(embedding_dim=8, rerank_cases=500)
    monkeypatch.setattr(ts, "cores", lambda: 2)
    threaded = build_neighbor_model(indptr, items, 50, params)
    monkeypatch.setattr(ts, "cores", lambda: 1)
    serial = build_neighbor_model(indptr, items, 50, params)
    assert calls[0].startswith("reranker") and calls[1] == "MainThread"
    a, b = threaded.to_arrays(), serial.to_arrays()
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert np.any(threaded.rerank_weights != 0)


def test_weights_scale_the_session_clicks() -> None:
    m = build([[0, 1]] * 5 + [[2, 3]] * 5, 4, KNN.model_copy(update=dict(session_decay=1.0)))
    favour_first = m.score(q(0, 2), weights=np.array([100.0, 1.0], dtype=np.float32))[0]
    assert favour_first.tolist().index(1) < favour_first.tolist().index(3)
    with pytest.raises(ValueError, match="1 weights for 2 items"):
        m.score(q(0, 2), weights=np.ones(1, dtype=np.float32))


def test_arrays_are_read_only() -> None:
    m = build([[0, 1]], 2)
    for a in m.to_arrays().values():
        if a.ndim:
            assert not a.flags.writeable


def test_malformed_input_is_refused() -> None:
    with pytest.raises(ValueError):
        build_neighbor_model(np.array([0, 3]), np.array([0, 1], dtype=np.int32), 2, KNN)
    with pytest.raises(ValueError):
        build_neighbor_model(np.array([0, 2]), np.array([0, 5], dtype=np.int32), 2, KNN)
    with pytest.raises(ValueError):
        NeighborParams(neighbors=0)


@cache
def _chain_model() -> NeighborModel:
    """A model of :func:`_chain_sessions`, built once (the model is read-only)."""
    params = NeighborParams(embedding_dim=8, rerank_cases=3000)
    return build_neighbor_model(*_chain_sessions(), 50, params)


@cache
def _chain_sessions() -> tuple[np.ndarray, np.ndarray]:
    """Random walks on a ring of 50 items: the next item is the current one + 1
    with probability 0.8, else a random item; no repeat clicks."""
    rng = np.random.default_rng(7)
    sessions = []
    for _ in range(1500):
        cur = int(rng.integers(50))
        s = [cur]
        for _ in range(int(rng.integers(2, 7))):
            nxt = (cur + 1) % 50 if rng.random() < 0.8 else int(rng.integers(50))
            if nxt != cur:
                s.append(nxt)
                cur = nxt
        sessions.append(s)
    return csr(sessions)


def test_embedding_eigenpairs_match_a_dense_decomposition() -> None:
    rng = np.random.default_rng(3)
    # a symmetric matrix with a clear spectral gap after the 5th eigenvalue
    basis, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    values = np.concatenate([[50.0, -40.0, 30.0, 20.0, 10.0], rng.uniform(-0.5, 0.5, 55)])
    dense = (basis * values) @ basis.T
    vectors, magnitudes = _top_eigen(sparse.csr_matrix(dense), 5)
    assert np.allclose(magnitudes, [50, 40, 30, 20, 10], rtol=1e-3)
    # the same subspace, up to column signs
    assert np.allclose(np.abs(vectors.T @ basis[:, :5]), np.eye(5), atol=1e-3)


def test_legacy_rules_ordering_is_kept_on_ties() -> None:
    # equal-score successors come lowest item first
    m = build([[0, 3], [0, 1], [0, 2]], 4)
    start, end = m.rule_indptr[0], m.rule_indptr[1]
    assert m.rule_items[start:end].tolist() == [1, 2, 3]


def test_inverted_index_and_rules_match_a_plain_reference() -> None:
    rng = np.random.default_rng(3)
    sessions = [rng.integers(0, 15, size=rng.integers(1, 9)).tolist() for _ in range(60)]
    p = KNN.model_copy(
        update=dict(rule_steps=2, rule_successors=4)
    )  # scores 1 and 1/2: exact sums, exact ties
    m = build(sessions, 16, p)
    for item in range(16):
        holding = [s for s in range(len(sessions)) if item in sessions[s]][::-1]
        got = m.item_sessions[m.item_indptr[item] : m.item_indptr[item + 1]]
        assert got.tolist() == holding  # newest first, each once
    assert m.session_length.tolist() == [len(set(s)) for s in sessions]
    for a in range(16):
        score: dict[int, float] = {}
        for s in sessions:
            for i, x in enumerate(s):
                for gap, y in enumerate(s[i + 1 : i + 1 + p.rule_steps], start=1):
                    if x == a and y != x:
                        score[y] = score.get(y, 0.0) + 1.0 / gap
        want = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[: p.rule_successors]
        start, end = m.rule_indptr[a], m.rule_indptr[a + 1]
        assert m.rule_items[start:end].tolist() == [b for b, _ in want]
        np.testing.assert_allclose(m.rule_scores[start:end], [v for _, v in want], rtol=1e-6)


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 22])
@pytest.mark.parametrize(("symmetric", "distinct"), [(False, True), (True, False)])
def test_pair_sums_match_a_plain_count(block: int, symmetric: bool, distinct: bool) -> None:
    rng = np.random.default_rng(11)
    # few items, so that pairs repeat within and across blocks (runs cross boundaries)
    sessions = [rng.integers(0, 6, int(rng.integers(1, 9))).tolist() for _ in range(60)]
    indptr, items = csr(sessions)
    session_of = np.repeat(np.arange(len(sessions)), np.diff(indptr))
    expected: dict[tuple[int, int], float] = {}
    for s in sessions:
        for i, a in enumerate(s):
            for gap in range(1, 4):
                if i + gap < len(s) and not (distinct and a == s[i + gap]):
                    b = s[i + gap]
                    for key in [(a, b), (b, a)] if symmetric else [(a, b)]:
                        expected[key] = expected.get(key, 0.0) + 1.0 / gap
    m = _pair_sums(items, session_of, 6, 3, symmetric=symmetric, distinct=distinct, block=block)
    assert m.has_sorted_indices and np.all(np.diff(m.indices[m.indptr[0] : m.indptr[1]]) > 0)
    got = {(int(r), int(c)): float(v) for r, c, v in zip(*m.nonzero(), m.data, strict=True)}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12)
    assert m.nnz == len(expected)
    empty = _pair_sums(items[:0], session_of[:0], 6, 3, block=block)
    assert empty.nnz == 0 and empty.shape == (6, 6)


def test_the_reranker_fit_refuses_malformed_input_too() -> None:
    with pytest.raises(ValueError, match="session items must be in"):
        ts.fit_reranker(np.array([0, 2]), np.array([0, 5], dtype=np.int32), 2, NeighborParams())
    with pytest.raises(ValueError, match="non-decreasing"):
        ts.fit_reranker(np.array([0, 2, 1, 2]), np.array([0, 1], dtype=np.int32), 2, KNN)


def _random_sessions(rng: np.random.Generator, n_sessions: int, n_items: int) -> list[list[int]]:
    # a skewed catalogue (popular items in many sessions, so the sample_size cut and
    # the neighbour cut both bite), sessions of 1-12 clicks with repeats
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    p /= p.sum()
    return [rng.choice(n_items, int(rng.integers(1, 13)), p=p).tolist() for _ in range(n_sessions)]


REFERENCE_PARAMS = [
    NeighborParams(embedding_dim=6, rerank_cases=300, sample_size=60, neighbors=25,
                   candidates=30, rule_candidates=10),
    NeighborParams(embedding_dim=0, rerank_cases=300, anchor_decay=0.0, idf=0.0,
                   sample_size=40, neighbors=10, rule_window=1),
    NeighborParams(rerank=False, embedding_dim=0, recency_decay=500.0, before_weight=1.0),
]  # fmt: skip


@pytest.mark.parametrize("params", REFERENCE_PARAMS, ids=["rerank", "stan-latest", "knn"])
def test_compiled_scoring_matches_the_numpy_reference(params: NeighborParams) -> None:
    # the kernels (recsvc.session_kernels) against the NumPy code they replaced
    # (tests/training/neighbors_reference.py), on random sessions over a random shop:
    # the same candidates, features and ranking up to rounding
    rng = np.random.default_rng(11)
    n_items = 120
    model = build(_random_sessions(rng, 1500, n_items), n_items, params)
    reference = ReferenceScorer.of(model)
    compared = 0
    for _ in range(150):
        session = rng.integers(-2, n_items + 2, int(rng.integers(1, 9))).astype(np.int32)
        weights = rng.uniform(0.5, 2.0, len(session)).astype(np.float32)
        got = model.score(session, weights, limit=15)
        want = reference.score(session, weights, limit=15)
        assert len(got[0]) == len(want[0]), session
        assert np.allclose(got[1], want[1], rtol=1e-6, atol=0), session
        if len(want[0]):  # the same items, but for two whose scores differ by rounding
            apart = np.diff(want[1]) < -1e-6 * want[1][1:]
            distinct = np.r_[True, apart] & np.r_[apart, True]
            assert np.array_equal(got[0][distinct], want[0][distinct]), session
        if params.rerank:
            g_cands, g_features = model.candidate_features(session, weights)
            w_cands, w_features = reference.candidate_features(session, weights)
            assert np.array_equal(g_cands, w_cands), session
            assert np.allclose(g_features, w_features, rtol=1e-9, atol=1e-12), session
        compared += len(got[0]) > 0
    assert compared >= 100  # most sessions compared in full, not skipped


@pytest.mark.slow
def test_the_kernels_compile_uncached_where_nothing_is_writable() -> None:
    # a read-only install without NUMBA_CACHE_DIR or a home: Numba finds no place for
    # its cache (here: only the zip-file locator allowed, which never applies) and
    # refuses cache=True; the kernels must still load and score, compiled at start
    script = (
        "import logging, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from recsvc import index, jit, session_kernels\n"
        "from recsvc.serving import rules\n"
        "session_kernels.warm_up()\n"
        "index.warm_up()\n"
        "rules.warm_up()\n"
        "print('cached' if jit.CACHES else 'uncached')\n"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("uncached")
    assert "set NUMBA_CACHE_DIR" in done.stderr
