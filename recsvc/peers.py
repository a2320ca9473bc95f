"""Customers like you: each known customer's precomputed list of what their nearest
customers buy (the neighbour part of TIFU-KNN, Hu et al., SIGIR 2020).

The trainer (``training/peers.py``) computes every customer's TIFU vector (their
baskets, decayed and grouped), finds each customer's ``k`` nearest customers among a
*pool* (the most recently active customers, at most ``[peers] pool_size``: the
search costs customers × pool, never customers²) by Euclidean distance, and keeps the
top ``length`` items of the mean of those neighbours' vectors, scaled by the row's
largest to [0, 1]. Serving reads one row per request (:meth:`PeerLists.row`); nothing
is searched at request time.

The arrays (``user_peers.npz``) also hold every customer's vector, whether they are in
the pool, and the similarity of their ``k``-th neighbour: enough for :func:`remove`
(erasure) to drop a customer's row *and* to recompute the list of every customer they
were a neighbour of, from the remaining pool, so an erased customer's purchases are
in no one's list after compaction.

Similarity: ``2·u·v − |v|²`` (minus the Euclidean distance squared, ``|u|²`` left
out: it is the same for all of ``u``'s candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["PeerLists", "nearest", "peer_lists", "remove"]

#: Query customers whose similarities to the pool are held at once: bounds the
#: ``(chunk, pool)`` float32 block (64 MiB at a 32k pool).
_CHUNK = 512


@dataclass
class PeerLists:
    """Every customer's peer list, and what :func:`remove` needs to recompute them."""

    lists: sp.csr_matrix
    """``(n_users, n_items)`` float32: the top items of the mean of the customer's
    neighbours' vectors, scaled to (0, 1]; an empty row for a customer without one."""
    vectors: sp.csr_matrix
    """``(n_users, n_items)`` float32: each customer's TIFU vector."""
    pool: NDArray[np.bool_]
    """``(n_users,)``: the customer may be someone's neighbour."""
    threshold: NDArray[np.float32]
    """``(n_users,)``: the similarity of the customer's ``k``-th neighbour (-inf: no
    list)."""

    def row(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Items (ascending) and scaled scores of ``user``'s list (empty: none)."""
        m = self.lists
        start, end = m.indptr[user], m.indptr[user + 1]
        return m.indices[start:end], m.data[start:end]

    @classmethod
    def build(
        cls,
        vectors: sp.csr_matrix,
        users: NDArray[np.int64],
        pool_users: NDArray[np.int64],
        k: int,
        length: int,
    ) -> PeerLists:
        """The lists of ``users`` (ascending rows of ``vectors``, every customer's
        vector) from their ``k`` nearest of ``pool_users``; the other rows empty."""
        vectors = sp.csr_matrix(vectors, dtype=np.float32)
        n_users = vectors.shape[0]
        lists, threshold = peer_lists(vectors, users, pool_users, k, length)
        empty = sp.csr_matrix(vectors.shape, dtype=np.float32)
        full_threshold = np.full(n_users, -np.inf, np.float32)
        full_threshold[users] = threshold
        pool = np.zeros(n_users, bool)
        pool[pool_users] = True
        return cls(_replace_rows(empty, users, lists), vectors, pool, full_threshold)

    @property
    def n_users(self) -> int:
        return int(self.lists.shape[0])

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        lists, vectors = self.lists, self.vectors
        return {
            "data": lists.data.astype(np.float32),
            "indices": lists.indices.astype(np.int32),
            "indptr": lists.indptr.astype(np.int64),
            "shape": np.array(lists.shape, dtype=np.int64),
            "vector_data": vectors.data.astype(np.float32),
            "vector_indices": vectors.indices.astype(np.int32),
            "vector_indptr": vectors.indptr.astype(np.int64),
            "pool": self.pool.astype(bool),
            "threshold": self.threshold.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, z: dict[str, NDArray[Any]]) -> PeerLists:
        """Raises KeyError or ValueError on arrays that do not fit together."""
        shape = tuple(int(x) for x in z["shape"])
        if len(shape) != 2:
            raise ValueError(f"shape {shape} is not (users, items)")
        lists = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
        vectors = sp.csr_matrix(
            (z["vector_data"], z["vector_indices"], z["vector_indptr"]), shape=shape
        )
        pool, threshold = z["pool"].astype(bool), z["threshold"].astype(np.float32)
        if pool.shape != (shape[0],) or threshold.shape != (shape[0],):
            raise ValueError(f"pool or threshold not one per user ({shape[0]})")
        return cls(lists, vectors, pool, threshold)


def nearest(
    queries: sp.csr_matrix,
    query_users: NDArray[np.int64],
    pool: sp.csr_matrix,
    pool_users: NDArray[np.int64],
    k: int,
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Each query's ``k`` most similar pool rows, most similar first (ties: lower row
    first), a query never its own neighbour (``query_users`` and ``pool_users`` name
    the customers of the rows); and the similarity of the last of them. ``k`` is cut
    to the pool less one."""
    k = max(1, min(k, pool.shape[0] - 1))
    sq = np.asarray(pool.multiply(pool).sum(axis=1), dtype=np.float32).ravel()
    pool_t = sp.csr_matrix(pool.T, dtype=np.float32)
    at_pool = {int(u): i for i, u in enumerate(pool_users.tolist())}
    out = np.zeros((queries.shape[0], k), np.int64)
    threshold = np.zeros(queries.shape[0], np.float32)
    for start in range(0, queries.shape[0], _CHUNK):
        chunk = queries[start : start + _CHUNK]
        sim = (chunk @ pool_t).toarray().astype(np.float32, copy=False)
        sim *= 2.0
        sim -= sq[None, :]
        rows = np.arange(chunk.shape[0])
        own = np.array([at_pool.get(int(u), -1) for u in query_users[start : start + len(rows)]])
        mine = own >= 0
        sim[rows[mine], own[mine]] = -np.inf
        top = _top(sim, k)
        out[start : start + len(rows)] = top
        threshold[start : start + len(rows)] = sim[rows, top[:, -1]]
    return out, threshold


def _top(scores: NDArray[np.float32], k: int) -> NDArray[np.int64]:
    """Each row's ``k`` largest columns, largest first; ties to the lower column."""
    n = scores.shape[1]
    if k < n:
        part = np.sort(np.argpartition(scores, n - k, axis=1)[:, n - k :], axis=1)
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


def peer_lists(
    vectors: sp.csr_matrix,
    users: NDArray[np.int64],
    pool_users: NDArray[np.int64],
    k: int,
    length: int,
    neighbours: NDArray[np.int64] | None = None,
) -> tuple[sp.csr_matrix, NDArray[np.float32]]:
    """The lists of ``users`` (rows of ``vectors``, ``(len(users), n_items)`` float32
    CSR, rows scaled to (0, 1]) from their ``k`` nearest of ``pool_users``, and each
    one's ``k``-th similarity. ``neighbours``: already found (pool rows, nearest
    first, at least ``k`` columns), then only the lists are made."""
    pool = sp.csr_matrix(vectors[pool_users], dtype=np.float32)
    threshold = np.full(len(users), -np.inf, np.float32)
    if len(users) == 0 or pool.shape[0] < 2:
        return sp.csr_matrix((len(users), vectors.shape[1]), dtype=np.float32), threshold
    if neighbours is None:
        queries = sp.csr_matrix(vectors[users], dtype=np.float32)
        neighbours, threshold = nearest(queries, users, pool, pool_users, k)
    kk = min(k, neighbours.shape[1])
    parts = []
    for start in range(0, len(users), _CHUNK):
        nb = neighbours[start : start + _CHUNK, :kk]
        n = nb.shape[0]
        mean = sp.csr_matrix(
            (np.full(n * kk, 1.0 / kk, np.float32), nb.ravel(), np.arange(0, n * kk + 1, kk)),
            shape=(n, pool.shape[0]),
        )
        parts.append(_top_of_rows(sp.csr_matrix(mean @ pool), length))
    return sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32), threshold


