"""The trainer's choice of the ranking blend for known users, fitted on the shop's own
recent behaviour.

Shops differ in what predicts the next purchase: groceries (Ta-Feng) are the user's
own staples plus what sells right now; a gift shop (Online Retail II) is the user's
history plus CF; no fixed weights serve both (docs/quality.md). So the trainer holds
out each returning user's last basket, recomputes the signals every user had before
it (their own purchases, the trending popularity, their fold-in vector), and picks the
weights of CF, buy-again and popularity that recall most of those baskets.

This is cheap by design, so that it rides along every ``recsvc train``: the ALS item
factors are the trained ones (not refitted without the held-out baskets, so CF is
slightly favoured), at most ``max_users`` users are held out, and the candidates and
signals of each user are computed once; each blend is then a matrix product and a
top-20 per user. The item-neighbour signal is left out: it costs milliseconds per
known user at serving time and added under 0.003 Recall@20 on both shops;
``recsvc tune`` can still turn it on.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.config import WeightingSettings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.foldin import FoldIn
from recsvc.model import Blend
from recsvc.weighting import EVENT_TYPES, event_weights

from .interactions import event_type_codes
from .splits import last_basket_rows

__all__ = ["MIN_USERS", "BlendFit", "HeldOut", "HeldUser", "fit_user_blend"]

log = logging.getLogger(__name__)

#: Fewer held-out baskets than this fit noise, not the shop: the trainer keeps its
#: default blend.
MIN_USERS = 200
_CF = (0.0, 0.25, 0.5, 1.0)
_REPEAT = (0.0, 0.25, 0.5, 1.0)
_POPULARITY = (0.0, 0.1, 0.25, 0.5, 1.0)
_K = 20
_CF_CANDIDATES = 80
_POPULAR_CANDIDATES = 100
#: Users whose fold-in scores are computed in one product (bounds its memory).
_USERS_PER_PRODUCT = 128


@dataclass(frozen=True)
class HeldUser:
    """What the fit knew of one sampled user before their held-out basket."""

    user_id: str
    vector: NDArray[np.float32]
    """The fold-in of their events before the basket."""
    cf_top: NDArray[np.int64]
    """The ``_CF_CANDIDATES`` items of the largest CF scores (any order)."""
    own: NDArray[np.int64]
    """Items they bought (ascending): candidates when repeats are allowed, else never
    recommended."""
    own_weight: NDArray[np.float64]
    """Their decayed order counts."""
    truth: NDArray[np.int64]
    """The held-out basket's items (-1: an item the model lacks)."""


@dataclass(frozen=True)
class HeldOut:
    """The fit's held-out users and the signals of the chosen half-life, for a further
    signal's fit on the same baskets (``training/peers.py``)."""

    users: list[HeldUser]
    before: NDArray[np.bool_]
    """``(table rows,)``: the events before the held-out visits."""
    popularity: NDArray[np.float32]
    """Popularity at the chosen half-life, scaled to [0, 1]."""
    popular: NDArray[np.int64]
    """Its head (the popular candidates)."""
    raw: Blend
    """The chosen weights as the grid holds them (before scaling to sum 1)."""
    allow_repeats: bool


@dataclass(frozen=True)
class BlendFit:
    blend: Blend
    popularity_half_life_days: float
    recall: float
    """Recall@20 of ``blend`` on the held-out baskets."""
    users: int
    grid: dict[str, float]
    """Recall@20 of every blend tried, keyed ``cf/repeat/popularity``."""
    held: HeldOut | None = field(default=None, repr=False, compare=False)
    """The held-out users and signals the blend was chosen on."""


@dataclass(frozen=True)
class _UserSignals:
    candidates: NDArray[np.int64]
    signals: NDArray[np.float32]
    """``(n_candidates, 3)``: cf, repeat, popularity, each scaled to [0, 1] (a fourth
    column: the peer list's score, ``training/peers.py``)."""
    truth: NDArray[np.int64]


