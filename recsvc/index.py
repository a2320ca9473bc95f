"""FAISS index over item vectors for maximum inner product search (MIPS).

Four kinds, one interface:

- ``exact``: ``IndexFlatIP``, brute force; right for small catalogues.
- ``normscan``: exact too, but items are scanned in descending norm and the scan
  stops once no remaining item can beat the k-th best (Cauchy–Schwarz:
  ``q·y ≤ |q|·|y|``); it also searches under a mask of the items a request may be
  shown, exactly. ALS item norms are very skewed (1M-item synthetic shop:
  median 0.025, max 19.2), so the true top-20 lies in the first ~1% of items and a
  query at 1M items reads a few thousand rows instead of a million, with recall 1.0
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
from recsvc.jit import kernel

__all__ = [
    "IndexKind",
    "ItemIndex",
    "Mask",
    "NormScan",
    "ScanMask",
    "choose_kind",
    "exact_search",
    "measure_recall",
    "warm_up",
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


_SLACK = 1.0 - 1e-5
"""A row is scanned while ``|q|·|y|`` reaches the k-th best less this relative margin
(the products' float32 rounding)."""
_ALL = np.ones(1, dtype=np.bool_)
"""The mask argument of an unmasked scan (not read)."""


@kernel(fastmath={"reassoc", "contract"})
def _scan(
    ranked: np.ndarray,
    norms: np.ndarray,
    order: np.ndarray,
    queries: np.ndarray,
    allowed: np.ndarray,
    masked: bool,
    by_row: bool,
    ids: np.ndarray,
    scores: np.ndarray,
) -> None:  # pragma: no cover (compiled; tests run it through NormScan.search)
    """For each query, the items (``order`` of the rows) of the ``k`` best rows of
    ``ranked`` (sorted by descending ``norms``) into ``ids`` / ``scores`` ``(n, k)``,
    best first (ties: the earlier row), among rows whose item is ``allowed`` when
    ``masked`` (by item, or by row when ``by_row``: then read in order, not at random);
    stops at the first row that cannot reach the k-th best. Places past the rows
    found: -1 / -inf."""
    n, d = ranked.shape
    k = ids.shape[1]
    for qi in range(len(queries)):
        q = queries[qi]
        top_rows = ids[qi]  # rows while scanning, items at the end
        top = scores[qi]
        q_norm = 0.0
        for j in range(d):
            q_norm += float(q[j]) * float(q[j])
        q_norm = math.sqrt(q_norm)
        held = 0
        edge = -1.0  # rows shorter than this cannot reach the k-th best (-1: any can)
        for row in range(n):
            if held == k:
                if q_norm == 0.0:
                    break  # every score is 0: the first k rows are the answer
                if edge >= 0.0 and norms[row] < edge:
                    break  # and every row after it is shorter still
            if masked and not allowed[row if by_row else order[row]]:
                continue
            vector = ranked[row]
            s = np.float32(0.0)
            for j in range(d):
                s += vector[j] * q[j]
            if held < k:
                at = held
                held += 1
            elif s > top[k - 1]:
                at = k - 1
            else:
                continue
            while at > 0 and top[at - 1] < s:
                top[at] = top[at - 1]
                top_rows[at] = top_rows[at - 1]
                at -= 1
            top[at] = s
            top_rows[at] = row
            if held == k:
                kth = float(top[k - 1])
                edge = kth / q_norm * _SLACK if kth > 0.0 and q_norm > 0.0 else -1.0
        for at in range(held):
            top_rows[at] = order[top_rows[at]]
        for at in range(held, k):
            top_rows[at] = -1
            top[at] = -np.inf


@dataclass(frozen=True, eq=False)
class ScanMask:
    """A mask of the items a :class:`NormScan` may return, in its row order (made by
    :meth:`NormScan.in_row_order` for that scan only)."""

    rows: NDArray[np.bool_]
    scan: NormScan


Mask = NDArray[np.bool_] | ScanMask
"""What a search may return: a mask by item position, or one in a scan's row order."""


class NormScan:
    """Exact MIPS over items sorted by descending norm, scanned until no row can win.

    A query is scored against the rows in order (the longest vectors first), keeping
    its k best; once it holds k, a row whose norm ``|y|`` gives ``|q|·|y|`` below the
    k-th best score cannot beat it (Cauchy–Schwarz), and neither can any row after it:
    the scan stops there. ALS item norms are skewed, so that prefix is short: at 100k
    items a top-42 reads ~3,800 rows (median). With a mask of the items that may be
    returned, rows it hides are skipped unscored and the k-th best *allowed* score sets
    the depth, so a filtered search is exact and needs no over-fetch for what the
    filter rejects.

    The scan is one compiled loop (:func:`_scan`): in NumPy the same search was a
    dozen array calls on a first block, then on steps bounded by the k-th best, and
    cost ~3× as much (benchmarks/results/index/compiled-1m, docs/design.md). Duck-types the part
    of ``faiss.Index`` that :class:`ItemIndex` uses (``search``, ``ntotal``).
    """

    def __init__(self, ranked: FloatMatrix, order: NDArray[np.int64]) -> None:
        """``ranked`` ``(n, d)``: the item vectors sorted by descending norm;
        ``order`` ``(n,)``: the item position of each row of ``ranked``."""
        self.ranked = np.ascontiguousarray(ranked, dtype=np.float32)
        self.order = np.ascontiguousarray(order, dtype=np.int64)
        self.norms = np.linalg.norm(self.ranked, axis=1).astype(np.float32)
        """Each row's norm: descending."""

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
        return int(self.ranked.nbytes + self.order.nbytes + self.norms.nbytes)

    def depth(self, query: NDArray[np.float32], kth: float) -> int:
        """How many of the sorted rows could score ``kth`` or more for ``query`` (the
        rows a search whose k-th best is ``kth`` reads)."""
        if kth <= 0.0:
            return len(self.order)  # any vector, however short, may reach it
        q_norm = float(np.sqrt(query @ query))
        if q_norm == 0.0:
            return 0
        edge = kth / q_norm * _SLACK  # as the scan compares it (float64)
        return int(np.searchsorted(-self.norms, -edge, side="right"))

    def search(
        self, queries: FloatMatrix, k: int, allowed: Mask | None = None
    ) -> tuple[FloatMatrix, IdMatrix]:
        """Top ``k`` items by inner product for each of ``queries``, among those
        ``allowed`` (a mask by item position, or one in this scan's row order; None:
        all): ``(scores, ids)``, ``(n, k)`` each, ids -1 past the end. Ties: the longer
        vector first."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        # the compiled scan reads without bounds checks: shapes are checked here
        if q.ndim != 2 or q.shape[1] != self.ranked.shape[1]:
            raise ValueError(f"queries of shape {q.shape} for {self.ranked.shape[1]} factors")
        by_row = False
        if isinstance(allowed, ScanMask):
            if allowed.scan is not self:
                raise ValueError("a mask in another index's row order")
            mask, by_row = allowed.rows, True
        elif allowed is not None:
            if allowed.shape != self.order.shape:
                raise ValueError(f"a mask of shape {allowed.shape} for {len(self.order)} items")
            mask = np.ascontiguousarray(allowed, dtype=np.bool_)
        else:
            mask = _ALL
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        _scan(
            self.ranked, self.norms, self.order, q, mask, allowed is not None, by_row, ids, scores
        )
        return scores, ids

    def in_row_order(self, allowed: NDArray[np.bool_]) -> ScanMask:
        """``allowed`` (by item position) in this scan's row order: what a mask many
        searches share is made into once. The scan then reads it in order, a cache line
        per 64 rows, where a mask by item costs a line per row read at random (at 100k
        items, a masked top-32 with the CPU caches flushed: 88 against 78 µs; the same
        with them warm: docs/design.md)."""
        if allowed.shape != self.order.shape:
            raise ValueError(f"a mask of shape {allowed.shape} for {len(self.order)} items")
        return ScanMask(np.ascontiguousarray(allowed[self.order], dtype=np.bool_), self)

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

    def in_scan_order(self, allowed: NDArray[np.bool_]) -> Mask:
        """``allowed`` as :meth:`search` reads it fastest: in the scan's row order for a
        ``normscan`` index (see :meth:`NormScan.in_row_order`), else as it is. For a
        mask many searches share: making it reads the whole mask once."""
        if isinstance(self.index, NormScan):
            return self.index.in_row_order(allowed)
        return allowed

    def search(
        self, queries: FloatMatrix, k: int, allowed: Mask | None = None
    ) -> tuple[FloatMatrix, IdMatrix]:
        """Top ``k`` items by inner product for each of ``queries`` ``(n, factors)``,
        among those ``allowed`` (a mask by item position, or :meth:`in_scan_order`'s;
        only where :attr:`masks`).

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


def warm_up() -> None:
    """Compile (or load from the cache) ``normscan``'s scan, so no request waits for it."""
    scan = NormScan.build(np.eye(2, dtype=np.float32))
    scan.search(np.ones((1, 2), dtype=np.float32), 1)
    scan.search(np.ones((1, 2), dtype=np.float32), 1, np.ones(2, dtype=np.bool_))
    scan.search(np.ones((1, 2), dtype=np.float32), 1, scan.in_row_order(np.ones(2, np.bool_)))
