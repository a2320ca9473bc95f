"""FAISS index over item vectors for maximum inner product search (MIPS).

Four kinds, one interface:

- ``exact``: ``IndexFlatIP``, brute force; right for small catalogues.
- ``normscan``: exact too, but items are scanned in descending norm and the scan
  stops once no remaining item can beat the k-th best (Cauchy–Schwarz:
  ``q·y ≤ |q|·|y|``); it also searches under a mask of the items a request may be
  shown, exactly. ALS item norms are very skewed (1M-item synthetic shop:
  median 0.025, max 19.2), so the true top-20 lies in the first ~1% of items and a
  query at 1M items costs ~62 µs instead of ~8.7 ms, with recall 1.0
  (benchmarks/results/index). The default beyond ``exact_max_items``.
- ``hnsw``: HNSW graph searched by inner product. FAISS prunes HNSW neighbours with
  the same inner product, and skewed norms leave the graph almost empty (median
  out-degree 1 of 64): recall@20 0.99 on one 100k shop but 0.53 on another and
  0.39 at 1M. Kept as an option; the recall gate at publish time guards it.
- ``ivf``: inverted lists over an inner-product coarse quantizer (0.78 recall at
  1M even at nprobe 256).

The textbook MIPS→L2 reduction (an extra coordinate ``sqrt(M² − |y|²)``) was worse
still for HNSW: the extra coordinate dominates every distance (docs/design.md).

``search`` always returns true inner products, best first, with FAISS's ``-1``
padding left in place (callers drop ids < 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import faiss
import numpy as np
from numpy.typing import NDArray

from recsvc.config import IndexSettings
from recsvc.errors import ArtifactError

__all__ = [
    "IndexKind",
    "ItemIndex",
    "NormScan",
    "choose_kind",
    "exact_search",
    "measure_recall",
]

IndexKind = Literal["exact", "normscan", "hnsw", "ivf"]

FloatMatrix = NDArray[np.float32]
"""``(n, factors)`` float32, C-contiguous."""
IdMatrix = NDArray[np.int64]
"""``(n, k)`` int64 item positions, -1 where FAISS found fewer than k."""


def choose_kind(n_items: int, settings: IndexSettings) -> IndexKind:
    """The index kind for a catalogue of ``n_items`` under ``settings``."""
    if settings.kind != "auto":
        return settings.kind
    return "exact" if n_items <= settings.exact_max_items else "normscan"


class NormScan:
    """Exact MIPS over items sorted by descending norm, in a few products.

    A query scores the first items (the longest vectors), takes its k-th best score
    ``s`` and then scores only the items that could still beat it: those with
    ``|q|·|y| ≥ s`` (Cauchy–Schwarz), a prefix of the sorted rows, in steps that at
    most double what was scored, each step's better k-th best shortening the rest.
    ALS item norms are skewed, so that prefix is short: at 100k items a top-42 reads
    ~3,800 rows (median) where a stop checked at doubling chunks read 6,144 (14,336
    at p90).
    With a mask of the items that may be returned, the k-th best *allowed* score sets
    the depth, so a filtered search is exact and needs no over-fetch for what the
    filter rejects. Duck-types the part of ``faiss.Index`` that :class:`ItemIndex`
    uses (``search``, ``ntotal``).
    """

    FIRST = 2048
    """Rows scored before the depth is known (at least 4k)."""

    def __init__(self, ranked: FloatMatrix, order: NDArray[np.int64]) -> None:
        """``ranked`` ``(n, d)``: the item vectors sorted by descending norm;
        ``order`` ``(n,)``: the item position of each row of ``ranked``."""
        self.ranked = np.ascontiguousarray(ranked, dtype=np.float32)
        self.order = order
        self._neg_norms = -np.linalg.norm(self.ranked, axis=1)
        """Minus each row's norm: ascending, for searchsorted."""

    @classmethod
    def build(cls, item_factors: FloatMatrix) -> NormScan:
        order = np.argsort(-np.linalg.norm(item_factors, axis=1), kind="stable").astype(np.int64)
        return cls(np.ascontiguousarray(item_factors[order], dtype=np.float32), order)

    @property
    def ntotal(self) -> int:
        return len(self.order)

    @property
    def nbytes(self) -> int:
        """Memory held: the sorted vectors, their item positions and norms."""
        return int(self.ranked.nbytes + self.order.nbytes + self._neg_norms.nbytes)

    def depth(self, query: NDArray[np.float32], kth: float) -> int:
        """How many of the sorted rows could score ``kth`` or more for ``query``."""
        if kth <= 0.0:
            return len(self.order)  # any vector, however short, may reach it
        q_norm = float(np.sqrt(query @ query))
        if q_norm == 0.0:
            return 0
        # rows with |y| ≥ kth / |q|, less a relative 1e-5 for the products' rounding
        # (as float32: a Python float would convert every norm to float64 first)
        edge = np.float32(-kth / q_norm * (1 - 1e-5))
        return int(np.searchsorted(self._neg_norms, edge, side="right"))

    def search(
        self, queries: FloatMatrix, k: int, allowed: NDArray[np.bool_] | None = None
    ) -> tuple[FloatMatrix, IdMatrix]:
        """Top ``k`` items by inner product for each of ``queries``, among those
        ``allowed`` (a mask by item position; None: all): ``(scores, ids)``, ``(n, k)``
        each, ids -1 past the end."""
        n = len(self.order)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        first = min(n, max(self.FIRST, 4 * k))
        for row in range(len(queries)):
            q = queries[row]
            s = self.ranked[:first] @ q
            end = first
            while True:
                best = self._best(s, k, allowed)
                if len(best) == k:  # the k-th best so far bounds how deep the rest can be
                    depth = self.depth(q, float(s[best[-1]]))
                    break
                if end >= n:
                    depth = n
                    break
                # a filter that lets few of the longest vectors through: deeper
                s = np.concatenate([s, self.ranked[end : min(n, 4 * end)] @ q])
                end = min(n, 4 * end)
            rows, top = best, s[best]
            while depth > end:  # the rows that could still beat the k-th best: their best
                step = min(depth, 2 * end)  # at most doubling: a better k-th cuts the rest
                more = self.ranked[end:step] @ q
                extra = self._best(more, k, allowed, end)
                rows = np.concatenate([rows, extra])
                top = np.concatenate([top, more[extra - end]])
                keep = np.lexsort((rows, -top))[:k]  # by score, ties: the longer vector
                rows, top = rows[keep], top[keep]
                end = step
                if len(rows) == k:
                    depth = min(depth, self.depth(q, float(top[-1])))
            scores[row, : len(rows)] = top
            ids[row, : len(rows)] = self.order[rows]
        return scores, ids

    def _best(
        self,
        s: NDArray[np.float32],
        k: int,
        allowed: NDArray[np.bool_] | None,
        offset: int = 0,
    ) -> NDArray[np.intp]:
        """The rows (``offset`` + index) of the ``k`` best scores ``s`` of sorted rows
        ``offset:offset + len(s)`` whose items are ``allowed``, best first (fewer when
        fewer are): the mask is read only for the best candidates, 2k of them, more
        when too few of those pass."""
        want = k if allowed is None else 2 * k
        while True:
            m = min(len(s), want)
            top = np.argpartition(s, len(s) - m)[len(s) - m :] if m < len(s) else np.arange(m)
            if allowed is not None:
                top = top[allowed[self.order[top + offset]]]
            if len(top) >= k or m == len(s):
                break
            want *= 4
        top.sort()  # ties: the longer vector first, as a scan in norm order meets them
        best: NDArray[np.intp] = top[np.argsort(-s[top], kind="stable")[:k]] + offset
        return best

    def to_faiss(self) -> faiss.Index:
        """One FAISS index holding the sorted vectors, with their item positions as ids."""
        mapped = faiss.IndexIDMap2(faiss.IndexFlatIP(self.ranked.shape[1]))
        mapped.add_with_ids(self.ranked, self.order)
        return mapped

    @classmethod
    def from_faiss(cls, index: faiss.Index) -> NormScan:
        mapped = cast(faiss.IndexIDMap2, faiss.downcast_index(index))
        flat = faiss.downcast_index(mapped.index)
        order = faiss.vector_to_array(mapped.id_map).astype(np.int64)
        return cls(flat.reconstruct_n(0, flat.ntotal), order)


