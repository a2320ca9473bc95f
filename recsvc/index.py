"""FAISS index over item vectors for maximum inner product search (MIPS).

Four kinds, one interface:

- ``exact``: ``IndexFlatIP``, brute force; right for small catalogues.
- ``normscan``: exact too, but items are scanned in descending norm and the scan
  stops once no remaining item can beat the k-th best (Cauchy–Schwarz:
  ``q·y ≤ |q|·|y|``). ALS item norms are very skewed (1M-item synthetic shop:
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
    """Exact MIPS over items sorted by descending norm, in chunks of doubling size.

    A query scans chunk after chunk and stops as soon as its k-th best score reaches
    ``|q|`` times the largest norm of the next chunk: no later item can beat it. The
    answer is the exact top-k; the cost depends on how early the stop comes (worst
    case: a full scan, as ``exact``). Duck-types the part of ``faiss.Index`` that
    :class:`ItemIndex` uses (``search``, ``ntotal``).
    """

    FIRST_CHUNK = 2048

    def __init__(self, ranked: FloatMatrix, order: NDArray[np.int64]) -> None:
        """``ranked`` ``(n, d)``: the item vectors sorted by descending norm;
        ``order`` ``(n,)``: the item position of each row of ``ranked``."""
        self.order = order
        norms = np.linalg.norm(ranked, axis=1)
        self.chunks: list[tuple[int, float, faiss.IndexFlatIP]] = []
        start, size = 0, self.FIRST_CHUNK
        while start < len(ranked):
            end = min(len(ranked), start + size)
            flat = faiss.IndexFlatIP(ranked.shape[1])
            flat.add(np.ascontiguousarray(ranked[start:end]))
            self.chunks.append((start, float(norms[start]), flat))
            start, size = end, size * 2

    @classmethod
    def build(cls, item_factors: FloatMatrix) -> NormScan:
        order = np.argsort(-np.linalg.norm(item_factors, axis=1), kind="stable").astype(np.int64)
        return cls(np.ascontiguousarray(item_factors[order], dtype=np.float32), order)

    @property
    def ntotal(self) -> int:
        return len(self.order)

    def search(self, queries: FloatMatrix, k: int) -> tuple[FloatMatrix, IdMatrix]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row in range(len(queries)):
            q = queries[row : row + 1]
            bound = float(np.linalg.norm(q))
            best_s = np.zeros(0, np.float32)
            best_i = np.zeros(0, np.int64)
            for start, top_norm, flat in self.chunks:
                if len(best_s) >= k and best_s[k - 1] >= bound * top_norm:
                    break  # Cauchy–Schwarz: nothing further on can enter the top k
                s, i = flat.search(q, min(k, int(flat.ntotal)))
                if len(best_s):
                    s_all = np.concatenate([best_s, s[0]])
                    i_all = np.concatenate([best_i, i[0] + start])
                    top = np.argsort(-s_all, kind="stable")[:k]
                    best_s, best_i = s_all[top], i_all[top]
                else:
                    best_s, best_i = s[0], i[0] + start
            scores[row, : len(best_s)] = best_s
            ids[row, : len(best_i)] = self.order[best_i]
        return scores, ids

    def to_faiss(self) -> faiss.Index:
        """One FAISS index holding the sorted vectors, with their item positions as ids."""
        ranked = np.vstack([flat.reconstruct_n(0, flat.ntotal) for _, _, flat in self.chunks])
        mapped = faiss.IndexIDMap2(faiss.IndexFlatIP(ranked.shape[1]))
        mapped.add_with_ids(ranked, self.order)
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

    def search(self, queries: FloatMatrix, k: int) -> tuple[FloatMatrix, IdMatrix]:
        """Top ``k`` items by inner product for each of ``queries`` ``(n, factors)``.

        Returns ``(scores, ids)``, both ``(n, k)``; ids are -1 past the end.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, self.ntotal)) if self.ntotal else 1
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
