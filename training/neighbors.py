"""Build the session recommender (:class:`recsvc.neighbors.NeighborModel`) from
training sessions.

Input: sessions as CSR-like arrays, ``session_indptr`` ``(S + 1,)`` int64 into
``session_items`` ``(N,)`` int32 (item positions ``0..n_items-1``, click order within
a session, sessions in chronological order).

Steps: the inverted index and per-item statistics, sequential rules, item embeddings
(truncated SVD of shifted PPMI co-occurrence by seeded randomized subspace
iteration), and, when ``params.rerank``, the re-ranking weights: a model without
re-ranking is built from the older ``1 − rerank_holdout`` of the sessions, every
prefix→next case of the newer ones (about ``rerank_cases``,
evenly spaced) is featurised by it, and a softmax over each case's candidates is
fitted by L-BFGS (at most ``MAX_ITERATIONS``); the final model over all sessions
gets those weights.

Build time (2 shared cores): ~5 s of one core at 1M synthetic events (was 35–50 s
with ``scipy.sparse.linalg.svds``, 10,000 cases and 500 iterations, then ~8 s; the
Diginetica validation HR@20 / MRR@20 did not drop). BLAS runs on one thread during
the build: its dense products are small, and two OpenBLAS threads on a shared 2-core
host made the whole build 2–3x slower. Of the ~5 s: the two model builds (the older
sessions' for the re-ranker, then all) ~0.7 s each, featurising the ~3,000 re-ranker
cases one at a time ~1.8 s (mostly per-call NumPy overhead: batching them is what is
left), the L-BFGS fit ~0.8 s. With ``parallel`` and more than one core, the
re-ranker's part (its model, the cases, the fit) runs on a second thread beside the
final model's build: both spend their time in NumPy sorts, SciPy sparse conversions
and products, which release the GIL (10M events: 30.9 → 18.8 s, identical arrays;
the two builds' temporaries are then held at once). The two builds take turns in
their pair sums and the rules and PPMI made from them (a lock): side by side there,
their peaks added up (10M events: 2.4 GiB above the input, now 1.6 GiB in the same
~24 s; one build after the other, 1.2 GiB in ~34 s), while the rest of each build
(the inverted index, the embeddings' subspace iteration, the re-ranker's cases and
fit) still overlaps.
Co-occurrence and rule counts are summed by sorting packed int64 keys
(:func:`_pair_sums`): at 10M events one model build's peak fell from 1.49 to 1.02
GiB above its input, the rules from 4.2 to 2.5 s.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from recsvc.neighbors import N_FEATURES, NeighborModel, NeighborParams, _ranges

__all__ = [
    "PairCounter",
    "build_neighbor_model",
    "cores",
    "fit_reranker",
    "gap_sums",
    "pair_matrix",
    "pair_plan",
    "rerank_cut",
]

SEED = 0


class PairCounter(Protocol):
    """The pair sums of the first ``sessions`` sessions (:func:`_pair_sums`'s matrix),
    computed elsewhere than from the session arrays the build holds: the Spark engine
    counts them where the visits are (``training.spark_data.SparkPairCounter``)."""

    def __call__(
        self, sessions: int, max_gap: int, *, symmetric: bool = False, distinct: bool = False
    ) -> sp.csr_matrix: ...


_Pairs = Callable[..., sp.csr_matrix]
"""A build's :func:`_pair_sums` over its sessions: ``(max_gap, *, symmetric, distinct)``."""

MAX_ITERATIONS = 100
"""L-BFGS iterations of the re-ranker fit (validation scores are flat beyond ~100)."""


def build_neighbor_model(
    session_indptr: NDArray[np.int64],
    session_items: NDArray[np.int32],
    n_items: int,
    params: NeighborParams | None = None,
    *,
    parallel: bool = True,
    pair_counter: PairCounter | None = None,
) -> NeighborModel:
    """The session recommender over these training sessions; with ``parallel`` and
    more than one core, the re-ranker's part runs on a second thread. ``pair_counter``:
    the co-occurrence and rule counts from elsewhere (they are summed from the session
    arrays otherwise).

    Empty sessions are allowed (they never become neighbours). Raises
    ``ValueError`` on malformed input (``indptr`` not non-decreasing from 0 to
    ``len(items)``, or an item outside ``0..n_items-1``).
    """
    params = params or NeighborParams()
    indptr, items = _checked(session_indptr, session_items, n_items)
    # small dense products (Cholesky QR on (n_items, ~80), the re-ranker's loss):
    # BLAS threads only add overhead, and on a shared 2-core host they spin against
    # other work (the whole build took 2-3x longer with 2 OpenBLAS threads)
    with threadpool_limits(limits=1, user_api="blas"):
        if not params.rerank:
            return _build(indptr, items, n_items, params, pair_counter=pair_counter)
        if not parallel or cores() < 2:
            model = _build(indptr, items, n_items, params, pair_counter=pair_counter)
            weights = fit_reranker(indptr, items, n_items, params, pair_counter=pair_counter)
        else:
            # side by side (module docstring): their time is in code that releases
            # the GIL; one at a time in their memory-heaviest steps (the lock)
            turns = threading.Lock()
            with ThreadPoolExecutor(1, thread_name_prefix="reranker") as pool:
                reranker = pool.submit(
                    fit_reranker, indptr, items, n_items, params, turns, pair_counter
                )
                model = _build(indptr, items, n_items, params, turns, pair_counter)
                weights = reranker.result()
    return model.with_params(params, weights)


def cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _checked(
    session_indptr: NDArray[np.int64], session_items: NDArray[np.int32], n_items: int
) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """The session arrays as int64 / int32; ``ValueError`` if they are malformed."""
    indptr = np.asarray(session_indptr, dtype=np.int64)
    items = np.asarray(session_items, dtype=np.int32)
    if indptr.ndim != 1 or len(indptr) < 1 or indptr[0] != 0 or indptr[-1] != len(items):
        raise ValueError("session_indptr must run from 0 to len(session_items)")
    if np.any(np.diff(indptr) < 0):
        raise ValueError("session_indptr must be non-decreasing")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"session items must be in 0..{n_items - 1}")
    return indptr, items