def fit_user_blend(
    table: pa.Table,
    item_ids: NDArray[np.str_],
    item_factors: NDArray[np.float32],
    foldin: FoldIn,
    weighting: WeightingSettings,
    *,
    allow_repeats: bool,
    half_lives: Sequence[float] = (7.0,),
    max_users: int = 1000,
    seed: int = 0,
) -> BlendFit | None:
    """The best blend, and popularity half-life among ``half_lives`` (days), on each
    sampled returning user's last basket; None when fewer than MIN_USERS users have two
    baskets (too little to fit on), or when no event lies before the visits of the
    last baskets (nothing to fold in)."""
    try:
        held, held_out = last_basket_rows(table)
    except DataError:  # no purchases at all (a views-only shop): nothing to fit on
        return None
    # the columns of the events before the held-out visits, taken with the mask: a
    # filtered copy of the table (split_last_basket) held ~1.8 GiB at 10M events
    before = ~held
    if not before.any():
        # every event lies in the visit of a last basket (within VISIT_GAP_SECONDS of
        # it): nothing is left to fold in or to take popularity from
        return None
    users = sorted(held_out)
    if len(users) < MIN_USERS:
        return None
    rng = np.random.default_rng(seed)
    if len(users) > max_users:  # enough to tell blends apart; the fit stays ~1 s
        users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
    stamps = table["timestamp"].to_numpy()[before]
    now = int(stamps.max())
    position = pc.index_in(table["item_id"], value_set=pa.array(item_ids.tolist(), pa.string()))
    items_all = position.to_numpy(zero_copy_only=False)[before]
    types = event_type_codes(table["event_type"])[before]
    quantity = table["quantity"].to_numpy()[before]

    populars = {}
    for half_life in half_lives:
        trending = weighting.model_copy(update={"half_life_days": half_life})
        w_pop = event_weights(types, quantity, stamps, now, trending)
        counted = np.bincount(items_all, weights=w_pop, minlength=len(item_ids))
        scaled: NDArray[np.float32] = (counted / max(float(counted.max()), 1e-12)).astype(
            np.float32
        )
        populars[half_life] = (scaled, np.argsort(-scaled, kind="stable")[:_POPULAR_CANDIDATES])

    chosen = pc.is_in(table["user_id"], value_set=pa.array(users, pa.string()))
    picked = chosen.to_numpy(zero_copy_only=False)
    picked &= ~pc.is_null(chosen).to_numpy(zero_copy_only=False)
    picked &= before
    u_ids = np.asarray(table["user_id"].filter(pa.array(picked)).to_pylist())
    mask = picked[before]
    u_items = items_all[mask]
    u_w = event_weights(types[mask], quantity[mask], stamps[mask], now, weighting)
    # buy-again counts orders, not units (as training.interactions' purchases do)
    u_orders = event_weights(types[mask], np.ones(int(mask.sum())), stamps[mask], now, weighting)
    u_bought = types[mask] == EVENT_TYPES.index(EventType.PURCHASE)
    order = np.argsort(u_ids, kind="stable")
    u_ids, u_items, u_w = u_ids[order], u_items[order], u_w[order]
    u_orders, u_bought = u_orders[order], u_bought[order]
    starts: list[int] = (
        np.flatnonzero(np.r_[True, u_ids[1:] != u_ids[:-1]]).tolist() if len(u_ids) else []
    )
    if len(starts) < MIN_USERS:  # the sampled users hold too little history to fit on
        return None
    ends = [*starts[1:], len(u_ids)]
    item_index = {str(x): i for i, x in enumerate(item_ids.tolist())}

    per_user: dict[float, list[_UserSignals]] = {h: [] for h in half_lives}
    held_users: list[HeldUser] = []
    rows = list(zip(starts, ends, strict=True))
    for chunk in range(0, len(rows), _USERS_PER_PRODUCT):
        part = rows[chunk : chunk + _USERS_PER_PRODUCT]
        # the fold-in vectors of a chunk of users scored in one product, and their CF
        # heads in one partition (per user and half-life, this was most of the fit)
        vectors = np.stack(
            [
                foldin.user_vector(
                    u_items[begin:end].astype(np.int32), u_w[begin:end].astype(np.float32)
                )
                for begin, end in part
            ]
        )
        scores = vectors @ item_factors.T
        n_top = min(_CF_CANDIDATES, scores.shape[1] - 1)
        tops = np.argpartition(-scores, n_top, axis=1)[:, :_CF_CANDIDATES]
        for (begin, end), vector, row_scores, cf_top in zip(
            part, vectors, scores, tops, strict=True
        ):
            truth = np.array(
                [item_index.get(i, -1) for i in held_out[str(u_ids[begin])]], dtype=np.int64
            )
            own, own_weight = _own(u_items[begin:end], u_orders[begin:end], u_bought[begin:end])
            held_users.append(
                HeldUser(
                    str(u_ids[begin]),
                    vector.astype(np.float32),
                    cf_top.astype(np.int64),
                    own,
                    own_weight,
                    truth,
                )
            )
            for half_life, (popularity, popular) in populars.items():
                per_user[half_life].append(
                    _signals(
                        u_items[begin:end],
                        u_orders[begin:end],
                        u_bought[begin:end],
                        truth,
                        row_scores,
                        cf_top,
                        popularity,
                        popular,
                        allow_repeats,
                    )
                )
    grid: dict[str, float] = {}
    best: tuple[float, Blend, float] | None = None
    repeats = _REPEAT if allow_repeats else (0.0,)
    for half_life, users_signals in per_user.items():
        batch = _Batch.of(users_signals)
        for cf, repeat, pop in itertools.product(_CF, repeats, _POPULARITY):
            if cf + repeat + pop == 0:
                continue
            recall = batch.recall(np.array([cf, repeat, pop], dtype=np.float32))
            grid[f"{cf}/{repeat}/{pop}@{half_life}d"] = recall
            if best is None or recall > best[0] + 1e-9:
                best = (recall, Blend(cf=cf, repeat=repeat, popularity=pop), half_life)
    assert best is not None
    recall, raw, half_life = best
    total = raw.cf + raw.repeat + raw.popularity
    blend = Blend(cf=raw.cf / total, repeat=raw.repeat / total, popularity=raw.popularity / total)
    log.info(
        "fitted blend %s, popularity half-life %g days: recall@%d %.4f on %d held-out baskets",
        blend,
        half_life,
        _K,
        recall,
        len(starts),
    )
    popularity, popular = populars[half_life]
    return BlendFit(
        blend,
        half_life,
        recall,
        len(starts),
        grid,
        HeldOut(held_users, before, popularity, popular, raw, allow_repeats),
    )


