"""Session-kNN baselines of the session protocol: SKNN, V-SKNN and STAN.

The strong simple baselines of session-based recommendation (Ludewig & Jannach,
"Evaluation of session-based recommendation algorithms", UMUAI 2018; Ludewig et al.,
"Empirical analysis of session-based recommendation algorithms", UMUAI 2021; Garg et
al., "Sequence and Time Aware Neighborhood for session-based recommendations: STAN",
SIGIR 2019), as their reference code (``rn5l/session-rec``, ``algorithms/knn``)
defines them, over the training sessions the harness loads:

- **SKNN**: the current session and each past session as binary item sets, cosine
  similarity ``|s ∩ n| / sqrt(|s|·|n|)``; candidates: the ``m`` most recent past
  sessions sharing an item with ``s``; the ``k`` most similar vote ``sim`` for each
  of their items.
- **V-SKNN**: the current session as a vector, the item ``d`` clicks before the last
  (its latest click) weighted ``decay(d)``: ``linear`` ``max(1 − 0.1·d, 0)``, ``log``
  ``1 / log10(d + 1.7)`` (session-rec's), ``harmonic`` ``1 / (d + 1)``; similarity
  ``Σ_{i ∈ s ∩ n} w_i / |s|`` (session-rec's ``vec``: a dot product with the binary
  neighbour, no length normalisation); with ``score_decay = "harmonic"`` a
  neighbour's votes are scaled by ``1 / step``, ``step`` = 1 + how many clicks before
  the last the most recent item it shares was clicked (session-rec's ``div_score``).
- **STAN**: the current session weighted ``exp(−d / λ1)`` (λ1 in clicks), cosine
  ``Σ_{s ∩ n} w_i / (sqrt(Σ_s w_i²)·sqrt(|n|))`` times ``exp(−age(n) / λ2)`` (λ2 in
  days: ``age`` = days between ``n``'s last click and the newest training
  session's); each item of ``n`` votes ``sim · exp(−|p(i, n) − p(i*, n)| / λ3)``,
  ``p`` the position of an item's last click in ``n`` and ``i*`` the item of
  ``s ∩ n`` clicked most recently in ``s`` (the paper's definition; session-rec takes
  the last position in ``n`` of any shared item instead).

Common to all three: distinct items (a repeated click counts once, at its latest
position), items of the current session are scored too (session-rec's ``remind``;
a fifth of Diginetica's next clicks revisit a session item), similarities under
1e-200 count as 0 (such neighbours vote nothing), ties among neighbours go to the
newer session, ties among items to the lower item position, and lists with fewer
than ``top`` scored items are filled with the items in the most training sessions.

How it runs: a batch of prefixes becomes a sparse query matrix ``Q`` (batch × items,
the session weights; weights of 0 are stored as 1e-300 so that every session sharing
an item stays a candidate), ``Q @ Xᵀ`` over the inverted index (items × sessions)
gives each prefix's candidate sessions and similarity numerators at once; the ``m``
newest candidates and then the ``k`` most similar are selected row by row; the
neighbours' items are expanded into (row, item, vote) triples and summed into a
sparse batch × items score matrix, whose rows give the top lists.

Tuning (:func:`tune_session_knn`) reads only the cases it is given (the harness
passes the validation cases of :func:`~recsvc.training.nextclick.validation_cases`)
and maximises HR@20 + MRR@20 (the two metrics the served ranking is judged on):

- SKNN: ``k ∈ {100, 200, 500}`` × ``m ∈ {1000, 2500, 5000}``;
- V-SKNN: the same × ``decay ∈ {linear, log, harmonic}`` × ``score_decay ∈ {same,
  harmonic}``;
- STAN: coordinate ascent over the grid of Garg et al. (``λ1, λ3 ∈ {1e-5, L/8, L/4,
  L/2, L, 2L}``, ``L`` the mean training session length in clicks; ``λ2 ∈ {2.5, 5,
  10, 20, 40, 80, 100}`` days) with ``k`` and ``m`` from the same grids as SKNN,
  from SKNN's chosen ``k, m`` and ``λ1 = λ3 = L/2``, ``λ2 = 20``, one coordinate at a
  time, until a sweep changes nothing (at most :data:`MAX_SWEEPS`).

Measured on Diginetica (``make eval-diginetica``, 2026-12-06, a shared 2-core host;
tuned on 10,000 validation cases, ~1 s per config; test: all 60,858 prefixes):

==========  =========================================  =====================  ======
method      chosen                                     test HR@20 / MRR@20    rank s
==========  =========================================  =====================  ======
SKNN        k 200, m 1000                              0.4974 / 0.1733        3.9
V-SKNN      k 200, m 1000, linear, harmonic votes      0.5114 / 0.1809        5.8
STAN        k 200, m 1000, λ1 L/4, λ2 100 d, λ3 L      0.5229 / 0.1857        6.9
==========  =========================================  =====================  ======

(``L`` = 4.87 clicks; tuning took 77–95 s in all; published STAN: 0.5097 / 0.1848.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = [
    "DECAYS",
    "KNNParams",
    "SKNNParams",
    "STANParams",
    "SessionIndex",
    "TuneResult",
    "VSKNNParams",
    "encode_items",
    "evaluate_configs",
    "rank_next_items",
    "session_index_from_table",
    "tune_session_knn",
    "tune_sknn",
    "tune_stan",
    "tune_vsknn",
]

_DAY = 86_400.0
_FLOOR = 1e-300
"""Stored for a session weight of 0, so that the product keeps the session a candidate."""
_ZERO = 1e-200
"""Similarities below this count as 0 (the neighbour is dropped)."""
BATCH = 1000
"""Prefixes per sparse product."""
MAX_SWEEPS = 3
"""Coordinate-ascent sweeps of STAN's tuning at most."""