def fit_reranker(
    session_indptr: NDArray[np.int64],
    session_items: NDArray[np.int32],
    n_items: int,
    params: NeighborParams,
    pair_sums_lock: threading.Lock | None = None,
    pair_counter: PairCounter | None = None,
) -> NDArray[np.float64]:
    """The re-ranking weights ``(N_FEATURES,)`` fitted on the newest
    ``params.rerank_holdout`` of the sessions, featurised by a model of the older
    ones; zeros but for the neighbour score when there are no usable cases.
    ``ValueError`` on malformed input, as :func:`build_neighbor_model`.

    ``pair_sums_lock``, when given, is the older model's build's ``turn`` (see
    :func:`_build`)."""
    indptr, items = _checked(session_indptr, session_items, n_items)
    n_sessions = len(indptr) - 1
    cut = rerank_cut(n_sessions, params)
    fallback = np.zeros(N_FEATURES, dtype=np.float64)
    fallback[0] = 1.0
    if cut < 1 or cut >= n_sessions:
        return fallback
    older = _build(
        indptr[: cut + 1], items[: indptr[cut]], n_items, params, pair_sums_lock, pair_counter
    )
    # prefix -> next cases of the newer sessions, items unseen by `older` dropped:
    # session s (of the newer ones, in order) gives cases k = 1 .. len - 1 (its first
    # k clicks -> click k); every `step`-th case of that sequence is used
    seen = np.diff(older.item_indptr) > 0
    newer = items[indptr[cut] :]
    kept = seen[newer]
    clicks = newer[kept]
    session_of = np.repeat(np.arange(n_sessions - cut, dtype=np.int64), np.diff(indptr[cut:]))
    lengths = np.bincount(session_of[kept], minlength=n_sessions - cut)
    click_start = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=click_start[1:])
    case_start = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.maximum(lengths - 1, 0), out=case_start[1:])
    n_cases = int(case_start[-1])
    if n_cases == 0:
        return fallback
    step = max(1, n_cases // params.rerank_cases)
    picked = np.arange(0, n_cases, step, dtype=np.int64)
    case_session = np.searchsorted(case_start, picked, side="right") - 1
    ends = click_start[case_session] + 1 + picked - case_start[case_session]
    groups: list[NDArray[np.float64]] = []
    targets: list[int] = []
    for begin, end in zip(click_start[case_session].tolist(), ends.tolist(), strict=True):
        prefix, target = clicks[begin:end], int(clicks[end])
        cands, features = older.candidate_features(prefix)
        hit = np.flatnonzero(cands == target)
        if len(hit):
            groups.append(features)
            targets.append(int(hit[0]))
    if not groups:
        return fallback
    return _fit_softmax(groups, targets, params.rerank_l2)


def rerank_cut(n_sessions: int, params: NeighborParams) -> int:
    """The re-ranker's older sessions: the first this many."""
    return int(n_sessions * (1 - params.rerank_holdout))


def pair_plan(n_sessions: int, params: NeighborParams) -> tuple[tuple[int, ...], int]:
    """What a build over ``n_sessions`` sessions will ask a :class:`PairCounter` for:
    the session prefixes (all; the re-ranker's older part) and the largest gap."""
    prefixes = (n_sessions, rerank_cut(n_sessions, params)) if params.rerank else (n_sessions,)
    return prefixes, max(params.rule_steps, params.embedding_window)


def _fit_softmax(
    groups: list[NDArray[np.float64]], targets: list[int], l2: float
) -> NDArray[np.float64]:
    """Linear weights maximising the mean log-softmax of each group's target row
    (features standardised for the fit, weights returned for raw features)."""
    x = np.concatenate(groups)
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    starts = np.zeros(len(groups), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    seg = np.repeat(np.arange(len(groups), dtype=np.int64), sizes)
    rows = starts + np.asarray(targets, dtype=np.int64)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    # float32 products: the fit is memory-bound and the loss needs no more precision
    xs = ((x - x.mean(axis=0)) / scale).astype(np.float32)
    target_sum = xs[rows].sum(axis=0, dtype=np.float64)
    n = len(groups)

    def loss(w: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        z = xs @ w.astype(np.float32)
        zmax = np.maximum.reduceat(z, starts)
        z -= zmax[seg]
        e = np.exp(z)
        total = np.add.reduceat(e, starts, dtype=np.float64)
        value = -float(z[rows].sum(dtype=np.float64) - np.log(total).sum()) / n
        value += l2 * float(w @ w)
        p = (e / total[seg]).astype(np.float32)
        grad = (xs.T @ p - target_sum) / n + 2 * l2 * w
        return value, grad

    # small dense products: threads only add overhead (and contend on shared hosts)
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(
            loss,
            np.zeros(x.shape[1]),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": MAX_ITERATIONS},
        )
    weights: NDArray[np.float64] = np.asarray(result.x, dtype=np.float64) / scale
    return weights


def _build(
    indptr: NDArray[np.int64],
    items: NDArray[np.int32],
    n_items: int,
    params: NeighborParams,
    turn: AbstractContextManager[object] | None = None,
    pair_counter: PairCounter | None = None,
) -> NeighborModel:
    """Every array but the re-ranking weights (the model scores by neighbours alone),
    from session arrays the public entry points have checked (:func:`_checked`).

    ``turn`` (a lock when another build runs beside this one) is held through the
    rules and through the embeddings' co-occurrence and PPMI: the steps that hold
    per-occurrence keys, the build's peak."""
    turn = turn if turn is not None else nullcontext()
    n_sessions = len(indptr) - 1
    lengths = np.diff(indptr)
    session_of = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)

    # distinct (session, item) pairs, by plain sorts of int64 keys (a sparse matrix and
    # its transpose cost 3x as much): distinct items per session, then the inverted
    # index, newest session first within each item. The (session, item) keys arrive
    # sorted but for each session's few items: the stable sort (a merge sort that
    # finds runs) takes a third of the default's time on them (10M clicks: 0.36 vs 1.0 s)
    pairs = np.sort(session_of * n_items + items, kind="stable")
    if len(pairs):
        pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    pair_session, pair_item = np.divmod(pairs, n_items)
    session_length = np.bincount(pair_session, minlength=n_sessions).astype(np.float32)
    counts = np.bincount(pair_item, minlength=n_items)
    item_indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(counts, out=item_indptr[1:])
    newest_first = np.sort(pair_item * n_sessions + (n_sessions - 1 - pair_session))
    item_sessions = (n_sessions - 1 - newest_first % n_sessions).astype(np.int32)
    # ~0.25 GiB at 10M clicks that would otherwise live through the rules' and the
    # embeddings' pair sums, this build's peak
    del pairs, pair_session, pair_item, newest_first
    # smoothed IDF: positive even for an item in every session
    item_idf = np.where(counts > 0, np.log1p(n_sessions / np.maximum(counts, 1)), 0.0)

    def counted(max_gap: int, *, symmetric: bool = False, distinct: bool = False) -> sp.csr_matrix:
        if pair_counter is not None:
            return pair_counter(n_sessions, max_gap, symmetric=symmetric, distinct=distinct)
        return _pair_sums(
            items, session_of, n_items, max_gap, symmetric=symmetric, distinct=distinct
        )

    with turn:
        rule_indptr, rule_items, rule_scores = _sequential_rules(
            counted, n_items, params.rule_steps, params.rule_successors
        )
    recent_start = indptr[int(n_sessions * (1 - params.recent_fraction))]
    item_recent = np.log1p(np.bincount(items[recent_start:], minlength=n_items))
    item_vectors = _embeddings(
        counted, n_items, params.embedding_dim, params.embedding_window, turn
    )
    return NeighborModel(
        params,
        session_indptr=indptr,
        session_items=items,
        session_length=session_length,
        item_indptr=item_indptr,
        item_sessions=item_sessions,
        item_idf=item_idf.astype(np.float32),
        item_recent=item_recent.astype(np.float32),
        item_vectors=item_vectors,
        rule_indptr=rule_indptr,
        rule_items=rule_items,
        rule_scores=rule_scores,
        rerank_weights=np.zeros(0, dtype=np.float64),
    )


def _embeddings(
    pairs: _Pairs,
    n_items: int,
    dim: int,
    window: int,
    turn: AbstractContextManager[object],
) -> NDArray[np.float32]:
    """``(n_items, dim)`` unit item vectors: ``U·sqrt(Σ)`` of the rank-``dim``
    truncated SVD of the shifted PPMI ``log(c(a,b)·T² / (c(a)·c(b)^0.75·Z))`` (kept
    where positive) of symmetric co-occurrence ``c`` within ``window`` clicks
    (weight ``1 / gap``), ``T = Σ c(a)``, ``Z = Σ c(b)^0.75``. Zero rows for items
    that co-occur with nothing; ``(n_items, 0)`` when ``dim`` is 0 or too large.
    The PPMI is made holding ``turn`` (see :func:`_build`)."""
    if dim == 0 or dim >= n_items - 1:
        return np.zeros((n_items, 0), dtype=np.float32)
    with turn:
        ppmi = _ppmi(pairs, n_items, window)
    if ppmi is None:
        return np.zeros((n_items, dim), dtype=np.float32)
    u, sigma = _top_eigen(ppmi, dim)
    vectors = u * np.sqrt(sigma)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.where(norms > 0, vectors / np.maximum(norms, 1e-12), 0.0)
    return vectors.astype(np.float32)


def _ppmi(pairs: _Pairs, n_items: int, window: int) -> sp.csr_matrix | None:
    """The float32 shifted PPMI matrix of :func:`_embeddings`, explicit zeros removed;
    None when no two items co-occur."""
    counts = pairs(window, symmetric=True)
    if counts.nnz == 0:
        return None
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    total = marginal.sum()
    smoothed = (marginal**0.75).sum()
    # = log(c·T·T / (c(a)·c(b)^0.75·Z)) operation for operation, in place (over the
    # counts themselves, which are not read again)
    below = marginal[counts.indices]
    below **= 0.75
    _scale_rows(below, counts.indptr, marginal)
    below *= smoothed
    pmi = counts.data
    pmi *= total
    pmi *= total
    pmi /= below
    del below
    np.log(pmi, out=pmi)
    np.maximum(pmi, 0.0, out=pmi)
    ppmi = sp.csr_matrix(
        (pmi.astype(np.float32), counts.indices, counts.indptr), shape=(n_items, n_items)
    )
    del pmi, counts
    ppmi.eliminate_zeros()
    return ppmi


def _scale_rows(
    values: NDArray[np.float64],
    indptr: NDArray[np.int64],
    scale: NDArray[np.float64],
    rows_per_block: int = 1 << 14,
) -> None:
    """``values *= scale[row]`` in place for CSR ``values`` with ``indptr``: a block of
    rows at a time, so the per-entry scale (8 bytes a pair) is never made whole."""
    n_rows = len(indptr) - 1
    for lo in range(0, n_rows, rows_per_block):
        hi = min(lo + rows_per_block, n_rows)
        begin, end = indptr[lo], indptr[hi]
        values[begin:end] *= np.repeat(scale[lo:hi], np.diff(indptr[lo : hi + 1]))


def _top_eigen(
    matrix: sp.csr_matrix, k: int, oversample: int = 16, iterations: int = 4
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The ``k`` largest-magnitude eigenpairs of a symmetric sparse matrix as
    ``(vectors (n, k), |values| (k,))``, i.e. its rank-``k`` truncated SVD's ``U`` and
    ``Σ`` up to column signs: seeded randomized subspace iteration (Halko et al.,
    2011) with ``iterations`` power steps, orthonormalised by Cholesky QR, then
    Rayleigh–Ritz on the subspace."""
    n = matrix.shape[0]
    width = min(n, k + oversample)
    a = matrix.astype(np.float32, copy=False)
    rng = np.random.default_rng(SEED)
    y = np.asarray(a @ rng.standard_normal((n, width)).astype(np.float32))
    q = _orthonormal(y)
    for _ in range(iterations):
        y = np.asarray(a @ q.astype(np.float32))
        del q  # not held beside the next basis
        q = _orthonormal(y)
    y = np.asarray(a @ q.astype(np.float32))
    # Rayleigh–Ritz: y = A·q, so qᵀ·A·q = qᵀ·y
    small = q.T @ y.astype(np.float64)
    values, vectors = np.linalg.eigh((small + small.T) / 2)
    top = np.argsort(-np.abs(values), kind="stable")[:k]
    return q @ vectors[:, top], np.abs(values[top])


def _orthonormal(y: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """An orthonormal basis of ``y``'s columns (Cholesky QR, twice for accuracy;
    rank-deficient directions are regularised rather than dropped)."""
    q = y.astype(np.float64)
    for _ in range(2):
        gram = q.T @ q
        gram[np.diag_indices_from(gram)] += 1e-10 * max(float(np.trace(gram)), 1e-300)
        upper = np.linalg.cholesky(gram).T
        # in place over q (its transpose is Fortran-ordered): the same LAPACK solve
        # without a copy of q beside it
        q = scipy.linalg.solve_triangular(upper, q.T, trans="T", lower=False, overwrite_b=True).T
    return q


def _pair_sums(
    items: NDArray[np.int32],
    session_of: NDArray[np.int64],
    n_items: int,
    max_gap: int,
    *,
    symmetric: bool = False,
    distinct: bool = False,
    block: int = 1 << 22,
) -> sp.csr_matrix:
    """``(n_items, n_items)`` float64 CSR, sorted indices: entry ``(a, b)`` sums
    ``1 / gap`` over every time ``b`` was clicked ``gap <= max_gap`` clicks after
    ``a`` in the same session (with ``symmetric``: also ``a`` after ``b``; with
    ``distinct``: only ``a != b``).

    Each occurrence is one int64 key ``(a·n_items + b) << bits | gap − 1``, and one
    in-place sort of the keys groups them: NumPy's sort took ~0.4 s for 42M keys on
    the host where this was written (~4 s on a 2026-11-23 AMD EPYC host), where a
    SciPy COO → CSR conversion with summed duplicates spent ~3.5 s (first host)
    sorting each row's indices and held rows, columns and values (12–16 bytes per
    occurrence) plus the matrix. The runs are then summed a block at a time."""
    gaps = range(1, min(max_gap, len(items) - 1) + 1)
    bits = max(1, max_gap.bit_length())
    if n_items and n_items * n_items >= 1 << (62 - bits):
        raise ValueError(f"{n_items} items are too many for 64-bit pair keys")

    def kept(gap: int) -> NDArray[np.bool_]:
        same: NDArray[np.bool_] = session_of[gap:] == session_of[:-gap]
        if distinct:
            same &= items[:-gap] != items[gap:]
        return same

    copies = 2 if symmetric else 1
    # counted first, then filled: collecting per-gap pieces and concatenating them
    # held every occurrence twice
    keys = np.empty(copies * sum(int(np.count_nonzero(kept(gap))) for gap in gaps), np.int64)
    at = 0
    for gap in gaps:
        same = kept(gap)
        # int32 here, widened as they are written into the keys (int64 copies of both
        # were ~0.15 GiB at 10M clicks, beside the keys)
        a = items[:-gap][same]
        b = items[gap:][same]
        for first, second in ((a, b), (b, a))[:copies]:
            out = keys[at : at + len(a)]
            out[...] = first
            out *= n_items
            out += second
            out <<= bits
            out |= gap - 1
            at += len(a)
        del a, b, same
    keys.sort()
    # each block's distinct pairs are written back over the keys already read, so the
    # only other per-occurrence memory is one block's temporaries; a block ends where a
    # pair's run does, so each pair is summed in one piece
    sums: list[NDArray[np.float64]] = []
    written = lo = 0
    while lo < len(keys):
        hi = min(lo + block, len(keys))
        if hi < len(keys):
            next_pair = ((int(keys[hi - 1]) >> bits) + 1) << bits
            hi = lo + int(np.searchsorted(keys[lo:], next_pair))
        chunk = keys[lo:hi]
        runs = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
        count = np.diff(np.r_[runs, len(chunk)])
        key = chunk[runs]
        pair, total = gap_sums(key >> bits, (key & ((1 << bits) - 1)) + 1, count)
        keys[written : written + len(pair)] = pair
        written += len(pair)
        sums.append(total)
        del chunk, runs, count, key, pair, total
        lo = hi
    found = keys[:written]
    data = np.concatenate(sums) if sums else np.zeros(0, np.float64)
    del keys
    return pair_matrix(found, data, n_items)


def gap_sums(
    pair: NDArray[np.int64], gap: NDArray[np.int64], count: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """``Σ count / gap`` per pair, from ``(pair, gap, count)`` rows sorted by pair then
    gap: the distinct pairs and their sums. One order of additions (the gaps' own),
    wherever the counts were made, so the Spark engine's sums equal these to the bit."""
    if len(pair) == 0:
        return pair, np.zeros(0, np.float64)
    value = count.astype(np.float64) / gap.astype(np.float64)
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    return pair[starts], np.add.reduceat(value, starts)


def pair_matrix(pair: NDArray[np.int64], sums: NDArray[np.float64], n_items: int) -> sp.csr_matrix:
    """``(n_items, n_items)`` float64 CSR, sorted indices, from sorted distinct pair keys
    ``a·n_items + b`` (overwritten) and their sums."""
    # row r starts at the first pair key >= r·n_items (the keys are sorted and distinct);
    # no per-pair row array (found // n_items) beside the keys
    indptr = np.searchsorted(pair, np.arange(n_items + 1, dtype=np.int64) * n_items)
    np.remainder(pair, n_items, out=pair)
    cols = pair.astype(np.int32)
    matrix = sp.csr_matrix((sums, cols, indptr), shape=(n_items, n_items))
    matrix.has_sorted_indices = True
    return matrix


def _sequential_rules(
    pairs: _Pairs,
    n_items: int,
    steps: int,
    successors: int,
) -> tuple[NDArray[np.int64], NDArray[np.int32], NDArray[np.float32]]:
    """Sequential rules ``a → b`` weighted ``Σ 1 / gap`` over every time ``b`` was
    clicked ``gap <= steps`` clicks after ``a`` in a session (a click repeated at once
    is no rule); the ``successors`` strongest per item, best first, as CSR arrays."""
    rules = pairs(steps, distinct=True)
    indptr, indices, scores = rules.indptr, rules.indices, rules.data.astype(np.float32)
    del rules
    # best first within each row (ties: lower item first, from the sorted indices and
    # the stable sort), then keep the first `successors`: one stable sort of (row,
    # descending score) keys, built in place (a positive float32's bits order like
    # its value); = np.lexsort((-scores, row)) at a third of the time
    counts = np.diff(indptr)
    key = np.repeat(np.arange(n_items, dtype=np.int64), counts)
    key <<= 32
    bits = scores.view(np.int32).astype(np.int64)
    np.subtract(0x7FFFFFFF, bits, out=bits)
    key |= bits
    del bits
    order = np.argsort(key, kind="stable")
    del key
    # row r's entries keep their place [indptr[r], indptr[r + 1]) in `order`
    kept = np.minimum(counts, successors)
    out_indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(kept, out=out_indptr[1:])
    picked = order[_ranges(indptr[:-1], kept, int(out_indptr[-1]))]
    return out_indptr, indices[picked].astype(np.int32), scores[picked]