def _own(
    items: NDArray[np.int64], order_weights: NDArray[np.float32], bought: NDArray[np.bool_]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """The items bought (ascending) and their summed order weights."""
    own, own_at = np.unique(items[bought], return_inverse=True)
    own_weight = np.bincount(own_at, weights=order_weights[bought]) if len(own) else np.zeros(0)
    return own.astype(np.int64), own_weight.astype(np.float64)


def _signals(
    items: NDArray[np.int64],
    order_weights: NDArray[np.float32],
    bought: NDArray[np.bool_],
    truth: NDArray[np.int64],
    scores: NDArray[np.float32],
    cf_top: NDArray[np.int64],
    popularity: NDArray[np.float32],
    popular: NDArray[np.int64],
    allow_repeats: bool,
) -> _UserSignals:
    """A user's candidates (CF head, popular head, and what they bought when repeats
    are allowed) with their CF, buy-again and popularity signals."""
    own, own_at = np.unique(items[bought], return_inverse=True)
    own_weight = np.bincount(own_at, weights=order_weights[bought]) if len(own) else np.zeros(0)
    parts = [cf_top, popular] + ([own] if allow_repeats else [])
    candidates = np.unique(np.concatenate(parts))
    if not allow_repeats and len(own):
        candidates = candidates[~np.isin(candidates, own)]
    cf = np.maximum(scores[candidates], 0.0)
    cf = cf / cf.max() if len(cf) and cf.max() > 0 else cf
    repeat = np.zeros(len(candidates), np.float32)
    # the weights may all have decayed to 0 (purchases ~150 half-lives before the cut)
    if allow_repeats and len(own) and own_weight.max() > 0:
        at = np.searchsorted(own, candidates)
        hit = (at < len(own)) & (own[np.minimum(at, len(own) - 1)] == candidates)
        repeat[hit] = own_weight[at[hit]] / own_weight.max()
    signals = np.stack([cf, repeat, popularity[candidates]], axis=1).astype(np.float32)
    return _UserSignals(candidates, signals, truth)


@dataclass(frozen=True)
class _Batch:
    """Every user's candidates padded to one ``(users, width, signals)`` array, so a blend
    is scored for all users with one product and one partition."""

    signals: NDArray[np.float32]
    valid: NDArray[np.bool_]
    hit: NDArray[np.bool_]
    """``(users, width)``: the candidate is in the user's held-out basket."""
    truth_size: NDArray[np.float64]

    @classmethod
    def of(cls, users: list[_UserSignals]) -> _Batch:
        width = max(len(u.candidates) for u in users)
        signals = np.zeros((len(users), width, users[0].signals.shape[1]), np.float32)
        valid = np.zeros((len(users), width), bool)
        hit = np.zeros((len(users), width), bool)
        for row, u in enumerate(users):
            n = len(u.candidates)
            signals[row, :n] = u.signals
            valid[row, :n] = True
            hit[row, :n] = np.isin(u.candidates, u.truth)
        sizes = np.array([len(u.truth) for u in users], dtype=np.float64)
        return cls(signals, valid, hit, sizes)

    def recall(self, weights: NDArray[np.float32]) -> float:
        score = np.where(self.valid, self.signals @ weights, -np.inf)
        k = min(_K, score.shape[1])
        top = np.argpartition(-score, k - 1, axis=1)[:, :k]
        hits = np.take_along_axis(self.hit & self.valid, top, axis=1).sum(axis=1)
        return float(np.mean(hits / self.truth_size))