@dataclass
class ItemIndex:
    """A searchable FAISS index plus what is needed to turn its answers into scores."""

    index: faiss.Index | NormScan
    kind: IndexKind
    max_norm_sq: float
    """M² of a MIPS→L2 reduction; 0 for every kind built now (kept in the manifest
    format so artifacts stay readable)."""

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, item_factors: FloatMatrix, settings: IndexSettings) -> ItemIndex:
        """Index ``item_factors`` ``(n_items, factors)``; the row is the item's id."""
        y = np.ascontiguousarray(item_factors, dtype=np.float32)
        n, d = y.shape
        kind = choose_kind(n, settings)
        if kind == "exact":
            flat = faiss.IndexFlatIP(d)
            flat.add(y)
            return cls(flat, "exact", 0.0)
        if kind == "normscan":
            return cls(NormScan.build(y), "normscan", 0.0)
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = settings.hnsw_ef_construction
            hnsw.hnsw.efSearch = settings.hnsw_ef_search
            hnsw.add(y)
            return cls(hnsw, "hnsw", 0.0)
        nlist = settings.ivf_nlist or max(1, int(4 * math.sqrt(n)))
        nlist = min(nlist, max(1, n // 39))  # FAISS wants ~39 training points per cell
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(y)
        ivf.add(y)
        ivf.nprobe = min(settings.ivf_nprobe, nlist)
        return cls(ivf, "ivf", 0.0)

    @property
    def masks(self) -> bool:
        """Whether :meth:`search` takes a mask of the items it may return (``normscan``:
        the k best allowed items, exactly); the other kinds return the k best of all,
        for the caller to filter."""
        return isinstance(self.index, NormScan)

    def search(
        self, queries: FloatMatrix, k: int, allowed: NDArray[np.bool_] | None = None
    ) -> tuple[FloatMatrix, IdMatrix]:
        """Top ``k`` items by inner product for each of ``queries`` ``(n, factors)``,
        among those ``allowed`` (a mask by item position; only where :attr:`masks`).

        Returns ``(scores, ids)``, both ``(n, k)``; ids are -1 past the end.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
        if isinstance(self.index, NormScan):
            return self.index.search(q, k, allowed)
        if allowed is not None:
            raise ValueError(f"a {self.kind} index cannot search under a mask")
        scores, ids = self.index.search(q, k)
        return scores, ids

    def save(self, path: Path) -> None:
        index = self.index.to_faiss() if isinstance(self.index, NormScan) else self.index
        faiss.write_index(index, str(path))

    @classmethod
    def load(cls, path: Path, kind: IndexKind, max_norm_sq: float, ef_search: int) -> ItemIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"cannot read FAISS index {path}: {exc}") from exc
        if kind == "hnsw":
            cast(faiss.IndexHNSWFlat, index).hnsw.efSearch = ef_search
        if kind == "normscan":
            return cls(NormScan.from_faiss(index), kind, max_norm_sq)
        return cls(index, kind, max_norm_sq)


def exact_search(item_factors: FloatMatrix, queries: FloatMatrix, k: int) -> IdMatrix:
    """Ground-truth top-``k`` ids by brute force (for recall measurement)."""
    flat = faiss.IndexFlatIP(item_factors.shape[1])
    flat.add(np.ascontiguousarray(item_factors, dtype=np.float32))
    _, ids = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.asarray(ids, dtype=np.int64)


def measure_recall(
    index: ItemIndex, item_factors: FloatMatrix, queries: FloatMatrix, k: int
) -> float:
    """Mean recall@k of ``index`` against exact search over ``queries``.

    Ties in score make "the" exact top-k ambiguous; an item counts as found when
    its score reaches the exact k-th score (within float tolerance).
    """
    if index.kind in ("exact", "normscan"):
        return 1.0  # exact by construction (normscan: tested against exact)
    k = min(k, index.ntotal)
    truth = exact_search(item_factors, queries, k)
    scores, found = index.search(queries, k)
    exact_scores = np.einsum("qd,qkd->qk", queries, item_factors[truth])
    kth = exact_scores[:, -1:] - 1e-5 * np.maximum(np.abs(exact_scores[:, -1:]), 1.0)
    hits = 0
    for row in range(len(queries)):
        ids = found[row][found[row] >= 0]
        hits += min(k, int((scores[row][: len(ids)] >= kth[row]).sum()))
    return hits / (k * len(queries))
