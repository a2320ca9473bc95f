"""Strong simple baselines the served ranking must beat.

All work on ``counts`` ``(n_users, n_items)``: how many distinct baskets of each user
held each item (undecayed, as the published top-frequency baselines count).

- ``popularity`` (G-TopFreq): the most bought items overall.
- ``buy_again`` (P-TopFreq): the user's own most bought items, nothing else.
- ``blend`` (GP-TopFreq): the user's own items, then popular items to fill k.
- ``item_knn``: cosine item-item similarity on who bought what (top 100
  neighbours per item), a user's score for an item the sum of its similarities to
  the user's items.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["item_knn_similarity", "make_baselines"]

Recommender = Callable[[int], NDArray[np.int64]]


def make_baselines(counts: sp.csr_matrix, k: int, neighbours: int = 100) -> dict[str, Recommender]:
    """Baseline recommenders over training users (row positions of ``counts``)."""
    totals = np.asarray(counts.sum(axis=0)).ravel()
    popular = np.argsort(-totals, kind="stable").astype(np.int64)
    # computed on item_knn's first call: callers that score only the top-frequency
    # baselines (the publish gate) do not pay for the item × item product
    knn: list[sp.csr_matrix] = []

    def own(u: int) -> NDArray[np.int64]:
        start, end = counts.indptr[u], counts.indptr[u + 1]
        items, c = counts.indices[start:end], counts.data[start:end]
        # most bought first; ties broken by global popularity
        order = np.lexsort((-totals[items], -c))
        return np.asarray(items[order][:k], dtype=np.int64)

    def popularity(u: int) -> NDArray[np.int64]:
        return popular[:k]

    def blend(u: int) -> NDArray[np.int64]:
        mine = own(u)
        if len(mine) >= k:
            return mine
        head = popular[: k + len(mine)]
        fill = head[~np.isin(head, mine)][: k - len(mine)]
        return np.concatenate([mine, fill])

    def item_knn(u: int) -> NDArray[np.int64]:
        start, end = counts.indptr[u], counts.indptr[u + 1]
        if start == end:
            return popular[:k]
        if not knn:
            knn.append(item_knn_similarity(counts, neighbours))
        scores = np.asarray(knn[0][counts.indices[start:end]].sum(axis=0)).ravel()
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        if len(top) < k:
            head = popular[: 2 * k]
            top = np.concatenate([top, head[~np.isin(head, top)]])[:k]
        return top.astype(np.int64)

    return {"popularity": popularity, "buy_again": own, "blend": blend, "item_knn": item_knn}


def item_knn_similarity(counts: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """Cosine similarity ``(n_items, n_items)`` on binarised counts, top ``neighbours``
    per row, diagonal removed."""
    binary = counts.copy().tocsc()
    binary.data = np.ones_like(binary.data)
    norms = np.sqrt(np.asarray(binary.power(2).sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    normalised = binary @ sp.diags(1.0 / norms)
    sim = (normalised.T @ normalised).tocsr().astype(np.float32)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    rows, cols, vals = [], [], []
    for i in range(sim.shape[0]):
        start, end = sim.indptr[i], sim.indptr[i + 1]
        if end - start > neighbours:
            keep = np.argpartition(-sim.data[start:end], neighbours)[:neighbours] + start
        else:
            keep = np.arange(start, end)
        rows.append(np.full(len(keep), i))
        cols.append(sim.indices[keep])
        vals.append(sim.data[keep])
    if not rows:
        return sp.csr_matrix(sim.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape
    )
