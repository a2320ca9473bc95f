"""Bought together: which items the shop's baskets hold together.

The trainer counts, over every purchase basket (guests' included), how many baskets
hold each item (``c_i``) and each pair (``c_ij``), and keeps each item's strongest
partners (:func:`count_co_purchases`); the artifact stores the counts. Serving adds
the pairs counted live since (:class:`recsvc.store.cooccur.CoOccurrence`) and ranks
a product's or a cart's partners (:class:`BoughtTogether`) by

    score(j | cart) = sum over i in cart of (c_ij + live_ij) / sqrt(c_i · c_j)

the cosine of the two items' basket vectors (Amazon's item-to-item measure, Linden
et al. 2003): a pair is strong when the two are bought together more often than
their popularity alone explains, and a best-seller in every basket does not top
every list. A pair met in fewer than ``min_support`` baskets is noise and dropped;
a basket of more than ``max_basket`` distinct items (a wholesale order) says little
about what goes with what and costs quadratic time, so it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = [
    "MAX_BASKET",
    "MAX_PARTNERS",
    "MIN_SUPPORT",
    "BoughtTogether",
    "CoPurchases",
    "count_co_purchases",
]

MAX_PAIRS: Final = 60_000_000
"""Pairs (with repeats) counted at most: past it the oldest baskets are left out."""
MAX_PARTNERS: Final = 50
"""Partners kept per item."""
MIN_SUPPORT: Final = 2
"""Baskets a pair must be met in."""
MAX_BASKET: Final = 100
"""Distinct items a counted basket may hold."""


@dataclass(frozen=True)
class CoPurchases:
    """Each item's strongest partners and the basket counts to score them."""

    partners: sp.csr_matrix
    """``(n_items, n_items)`` float32: ``c_ij``, the baskets holding both, for each
    item's ``max_partners`` strongest partners (by cosine)."""
    baskets: NDArray[np.float32]
    """``(n_items,)``: ``c_i``, the baskets holding each item."""
    n_baskets: int
    """Baskets counted (of 2 to ``max_basket`` distinct items)."""

    def to_arrays(self) -> dict[str, NDArray[np.generic]]:
        p = self.partners
        return {
            "indptr": p.indptr.astype(np.int64),
            "indices": p.indices.astype(np.int32),
            "counts": p.data.astype(np.float32),
            "baskets": self.baskets.astype(np.float32),
            "n_baskets": np.array(self.n_baskets, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray[np.generic]]) -> CoPurchases:
        """Inverse of :meth:`to_arrays`; ValueError if the arrays do not fit."""
        baskets = np.asarray(arrays["baskets"], dtype=np.float32)
        n = len(baskets)
        indptr = np.asarray(arrays["indptr"], dtype=np.int64)
        indices = np.asarray(arrays["indices"], dtype=np.int32)
        counts = np.asarray(arrays["counts"], dtype=np.float32)
        if len(indptr) != n + 1 or len(indices) != len(counts) or indptr[-1] != len(indices):
            raise ValueError("bought-together arrays of inconsistent sizes")
        if len(indices) and (indices.min() < 0 or indices.max() >= n):
            raise ValueError("bought-together partner out of range")
        partners = sp.csr_matrix((counts, indices, indptr), shape=(n, n))
        return cls(partners, baskets, int(arrays["n_baskets"]))


