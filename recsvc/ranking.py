"""The ranking core: one request's signals in, top-k items with scores and reasons out.

Plain NumPy over a :class:`~recsvc.model.Model`; no I/O. The server calls it for
every Recommend, and ``recsvc evaluate`` scores exactly this code as ``served``.

How an answer is made:

1. A query vector: the user's vector, re-folded with the live session's items when
   there are any (the session is what the shopper did seconds ago); for an
   anonymous visitor, the fold-in of the session alone.
2. Candidates: the top ``k · overfetch`` items by inner product from the FAISS
   index, plus (when repeats are allowed) the items the user bought before.
3. Score: ``(1 − β)·cf + β·repeat`` with ``cf`` the inner product scaled by the best
   candidate's and ``repeat`` the item's decayed purchase weight for the user, scaled
   by the heaviest; β is the shop's repeat weight (or the request's).
4. Filters (exclusions, categories, in-stock), then the best ``k``; if filters leave
   fewer than ``k``, the search widens (doubling) until ``k`` qualify or the whole
   catalogue was seen; with no signal at all, popular items that pass the filters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsvc.config import RepeatPolicy
from recsvc.model import Model

__all__ = [
    "Filters",
    "Query",
    "Ranker",
    "Ranking",
    "Reason",
    "Strategy",
    "training_user_query",
]

IntArray = NDArray[np.int32]
FloatArray = NDArray[np.float32]

_EMPTY_INT: IntArray = np.zeros(0, dtype=np.int32)
_EMPTY_FLOAT: FloatArray = np.zeros(0, dtype=np.float32)


class Reason(IntEnum):
    """Why an item is in the answer (numbers match the proto's ``Reason``)."""

    CF = 1
    SESSION = 2
    BUY_AGAIN = 3
    POPULAR = 4
    SIMILAR = 5


class Strategy(StrEnum):
    """Which signal the answer is built on."""

    PERSONALIZED = "personalized"
    SESSION = "session"
    POPULAR = "popular"


@dataclass(frozen=True)
class Filters:
    """What may be shown. Items and categories are model positions."""

    exclude_items: IntArray = field(default_factory=lambda: _EMPTY_INT)
    include_categories: IntArray | None = None
    """When set, only items of these categories."""
    exclude_categories: IntArray = field(default_factory=lambda: _EMPTY_INT)
    in_stock_only: bool = False

    @property
    def is_empty(self) -> bool:
        return (
            len(self.exclude_items) == 0
            and self.include_categories is None
            and len(self.exclude_categories) == 0
            and not self.in_stock_only
        )


@dataclass(frozen=True)
class Query:
    """One request's signals, in model positions."""

    k: int
    user_vector: FloatArray | None = None
    """``(factors,)`` from the cache or the artifact; None when unknown."""
    history_items: IntArray = field(default_factory=lambda: _EMPTY_INT)
    """``(n,)`` items of the user's past events of any type (for the fold-in)."""
    history_weights: FloatArray = field(default_factory=lambda: _EMPTY_FLOAT)
    """``(n,)`` their decayed weights."""
    purchased_items: IntArray = field(default_factory=lambda: _EMPTY_INT)
    """``(p,)`` items the user bought (for buy-again and EXCLUDE)."""
    purchased_weights: FloatArray = field(default_factory=lambda: _EMPTY_FLOAT)
    """``(p,)`` their decayed purchase weights."""
    session_items: IntArray = field(default_factory=lambda: _EMPTY_INT)
    """``(m,)`` items of the live session, oldest first."""
    session_weights: FloatArray = field(default_factory=lambda: _EMPTY_FLOAT)
    """``(m,)`` their weights (by event type and recency)."""
    filters: Filters = field(default_factory=Filters)
    repeat_policy: RepeatPolicy | None = None
    """None = the model's default."""
    repeat_weight: float | None = None
    """None = the model's default."""


@dataclass(frozen=True)
class Ranking:
    """The answer: parallel arrays, best first, at most ``k`` long."""

    items: IntArray
    scores: FloatArray
    reasons: NDArray[np.int8]
    strategy: Strategy
    fallback: bool


def training_user_query(model: Model, user: int, k: int, **options: Any) -> Query:
    """The query for training user ``user`` (a position) from the artifact alone: the
    trained vector, the full history and the purchases. What the server builds for a
    known customer with no live events, and what ``recsvc evaluate`` scores."""
    items, weights = model.user_history(user)
    bought, bought_weights = model.user_purchases(user)
    return Query(
        k=k,
        user_vector=model.artifact.user_factors[user],
        history_items=items,
        history_weights=weights,
        purchased_items=bought,
        purchased_weights=bought_weights,
        **options,
    )


class Ranker:
    """Ranks items of one :class:`Model` (read-only, safe to share across requests)."""

    def __init__(self, model: Model, overfetch: int = 4) -> None:
        self.model = model
        self.overfetch = overfetch
        a = model.artifact
        self._category = a.item_category
        self._available = a.item_available
        self._n_items = model.n_items
        norms = np.linalg.norm(a.item_factors, axis=1)
        self._item_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)

    def recommend(self, query: Query) -> Ranking:
        """Top ``query.k`` items for ``query``."""
        k = min(query.k, self._n_items)
        if k <= 0:
            return Ranking(_EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8), Strategy.POPULAR, True)
        policy = query.repeat_policy
        if policy is None or policy is RepeatPolicy.AUTO:
            policy = self.model.defaults.repeat_policy
        beta = (
            self.model.defaults.repeat_weight
            if query.repeat_weight is None
            else query.repeat_weight
        )
        if policy is RepeatPolicy.EXCLUDE:
            beta = 0.0

        vector, strategy = self._query_vector(query)
        allowed = self._allowed_mask(query, policy)
        if vector is None and (beta == 0.0 or len(query.purchased_items) == 0):
            return self._popular(k, allowed, strategy=Strategy.POPULAR, fallback=True)

        repeat = self._repeat_scores(query) if beta > 0 else {}
        cf_reason = Reason.SESSION if strategy is Strategy.SESSION else Reason.CF
        # k·overfetch for small k, but at most k + 60: normscan's cost grows with the
        # fetch (400 candidates cost 612 µs vs 85 µs for 40) and filters that reject
        # more widen the search below anyway
        fetch = min(self._n_items, k + min(k * (self.overfetch - 1), 60))
        while True:
            items, scores, reasons = self._blend(vector, repeat, beta, fetch, allowed, cf_reason)
            if len(items) >= k or fetch >= self._n_items or vector is None:
                break
            fetch = min(self._n_items, fetch * 4)
        if len(items) < k:  # history-only user with too few items: pad with popular
            pad = self._popular(k - len(items), allowed & ~_mask(self._n_items, items))
            return Ranking(
                np.concatenate([items, pad.items]),
                np.concatenate([scores, pad.scores]),
                np.concatenate([reasons, pad.reasons]),
                strategy,
                False,
            )
        return Ranking(items[:k], scores[:k], reasons[:k], strategy, False)

    def similar(self, items: IntArray, k: int, filters: Filters | None = None) -> Ranking:
        """Items like ``items`` (positions): cosine similarity to their mean direction.

        Candidates come from the inner-product index (over-fetched) and are
        re-ranked by cosine, so long (popular) vectors do not crowd out close
        neighbours. The query items themselves are never returned.
        """
        k = min(k, self._n_items)
        allowed = self._allowed_mask(Query(k=k, filters=filters or Filters()), RepeatPolicy.ALLOW)
        allowed[items] = False
        y = self.model.artifact.item_factors
        norms = self._item_norms
        if k <= 0 or len(items) == 0:
            return Ranking(_EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8), Strategy.SESSION, False)
        unit = y[items] / norms[items, None]
        query = unit.mean(axis=0).astype(np.float32)
        fetch = min(self._n_items, max(k * self.overfetch * 4, 100) + len(items))
        while True:
            _, ids = self.model.artifact.index.search(query[None, :], fetch)
            cand = ids[0][ids[0] >= 0]
            cand = cand[allowed[cand]].astype(np.int32)
            if len(cand) >= k or fetch >= self._n_items:
                break
            fetch = min(self._n_items, fetch * 4)
        cosine = (y[cand] @ query) / (norms[cand] * max(float(np.linalg.norm(query)), 1e-12))
        order = np.argsort(-cosine, kind="stable")[:k]
        return Ranking(
            cand[order],
            cosine[order].astype(np.float32),
            np.full(len(order), Reason.SIMILAR, dtype=np.int8),
            Strategy.SESSION,
            False,
        )

    # --- steps --------------------------------------------------------------------

    def _query_vector(self, query: Query) -> tuple[FloatArray | None, Strategy]:
        foldin = self.model.foldin
        if len(query.session_items):
            items = np.concatenate([query.history_items, query.session_items])
            weights = np.concatenate([query.history_weights, query.session_weights])
            vector = foldin.user_vector(items, weights)
            if len(query.history_items) == 0 and query.user_vector is not None:
                # cached vector but no raw history at hand: add the session's pull
                vector = query.user_vector + foldin.user_vector(
                    query.session_items, query.session_weights
                )
            personal = len(query.history_items) > 0 or query.user_vector is not None
            return vector, Strategy.PERSONALIZED if personal else Strategy.SESSION
        if query.user_vector is not None:
            return query.user_vector, Strategy.PERSONALIZED
        if len(query.history_items):
            return foldin.user_vector(query.history_items, query.history_weights), (
                Strategy.PERSONALIZED
            )
        return None, Strategy.POPULAR

    def _allowed_mask(self, query: Query, policy: RepeatPolicy) -> NDArray[np.bool_]:
        f = query.filters
        allowed = np.ones(self._n_items, dtype=bool)
        if f.in_stock_only:
            allowed &= self._available
        if f.include_categories is not None:
            allowed &= np.isin(self._category, f.include_categories)
        if len(f.exclude_categories):
            allowed &= ~np.isin(self._category, f.exclude_categories)
        if len(f.exclude_items):
            allowed[f.exclude_items] = False
        if policy is RepeatPolicy.EXCLUDE and len(query.purchased_items):
            allowed[query.purchased_items] = False
        return allowed

    def _repeat_scores(self, query: Query) -> dict[int, float]:
        if len(query.purchased_items) == 0:
            return {}
        items, inverse = np.unique(query.purchased_items, return_inverse=True)
        w = np.bincount(inverse, weights=query.purchased_weights)
        top = float(w.max())
        if top <= 0:
            return {}
        return dict(zip(items.tolist(), (w / top).tolist(), strict=True))

    def _blend(
        self,
        vector: FloatArray | None,
        repeat: dict[int, float],
        beta: float,
        fetch: int,
        allowed: NDArray[np.bool_],
        cf_reason: Reason,
    ) -> tuple[IntArray, FloatArray, NDArray[np.int8]]:
        if vector is not None:
            cf_scores, cf_ids = self.model.artifact.index.search(vector[None, :], fetch)
            valid = cf_ids[0] >= 0
            cand = cf_ids[0][valid].astype(np.int32)
            cf = cf_scores[0][valid].astype(np.float32)
        else:
            cand, cf = _EMPTY_INT, _EMPTY_FLOAT
        if repeat:
            seen = set(cand.tolist())
            extra = np.fromiter((i for i in repeat if i not in seen), np.int32)
            if len(extra):
                extra_cf = (
                    self.model.artifact.item_factors[extra] @ vector
                    if vector is not None
                    else np.zeros(len(extra), np.float32)
                )
                cand = np.concatenate([cand, extra])
                cf = np.concatenate([cf, extra_cf.astype(np.float32)])
        keep = allowed[cand]
        cand, cf = cand[keep], cf[keep]
        if len(cand) == 0:
            return _EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8)
        scale = float(cf.max()) if len(cf) and cf.max() > 0 else 1.0
        cf_part = (1.0 - beta) * np.maximum(cf, 0.0) / scale
        rep_part = beta * np.fromiter(
            (repeat.get(int(i), 0.0) for i in cand), np.float32, len(cand)
        )
        score = (cf_part + rep_part).astype(np.float32)
        reasons = np.where(rep_part > cf_part, Reason.BUY_AGAIN, cf_reason).astype(np.int8)
        # stable: equal scores keep index order, so answers are reproducible
        order = np.argsort(-score, kind="stable")
        return cand[order], score[order], reasons[order]

    def _popular(
        self,
        k: int,
        allowed: NDArray[np.bool_],
        *,
        strategy: Strategy = Strategy.POPULAR,
        fallback: bool = False,
    ) -> Ranking:
        order = self.model.popular_order
        picked = order[allowed[order]][:k].astype(np.int32)
        pop = self.model.artifact.popularity
        top = float(pop[order[0]]) if len(order) and pop[order[0]] > 0 else 1.0
        return Ranking(
            picked,
            (pop[picked] / top).astype(np.float32),
            np.full(len(picked), Reason.POPULAR, dtype=np.int8),
            strategy,
            fallback,
        )


def _mask(n: int, items: IntArray) -> NDArray[np.bool_]:
    m = np.zeros(n, dtype=bool)
    m[items] = True
    return m
