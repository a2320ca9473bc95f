"""The session model's scoring as it was in NumPy (before the compiled kernels of
:mod:`recsvc.session_kernels`): the reference the kernels must agree with.

Copied from recsvc/neighbors.py at the commit that replaced it, as methods of
:class:`ReferenceScorer`, which reads the arrays of a :class:`NeighborModel`, with one
change: where ``np.argpartition`` left the pick among tied values at a cut to chance
(the ``neighbors``, ``candidates``, ``rule_candidates`` and ``limit`` cuts), :func:`_pick`
and a sort pick as the kernels do, so the two can be compared exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsvc.neighbors import N_FEATURES, NeighborModel, _ranges

IntArray = NDArray[np.int32]
FloatArray = NDArray[np.float32]

_DENSE_RATIO = 32


def _pick(values: NDArray[np.float64], k: int, *, newest: bool = False) -> NDArray[np.intp]:
    """Indices of the ``k`` largest ``values``, ties to the smaller index (the larger
    with ``newest``: sessions ascend, and the newer one wins)."""
    if newest:
        return len(values) - 1 - np.argsort(-values[::-1], kind="stable")[:k]
    out: NDArray[np.intp] = np.argsort(-values, kind="stable")[:k]
    return out


class ReferenceScorer(NeighborModel):
    """A :class:`NeighborModel` whose stages (``_session``, ``_knn``, ``_features``,
    ``_top``) are computed the NumPy way; ``score`` and ``candidate_features`` are the
    model's own."""

    @classmethod
    def of(cls, model: NeighborModel) -> ReferenceScorer:
        """The reference scorer over ``model``'s arrays and parameters."""
        return cls(model.params, **model._arrays())

    def _top(
        self, cands: NDArray[np.int64], scores: NDArray[np.float64], limit: int
    ) -> tuple[IntArray, FloatArray]:
        return _top(cands, scores, limit)

    def _session(
        self, items: IntArray, weights: FloatArray | None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]] | None:
        """The known clicks (int64), their positions in the session and their
        recency (times the caller's) weights; None when no click is known."""
        items = np.asarray(items)
        known = (items >= 0) & (items < self.n_items)
        if not known.any():
            return None
        n = len(items)
        position = np.arange(n, dtype=np.float64)
        click_weight = np.exp((position - (n - 1)) / self.params.session_decay)
        if weights is not None:
            click_weight = click_weight * np.asarray(weights, dtype=np.float64)
        return items[known].astype(np.int64), position[known], click_weight[known]

    def _features(
        self,
        seq: NDArray[np.int64],
        position: NDArray[np.float64],
        knn_items: NDArray[np.int64],
        knn_scores: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Candidates (the neighbours' best, the last item's strongest rules, the
        session's items) and their ``(c, N_FEATURES)`` features (see
        :data:`FEATURES`)."""
        p = self.params
        if len(knn_items) > p.candidates:
            keep = _pick(knn_scores, p.candidates)
            keep.sort()  # the items stay sorted (fast look-ups below)
            knn_items, knn_scores = knn_items[keep], knn_scores[keep]
        # the last item's rules: one CSR row, distinct items (sorted here)
        start, end = self.rule_indptr[seq[-1]], self.rule_indptr[seq[-1] + 1]
        row_items = self.rule_items[start:end]
        by_item = np.argsort(row_items)
        last_items = row_items[by_item].astype(np.int64)
        last_scores = self.rule_scores[start:end][by_item].astype(np.float64)
        window_items, window_scores = self._rules(seq[-p.rule_window :], p.rule_decay)
        rule_top = last_items
        if len(rule_top) > p.rule_candidates:
            rule_top = last_items[_pick(last_scores, p.rule_candidates)]
            rule_top = rule_top[: p.rule_candidates]
        cands = _sorted_unique(np.concatenate([knn_items, rule_top, seq]))
        # built feature-major (rows contiguous), handed back candidate-major
        f = np.zeros((N_FEATURES, len(cands)), dtype=np.float64)
        last_raw = _align(cands, last_items, last_scores)
        for col, (its, sc) in enumerate(
            ((knn_items, knn_scores), (last_items, last_scores), (window_items, window_scores))
        ):
            if len(sc) == 0:
                continue  # all 0 (the log row below)
            best = sc.max()
            if col == 0:  # sorted, and all among the candidates
                f[0, np.searchsorted(cands, its)] = sc / best
            elif col == 1 and best > 0:  # the raw row, scaled: the same values
                f[2] = last_raw / best
            else:
                f[2 * col] = _align(cands, its, sc / best)
        np.add(f[0:6:2], 0.01, out=f[1:6:2])
        np.log(f[1:6:2], out=f[1:6:2])
        # the session's own items: clicks since the latest, how often
        where = np.searchsorted(cands, seq)
        latest = np.full(len(cands), -np.inf)
        np.maximum.at(latest, where, position)
        back = position[-1] - latest[where]  # per click, since its item's latest
        f[6 + np.minimum(back, 3).astype(np.intp), where] = 1.0
        f[10] = np.log1p(np.bincount(where, minlength=len(cands)))
        f[11] = self.item_idf[cands]
        np.negative(f[11], out=f[11])
        f[12] = self.item_recent[cands]
        vectors = self.item_vectors
        if vectors.shape[1]:
            w = np.exp((position - position[-1]) / p.embedding_decay)
            session_vectors = vectors[seq].astype(np.float64)
            cand_vectors = vectors[cands].astype(np.float64)
            sim = cand_vectors @ (w @ session_vectors)
            f[13] = sim
            f[14] = sim / max(float(np.abs(sim).max()), 1e-12)
            f[15] = cand_vectors @ session_vectors[-1]
        f[16] = np.log1p(last_raw)
        _rank_bins(f[0], f[21:27], (1, 2, 5, 10, 20, 50))
        _rank_bins(f[13], f[27:29], (5, 20))
        np.multiply(f[[0, 1, 2, 14]], 1.0 / len(seq), out=f[17:21])
        return cands, np.ascontiguousarray(f.T)

    def _knn(
        self,
        seq: NDArray[np.int64],
        position: NDArray[np.float64],
        click_weight: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Stage 1: the neighbours' items (sorted) and their summed votes."""
        p = self.params
        # distinct session items; each takes the weight and position of its latest click
        order = np.argsort(seq, kind="stable")
        s_sorted = seq[order]
        last = np.ones(len(s_sorted), dtype=bool)
        last[:-1] = s_sorted[1:] != s_sorted[:-1]
        uniq = s_sorted[last]
        u_weight = click_weight[order][last]
        u_pos = position[order][last]
        u_click = np.exp((u_pos - position[-1]) / p.anchor_decay) if p.anchor_decay > 0 else u_pos
        if p.idf > 0:
            u_weight = u_weight * self.item_idf[uniq].astype(np.float64) ** p.idf

        # candidate sessions: the most recent sessions of each item (newest first)
        starts = self.item_indptr[uniq]
        counts = np.minimum(self.item_indptr[uniq + 1] - starts, p.sample_size)
        total = int(counts.sum())
        if total == 0:
            return _empty_scores()
        cand = _gather_ranges(self.item_sessions, starts, counts, total)
        # each session's contributions summed in input order, either way
        if _dense(self.n_sessions, total):
            contrib = np.repeat(u_weight, counts)
            sessions = np.flatnonzero(np.bincount(cand, minlength=self.n_sessions))
            num = _sum_by(cand, contrib, self.n_sessions)[sessions]
        else:  # sort (session, click) keys
            key = cand.astype(np.int64) << 32
            key |= np.arange(total, dtype=np.int64)
            key.sort()
            sorted_sessions = key >> 32
            first = np.empty(total, dtype=bool)
            first[0] = True
            np.not_equal(sorted_sessions[1:], sorted_sessions[:-1], out=first[1:])
            sessions = sorted_sessions[first]
            group = np.cumsum(first)
            group -= 1
            contrib = np.repeat(u_weight, counts)[key & 0xFFFFFFFF]
            num = _sum_by(group, contrib, len(sessions))
        if len(sessions) > p.sample_size:  # keep the most recent of the union
            sessions = sessions[-p.sample_size :]
            num = num[-p.sample_size :]
        sim = num / (np.sqrt(len(uniq)) * self._length_factor[sessions])
        if p.recency_decay > 0:
            sim = sim * np.exp((sessions - (self.n_sessions - 1)) / p.recency_decay)
        if len(sessions) > p.neighbors:
            top = _pick(sim, p.neighbors, newest=True)
            sessions, sim = sessions[top], sim[top]

        # the neighbours' items, voting by distance to the latest shared item
        s_start = self.session_indptr[sessions]
        s_len = self.session_indptr[sessions + 1] - s_start
        n_total = int(s_len.sum())
        n_items = self.session_items[_ranges(s_start, s_len, n_total)].astype(np.int64)
        seg_start = np.zeros(len(sessions), dtype=np.int64)
        np.cumsum(s_len[:-1], out=seg_start[1:])
        in_pos = np.arange(n_total, dtype=np.int64) - np.repeat(seg_start, s_len)
        # latest click position in the session of each neighbour item (-1 = not in it)
        where = _lookup(uniq, n_items, self.n_items)
        shared = uniq[where] == n_items
        if p.anchor_decay > 0:
            return self._all_anchor_votes(
                n_items, shared, u_click[where], in_pos, s_len, seg_start, sim
            )
        q_pos = np.where(shared, u_pos[where], -1.0).astype(np.int64)
        big = np.int64(1 << 24)
        key = (q_pos + 1) * big + in_pos
        best = np.maximum.reduceat(key, seg_start)
        anchor = np.repeat(best % big, s_len)
        dist = in_pos - anchor
        vote = np.exp(-np.abs(dist) / p.neighbor_decay)
        if p.before_weight != 1.0:
            vote = np.where(dist < 0, vote * p.before_weight, vote)
        vote *= np.repeat(sim, s_len)
        cands, inv = np.unique(n_items, return_inverse=True)
        return cands, _sum_by(inv, vote, len(cands))

    def _all_anchor_votes(
        self,
        n_items: NDArray[np.int64],
        shared: NDArray[np.bool_],
        anchor_weight: NDArray[np.float64],
        in_pos: NDArray[np.int64],
        s_len: NDArray[np.int64],
        seg_start: NDArray[np.int64],
        sim: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        seg = np.repeat(np.arange(len(s_len), dtype=np.int64), s_len)
        anchors = np.flatnonzero(shared)
        a_seg = seg[anchors]
        a_len = s_len[a_seg]
        targets = _ranges(seg_start[a_seg], a_len, int(a_len.sum()))
        src = np.repeat(anchors, a_len)
        dist = in_pos[targets] - in_pos[src]
        # the vote of every distance -D..D, looked up (the same arithmetic per element)
        vote = self._vote_of[dist + self._reach]
        vote *= (anchor_weight * sim[seg])[src]
        # the distinct neighbour items once (small), then each target's through them
        cands, inv_items = _unique_inverse(n_items, self.n_items)
        inv = inv_items[targets]
        votes = _sum_by(inv, vote, len(cands))
        has_anchor = np.zeros(len(s_len), dtype=bool)
        has_anchor[a_seg] = True
        if not has_anchor.all():  # items only in sessions without anchors get no vote
            voted = np.bincount(inv, minlength=len(cands)) > 0
            cands, votes = cands[voted], votes[voted]
        return cands, votes

    def _rules(
        self, tail: NDArray[np.int64], decay: float
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Summed rule scores of the successors of ``tail`` (oldest first), the item
        ``d`` clicks before the last scaled by ``decay ** d``."""
        tail = tail[::-1]
        starts = self.rule_indptr[tail]
        counts = self.rule_indptr[tail + 1] - starts
        total = int(counts.sum())
        if total == 0:
            return _empty_scores()
        w = np.repeat(decay ** np.arange(len(tail), dtype=np.float64), counts)
        rule_items = _gather_ranges(self.rule_items, starts, counts, total)
        cands, inv = _unique_inverse(rule_items, self.n_items)
        vote = _gather_ranges(self.rule_scores, starts, counts, total).astype(np.float64) * w
        return cands.astype(np.int64), _sum_by(inv, vote, len(cands))


def _empty_scores() -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


def _sorted_unique(values: NDArray[Any]) -> NDArray[Any]:
    """``np.unique(values)`` (sorted distinct values), by a plain sort."""
    s = np.sort(values)
    if len(s) == 0:
        return s
    first = np.empty(len(s), dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    out: NDArray[Any] = s[first]
    return out


def _dense(size: int, n: int) -> bool:
    """Whether ``n`` values in ``0..size-1`` are grouped faster through ``size``-long
    tables than by sorting them: NumPy sorts a few thousand int64 at ~30 ns each, a
    table costs ~0.3 ns per entry (docs/design.md, "Ranking defaults")."""
    return size <= _DENSE_RATIO * n


def _unique_inverse(values: NDArray[Any], size: int) -> tuple[NDArray[Any], NDArray[np.intp]]:
    """``np.unique(values, return_inverse=True)`` for values in ``0..size-1``: the
    distinct values by a presence table or a sort (:func:`_dense`), then each value's
    index through a ``size`` table (only the entries of the distinct values are
    written and read; it is per call, so nothing is shared)."""
    if _dense(size, len(values)):
        seen = np.zeros(size, dtype=bool)
        seen[values] = True
        uniq = np.flatnonzero(seen).astype(values.dtype, copy=False)
    else:
        uniq = _sorted_unique(values)
    table = np.empty(size, dtype=np.intp)
    table[uniq] = np.arange(len(uniq), dtype=np.intp)
    inverse: NDArray[np.intp] = table[values]
    return uniq, inverse


def _lookup(uniq: NDArray[np.int64], values: NDArray[np.int64], size: int) -> NDArray[np.intp]:
    """For each value (in ``0..size-1``), an index into sorted distinct ``uniq``
    (non-empty) that holds it when it is there, any valid index otherwise:
    ``uniq[result] == values`` tells which."""
    if len(uniq) <= 8:  # a few comparisons
        where = np.zeros(len(values), dtype=np.intp)
        for j in range(1, len(uniq)):
            where[values == uniq[j]] = j
        return where
    # a per-call table (entries not written are arbitrary: clipped, then checked)
    table = np.empty(size, dtype=np.intp)
    table[uniq] = np.arange(len(uniq), dtype=np.intp)
    out: NDArray[np.intp] = table[values]
    np.clip(out, 0, len(uniq) - 1, out=out)
    return out


def _gather_ranges(
    data: NDArray[Any], starts: NDArray[np.int64], counts: NDArray[np.int64], total: int
) -> NDArray[Any]:
    """``data[_ranges(starts, counts, total)]``; a few ranges as slices."""
    if len(starts) <= 8:
        pieces = [data[a : a + n] for a, n in zip(starts.tolist(), counts.tolist(), strict=True)]
        return np.concatenate(pieces) if pieces else data[:0]
    out: NDArray[Any] = data[_ranges(starts, counts, total)]
    return out


def _sum_by(groups: NDArray[np.intp], values: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    """``values`` summed per group ``0..n-1``."""
    return np.bincount(groups, weights=values, minlength=n).astype(np.float64, copy=False)


def _align(
    cands: NDArray[np.int64], items: NDArray[np.int64], scores: NDArray[np.float64]
) -> NDArray[np.float64]:
    """``scores`` of ``items`` placed at their positions in sorted ``cands`` (0 for
    candidates not in ``items``; items not among the candidates are dropped)."""
    out = np.zeros(len(cands), dtype=np.float64)
    if len(items) == 0:
        return out
    where = np.minimum(np.searchsorted(cands, items), len(cands) - 1)
    hit = cands[where] == items
    out[where[hit]] = scores[hit]
    return out


def _rank_bins(
    values: NDArray[np.float64], out: NDArray[np.float64], edges: tuple[int, ...]
) -> None:
    """One-hot of each entry's rank by ``values`` (1 = largest, ties by position;
    only positive values rank) into ``out`` ``(len(edges), c)``: row ``j`` is rank in
    ``(edges[j-1], edges[j]]``."""
    order = np.argsort(-values, kind="stable")
    ranked = int(np.count_nonzero(values > 0))  # the positive values come first
    low = 0
    for j, high in enumerate(edges):
        out[j, order[low : min(high, ranked)]] = 1.0
        low = high


def _top(
    cands: NDArray[np.int64], scores: NDArray[np.float64], limit: int
) -> tuple[IntArray, FloatArray]:
    """The best ``limit`` positive-scored candidates, best first (ties by position)."""
    positive = scores > 0
    cands, scores = cands[positive], scores[positive]
    if len(cands) > limit:
        top = np.lexsort((cands, -scores))[:limit]
        cands, scores = cands[top], scores[top]
    order = np.lexsort((cands, -scores))
    return cands[order].astype(np.int32), scores[order].astype(np.float32)
