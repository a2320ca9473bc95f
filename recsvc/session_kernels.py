"""The session model's per-request work, compiled (Numba): :mod:`recsvc.neighbors`
calls these; the arithmetic is the one its docstring describes.

Why compiled: in NumPy a request is ~60 small array operations (sort, unique,
bincount, gathers over a few thousand values), each paying 5–40 µs of call and
allocation overhead for a few µs of work; under load that was ~750 µs of the ~1,260 µs
of server CPU an anonymous 5-item session cost at 100k items (twice a known customer).
Here each stage is one pass in machine code, with tables sized by the request, never
by the catalogue:

- the candidate sessions: each session item's newest ``sample_size`` sessions are
  sorted lists (newest first), so the union is a k-way merge through a heap that stops
  at the ``sample_size`` newest distinct sessions, summing their weights on the way;
- the neighbours' items and their votes: an open-addressing table from item to slot;
- the re-ranker's features: the candidates sorted once, every look-up through a table.

Sums run in the order the NumPy version summed (a session's weights in item order,
votes neighbour by neighbour), so scores agree with it to rounding; where the NumPy
version left ties to ``argpartition`` (which of two equally similar neighbours is
kept), the newer session, then the smaller item position, wins here.

Every function is a :func:`recsvc.jit.kernel` (compiled on first use, cached on disk);
:func:`warm_up` compiles them before a request needs them. None keeps state between
calls: one model is safe to share across threads, and the compiled code releases the
GIL.
"""

from __future__ import annotations

import math

import numpy as np

from recsvc.jit import kernel

_jit = kernel()

__all__ = ["knn_votes", "session_arrays", "session_features", "top_scores", "warm_up"]

_BIG = np.int64(1 << 24)
"""The latest-anchor key: ``(click position + 1) · _BIG + position in the neighbour``."""