def count_co_purchases(
    table: pa.Table,
    item_ids: NDArray[np.str_],
    *,
    max_partners: int = MAX_PARTNERS,
    min_support: int = MIN_SUPPORT,
    max_basket: int = MAX_BASKET,
    max_pairs: int = MAX_PAIRS,
) -> CoPurchases:
    """Count the purchase baskets of ``table`` (events, :mod:`recsvc.events`) over the
    items ``item_ids`` (positions = the model's)."""
    n_items = len(item_ids)
    purchases = table.filter(
        pc.and_(pc.equal(table["event_type"], "purchase"), pc.is_valid(table["basket_id"]))
    )
    pos = pc.index_in(purchases["item_id"], value_set=pa.array(item_ids.tolist(), pa.string()))
    items = pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(purchases["basket_id"].combine_chunks())
    baskets = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    time = purchases["timestamp"].to_numpy().astype(np.int64)
    keep = items >= 0
    items, baskets, time = items[keep], baskets[keep], time[keep]
    # a basket's time is its newest line: the oldest baskets go first past max_pairs
    newest = np.full(len(encoded.dictionary), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(newest, baskets, time)
    # each (basket, item) once
    width = max(n_items, 1)
    key = np.unique(baskets * width + items)
    b, i = key // width, (key % width).astype(np.int32)
    size = np.bincount(b, minlength=len(newest))
    usable = (size >= 2) & (size <= max_basket)
    cost = np.where(usable, size.astype(np.int64) ** 2, 0)
    if cost.sum() > max_pairs:
        order = np.argsort(-newest, kind="stable")
        within = np.zeros(len(usable), dtype=bool)
        within[order[np.cumsum(cost[order]) <= max_pairs]] = True
        usable &= within
    rows = usable[b]
    b, i = b[rows], i[rows]
    _, b = np.unique(b, return_inverse=True)
    n_baskets = int(b.max()) + 1 if len(b) else 0
    x = sp.csr_matrix(
        (np.ones(len(b), np.float32), (b, i)), shape=(n_baskets, n_items), dtype=np.float32
    )
    c = (x.T @ x).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float32)
    partners = _strongest(c, counts, max_partners, min_support)
    return CoPurchases(partners, counts, n_baskets)


def _strongest(
    c: sp.csr_matrix, counts: NDArray[np.float32], k: int, min_support: int
) -> sp.csr_matrix:
    """Each row's ``k`` strongest entries by cosine, of at least ``min_support``."""
    c = c.tocoo()
    keep = c.data >= min_support
    r, j, v = c.row[keep], c.col[keep], c.data[keep].astype(np.float32)
    score = v / np.sqrt(counts[r] * counts[j])
    # by row, then best first (a cosine is at most 1: one float key sorts both, 4x
    # faster than a lexsort on three), then by column (stable: COO keeps CSR order)
    order = np.argsort(r * 2.0 + (1.0 - score), kind="stable")
    r, j, v = r[order], j[order], v[order]
    start = np.searchsorted(r, np.arange(len(counts)))
    rank = np.arange(len(r)) - start[r]
    top = rank < k
    n = len(counts)
    out = sp.csr_matrix((v[top], (r[top], j[top])), shape=(n, n), dtype=np.float32)
    out.sort_indices()
    return out


class BoughtTogether:
    """Ranks what goes with a product or a cart (see the module docstring)."""

    def __init__(self, co: CoPurchases) -> None:
        self.co = co
        self._norm = np.sqrt(np.maximum(co.baskets, 1.0)).astype(np.float32)

    def score(
        self, items: NDArray[np.int32], live: dict[int, dict[int, float]] | None = None
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """The partners of ``items`` (positions) and their scores, best first; ``live``
        maps an item to partners counted since training (positions -> baskets)."""
        p = self.co.partners
        parts_j: list[NDArray[np.int32]] = []
        parts_v: list[NDArray[np.float32]] = []
        for i in np.unique(items).tolist():
            start, end = p.indptr[i], p.indptr[i + 1]
            js, cs = p.indices[start:end], p.data[start:end]
            extra = (live or {}).get(i)
            if extra:
                more = np.array(list(extra), np.int32)
                add = np.array(list(extra.values()), np.float32)
                js = np.concatenate([js, more])
                cs = np.concatenate([cs, add])
            parts_j.append(js.astype(np.int32))
            parts_v.append((cs / (self._norm[i] * self._norm[js])).astype(np.float32))
        if not parts_j:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        j = np.concatenate(parts_j)
        v = np.concatenate(parts_v)
        uniq, inverse = np.unique(j, return_inverse=True)
        total = np.bincount(inverse, weights=v).astype(np.float32)
        given = np.isin(uniq, items)
        uniq, total = uniq[~given], total[~given]
        order = np.lexsort((uniq, -total))
        return uniq[order].astype(np.int32), total[order]