def _top_of_rows(m: sp.csr_matrix, length: int) -> sp.csr_matrix:
    """Each row's ``length`` largest positive entries (ties: the lower item first),
    scaled by the row's largest. Over the rows' stored entries: one sort of a chunk's
    (row, −value, item) keys, never a row as wide as the catalogue (a dense
    partition per row cost users × items: >10 minutes at 200k customers)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    n_rows = m.shape[0]
    row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(m.indptr))
    positive = m.data > 0
    row, col, value = row[positive], m.indices[positive].astype(np.int64), m.data[positive]
    order = np.lexsort((col, -value, row))
    row, col, value = row[order], col[order], value[order]
    first = np.searchsorted(row, np.arange(n_rows))
    rank = np.arange(len(row)) - first[row]
    keep = rank < length
    row, col, value = row[keep], col[keep], value[keep]
    top = np.zeros(n_rows, np.float32)
    top[row[rank[keep] == 0]] = value[rank[keep] == 0]
    scaled = (value / top[row]).astype(np.float32)
    out = sp.csr_matrix((scaled, (row, col)), shape=m.shape, dtype=np.float32)
    out.sort_indices()
    return out


def remove(peers: PeerLists, keep: NDArray[np.bool_], k: int, length: int) -> PeerLists:
    """``peers`` without the customers not in ``keep``: their rows dropped, and the list
    of every customer one of them was a neighbour of recomputed from the pool left."""
    gone = np.flatnonzero(~keep & peers.pool)
    lists, vectors = peers.lists, peers.vectors
    affected = np.zeros(peers.n_users, bool)
    if len(gone):
        v = sp.csr_matrix(vectors[gone], dtype=np.float32)
        sq = np.asarray(v.multiply(v).sum(axis=1), dtype=np.float32).ravel()
        # the customers whose k-th neighbour was no nearer than an erased one
        sim = (vectors @ v.T).toarray().astype(np.float32) * 2.0 - sq[None, :]
        has_list = np.diff(lists.indptr) > 0
        affected = has_list & (sim >= peers.threshold[:, None] - 1e-6).any(axis=1) & keep
    kept = np.flatnonzero(keep)
    new_index = -np.ones(peers.n_users, np.int64)
    new_index[kept] = np.arange(len(kept))
    out = PeerLists(
        lists=sp.csr_matrix(lists[kept]),
        vectors=sp.csr_matrix(vectors[kept]),
        pool=peers.pool[kept].copy(),
        threshold=peers.threshold[kept].copy(),
    )
    redo = new_index[np.flatnonzero(affected)]
    if len(redo) == 0:
        return out
    pool_users = np.flatnonzero(out.pool).astype(np.int64)
    fresh, threshold = peer_lists(out.vectors, redo, pool_users, k, length)
    out.lists = _replace_rows(out.lists, redo, fresh)
    out.threshold[redo] = threshold
    return out


def _replace_rows(m: sp.csr_matrix, rows: NDArray[np.int64], new: sp.csr_matrix) -> sp.csr_matrix:
    """``m`` with ``rows`` (ascending) replaced by the rows of ``new``, in order."""
    counts = np.diff(m.indptr)
    counts[rows] = np.diff(new.indptr)
    indptr = np.zeros(m.shape[0] + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    data = np.empty(int(indptr[-1]), np.float32)
    indices = np.empty(int(indptr[-1]), np.int32)
    replaced = np.zeros(m.shape[0], bool)
    replaced[rows] = True
    for source, row_of in (
        (m, np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))),
        (new, np.repeat(rows, np.diff(new.indptr))),
    ):
        local = np.arange(source.nnz) - np.repeat(source.indptr[:-1], np.diff(source.indptr))
        take = ~replaced[row_of] if source is m else np.ones(source.nnz, bool)
        at = indptr[row_of[take]] + local[take]
        data[at] = source.data[take]
        indices[at] = source.indices[take]
    return sp.csr_matrix((data, indices, indptr), shape=m.shape)
