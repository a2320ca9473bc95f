"""Strong baselines: EASE, RP3beta and TIFU-KNN, each tuned on a validation split.

Reproducibility studies (Dacrema, Cremonesi and Jannach, RecSys 2019; the NBR
reality check, Li et al., TOIS 2023) found well-tuned simple models ahead of most
published neural ones. These are the ones the served ranking is reported beside
(issue #22); :func:`training.evaluation.evaluate` (time split, last basket) and
:func:`training.nextbasket.evaluate_nbr` (Ta-Feng) run them with :func:`run`.

What they read: purchases only (the trainer's view, cart and other events do not
count), as the top-frequency baselines do.

- ``X`` is the user × item purchase matrix **binarised**: 1 when the user bought the
  item in any basket (:attr:`Interactions.counts` > 0). EASE and RP3beta are fitted
  on it and score a user by their row of it.
- **EASE** (Steck, WWW 2019): ``P = (XᵀX + λI)⁻¹``, ``B = I − P·diagMat(1/diag(P))``
  (its diagonal is zero by construction), a user's scores ``X_u·B``. Dense
  float32 items × items, so it refuses catalogues over ``max_items``
  (:data:`EASE_MAX_ITEMS`, :class:`TooManyItemsError`): 12,000 items (Ta-Feng) take
  576 MB per matrix and about three of them at the peak.
- **RP3beta** (Paudel et al., ACM TIIS 2017; as Dacrema et al. implement it):
  ``P_ui`` = X row-normalised, ``P_iu`` = Xᵀ row-normalised, each raised to the power
  ``α`` element-wise; ``W = P_iu·P_ui`` with column ``j`` divided by ``pop(j)^β``
  (``pop`` = the item's number of buyers), the diagonal zeroed, the ``neighbours``
  largest entries of each row kept. Scores ``X_u·W``.
- **TIFU-KNN** (Hu et al., SIGIR 2020), as the authors' code computes it (the code the
  NBR reality check ran): a user's ``n`` baskets (binary vectors, oldest first) are
  decayed by ``r_b^(n-1-j)``, split into ``m`` consecutive groups (``m`` is the
  *number* of groups, which the paper calls the group size; fewer baskets than ``m``:
  one group each), each group averaged, group ``g`` weighed ``r_g^(m-1-g)`` and the
  sum divided by the number of groups. The prediction is
  ``α·v_u + (1−α)·mean(v_n)`` over the user's ``k`` nearest other users (Euclidean
  distance as in the authors' code, or cosine; the search picks).

Repeats: where the served ranking may show a customer what they bought before (the
trainer's ``repeat_policy`` is ``allow``, as on every shop reported), the rows are

- ``ease`` / ``rp3beta``: the classic protocol, the customer's own items removed;
- ``ease_repeat`` / ``rp3beta_repeat``: the same scores, own items left in;
- ``ease_own`` / ``rp3beta_own``: own items left in and
  ``score/max(score) + w_own·count/max(count)`` (``count`` = the user's purchase
  baskets holding the item), ``w_own`` tuned with the model's own parameters;
- ``tifu_knn``: own items left in (its own vector is the repeat signal).

Under ``repeat_policy = exclude`` only ``ease``, ``rp3beta`` and ``tifu_knn``, all
with own items removed. Items a model scores 0 (and every item, for a user without
purchases) rank after the scored ones, by popularity (baskets holding them).

Tuning (:func:`tune`) reads only the fit data and the validation users' truths it is
given; :func:`recommend` takes no truth at all. The metric is Recall@K
(hits / |truth|, K the report's largest cut-off); EASE and RP3beta search their whole
grid, TIFU-KNN a coordinate search from the paper's Ta-Feng values (each parameter in
turn over its grid, until a pass improves nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.errors import DataError
from recsvc.events import EventType

__all__ = [
    "EASE_LAMBDAS",
    "EASE_MAX_ITEMS",
    "OWN_WEIGHTS",
    "RP3_ALPHAS",
    "RP3_BETAS",
    "RP3_NEIGHBOURS",
    "TIFU_GRID",
    "TIFU_START",
    "Baskets",
    "FitData",
    "StrongBaselines",
    "TooManyItemsError",
    "Tuned",
    "ease_weights",
    "rank_top",
    "recall_at",
    "recommend",
    "rp3beta_similarity",
    "run",
    "spd_inverse",
    "tifu_neighbours",
    "tifu_scores",
    "tifu_vectors",
    "tune",
]

log = logging.getLogger(__name__)

#: Largest catalogue EASE is fitted on: its items × items float32 matrices take
#: 1.6 GB each at 20,000 items, and the fit holds about three.
EASE_MAX_ITEMS = 20_000
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
#: ``w_own`` of the ``*_own`` rows: the weight of the user's normalised purchase count
#: beside the model's normalised score.
OWN_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
RP3_ALPHAS = (0.5, 0.8, 1.0)
RP3_BETAS = (0.0, 0.2, 0.4, 0.6)
RP3_NEIGHBOURS = (50, 100, 200)
#: TIFU-KNN's grid, around the paper's Ta-Feng values (Hu et al., 2020, Table 3:
#: k 300, m 7, r_b 0.9, r_g 0.7, α 0.7), within the paper's own ranges.
TIFU_GRID: dict[str, tuple[Any, ...]] = {
    "k": (100, 300, 500, 900, 1100, 1300),
    "m": (3, 7, 15),
    "r_b": (0.6, 0.7, 0.8, 0.9, 1.0),
    "r_g": (0.6, 0.7, 0.8, 0.9, 1.0),
    "alpha": (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
    "metric": ("euclidean", "cosine"),
}
TIFU_START: dict[str, Any] = {
    "k": 300,
    "m": 7,
    "r_b": 0.9,
    "r_g": 0.7,
    "alpha": 0.7,
    "metric": "euclidean",
}
#: Query users scored at once (dense users × items score blocks).
_CHUNK = 2048
#: Below any score: what may not be recommended, distinct values (``argpartition``
#: is ten times slower among thousands of equal ones).
_FAR_BELOW = -1e12

Lists = NDArray[np.int64]
"""``(n_users, K)`` item positions, best first."""
Variant = Literal["plain", "repeat", "own"]


class TooManyItemsError(DataError):
    """EASE's dense items × items matrices would not fit the configured limit."""