Decay = Literal["linear", "log", "harmonic"]
ScoreDecay = Literal["same", "harmonic"]

K_GRID = (100, 200, 500)
M_GRID = (1000, 2500, 5000)
DECAYS: tuple[Decay, ...] = ("linear", "log", "harmonic")
SCORE_DECAYS: tuple[ScoreDecay, ...] = ("same", "harmonic")
LAMBDA2_GRID = (2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 100.0)
LAMBDA_SHARES = (1e-5, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
"""λ1 and λ3 as shares of the mean session length (1e-5: the value itself)."""


@dataclass(frozen=True)
class SKNNParams:
    """SKNN: ``k`` neighbours among the ``m`` most recent sessions sharing an item."""

    k: int = 100
    m: int = 1000
    method: Literal["sknn"] = field(default="sknn", init=False)


@dataclass(frozen=True)
class VSKNNParams:
    """V-SKNN: SKNN with a position-decayed current session (module docstring)."""

    k: int = 100
    m: int = 1000
    decay: Decay = "linear"
    score_decay: ScoreDecay = "harmonic"
    method: Literal["vsknn"] = field(default="vsknn", init=False)


@dataclass(frozen=True)
class STANParams:
    """STAN: ``lambda1`` (clicks), ``lambda2`` (days), ``lambda3`` (clicks)."""

    k: int = 100
    m: int = 1000
    lambda1: float = 1.0
    lambda2: float = 20.0
    lambda3: float = 1.0
    method: Literal["stan"] = field(default="stan", init=False)


KNNParams = SKNNParams | VSKNNParams | STANParams
Score = Callable[[list[NDArray[np.int64]], NDArray[np.int64]], dict[str, float]]
"""Metrics of ranked lists against targets (the harness's ``score_next_item``)."""


def _search_key(params: KNNParams) -> tuple[Any, ...]:
    """What the neighbour search depends on (configs sharing it share one search)."""
    if isinstance(params, SKNNParams):
        return ("sknn", params.m)
    if isinstance(params, VSKNNParams):
        return ("vsknn", params.m, params.decay)
    return ("stan", params.m, params.lambda1, params.lambda2)


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SessionIndex:
    """Training sessions for the kNN baselines, oldest first.

    - ``matrix`` ``(S, I)`` CSR float64, sorted indices: 1 for each distinct item of
      each session; ``last_position`` ``(nnz,)`` int64 aligned with its entries: the
      1-based position of the item's last click in the session;
    - ``inverted`` ``(I, S)`` CSR float64: ``matrix.T`` (item → sessions);
    - ``session_length`` ``(S,)`` distinct items; ``age_days`` ``(S,)`` days between
      each session's last click and the newest session's;
    - ``popular`` ``(I,)`` items by sessions holding them, most first;
    - ``mean_length``: clicks per session (STAN's ``L``).
    """

    matrix: sp.csr_matrix
    last_position: NDArray[np.int64]
    inverted: sp.csr_matrix
    session_length: NDArray[np.float64]
    age_days: NDArray[np.float64]
    popular: NDArray[np.int64]
    mean_length: float

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def n_sessions(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def build(
        cls,
        indptr: NDArray[np.int64],
        items: NDArray[np.int64],
        n_items: int,
        age_days: NDArray[np.float64] | None = None,
    ) -> SessionIndex:
        """From sessions as CSR arrays (``indptr`` ``(S + 1,)`` into ``items``, click
        order within a session, sessions oldest first; no empty session) and each
        session's age in days (default 0: no time decay)."""
        indptr = np.asarray(indptr, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n_sessions = len(indptr) - 1
        lengths = np.diff(indptr)
        if n_sessions < 1 or np.any(lengths < 1) or indptr[0] != 0 or indptr[-1] != len(items):
            raise ValueError("sessions must be non-empty and indptr run from 0 to len(items)")
        if items.min() < 0 or items.max() >= n_items:
            raise ValueError(f"items must be in 0..{n_items - 1}")
        session_of = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
        position = np.arange(len(items), dtype=np.int64) - indptr[session_of] + 1
        # distinct (session, item), each at its last click
        key = session_of * n_items + items
        order = np.lexsort((position, key))
        key = key[order]
        last = np.r_[key[1:] != key[:-1], True]
        pair_session, pair_item = np.divmod(key[last], n_items)
        counts = np.bincount(pair_session, minlength=n_sessions)
        row_ptr = np.zeros(n_sessions + 1, dtype=np.int64)
        np.cumsum(counts, out=row_ptr[1:])
        matrix = sp.csr_matrix(
            (np.ones(len(pair_item)), pair_item.astype(np.int32), row_ptr),
            shape=(n_sessions, n_items),
        )
        matrix.has_sorted_indices = True
        inverted = matrix.T.tocsr()
        inverted.sort_indices()
        holding = np.diff(inverted.indptr)
        ages = np.zeros(n_sessions) if age_days is None else np.asarray(age_days, np.float64)
        if ages.shape != (n_sessions,):
            raise ValueError("age_days must hold one age per session")
        return cls(
            matrix=matrix,
            last_position=position[order][last],
            inverted=inverted,
            session_length=counts.astype(np.float64),
            age_days=ages,
            popular=np.argsort(-holding, kind="stable").astype(np.int64),
            mean_length=len(items) / n_sessions,
        )


def session_index_from_table(
    table: pa.Table, item_position: Mapping[str, int] | None = None
) -> tuple[SessionIndex, dict[str, int]]:
    """The sessions of an event table (``user_id`` = session, ``item_id``,
    ``timestamp``), ordered by their first click, clicks by time; items through
    ``item_position`` (events of items it lacks are dropped) or, without it,
    numbered in order of first appearance. Returns the index and the item map."""
    sessions = pc.dictionary_encode(table["user_id"].combine_chunks())
    codes = sessions.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(table["item_id"].combine_chunks())
    names = encoded.dictionary.to_pylist()
    if item_position is None:
        position = {name: i for i, name in enumerate(names)}
    else:
        position = dict(item_position)
    lookup = np.array([position.get(name, -1) for name in names], dtype=np.int64)
    items = lookup[encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
    stamps = table["timestamp"].to_numpy().astype(np.int64)
    known = items >= 0
    codes, items, stamps = codes[known], items[known], stamps[known]
    first = np.full(len(sessions.dictionary), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, stamps)
    order = np.lexsort((stamps, codes, first[codes]))
    codes, items, stamps = codes[order], items[order], stamps[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    indptr = np.r_[starts, len(codes)].astype(np.int64)
    ends = np.maximum.reduceat(stamps, starts).astype(np.float64) if len(starts) else stamps
    n_items = max(position.values(), default=-1) + 1
    index = SessionIndex.build(indptr, items, n_items, (ends.max() - ends) / _DAY)
    return index, position


def encode_items(
    prefixes: Sequence[Sequence[str]], position: Mapping[str, int]
) -> list[NDArray[np.int64]]:
    """Prefixes of external item ids as item positions (-1 = unknown)."""
    return [np.array([position.get(i, -1) for i in p], dtype=np.int64) for p in prefixes]


# ------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _Queries:
    """A batch of prefixes: one entry per distinct known item of each prefix, sorted
    by ``key = row · n_items + item``; ``back``: clicks between the item's latest
    click and the prefix's last (0 = the last click)."""

    n: int
    row: NDArray[np.int64]
    item: NDArray[np.int64]
    back: NDArray[np.int64]
    key: NDArray[np.int64]


def _queries(prefixes: Sequence[NDArray[np.int64]], n_items: int) -> _Queries:
    n = len(prefixes)
    lengths = np.array([len(p) for p in prefixes], dtype=np.int64)
    clicks: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
    if n:
        clicks = np.concatenate([np.asarray(p, dtype=np.int64) for p in prefixes])
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    known = (clicks >= 0) & (clicks < n_items)
    clicks, row = clicks[known], row[known]
    known_length = np.bincount(row, minlength=n)
    start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(known_length, out=start[1:])
    back = known_length[row] - 1 - (np.arange(len(row), dtype=np.int64) - start[row])
    key = row * n_items + clicks
    order = np.lexsort((back, key))
    key = key[order]
    first = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, dtype=bool)
    picked = order[first]
    return _Queries(n, row[picked], clicks[picked], back[picked], key[first])


def _session_weights(params: KNNParams, back: NDArray[np.int64]) -> NDArray[np.float64]:
    d = back.astype(np.float64)
    if isinstance(params, SKNNParams):
        return np.ones(len(d))
    if isinstance(params, VSKNNParams):
        if params.decay == "linear":
            return np.maximum(1.0 - 0.1 * d, 0.0)
        if params.decay == "log":
            return 1.0 / np.log10(d + 1.7)
        return 1.0 / (d + 1.0)
    return np.exp(-d / params.lambda1)


@dataclass(frozen=True)
class _Neighbours:
    """Each row's neighbours, most similar first: ``session[ptr[r]:ptr[r + 1]]``."""

    ptr: NDArray[np.int64]
    session: NDArray[np.int64]
    sim: NDArray[np.float64]


def _search(index: SessionIndex, q: _Queries, params: KNNParams, kmax: int) -> _Neighbours:
    """The ``kmax`` most similar of each row's ``params.m`` newest candidates."""
    weights = _session_weights(params, q.back)
    if isinstance(params, SKNNParams):
        row_factor = 1.0 / np.sqrt(np.maximum(np.bincount(q.row, minlength=q.n), 1))
        session_factor = 1.0 / np.sqrt(index.session_length)
    elif isinstance(params, VSKNNParams):
        row_factor = 1.0 / np.maximum(np.bincount(q.row, minlength=q.n), 1)
        session_factor = np.ones(index.n_sessions)
    else:
        squares = np.bincount(q.row, weights=weights * weights, minlength=q.n)
        row_factor = 1.0 / np.sqrt(np.maximum(squares, 1e-300))
        session_factor = np.exp(-index.age_days / params.lambda2) / np.sqrt(index.session_length)
    query = sp.csr_matrix(
        (np.maximum(weights, _FLOOR), (q.row, q.item)), shape=(q.n, index.n_items)
    )
    product = (query @ index.inverted).tocsr()
    product.sort_indices()
    lengths = np.diff(product.indptr).astype(np.int64)
    rows = np.repeat(np.arange(q.n, dtype=np.int64), lengths)
    in_row = np.arange(len(rows), dtype=np.int64) - product.indptr[:-1].astype(np.int64)[rows]
    # the m newest (sessions are numbered oldest first) and a similarity above zero
    keep = in_row >= (lengths - params.m)[rows]
    cols = product.indices[keep].astype(np.int64)
    rows = rows[keep]
    sim = product.data[keep] * row_factor[rows] * session_factor[cols]
    positive = sim > _ZERO
    rows, cols, sim = rows[positive], cols[positive], sim[positive]
    bounds = np.searchsorted(rows, np.arange(q.n + 1, dtype=np.int64))
    out_sessions: list[NDArray[np.int64]] = []
    out_sims: list[NDArray[np.float64]] = []
    counts = np.zeros(q.n, dtype=np.int64)
    for r in range(q.n):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        if lo == hi:
            continue
        c, s = cols[lo:hi], sim[lo:hi]
        if hi - lo > kmax:
            cut = hi - lo - kmax
            kth = np.partition(s, cut)[cut]
            chosen = s > kth
            ties = np.flatnonzero(s == kth)  # columns ascend: the newest ties last
            chosen[ties[len(ties) - (kmax - int(chosen.sum())) :]] = True
            c, s = c[chosen], s[chosen]
        order = np.lexsort((-c, -s))
        out_sessions.append(c[order])
        out_sims.append(s[order])
        counts[r] = len(order)
    ptr = np.zeros(q.n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    if not out_sessions:
        return _Neighbours(ptr, np.zeros(0, np.int64), np.zeros(0, np.float64))
    return _Neighbours(ptr, np.concatenate(out_sessions), np.concatenate(out_sims))


def _ranges(starts: NDArray[np.int64], counts: NDArray[np.int64]) -> NDArray[np.int64]:
    """The concatenation of ``arange(s, s + c)`` for every ``(s, c)``."""
    ends = np.cumsum(counts)
    offsets = np.repeat(starts - (ends - counts), counts)
    out: NDArray[np.int64] = np.arange(int(ends[-1]) if len(ends) else 0) + offsets
    return out


def _vote(
    index: SessionIndex, q: _Queries, nb: _Neighbours, params: KNNParams, top: int
) -> list[NDArray[np.int64]]:
    """The top lists of a batch from its (first ``params.k``) neighbours."""
    per_row = np.diff(nb.ptr)
    pair_row = np.repeat(np.arange(q.n, dtype=np.int64), per_row)
    chosen = np.arange(len(pair_row), dtype=np.int64) - nb.ptr[:-1][pair_row] < params.k
    pair_row, sessions, sim = pair_row[chosen], nb.session[chosen], nb.sim[chosen]
    starts = index.matrix.indptr[sessions].astype(np.int64)
    sizes = index.matrix.indptr[sessions + 1].astype(np.int64) - starts
    entries = _ranges(starts, sizes)
    pair = np.repeat(np.arange(len(sessions), dtype=np.int64), sizes)
    item = index.matrix.indices[entries].astype(np.int64)
    row = pair_row[pair]
    if isinstance(params, SKNNParams) or len(entries) == 0:
        votes = sim[pair]
    else:
        # where each neighbour item was last clicked in the prefix (if it was)
        key = row * index.n_items + item
        at = np.minimum(np.searchsorted(q.key, key), max(len(q.key) - 1, 0))
        found = q.key[at] == key
        back = np.where(found, q.back[at], np.iinfo(np.int64).max)
        seg = np.zeros(len(sessions), dtype=np.int64)
        np.cumsum(sizes[:-1], out=seg[1:])
        nearest = np.minimum.reduceat(back, seg)  # every neighbour shares an item
        if isinstance(params, VSKNNParams):
            step = nearest.astype(np.float64) + 1.0
            factor = 1.0 / step if params.score_decay == "harmonic" else np.ones(len(step))
            votes = (sim * factor)[pair]
        else:
            position = index.last_position[entries]
            anchor = np.zeros(len(sessions), dtype=np.int64)
            is_anchor = found & (back == nearest[pair])
            anchor[pair[is_anchor]] = position[is_anchor]
            distance = np.abs(position - anchor[pair]).astype(np.float64)
            votes = sim[pair] * np.exp(-distance / params.lambda3)
    scores = sp.csr_matrix((votes, (row, item)), shape=(q.n, index.n_items))
    return _top_lists(scores, index.popular, top)


def _top_lists(
    scores: sp.csr_matrix, popular: NDArray[np.int64], top: int
) -> list[NDArray[np.int64]]:
    """Each row's ``top`` items by score (ties: lower item first), filled with popular
    items when fewer than ``top`` score above 0."""
    out: list[NDArray[np.int64]] = []
    indptr, indices, data = scores.indptr, scores.indices, scores.data
    for r in range(scores.shape[0]):
        lo, hi = int(indptr[r]), int(indptr[r + 1])
        items = indices[lo:hi].astype(np.int64)
        values = data[lo:hi]
        positive = values > 0
        items, values = items[positive], values[positive]
        if len(values) > top:
            kth = -np.partition(-values, top - 1)[top - 1]
            keep = values >= kth
            items, values = items[keep], values[keep]
        mine = items[np.lexsort((items, -values))][:top]
        if len(mine) < top:
            head = popular[: top + len(mine)]
            mine = np.concatenate([mine, head[~np.isin(head, mine)]])[:top]
        out.append(mine)
    return out


def rank_next_items(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    params: KNNParams,
    *,
    top: int = 20,
    batch: int = BATCH,
) -> list[NDArray[np.int64]]:
    """The ``top`` next items of each prefix (item positions in click order, -1 =
    unknown and ignored), best first."""
    out: list[NDArray[np.int64]] = []
    for lo in range(0, len(prefixes), batch):
        q = _queries(prefixes[lo : lo + batch], index.n_items)
        out.extend(_vote(index, q, _search(index, q, params, params.k), params, top))
    return out


# -------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class TuneResult:
    """The chosen parameters, their validation metrics, and every config tried."""

    params: KNNParams
    metrics: dict[str, float]
    trials: list[tuple[KNNParams, dict[str, float]]]
    seconds: float

    def as_json(self) -> dict[str, Any]:
        params = asdict(self.params)
        params.pop("method")
        return {
            "params": params,
            "validation": self.metrics,
            "trials": len(self.trials),
            "tune_seconds": self.seconds,
        }


def objective(metrics: Mapping[str, float]) -> float:
    """What tuning maximises: HR@20 + MRR@20."""
    return float(metrics["hr@20"] + metrics["mrr@20"])


def evaluate_configs(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    configs: Sequence[KNNParams],
    score: Score,
    *,
    top: int = 20,
    batch: int = BATCH,
) -> list[dict[str, float]]:
    """``score`` of each config's rankings of ``prefixes``; configs that differ only
    in ``k`` or in how neighbours vote share one neighbour search."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(_search_key(config), []).append(i)
    ranked: list[list[NDArray[np.int64]]] = [[] for _ in configs]
    for members in groups.values():
        kmax = max(configs[i].k for i in members)
        for lo in range(0, len(prefixes), batch):
            q = _queries(prefixes[lo : lo + batch], index.n_items)
            nb = _search(index, q, configs[members[0]], kmax)
            for i in members:
                ranked[i].extend(_vote(index, q, nb, configs[i], top))
    return [score(r, targets) for r in ranked]


def _grid_search(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    configs: Sequence[KNNParams],
    score: Score,
) -> TuneResult:
    t = time.perf_counter()
    results = evaluate_configs(index, prefixes, targets, configs, score)
    best = max(range(len(configs)), key=lambda i: (objective(results[i]), -i))
    trials = list(zip(configs, results, strict=True))
    return TuneResult(configs[best], results[best], trials, time.perf_counter() - t)


def tune_sknn(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    score: Score,
) -> TuneResult:
    """SKNN over ``k ∈ K_GRID`` × ``m ∈ M_GRID``."""
    configs = [SKNNParams(k, m) for m in M_GRID for k in K_GRID]
    return _grid_search(index, prefixes, targets, configs, score)


def tune_vsknn(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    score: Score,
) -> TuneResult:
    """V-SKNN over ``k`` × ``m`` × ``decay`` × ``score_decay``."""
    configs = [
        VSKNNParams(k, m, decay, score_decay)
        for m in M_GRID
        for decay in DECAYS
        for score_decay in SCORE_DECAYS
        for k in K_GRID
    ]
    return _grid_search(index, prefixes, targets, configs, score)


def tune_stan(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    score: Score,
    *,
    k: int = 100,
    m: int = 1000,
) -> TuneResult:
    """STAN by coordinate ascent from ``k``, ``m``, ``λ1 = λ3 = L/2``, ``λ2 = 20``
    (module docstring); a coordinate moves only to a strictly better value."""
    t = time.perf_counter()
    length = index.mean_length
    lambdas = tuple(s if s < 1e-3 else s * length for s in LAMBDA_SHARES)
    axes: dict[str, tuple[float, ...]] = {
        "lambda1": lambdas,
        "lambda2": LAMBDA2_GRID,
        "lambda3": lambdas,
        "k": tuple(float(v) for v in K_GRID),
        "m": tuple(float(v) for v in M_GRID),
    }
    current = STANParams(k, m, length / 2, 20.0, length / 2)
    seen: dict[STANParams, dict[str, float]] = {}
    for _ in range(MAX_SWEEPS):
        moved = False
        for name, values in axes.items():
            configs = [_moved(current, name, v) for v in values]
            fresh = [c for c in dict.fromkeys(configs) if c not in seen]
            for c, result in zip(
                fresh, evaluate_configs(index, prefixes, targets, fresh, score), strict=True
            ):
                seen[c] = result
            best = max(configs, key=lambda c: objective(seen[c]))
            if objective(seen[best]) > objective(seen[current]):
                current, moved = best, True
        if not moved:
            break
    trials: list[tuple[KNNParams, dict[str, float]]] = list(seen.items())
    return TuneResult(current, seen[current], trials, time.perf_counter() - t)


def _moved(params: STANParams, name: str, value: float) -> STANParams:
    """``params`` with one coordinate set to ``value``."""
    if name == "k":
        return replace(params, k=int(value))
    if name == "m":
        return replace(params, m=int(value))
    if name == "lambda1":
        return replace(params, lambda1=value)
    if name == "lambda2":
        return replace(params, lambda2=value)
    return replace(params, lambda3=value)


def tune_session_knn(
    index: SessionIndex,
    prefixes: Sequence[NDArray[np.int64]],
    targets: NDArray[np.int64],
    score: Score,
) -> dict[str, TuneResult]:
    """SKNN, V-SKNN and STAN tuned on these (validation) cases; STAN starts from
    SKNN's ``k`` and ``m``."""
    sknn = tune_sknn(index, prefixes, targets, score)
    assert isinstance(sknn.params, SKNNParams)
    return {
        "sknn": sknn,
        "vsknn": tune_vsknn(index, prefixes, targets, score),
        "stan": tune_stan(index, prefixes, targets, score, k=sknn.params.k, m=sknn.params.m),
    }
