"""The trainer's step after the user blend fit: customers-like-you lists
(:mod:`recsvc.peers`) and their weight in the served user blend.

Issue #22 measured (validation splits of Ta-Feng, Online Retail II and the synthetic
shop) that the neighbour part of TIFU-KNN, added to the fitted blend with the blend's
three weights kept, lifts Recall@20, while fitting all four weights together was
unstable. So this step keeps :func:`training.blend.fit_user_blend`'s weights and
popularity half-life, and on the same held-out last baskets (the same sampled users,
their signals as the blend fit computed them) chooses only the peer signal's weight
among :data:`WEIGHTS` (relative to the blend's raw grid weights) and its setting among
:data:`CONFIGS`. The lists of the fit are made from the purchases before the
held-out visits; the served ones from all of them. A weight that recalls no more of the
held-out baskets than none is 0: then no list is kept and the shop is unchanged.

Cost: the neighbour search is customers × pool (``[peers] pool_size``, the most
recently active customers), in chunks of customers; the fit searches only its sampled
users (~1,000), twice (one search per basket decay; the neighbour counts are cuts of
the largest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.config import PeerSettings
from recsvc.events import EventType
from recsvc.model import Blend
from recsvc.peers import PeerLists, nearest, peer_lists

from .blend import _K, HeldOut, HeldUser, _Batch, _UserSignals
from .strong_baselines import Baskets, tifu_vectors

__all__ = ["CONFIGS", "WEIGHTS", "PeerConfig", "PeerFit", "build_peers", "fit_peers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerConfig:
    """TIFU-KNN's vector and neighbour settings (the names of its paper)."""

    k: int
    """Neighbours averaged."""
    m: int
    """Groups of baskets."""
    r_b: float
    """Decay of a basket within its group, per later basket."""
    r_g: float
    """Decay of a group, per later group."""


#: The settings the step chooses from (m and r_g at the values issue #22 measured).
CONFIGS = tuple(PeerConfig(k, 7, r_b, 0.8) for k in (100, 300, 1000) for r_b in (0.7, 0.9))
#: The peer signal's weights tried, relative to the blend's raw grid weights
#: (``training/blend.py``'s ``_CF``, ``_REPEAT``, ``_POPULARITY``); 0 is "none".
WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class PeerFit:
    config: PeerConfig
    weight: float
    """The chosen weight beside the raw blend (0: the signal does not help)."""
    blend: Blend
    """The user blend with the peer weight, the weights summing to 1."""
    recall: float
    """Recall@20 of ``blend`` on the held-out baskets."""
    recall_without: float
    """Recall@20 of the blend without the signal, on the same baskets."""
    users: int
    grid: dict[str, float] = field(repr=False)
    """Recall@20 of every (setting, weight) tried."""


def fit_peers(
    table: pa.Table,
    user_ids: NDArray[np.str_],
    item_ids: NDArray[np.str_],
    item_factors: NDArray[np.float32],
    held: HeldOut,
    settings: PeerSettings,
) -> PeerFit:
    """The peer signal's weight and setting on the blend fit's held-out baskets."""
    users = [u for u in held.users if len(u.truth)]
    position = {str(u): i for i, u in enumerate(user_ids.tolist())}
    before = pa.array(held.before & _purchases(table))
    baskets = Baskets.from_table(table.filter(before), user_ids.tolist(), item_ids.tolist())
    last = _last_purchase(table, before, user_ids)
    queries = np.array([position.get(u.user_id, -1) for u in users], np.int64)
    base = _batch(users, held, item_factors, None)
    recall_without = base.recall(_weights(held.raw, 0.0))
    grid: dict[str, float] = {}
    best: tuple[float, PeerConfig, float] | None = None
    for r_b in sorted({c.r_b for c in CONFIGS}):
        configs = [c for c in CONFIGS if c.r_b == r_b]
        vectors = _vectors(baskets, configs[0])
        pool = _pool(vectors, last, settings.pool_size)
        found = queries[(queries >= 0)]
        found = found[np.diff(vectors.indptr)[found] > 0]
        if len(found) == 0 or len(pool) < 2:
            continue
        pool_vectors = sp.csr_matrix(vectors[pool])
        neighbours, _ = nearest(
            sp.csr_matrix(vectors[found]), found, pool_vectors, pool, max(c.k for c in configs)
        )
        row_of = {int(u): i for i, u in enumerate(found.tolist())}
        for config in sorted(configs, key=lambda c: c.k):
            lists, _ = peer_lists(vectors, found, pool, config.k, settings.length, neighbours)
            per_user = [_row(lists, row_of[int(q)]) if int(q) in row_of else None for q in queries]
            batch = _batch(users, held, item_factors, per_user)
            for weight in WEIGHTS:
                recall = batch.recall(_weights(held.raw, weight))
                grid[f"k{config.k}/m{config.m}/rb{config.r_b}/rg{config.r_g}@{weight}"] = recall
                if recall > (best[0] if best is not None else recall_without) + 1e-9:
                    best = (recall, config, weight)
    if best is None:
        fit = PeerFit(CONFIGS[0], 0.0, _blend(held.raw, 0.0), recall_without, recall_without,
                      len(users), grid)  # fmt: skip
    else:
        recall, config, weight = best
        fit = PeerFit(config, weight, _blend(held.raw, weight), recall, recall_without,
                      len(users), grid)  # fmt: skip
    log.info(
        "peer lists: weight %g (k %d, r_b %g): recall@%d %.4f against %.4f without, "
        "%d held-out baskets",
        fit.weight, fit.config.k, fit.config.r_b, _K, fit.recall, recall_without, len(users),
    )  # fmt: skip
    return fit