# --- data -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Baskets:
    """Purchase baskets as flat arrays, one entry per distinct item of a basket.

    ``rank[e]`` is the basket's place in its user's sequence (0 = oldest, by the
    basket's first timestamp), ``length[e]`` the user's number of baskets."""

    user: NDArray[np.int64]
    rank: NDArray[np.int64]
    length: NDArray[np.int64]
    item: NDArray[np.int64]
    n_users: int
    n_items: int

    @classmethod
    def from_table(
        cls, table: pa.Table, user_ids: Sequence[str], item_ids: Sequence[str]
    ) -> Baskets:
        """The purchases of ``table`` by known users, in the positions of ``user_ids``
        and ``item_ids`` (rows of other users or items are dropped). A purchase without
        a ``basket_id`` is a basket of its own timestamp."""
        purchases = table.filter(
            pc.and_(
                pc.equal(table["event_type"], EventType.PURCHASE.value),
                pc.is_valid(table["user_id"]),
            )
        )
        n_users, n_items = len(user_ids), len(item_ids)
        user = pc.index_in(purchases["user_id"], value_set=pa.array(user_ids, pa.string()))
        item = pc.index_in(purchases["item_id"], value_set=pa.array(item_ids, pa.string()))
        known = pc.and_(pc.is_valid(user), pc.is_valid(item))
        basket_ids = pc.coalesce(
            purchases["basket_id"], pc.cast(purchases["timestamp"], pa.string())
        )
        codes = pc.dictionary_encode(basket_ids.filter(known)).combine_chunks()
        u = user.filter(known).to_numpy(zero_copy_only=False).astype(np.int64)
        i = item.filter(known).to_numpy(zero_copy_only=False).astype(np.int64)
        stamps = purchases["timestamp"].filter(known).to_numpy().astype(np.int64)
        code = codes.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(u) == 0:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty, empty, empty, n_users, n_items)
        n_codes = len(codes.dictionary)
        keys, basket = np.unique(u * n_codes + code, return_inverse=True)
        basket = basket.ravel()
        b_user = keys // n_codes
        b_time = np.full(len(keys), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(b_time, basket, stamps)
        order = np.lexsort((keys, b_time, b_user))
        sorted_users = b_user[order]
        b_rank = np.empty(len(keys), np.int64)
        b_rank[order] = np.arange(len(keys)) - np.searchsorted(sorted_users, sorted_users)
        lengths = np.bincount(b_user, minlength=n_users)
        pairs = np.unique(basket * n_items + i)
        b, items = pairs // n_items, pairs % n_items
        return cls(
            user=b_user[b],
            rank=b_rank[b],
            length=lengths[b_user[b]],
            item=items,
            n_users=n_users,
            n_items=n_items,
        )


@dataclass(frozen=True)
class FitData:
    """What the strong baselines are fitted on: ``counts`` (users × items, purchase
    baskets holding the item: :attr:`Interactions.counts`) and the same purchases as
    :class:`Baskets`, in the same positions."""

    counts: sp.csr_matrix
    baskets: Baskets

    @property
    def binary(self) -> sp.csr_matrix:
        x = sp.csr_matrix(self.counts, dtype=np.float32, copy=True)
        x.eliminate_zeros()
        x.data[:] = 1.0
        return x

    @property
    def n_items(self) -> int:
        return int(self.counts.shape[1])

    def popularity_fill(self) -> NDArray[np.float64]:
        """Per item a value in (0, 1), higher for items in more baskets (ties: lower
        position first): the order of the items a model does not score."""
        totals = np.asarray(self.counts.sum(axis=0)).ravel()
        order = np.argsort(-totals, kind="stable")
        fill = np.empty(self.n_items, np.float64)
        fill[order] = 1.0 - (np.arange(self.n_items) + 1.0) / (self.n_items + 1.0)
        return fill


# --- the models -----------------------------------------------------------------------


def ease_gram(x: sp.csr_matrix) -> NDArray[np.float32]:
    """``XᵀX`` dense, float32."""
    gram = (x.T @ x).toarray()
    return np.asarray(gram, dtype=np.float32)


def ease_from_gram(gram: NDArray[np.float32], lam: float, leaf: int = 1024) -> NDArray[np.float32]:
    """EASE's ``B`` from ``XᵀX``: ``P = (XᵀX + λI)⁻¹``, ``B = −P/diag(P)`` column-wise
    with a zero diagonal (= ``I − P·diagMat(1/diag(P))``)."""
    a = gram.copy()
    a[np.diag_indices_from(a)] += np.float32(lam)
    p = spd_inverse(a, leaf)
    del a
    diag = p.diagonal().copy()
    if not np.all(diag > 0):
        raise DataError(f"EASE: XᵀX + {lam:g}·I could not be inverted")
    p /= -diag[None, :]
    np.fill_diagonal(p, 0.0)
    return p


def spd_inverse(a: NDArray[np.float32], leaf: int = 1024) -> NDArray[np.float32]:
    """The inverse of the symmetric positive definite ``a`` by 2 × 2 blocks and the
    Schur complement, recursively (``np.linalg.inv`` below ``leaf`` rows).

    ~4/3·n³ flops, nearly all matrix products: on this project's 2-core host that runs
    at ~115 GFLOPS in float32 where LAPACK's Cholesky inverse (``potrf``/``potri``)
    reached 15-18, so 12,000 items take ~17 s instead of ~2 minutes. Products of
    positive definite blocks need no pivoting; against float64 the float32 result
    differs by ~2e-7 relative on Ta-Feng's ``XᵀX + 50·I``."""
    n = a.shape[0]
    if n <= leaf:
        return np.asarray(np.linalg.inv(a), dtype=a.dtype)
    h = n // 2
    b11 = spd_inverse(a[:h, :h], leaf)
    t = a[h:, :h] @ b11  # A21·A11⁻¹
    schur = a[h:, h:] - t @ a[:h, h:]
    schur = (schur + schur.T) * np.float32(0.5)
    s_inv = spd_inverse(schur.astype(np.float32, copy=False), leaf)
    del schur
    p21 = -(s_inv @ t)
    out = np.empty_like(a)
    out[h:, h:] = s_inv
    out[h:, :h] = p21
    out[:h, h:] = p21.T
    out[:h, :h] = b11 - t.T @ p21
    return out


def ease_weights(
    x: sp.csr_matrix, lam: float, max_items: int = EASE_MAX_ITEMS
) -> NDArray[np.float32]:
    """EASE's item × item ``B`` for the binarised purchases ``x``.

    Raises:
        TooManyItemsError: past ``max_items`` items.
    """
    _check_ease_size(int(x.shape[1]), max_items)
    return ease_from_gram(ease_gram(x), lam)


def _check_ease_size(n_items: int, max_items: int) -> None:
    if n_items > max_items:
        gb = 3 * n_items * n_items * 4 / 1e9
        raise TooManyItemsError(
            f"EASE skipped: {n_items:,} items exceed the limit of {max_items:,} "
            f"(dense items × items float32, ~{gb:.1f} GB at the peak)"
        )


def _rp3_cooccurrence(x: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """``Xᵀ·diag(deg_u^-α)·X`` (items × items), X binary: ``P_iu^α·P_ui^α`` before
    its row scaling ``deg_i^-α``."""
    deg_u = np.asarray(x.sum(axis=1)).ravel()
    inv_u = np.zeros_like(deg_u, dtype=np.float64)
    inv_u[deg_u > 0] = deg_u[deg_u > 0] ** -alpha
    return sp.csr_matrix(x.T @ sp.diags(inv_u) @ x, dtype=np.float64)


def _degree_power(x: sp.csr_matrix, exponent: float) -> NDArray[np.float64]:
    """Each item's number of buyers to the power ``-exponent`` (0 for no buyer)."""
    deg = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
    out = np.zeros_like(deg)
    out[deg > 0] = deg[deg > 0] ** -exponent
    return out


def _rp3_top(
    cooc: sp.csr_matrix,
    left: NDArray[np.float64],
    right: NDArray[np.float64],
    neighbours: int,
    block: int = 1024,
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Each row's ``neighbours`` largest entries of ``diag(left)·cooc·diag(right)``,
    diagonal zeroed, best first: ``(index, value)`` both ``(n_items, neighbours)``."""
    n = cooc.shape[0]
    keep = min(neighbours, n)
    idx = np.zeros((n, keep), np.int64)
    val = np.zeros((n, keep), np.float32)
    untied = -1.0 - np.arange(n) / n
    for start in range(0, n, block):
        end = min(n, start + block)
        dense = cooc[start:end].toarray()
        dense *= left[start:end, None]
        dense *= right[None, :]
        dense[np.arange(end - start), np.arange(start, end)] = 0.0
        # zeros as distinct negatives: a selection among thousands of equal values is
        # ten times slower (they are cut back to 0, and dropped, below)
        dense = np.where(dense > 0, dense, untied)
        part = _top_columns(dense, keep)
        idx[start:end] = part
        val[start:end] = np.maximum(np.take_along_axis(dense, part, axis=1), 0.0)
    return idx, val


def _top_columns(scores: NDArray[Any], k: int) -> NDArray[np.int64]:
    """Column indices of each row's ``k`` largest values, best first; ties go to the
    lower index, at the cut too (``argpartition`` alone picks among them at will)."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:  # (partitioning at n - k is twice as fast as negating for k - 1)
        part = np.argpartition(scores, n - k, axis=1)[:, n - k :]
        cut = np.take_along_axis(scores, part, axis=1).min(axis=1)
        tied = np.flatnonzero((scores >= cut[:, None]).sum(axis=1) > k)
        if len(tied):
            sub = scores[tied]
            above = sub > cut[tied, None]
            at = sub == cut[tied, None]
            need = k - above.sum(axis=1)
            keep = above | (at & (np.cumsum(at, axis=1) <= need[:, None]))
            part[tied] = np.nonzero(keep)[1].reshape(len(tied), k)
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part.sort(axis=1)
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def _sparse_from_top(
    idx: NDArray[np.int64], val: NDArray[np.float32], neighbours: int
) -> sp.csr_matrix:
    n, width = idx.shape
    k = min(neighbours, width)
    w = sp.csr_matrix(
        (val[:, :k].ravel(), idx[:, :k].ravel(), np.arange(0, n * k + 1, k)),
        shape=(n, n),
    )
    w.eliminate_zeros()
    return w


def rp3beta_similarity(
    x: sp.csr_matrix, alpha: float, beta: float, neighbours: int
) -> sp.csr_matrix:
    """RP3beta's item × item ``W`` (see the module docstring) for the binary ``x``."""
    cooc = _rp3_cooccurrence(x, alpha)
    idx, val = _rp3_top(cooc, _degree_power(x, alpha), _degree_power(x, beta), neighbours)
    return _sparse_from_top(idx, val, neighbours)


def tifu_vectors(baskets: Baskets, m: int, r_b: float, r_g: float) -> sp.csr_matrix:
    """TIFU-KNN's user vectors (users × items, float64), as the authors' code."""
    n, j = baskets.length, baskets.rank
    weight = np.power(float(r_b), (n - 1 - j).astype(np.float64))
    few = n < m
    base = np.maximum(n // m, 1)
    extra = n % m
    boundary = (m - extra) * base
    late = j >= boundary
    group = np.where(late, (m - extra) + (j - boundary) // (base + 1), j // base)
    size = np.where(late, base + 1, base)
    group = np.where(few, j, group)
    size = np.where(few, 1, size)
    groups = np.where(few, n, m)
    weight *= np.power(float(r_g), (m - 1 - group).astype(np.float64)) / (size * groups)
    v = sp.csr_matrix(
        (weight, (baskets.user, baskets.item)), shape=(baskets.n_users, baskets.n_items)
    )
    v.sum_duplicates()
    return v


def tifu_neighbours(
    vectors: sp.csr_matrix,
    users: NDArray[np.int64],
    k: int,
    metric: str,
) -> NDArray[np.int64]:
    """Each of ``users``' ``k`` nearest other users with purchases, nearest first
    (``(len(users), min(k, candidates))``): smallest Euclidean distance, or largest
    cosine similarity."""
    sq = np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel()
    usable = sq > 0
    k = max(1, min(k, int(usable.sum()) - 1))
    out = np.zeros((len(users), k), np.int64)
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        dots = (vectors[chunk] @ vectors.T).toarray()
        if metric == "cosine":
            norms = np.sqrt(sq)
            denominator = norms[chunk, None] * norms[None, :]
            sim = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
        elif metric == "euclidean":
            sim = 2.0 * dots - sq[chunk, None] - sq[None, :]
        else:
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        sim[:, ~usable] = -np.inf
        sim[np.arange(len(chunk)), chunk] = -np.inf
        out[start : start + len(chunk)] = _top_columns(sim, k)
    return out


def tifu_scores(
    vectors: sp.csr_matrix,
    users: NDArray[np.int64],
    neighbours: NDArray[np.int64],
    k: int,
    alpha: float,
) -> sp.csr_matrix:
    """``α·v_u + (1−α)·mean of the first k neighbours' vectors`` for each of ``users``."""
    nb = neighbours[:, : min(k, neighbours.shape[1])]
    n_q, kk = nb.shape
    mean = sp.csr_matrix(
        (np.full(n_q * kk, 1.0 / kk), nb.ravel(), np.arange(0, n_q * kk + 1, kk)),
        shape=(n_q, vectors.shape[0]),
    )
    return sp.csr_matrix(alpha * vectors[users] + (1.0 - alpha) * (mean @ vectors))


# --- ranking and scoring --------------------------------------------------------------


def rank_top(
    scores: NDArray[Any],
    k: int,
    *,
    fill: NDArray[np.float64],
    exclude: sp.csr_matrix | None = None,
    nonnegative: bool = False,
) -> Lists:
    """Each row's top ``k`` items, best first.

    ``fill`` (:meth:`FitData.popularity_fill`) orders what the model does not score
    after everything it does: a row of zeros (a user without purchases) entirely,
    and with ``nonnegative`` every item scored ≤ 0. ``exclude`` (rows aligned with
    ``scores``): items never recommended (the user's own, in the classic protocol).
    """
    s: NDArray[np.floating[Any]] = np.array(
        scores, dtype=np.float32 if scores.dtype == np.float32 else np.float64
    )
    if nonnegative:
        s = np.where(s > 0, s, fill[None, :] - 2.0)
    else:
        blank = ~np.any(s != 0, axis=1)
        if blank.any():
            s[blank] = fill[None, :] - 2.0
    if exclude is not None:
        ex = sp.csr_matrix(exclude)
        rows = np.repeat(np.arange(ex.shape[0]), np.diff(ex.indptr))
        s[rows, ex.indices] = _FAR_BELOW - ex.indices
    return _top_columns(s, k)


def recall_at(lists: Lists, truths: Sequence[NDArray[np.int64]], n_items: int, k: int) -> float:
    """Mean Recall@k = hits / |truth| (not capped), truth positions ``-1`` (an item
    the fit data lacks) counting as misses, as :func:`evaluation.score_lists`."""
    if not truths:
        return 0.0
    relevant = np.zeros((len(truths), n_items + 1), dtype=bool)
    sizes = np.array([len(t) for t in truths], np.float64)
    rows = np.repeat(np.arange(len(truths)), sizes.astype(np.int64))
    cols = np.concatenate([np.where(t < 0, n_items, t) for t in truths]).astype(np.int64)
    relevant[rows, cols] = True
    hits = relevant[np.arange(len(truths))[:, None], lists[:, :k]].sum(axis=1)
    return float(np.mean(hits / np.maximum(sizes, 1.0)))


def _with_own(scores: NDArray[Any], own: NDArray[Any], weight: float) -> NDArray[np.float64]:
    """``score/max(score) + weight·own/max(own)`` row-wise (max ≤ 0 taken as 1)."""
    top = np.max(scores, axis=1, keepdims=True).astype(np.float64)
    top[top <= 0] = 1.0
    most = np.max(own, axis=1, keepdims=True).astype(np.float64)
    most[most <= 0] = 1.0
    out: NDArray[np.float64] = scores / top + weight * (own / most)
    return out


def _chunks(users: NDArray[np.int64]) -> Iterator[tuple[int, NDArray[np.int64]]]:
    for start in range(0, len(users), _CHUNK):
        yield start, users[start : start + _CHUNK]


# --- tuning ---------------------------------------------------------------------------


@dataclass
class _Best:
    score: float = -1.0
    params: dict[str, Any] = field(default_factory=dict)
    fit_key: Any = None
    trials: int = 0


@dataclass
class Tuned:
    """The parameters each row chose on validation, and the models fitted for them
    (``fit`` is the data they were fitted on: reused when the final fit is the same)."""

    rows: dict[str, _Best]
    fit: FitData
    k: int
    allow_repeats: bool
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _ease: dict[float, NDArray[np.float32]] = field(default_factory=dict, repr=False)
    _rp3: dict[tuple[float, float], tuple[NDArray[np.int64], NDArray[np.float32]]] = field(
        default_factory=dict, repr=False
    )

    def params(self) -> dict[str, dict[str, Any]]:
        """``{row: {"params": ..., "validation_recall@K": ..., "trials": n}}``."""
        out: dict[str, dict[str, Any]] = {}
        for name, best in self.rows.items():
            out[name] = {
                "params": dict(best.params),
                f"validation_recall@{self.k}": best.score,
                "trials": best.trials,
            }
        for name, reason in self.skipped.items():
            out[name] = {"skipped": reason}
        return out


def _variants(allow_repeats: bool) -> tuple[Variant, ...]:
    return ("plain", "repeat", "own") if allow_repeats else ("plain",)


def _row(family: str, variant: Variant) -> str:
    return family if variant == "plain" else f"{family}_{variant}"


def _score_variants(
    scores: NDArray[Any],
    own: sp.csr_matrix,
    fill: NDArray[np.float64],
    k: int,
    variants: Sequence[Variant],
    nonnegative: bool,
    own_weights: Sequence[float] = OWN_WEIGHTS,
) -> Iterator[tuple[Variant, float | None, Lists]]:
    """The top-k lists of every variant (``own``: each of ``own_weights``).

    One full ranking, the classic one without the user's own items; the others rank
    only its list and the own items: an item the user never bought has the same
    place among the others in every variant (``own`` adds 0 to it), so the top k of
    any variant lies in those candidates. The same lists as :func:`rank_top` on the
    whole catalogue (ties by item position), for a fraction of the cost."""
    plain = rank_top(scores, k, fill=fill, exclude=own, nonnegative=nonnegative)
    if "plain" in variants:
        yield "plain", None, plain
    if not {"repeat", "own"} & set(variants):
        return
    n_q = plain.shape[0]
    lengths = np.diff(own.indptr)
    rows = np.repeat(np.arange(n_q), lengths)
    offset = np.arange(own.nnz) - own.indptr[rows]
    width = plain.shape[1] + (int(lengths.max()) if n_q and own.nnz else 0)
    cand = np.full((n_q, width), -1, np.int64)
    counts = np.zeros((n_q, width), np.float64)
    cand[:, : plain.shape[1]] = plain
    cand[rows, plain.shape[1] + offset] = own.indices
    counts[rows, plain.shape[1] + offset] = own.data
    # candidates by item position (padding last), so that ties go to the lower one
    order = np.argsort(np.where(cand < 0, np.iinfo(np.int64).max, cand), axis=1, kind="stable")
    cand = np.take_along_axis(cand, order, axis=1)
    counts = np.take_along_axis(counts, order, axis=1)
    pad = cand < 0
    safe = np.where(pad, 0, cand)
    values = np.take_along_axis(np.asarray(scores, np.float64), safe, axis=1)
    blank = ~np.any(np.asarray(scores) != 0, axis=1)
    unscored = (values <= 0) if nonnegative else blank[:, None] & np.ones_like(pad)

    padding = _FAR_BELOW - np.arange(width, dtype=np.float64)

    def top(v: NDArray[np.float64], unscored: NDArray[np.bool_]) -> Lists:
        v = np.where(unscored, fill[safe] - 2.0, v)
        v = np.where(pad, padding[None, :], v)
        return np.take_along_axis(cand, _top_columns(v, k), axis=1)

    if "repeat" in variants:
        yield "repeat", None, top(values, unscored)
    if "own" in variants:
        best = np.max(scores, axis=1, keepdims=True).astype(np.float64)
        best[best <= 0] = 1.0
        most = counts.max(axis=1, keepdims=True)
        most[most <= 0] = 1.0
        for w in own_weights:
            mixed = values / best + w * (counts / most)
            yield "own", w, top(mixed, (mixed <= 0) if nonnegative else unscored & (counts == 0))


def _record(
    rows: dict[str, _Best], name: str, score: float, params: dict[str, Any], fit_key: Any
) -> None:
    best = rows.setdefault(name, _Best())
    best.trials += 1
    if score > best.score + 1e-12:
        best.score, best.params, best.fit_key = score, params, fit_key


def tune(
    fit: FitData,
    users: NDArray[np.int64],
    truths: Sequence[NDArray[np.int64]],
    *,
    k: int,
    allow_repeats: bool,
    max_ease_items: int = EASE_MAX_ITEMS,
    keep: bool = False,
    families: Sequence[str] = ("ease", "rp3beta", "tifu_knn"),
) -> Tuned:
    """Pick each row's parameters by Recall@``k`` of ``users`` (rows of ``fit``)
    against ``truths`` (positions of ``fit``'s items; -1 = unknown).

    ``keep``: hold on to the chosen EASE and RP3beta models, for a final fit on the
    very same ``fit`` (the NBR protocol, where validation and test users share it)."""
    users = np.asarray(users, np.int64)
    tuned = Tuned(rows={}, fit=fit, k=k, allow_repeats=allow_repeats)
    variants = _variants(allow_repeats)
    if "ease" in families:
        t = time.perf_counter()
        try:
            _tune_ease(tuned, users, truths, variants, max_ease_items, keep)
        except TooManyItemsError as exc:
            log.warning("%s", exc)
            for v in variants:
                tuned.skipped[_row("ease", v)] = str(exc)
        tuned.seconds["ease"] = time.perf_counter() - t
    if "rp3beta" in families:
        t = time.perf_counter()
        _tune_rp3(tuned, users, truths, variants, keep)
        tuned.seconds["rp3beta"] = time.perf_counter() - t
    if "tifu_knn" in families:
        t = time.perf_counter()
        _tune_tifu(tuned, users, truths)
        tuned.seconds["tifu_knn"] = time.perf_counter() - t
    for name, best in tuned.rows.items():
        log.info("%s: validation recall@%d %.4f with %s", name, k, best.score, best.params)
    return tuned


def _tune_ease(
    tuned: Tuned,
    users: NDArray[np.int64],
    truths: Sequence[NDArray[np.int64]],
    variants: Sequence[Variant],
    max_items: int,
    keep: bool,
) -> None:
    fit, k = tuned.fit, tuned.k
    _check_ease_size(fit.n_items, max_items)
    x = fit.binary
    gram = ease_gram(x)
    xq, own, fill = x[users], fit.counts[users], fit.popularity_fill()
    for lam in EASE_LAMBDAS:
        b = ease_from_gram(gram, lam)
        scores = np.asarray(xq @ b)
        for variant, w, lists in _score_variants(scores, own, fill, k, variants, False):
            params: dict[str, Any] = {"lambda": lam}
            if w is not None:
                params["w_own"] = w
            score = recall_at(lists, truths, fit.n_items, k)
            _record(tuned.rows, _row("ease", variant), score, params, lam)
        wanted = {best.fit_key for name, best in tuned.rows.items() if name.startswith("ease")}
        if keep and lam in wanted:
            tuned._ease[lam] = b
        for old in [key for key in tuned._ease if key not in wanted]:
            del tuned._ease[old]
        del b


def _tune_rp3(
    tuned: Tuned,
    users: NDArray[np.int64],
    truths: Sequence[NDArray[np.int64]],
    variants: Sequence[Variant],
    keep: bool,
) -> None:
    fit, k = tuned.fit, tuned.k
    x = fit.binary
    xq, own, fill = x[users], fit.counts[users], fit.popularity_fill()
    widest = max(RP3_NEIGHBOURS)
    for alpha in RP3_ALPHAS:
        cooc = _rp3_cooccurrence(x, alpha)
        left = _degree_power(x, alpha)
        for beta in RP3_BETAS:
            idx, val = _rp3_top(cooc, left, _degree_power(x, beta), widest)
            for n in RP3_NEIGHBOURS:
                scores = (xq @ _sparse_from_top(idx, val, n)).toarray()
                for variant, w, lists in _score_variants(scores, own, fill, k, variants, True):
                    params: dict[str, Any] = {"alpha": alpha, "beta": beta, "neighbours": n}
                    if w is not None:
                        params["w_own"] = w
                    score = recall_at(lists, truths, fit.n_items, k)
                    _record(tuned.rows, _row("rp3beta", variant), score, params, (alpha, beta))
            wanted = {b.fit_key for name, b in tuned.rows.items() if name.startswith("rp3beta")}
            if keep and (alpha, beta) in wanted:
                tuned._rp3[(alpha, beta)] = (idx, val)
            for old in [key for key in tuned._rp3 if key not in wanted]:
                del tuned._rp3[old]


def _coordinate_search(
    grid: dict[str, tuple[Any, ...]],
    start: dict[str, Any],
    score: Callable[[dict[str, Any]], float],
    passes: int = 3,
) -> tuple[dict[str, Any], float, int]:
    """From ``start``, each parameter in turn over its grid values (the others at the
    best so far), until a pass improves nothing. Returns best, its score, trials."""
    seen: dict[tuple[tuple[str, Any], ...], float] = {}

    def trial(params: dict[str, Any]) -> float:
        key = tuple(sorted(params.items()))
        if key not in seen:
            seen[key] = score(params)
        return seen[key]

    best = dict(start)
    best_score = trial(best)
    for _ in range(passes):
        improved = False
        for name, values in grid.items():
            for value in values:
                candidate = {**best, name: value}
                s = trial(candidate)
                if s > best_score + 1e-12:
                    best, best_score, improved = candidate, s, True
        if not improved:
            break
    return best, best_score, len(seen)


def _tune_tifu(tuned: Tuned, users: NDArray[np.int64], truths: Sequence[NDArray[np.int64]]) -> None:
    fit, k = tuned.fit, tuned.k
    own = None if tuned.allow_repeats else fit.counts[users]
    fill = fit.popularity_fill()
    widest = max(TIFU_GRID["k"])
    vectors: dict[tuple[int, float, float], sp.csr_matrix] = {}
    near: dict[tuple[int, float, float, str], NDArray[np.int64]] = {}

    def score(p: dict[str, Any]) -> float:
        vkey = (int(p["m"]), float(p["r_b"]), float(p["r_g"]))
        if vkey not in vectors:  # ~10 MB each on Ta-Feng; a search makes a few dozen
            vectors[vkey] = tifu_vectors(fit.baskets, *vkey)
        nkey = (*vkey, str(p["metric"]))
        if nkey not in near:
            near[nkey] = tifu_neighbours(vectors[vkey], users, widest, p["metric"])
        scores = tifu_scores(vectors[vkey], users, near[nkey], int(p["k"]), float(p["alpha"]))
        lists = rank_top(scores.toarray(), k, fill=fill, exclude=own, nonnegative=True)
        return recall_at(lists, truths, fit.n_items, k)

    best, best_score, trials = _coordinate_search(TIFU_GRID, TIFU_START, score)
    tuned.rows["tifu_knn"] = _Best(best_score, best, None, trials)


# --- the final fit --------------------------------------------------------------------


def recommend(tuned: Tuned, fit: FitData, users: NDArray[np.int64]) -> dict[str, Lists]:
    """Each tuned row's top-``tuned.k`` lists for ``users`` (rows of ``fit``), the
    models fitted on ``fit`` with the chosen parameters. Reads no truth."""
    users = np.asarray(users, np.int64)
    k, same = tuned.k, fit is tuned.fit
    fill = fit.popularity_fill()
    x = fit.binary
    out: dict[str, Lists] = {}
    ease_rows = {n: b for n, b in tuned.rows.items() if n.startswith("ease")}
    if ease_rows:
        gram: NDArray[np.float32] | None = None
        for lam in sorted({b.params["lambda"] for b in ease_rows.values()}):
            if same and lam in tuned._ease:
                weights = tuned._ease[lam]
            else:
                if gram is None:
                    gram = ease_gram(x)
                weights = ease_from_gram(gram, lam)
            for name, best in ease_rows.items():
                if best.params["lambda"] == lam:
                    out[name] = _final_lists(x, fit, users, weights, name, best, fill, k, False)
            del weights
    rp3_rows = {n: b for n, b in tuned.rows.items() if n.startswith("rp3beta")}
    for name, best in rp3_rows.items():
        p = best.params
        key = (p["alpha"], p["beta"])
        if same and key in tuned._rp3:
            sim = _sparse_from_top(*tuned._rp3[key], p["neighbours"])
        else:
            sim = rp3beta_similarity(x, p["alpha"], p["beta"], p["neighbours"])
        out[name] = _final_lists(x, fit, users, sim, name, best, fill, k, True)
    if "tifu_knn" in tuned.rows:
        p = tuned.rows["tifu_knn"].params
        vectors = tifu_vectors(fit.baskets, int(p["m"]), float(p["r_b"]), float(p["r_g"]))
        near = tifu_neighbours(vectors, users, int(p["k"]), p["metric"])
        lists = np.zeros((len(users), min(k, fit.n_items)), np.int64)
        for start, chunk in _chunks(users):
            scores = tifu_scores(
                vectors, chunk, near[start : start + len(chunk)], int(p["k"]), float(p["alpha"])
            )
            own = None if tuned.allow_repeats else fit.counts[chunk]
            lists[start : start + len(chunk)] = rank_top(
                scores.toarray(), k, fill=fill, exclude=own, nonnegative=True
            )
        out["tifu_knn"] = lists
    return out


def _final_lists(
    x: sp.csr_matrix,
    fit: FitData,
    users: NDArray[np.int64],
    weights: Any,
    name: str,
    best: _Best,
    fill: NDArray[np.float64],
    k: int,
    nonnegative: bool,
) -> Lists:
    variant: Variant = "plain"
    if name.endswith("_own"):
        variant = "own"
    elif name.endswith("_repeat"):
        variant = "repeat"
    w_own = (float(best.params["w_own"]),) if variant == "own" else ()
    lists = np.zeros((len(users), min(k, fit.n_items)), np.int64)
    for start, chunk in _chunks(users):
        product = x[chunk] @ weights
        scores = product.toarray() if sp.issparse(product) else np.asarray(product)
        for got, _, top in _score_variants(
            scores, fit.counts[chunk], fill, k, (variant,), nonnegative, w_own
        ):
            if got == variant:
                lists[start : start + len(chunk)] = top
    return lists


# --- the harness's entry point --------------------------------------------------------


@dataclass
class StrongBaselines:
    """Each row's lists for the final users, in row order, and what the report says."""

    lists: dict[str, list[NDArray[np.int64]]]
    report: dict[str, Any]
    seconds: dict[str, float]


#: The report rows in the order the tables show them.
ROW_ORDER = (
    "ease",
    "ease_repeat",
    "ease_own",
    "rp3beta",
    "rp3beta_repeat",
    "rp3beta_own",
    "tifu_knn",
)


def run(
    validation: FitData,
    validation_users: NDArray[np.int64],
    validation_truths: Sequence[NDArray[np.int64]],
    final: FitData,
    final_users: NDArray[np.int64],
    *,
    k: int,
    allow_repeats: bool,
    tuned_on: str,
    max_ease_items: int = EASE_MAX_ITEMS,
) -> StrongBaselines:
    """Tune on ``validation`` (its users and truths), refit on ``final`` with the chosen
    parameters (the same fitted models when ``final is validation``), rank for
    ``final_users``. ``tuned_on`` says in the report what the validation was."""
    t = time.perf_counter()
    tuned = tune(
        validation,
        validation_users,
        validation_truths,
        k=k,
        allow_repeats=allow_repeats,
        max_ease_items=max_ease_items,
        keep=final is validation,
    )
    tune_seconds = time.perf_counter() - t
    t = time.perf_counter()
    lists = recommend(tuned, final, final_users)
    final_seconds = time.perf_counter() - t
    ordered = {name: lists[name] for name in ROW_ORDER if name in lists}
    report = {
        "tuned_on": tuned_on,
        "validation_users": len(validation_users),
        "metric": f"recall@{k}",
        "input": "purchases, binarised (EASE, RP3beta); baskets (TIFU-KNN)",
        "repeats": "own items allowed" if allow_repeats else "own items removed",
        "rows": tuned.params(),
    }
    seconds = {**{f"tune_{n}": s for n, s in tuned.seconds.items()}}
    seconds["strong_tune"] = tune_seconds
    seconds["strong_final"] = final_seconds
    return StrongBaselines(
        lists={name: [row for row in rows] for name, rows in ordered.items()},
        report=report,
        seconds=seconds,
    )