@_jit
def session_arrays(
    items: np.ndarray, weights: np.ndarray, n_items: int, session_decay: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The known clicks (positions, int64), where they are in the session (float64)
    and their recency weights ``exp((position − last) / session_decay)`` times
    ``weights``; unknown positions (negative or ``>= n_items``) dropped."""
    n = len(items)
    known = 0
    for k in range(n):
        if 0 <= items[k] < n_items:
            known += 1
    seq = np.empty(known, dtype=np.int64)
    position = np.empty(known, dtype=np.float64)
    click_weight = np.empty(known, dtype=np.float64)
    j = 0
    for k in range(n):
        if 0 <= items[k] < n_items:
            seq[j] = items[k]
            position[j] = k
            click_weight[j] = math.exp((k - (n - 1)) / session_decay) * np.float64(weights[k])
            j += 1
    return seq, position, click_weight


@_jit
def _slot(keys: np.ndarray, slots: np.ndarray, key: np.int64, fresh: int) -> int:
    """The slot of ``key`` in the open-addressing table ``keys`` (power-of-two size,
    -1 = empty): its slot when there, else ``fresh`` (written)."""
    mask = len(keys) - 1
    h = (np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    i = np.int64(h) & mask
    while True:
        k = keys[i]
        if k == key:
            return int(slots[i])
        if k == -1:
            keys[i] = key
            slots[i] = fresh
            return fresh
        i = (i + 1) & mask


@_jit
def _table(n: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty table for up to ``n`` keys (load at most a half)."""
    size = 16
    while size < 2 * n:
        size *= 2
    return np.full(size, -1, dtype=np.int64), np.empty(size, dtype=np.int64)


@_jit
def _find(keys: np.ndarray, slots: np.ndarray, key: np.int64) -> int:
    """The slot of ``key`` in a table :func:`_slot` filled, -1 when absent. (The probe
    loop is :func:`_slot`'s: shared through a third function it cost ~25 µs a
    request, a call per look-up.)"""
    mask = len(keys) - 1
    h = (np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    i = np.int64(h) & mask
    while True:
        k = keys[i]
        if k == key:
            return int(slots[i])
        if k == -1:
            return -1
        i = (i + 1) & mask


@_jit
def _indexed(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A table from each of the distinct ``values`` to its index (a hash look-up costs
    a few ns; a binary search's mispredicted branches ~60 ns)."""
    keys, slots = _table(len(values))
    for j in range(len(values)):
        _slot(keys, slots, np.int64(values[j]), j)
    return keys, slots


@_jit
def _candidate_sessions(
    uniq: np.ndarray,
    u_weight: np.ndarray,
    item_indptr: np.ndarray,
    item_sessions: np.ndarray,
    sample_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``sample_size`` newest sessions holding any of ``uniq`` (each item's newest
    ``sample_size`` looked at), newest first, and each one's summed ``u_weight`` (in
    ``uniq``'s order). A merge of the items' lists (each newest first): a session's
    few items make a scan of the lists' heads cheaper than a heap."""
    k = len(uniq)
    pointer = np.empty(k, dtype=np.int64)
    end = np.empty(k, dtype=np.int64)
    head = np.full(k, -1, dtype=np.int64)  # -1: the list is done
    for i in range(k):
        start = item_indptr[uniq[i]]
        pointer[i] = start
        end[i] = start + min(item_indptr[uniq[i] + 1] - start, sample_size)
        if start < end[i]:
            head[i] = item_sessions[start]
    sessions = np.empty(sample_size, dtype=np.int64)
    num = np.zeros(sample_size, dtype=np.float64)
    m = 0
    while m < sample_size:
        newest = np.int64(-1)
        for i in range(k):
            newest = max(newest, head[i])
        if newest < 0:
            break
        sessions[m] = newest
        for i in range(k):  # in uniq's order: the sum's order
            if head[i] == newest:
                num[m] += u_weight[i]
                pointer[i] += 1
                head[i] = item_sessions[pointer[i]] if pointer[i] < end[i] else -1
        m += 1
    return sessions[:m], num[:m]


@_jit
def _top_k(values: np.ndarray, k: int, keys: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` largest ``values`` (all when fewer), unordered; of tied
    values at the cut, those with the smaller ``keys`` (pass the indices for "the
    smaller index")."""
    n = len(values)
    if n <= k:
        return np.arange(n)
    threshold = np.partition(values, n - k)[n - k]
    out = np.empty(k, dtype=np.int64)
    m = 0
    for j in range(n):
        if values[j] > threshold:
            out[m] = j
            m += 1
    tied = np.flatnonzero(values == threshold)
    if len(tied) > k - m:
        tied = tied[np.argsort(keys[tied], kind="mergesort")]
    out[m:] = tied[: k - m]
    return out


@_jit
def knn_votes(
    seq: np.ndarray,
    position: np.ndarray,
    click_weight: np.ndarray,
    item_indptr: np.ndarray,
    item_sessions: np.ndarray,
    item_idf: np.ndarray,
    session_indptr: np.ndarray,
    session_items: np.ndarray,
    length_factor: np.ndarray,
    vote_of: np.ndarray,
    reach: int,
    sample_size: int,
    neighbors: int,
    idf: float,
    recency_decay: float,
    anchor_decay: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1: the neighbours' items (in the order first voted for) and their summed
    votes; ``vote_of[d + reach]`` is the vote of an item ``d`` clicks from an anchor."""
    # distinct session items (sorted); each takes the weight and position of its latest click
    order = np.argsort(seq, kind="mergesort")
    n_u = 0
    for j in range(len(order)):
        if j == len(order) - 1 or seq[order[j + 1]] != seq[order[j]]:
            n_u += 1
    uniq = np.empty(n_u, dtype=np.int64)
    u_weight = np.empty(n_u, dtype=np.float64)
    u_pos = np.empty(n_u, dtype=np.float64)
    u = 0
    for j in range(len(order)):
        if j == len(order) - 1 or seq[order[j + 1]] != seq[order[j]]:
            uniq[u] = seq[order[j]]
            u_weight[u] = click_weight[order[j]]
            u_pos[u] = position[order[j]]
            u += 1
    last = position[len(position) - 1]
    u_anchor = np.empty(n_u, dtype=np.float64)
    for u in range(n_u):
        u_anchor[u] = math.exp((u_pos[u] - last) / anchor_decay) if anchor_decay > 0 else u_pos[u]
        if idf > 0:
            u_weight[u] = u_weight[u] * np.float64(item_idf[uniq[u]]) ** idf

    sessions, num = _candidate_sessions(uniq, u_weight, item_indptr, item_sessions, sample_size)
    if len(sessions) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    n_sessions = len(session_indptr) - 1
    root = math.sqrt(n_u)
    sim = np.empty(len(sessions), dtype=np.float64)
    for j in range(len(sessions)):
        s = sessions[j]
        sim[j] = num[j] / (root * length_factor[s])
        if recency_decay > 0:
            sim[j] = sim[j] * math.exp((s - (n_sessions - 1)) / recency_decay)
    top = _top_k(sim, neighbors, -sessions)  # ties: the newer session

    total = 0
    for t in top:
        total += session_indptr[sessions[t] + 1] - session_indptr[sessions[t]]
    keys, slots = _table(total)
    cands = np.empty(total, dtype=np.int64)
    votes = np.zeros(total, dtype=np.float64)
    u_keys, u_slots = _indexed(uniq)
    n_c = 0
    slot_of = np.empty(reach + 1, dtype=np.int64)  # of each click of the neighbour
    for t in top:
        start = session_indptr[sessions[t]]
        length = session_indptr[sessions[t] + 1] - start
        for q in range(length):
            item = np.int64(session_items[start + q])
            c = _slot(keys, slots, item, n_c)
            if c == n_c:
                cands[c] = item
                n_c += 1
            slot_of[q] = c
        # (every neighbour shares an item with the session: it was found through it)
        if anchor_decay > 0:  # every shared item anchors votes
            for a in range(length):
                u = _find(u_keys, u_slots, np.int64(session_items[start + a]))
                if u < 0:
                    continue
                weight = u_anchor[u] * sim[t]
                for q in range(length):
                    votes[slot_of[q]] += vote_of[q - a + reach] * weight
        else:  # the shared item clicked latest in the session (STAN)
            best = np.int64(-1)
            for q in range(length):
                u = _find(u_keys, u_slots, np.int64(session_items[start + q]))
                q_pos = np.int64(u_anchor[u]) if u >= 0 else np.int64(-1)
                best = max(best, (q_pos + 1) * _BIG + q)
            anchor = best % _BIG
            for q in range(length):
                votes[slot_of[q]] += vote_of[q - anchor + reach] * sim[t]
    return cands[:n_c], votes[:n_c]


@_jit
def _window_rules(
    seq: np.ndarray,
    window: int,
    decay: float,
    rule_indptr: np.ndarray,
    rule_items: np.ndarray,
    rule_scores: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed rule scores of the successors of the last ``window`` clicks, the one
    ``d`` clicks before the last scaled by ``decay ** d`` (items unordered)."""
    first = max(0, len(seq) - window)
    total = 0
    for j in range(first, len(seq)):
        total += rule_indptr[seq[j] + 1] - rule_indptr[seq[j]]
    keys, slots = _table(total)
    items = np.empty(total, dtype=np.int64)
    sums = np.zeros(total, dtype=np.float64)
    n = 0
    for d in range(len(seq) - first):
        item = seq[len(seq) - 1 - d]
        w = decay ** np.float64(d)
        for r in range(rule_indptr[item], rule_indptr[item + 1]):
            c = _slot(keys, slots, np.int64(rule_items[r]), n)
            if c == n:
                items[c] = rule_items[r]
                n += 1
            sums[c] += np.float64(rule_scores[r]) * w
    return items[:n], sums[:n]


@_jit
def _rank_bins(f: np.ndarray, col: int, out_col: int, edges: np.ndarray) -> None:
    """One-hot of each candidate's rank by column ``col`` (1 = largest, ties by
    position; only positive values rank) into columns ``out_col + j``: rank in
    ``(edges[j-1], edges[j]]``."""
    order = np.argsort(-f[:, col], kind="mergesort")
    ranked = 0
    for c in range(f.shape[0]):
        if f[c, col] > 0:
            ranked += 1
    low = 0
    for j in range(len(edges)):
        for r in range(low, min(edges[j], ranked)):
            f[order[r], out_col + j] = 1.0
        low = edges[j]


_KNN_EDGES = np.array([1, 2, 5, 10, 20, 50], dtype=np.int64)
_EMBEDDING_EDGES = np.array([5, 20], dtype=np.int64)


@_jit
def session_features(
    seq: np.ndarray,
    position: np.ndarray,
    knn_items: np.ndarray,
    knn_scores: np.ndarray,
    rule_indptr: np.ndarray,
    rule_items: np.ndarray,
    rule_scores: np.ndarray,
    item_idf: np.ndarray,
    item_recent: np.ndarray,
    item_vectors: np.ndarray,
    n_features: int,
    candidates: int,
    rule_candidates: int,
    rule_window: int,
    rule_decay: float,
    embedding_decay: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2's input: the candidates (sorted) and their ``(c, n_features)`` features,
    in the order of :data:`recsvc.neighbors.FEATURES`."""
    # the neighbours' best (ties: the smaller item), sorted
    if len(knn_items) > candidates:
        keep = _top_k(knn_scores, candidates, knn_items)
        knn_items, knn_scores = knn_items[keep], knn_scores[keep]
    by_item = np.argsort(knn_items)
    knn_items, knn_scores = knn_items[by_item], knn_scores[by_item]
    # the last item's rules (one row, distinct items) and the window's
    last_item = seq[len(seq) - 1]
    start, end = rule_indptr[last_item], rule_indptr[last_item + 1]
    by_item = np.argsort(rule_items[start:end])
    last_items = rule_items[start:end][by_item].astype(np.int64)
    last_scores = rule_scores[start:end][by_item].astype(np.float64)
    window_items, window_scores = _window_rules(
        seq, rule_window, rule_decay, rule_indptr, rule_items, rule_scores
    )
    rule_top = last_items
    if len(last_items) > rule_candidates:
        rule_top = last_items[_top_k(last_scores, rule_candidates, last_items)]
    pool = np.concatenate((knn_items, rule_top, seq))
    pool.sort()
    n_c = 0
    for j in range(len(pool)):
        if j == 0 or pool[j] != pool[j - 1]:
            pool[n_c] = pool[j]
            n_c += 1
    cands = pool[:n_c].copy()
    c_keys, c_slots = _indexed(cands)

    f = np.zeros((n_c, n_features), dtype=np.float64)
    if len(knn_scores):
        best = knn_scores.max()
        for j in range(len(knn_items)):
            f[_find(c_keys, c_slots, knn_items[j]), 0] = knn_scores[j] / best
    last_raw = np.zeros(n_c, dtype=np.float64)
    for j in range(len(last_items)):
        c = _find(c_keys, c_slots, last_items[j])
        if c >= 0:
            last_raw[c] = last_scores[j]
    if len(last_scores) and last_scores.max() > 0:
        best = last_scores.max()
        for c in range(n_c):
            f[c, 2] = last_raw[c] / best
    if len(window_scores):
        best = window_scores.max()
        for j in range(len(window_items)):
            c = _find(c_keys, c_slots, window_items[j])
            if c >= 0:
                f[c, 4] = window_scores[j] / best
    # the session's own items: clicks since the latest, how often
    where = np.empty(len(seq), dtype=np.int64)
    latest = np.full(n_c, -np.inf)
    count = np.zeros(n_c, dtype=np.float64)
    for k in range(len(seq)):
        c = _find(c_keys, c_slots, seq[k])
        where[k] = c
        latest[c] = max(latest[c], position[k])
        count[c] += 1.0
    last = position[len(position) - 1]
    for k in range(len(seq)):
        back = min(last - latest[where[k]], 3.0)
        f[where[k], 6 + int(back)] = 1.0
    dim = item_vectors.shape[1]
    session_vector = np.zeros(dim, dtype=np.float64)
    if dim:
        for k in range(len(seq)):
            w = math.exp((position[k] - last) / embedding_decay)
            for d in range(dim):
                session_vector[d] += w * np.float64(item_vectors[seq[k], d])
    last_vector = item_vectors[last_item]
    largest = 0.0
    for c in range(n_c):
        item = cands[c]
        for col in (1, 3, 5):
            f[c, col] = math.log(f[c, col - 1] + 0.01)
        f[c, 10] = math.log1p(count[c])
        f[c, 11] = -np.float64(item_idf[item])
        f[c, 12] = np.float64(item_recent[item])
        if dim:
            sim = 0.0
            sim_last = 0.0
            for d in range(dim):
                v = np.float64(item_vectors[item, d])
                sim += v * session_vector[d]
                sim_last += v * np.float64(last_vector[d])
            f[c, 13] = sim
            f[c, 15] = sim_last
            largest = max(largest, abs(sim))
        f[c, 16] = math.log1p(last_raw[c])
    if dim:
        scale = max(largest, 1e-12)
        for c in range(n_c):
            f[c, 14] = f[c, 13] / scale
    _rank_bins(f, 0, 21, _KNN_EDGES)
    _rank_bins(f, 13, 27, _EMBEDDING_EDGES)
    inverse = 1.0 / len(seq)
    for c in range(n_c):
        for j, col in enumerate((0, 1, 2, 14)):
            f[c, 17 + j] = f[c, col] * inverse
    return cands, f


@_jit
def top_scores(cands: np.ndarray, scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``limit`` positive-scored candidates, best first, ties by the smaller
    item: items int32, scores float32."""
    order = np.argsort(cands)
    cands, scores = cands[order], scores[order]
    order = np.argsort(-scores, kind="mergesort")
    n = 0
    for j in order:
        if scores[j] > 0:
            n += 1
    n = min(n, limit)
    items = np.empty(n, dtype=np.int32)
    out = np.empty(n, dtype=np.float32)
    for r in range(n):
        items[r] = cands[order[r]]
        out[r] = scores[order[r]]
    return items, out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel on a tiny model, so no request
    waits for it."""
    from recsvc.config import NeighborParams  # noqa: PLC0415 (no cycle at import)
    from recsvc.neighbors import NeighborModel  # noqa: PLC0415

    one = np.zeros(1, dtype=np.float32)
    for params in (NeighborParams(anchor_decay=2.0), NeighborParams(anchor_decay=0.0)):
        model = NeighborModel(
            params,
            session_indptr=np.array([0, 2], dtype=np.int64),
            session_items=np.array([0, 1], dtype=np.int32),
            session_length=np.array([2.0], dtype=np.float32),
            item_indptr=np.array([0, 1, 2], dtype=np.int64),
            item_sessions=np.array([0, 0], dtype=np.int32),
            item_idf=np.ones(2, dtype=np.float32),
            item_recent=np.ones(2, dtype=np.float32),
            item_vectors=np.ones((2, 1), dtype=np.float32),
            rule_indptr=np.array([0, 1, 1], dtype=np.int64),
            rule_items=np.array([1], dtype=np.int32),
            rule_scores=one + 1.0,
            rerank_weights=np.ones(29, dtype=np.float64),
        )
        model.score(np.array([0], dtype=np.int32))
        model.with_params(params, np.zeros(0)).score(np.array([0], dtype=np.int32))