def build_peers(
    table: pa.Table,
    user_ids: NDArray[np.str_],
    item_ids: NDArray[np.str_],
    config: PeerConfig,
    settings: PeerSettings,
) -> PeerLists:
    """The lists of the ``[peers] max_lists`` most recent buyers, from all their
    purchases. The others get none (their blend leaves the signal out): a list costs
    its customer's k neighbours' items, and at 10M synthetic events lists for all
    200k customers at k = 1000 ran for many minutes (30k lists: 184 s)."""
    bought = pa.array(_purchases(table))
    baskets = Baskets.from_table(table.filter(bought), user_ids.tolist(), item_ids.tolist())
    vectors = _vectors(baskets, config)
    last = _last_purchase(table, bought, user_ids)
    pool = _pool(vectors, last, settings.pool_size)
    users = _pool(vectors, last, settings.max_lists)
    return PeerLists.build(vectors, users, pool, config.k, settings.length)


# --- helpers --------------------------------------------------------------------------


def _purchases(table: pa.Table) -> NDArray[np.bool_]:
    mask = pc.and_(
        pc.equal(table["event_type"], EventType.PURCHASE.value), pc.is_valid(table["user_id"])
    )
    out: NDArray[np.bool_] = mask.to_numpy(zero_copy_only=False).astype(bool)
    return out


def _last_purchase(
    table: pa.Table, rows: pa.Array, user_ids: NDArray[np.str_]
) -> NDArray[np.int64]:
    """Each customer's latest purchase among ``rows`` (Unix seconds; -1: none)."""
    picked = table.filter(rows)
    at = pc.index_in(picked["user_id"], value_set=pa.array(user_ids.tolist(), pa.string()))
    known = pc.is_valid(at).to_numpy(zero_copy_only=False)
    users = at.to_numpy(zero_copy_only=False)[known].astype(np.int64)
    stamps = picked["timestamp"].to_numpy()[known].astype(np.int64)
    last = np.full(len(user_ids), -1, np.int64)
    np.maximum.at(last, users, stamps)
    return last


def _vectors(baskets: Baskets, config: PeerConfig) -> sp.csr_matrix:
    v = sp.csr_matrix(tifu_vectors(baskets, config.m, config.r_b, config.r_g), dtype=np.float32)
    v.eliminate_zeros()  # (weights that underflow float32: baskets hundreds back)
    v.sort_indices()
    return v


def _pool(vectors: sp.csr_matrix, last: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """The ``size`` customers with a vector who bought most recently (ties: lower
    position), ascending."""
    usable = np.flatnonzero(np.diff(vectors.indptr) > 0)
    if len(usable) > size:
        order = np.lexsort((usable, -last[usable]))
        usable = np.sort(usable[order[:size]])
    return usable.astype(np.int64)


def _row(lists: sp.csr_matrix, row: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    start, end = lists.indptr[row], lists.indptr[row + 1]
    return lists.indices[start:end].astype(np.int64), lists.data[start:end]


def _weights(raw: Blend, peer: float) -> NDArray[np.float32]:
    return np.array([raw.cf, raw.repeat, raw.popularity, peer], np.float32)


def _blend(raw: Blend, peer: float) -> Blend:
    total = raw.cf + raw.repeat + raw.popularity + peer
    return Blend(
        cf=raw.cf / total,
        repeat=raw.repeat / total,
        popularity=raw.popularity / total,
        peers=peer / total,
    )


def _batch(
    users: list[HeldUser],
    held: HeldOut,
    item_factors: NDArray[np.float32],
    lists: list[tuple[NDArray[np.int64], NDArray[np.float32]] | None] | None,
) -> _Batch:
    """The blend fit's candidates and signals per user, plus (``lists`` given) the
    peer list's items as candidates and its score as a fourth signal, as the served
    ranking adds them (``recsvc.ranking``)."""
    out = []
    for i, u in enumerate(users):
        peer = lists[i] if lists is not None else None
        parts = [u.cf_top, held.popular]
        if held.allow_repeats:
            parts.append(u.own)
        if peer is not None:
            parts.append(peer[0])
        candidates = np.unique(np.concatenate(parts))
        if not held.allow_repeats and len(u.own):
            candidates = candidates[~np.isin(candidates, u.own)]
        signals = np.zeros((len(candidates), 4), np.float32)
        # (the CF head is among the candidates: the largest score is the same as the
        # blend fit's over all items)
        cf = np.maximum(item_factors[candidates] @ u.vector, 0.0)
        top = float(cf.max()) if len(cf) else 0.0
        signals[:, 0] = cf / top if top > 0 else cf
        if held.allow_repeats and len(u.own) and u.own_weight.max() > 0:
            signals[:, 1] = _lookup(candidates, u.own, u.own_weight / u.own_weight.max())
        signals[:, 2] = held.popularity[candidates]
        if peer is not None:
            signals[:, 3] = _lookup(candidates, *peer)
        out.append(_UserSignals(candidates, signals, u.truth))
    return _Batch.of(out)


def _lookup(
    candidates: NDArray[np.int64], items: NDArray[np.int64], values: NDArray[np.floating]
) -> NDArray[np.float32]:
    """``values`` of ``candidates`` where they are in ``items`` (ascending), else 0."""
    out = np.zeros(len(candidates), np.float32)
    if len(items) == 0:
        return out
    at = np.minimum(np.searchsorted(items, candidates), len(items) - 1)
    hit = items[at] == candidates
    out[hit] = values[at[hit]]
    return out
