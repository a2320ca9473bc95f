"""The ranking core: one request's signals in, top-k items with scores and reasons out.

Plain NumPy over a :class:`~recsvc.model.Model`; no I/O. The server calls it for
every Recommend, and ``recsvc evaluate`` scores exactly this code as ``served``.

How an answer is made:

1. A blend: the model's (fitted by the trainer for known users; by default the
   session model alone for anonymous sessions), the request's repeat weight and
   policy applied.
2. A query vector when CF is weighed: the user's vector, re-folded with the live
   session's items when there are any; for an anonymous visitor, the fold-in of the
   session alone.
3. Candidates: the top ``k + min(k · (overfetch − 1), 60)`` items by inner product
   from the FAISS index (``k + min(k, 60)`` when no filter applies), the items the
   user bought (when repeats are allowed), the session model's neighbours, the known
   customer's customers-like-you list (one precomputed row, :mod:`recsvc.peers`),
   and the popular head.
4. Score: ``w_cf·cf + w_repeat·repeat + w_neighbors·neighbors + w_pop·popularity +
   w_peers·peers``, each signal scaled to [0, 1] over the candidates; ``repeat`` is
   the user's decayed count of orders holding the item; ``peers`` is 0 (its weight
   unused) for a customer without a list. A caller's :class:`ScoreWeights` (the shop's
   boosts and buries) multiply it, with room for ``2k`` more CF candidates to climb.
5. Filters (exclusions, categories, in-stock, and what the repeat policy hides), then
   the best ``k``; if filters leave fewer than ``k``, the CF search widens (×4) until
   ``k`` qualify or the whole catalogue was seen; CF and then popular items fill a
   short list, ranked below every blended item.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import cached_property
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from recsvc.config import RepeatPolicy
from recsvc.index import ItemIndex, Mask
from recsvc.model import Blend, Model

__all__ = [
    "Filters",
    "Popularity",
    "Query",
    "Ranker",
    "Ranking",
    "Reason",
    "ScoreWeights",
    "Strategy",
    "training_user_query",
]

IntArray = NDArray[np.int32]
FloatArray = NDArray[np.float32]

#: The neighbour model reads at most this many of the newest session (or purchased)
#: items: its recency decay makes older ones count for little, and its cost grows
#: with every item.
_NEIGHBOR_SOURCE = 20

_EMPTY_INT: IntArray = np.zeros(0, dtype=np.int32)
_EMPTY_FLOAT: FloatArray = np.zeros(0, dtype=np.float32)


class Reason(IntEnum):
    """Why an item is in the answer (numbers match the proto's ``Reason``)."""

    CF = 1
    SESSION = 2
    BUY_AGAIN = 3
    POPULAR = 4
    SIMILAR = 5
    PINNED = 6
    BOUGHT_TOGETHER = 7


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
    shown: NDArray[np.bool_] | None = None
    """``(n_items,)``: only items True here (the live catalogue's shown items and a
    request's attribute and live-category filters, combined by the caller); None = no
    such limit. It must not change once searched (the server makes new filters when
    the catalogue's state changes): its copy in the index's order is kept."""
    _scan_masks: dict[int, tuple[ItemIndex, Mask]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def is_empty(self) -> bool:
        return (
            len(self.exclude_items) == 0
            and self.include_categories is None
            and len(self.exclude_categories) == 0
            and not self.in_stock_only
            and self.shown is None
        )

    @property
    def only_shown(self) -> bool:
        """Whether :attr:`shown` is the whole restriction (a live catalogue's, with a
        request's attribute and category filters folded in)."""
        return (
            self.shown is not None
            and len(self.exclude_items) == 0
            and self.include_categories is None
            and len(self.exclude_categories) == 0
            and not self.in_stock_only
        )

    def shown_for(self, index: ItemIndex) -> Mask | None:
        """:attr:`shown` as ``index`` searches it fastest (:meth:`ItemIndex.in_scan_order`),
        made at the first search of each index and kept with these filters (the server
        reuses them per catalogue state and filter: ``Engine._filters``)."""
        if self.shown is None:
            return None
        cached = self._scan_masks.get(id(index))
        if cached is None or cached[0] is not index:
            if len(self._scan_masks) >= 2:  # the served model and one more at most
                self._scan_masks.clear()
            cached = self._scan_masks[id(index)] = (index, index.in_scan_order(self.shown))
        return cached[1]

    @cached_property
    def shown_share(self) -> float:
        """The share of items :attr:`shown` lets through (1.0 when None); computed once
        per Filters (the server reuses one per catalogue state and filter)."""
        if self.shown is None or len(self.shown) == 0:
            return 1.0
        return float(np.count_nonzero(self.shown)) / len(self.shown)


@dataclass(frozen=True)
class Popularity:
    """Item popularity as the ranking weighs it: the blend's prior and the order of the
    popular fallback. The model's own (trained) unless the caller has a live one."""

    prior: FloatArray
    """``(n_items,)`` in [0, 1]."""
    order: IntArray
    """Every item, most popular first."""


class ScoreWeights(Protocol):
    """Per-item multipliers of the blended scores (a shop's boosts and buries): applied
    to every candidate before the best ``k`` are cut, so a boosted item climbs among
    the ranked candidates and a buried one sinks."""

    def weigh(self, items: IntArray, scores: FloatArray) -> None:
        """Multiply ``scores`` (of ``items``) in place."""

    def room(self, basis: int) -> int:
        """Candidates to rank beyond the unweighted ranking's for an answer of
        ``basis`` items (at most ``basis``): ``basis`` for weights that may lift any
        item; fewer when they only lower known items (each can leave a hole)."""


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
    popularity: Popularity | None = None
    """None = the model's trained popularity."""
    headroom_k: int | None = None
    """The answer's real size when ``k`` over-fetches for the caller (merchandising
    rules, a diversity cap): the search's headroom is sized for it. None = ``k``."""
    popularity_weight: float | None = None
    """The blend's popularity share (a placement's trending weight); None = the
    model's blend."""
    weights: ScoreWeights | None = None
    """Multipliers of the candidates' scores before the cut; the search then ranks
    about 3k candidates (the answer's size, :attr:`headroom_k` or ``k``, plus twice
    that: room for a boosted item to climb). None = none."""
    peer_items: IntArray = field(default_factory=lambda: _EMPTY_INT)
    """``(q,)`` the known customer's customers-like-you items, ascending
    (:meth:`Model.user_peers`); empty = none (the blend's ``peers`` weight unused)."""
    peer_scores: FloatArray = field(default_factory=lambda: _EMPTY_FLOAT)
    """``(q,)`` their scores, scaled to (0, 1]."""


@dataclass(frozen=True)
class Ranking:
    """The answer: parallel arrays, best first, at most ``k`` long."""

    items: IntArray
    scores: FloatArray
    reasons: NDArray[np.int8]
    strategy: Strategy
    fallback: bool
    popularity_weight: float = 0.0
    """What the blend weighed the popularity prior by (1 for a popular list): the
    score an item with no other signal gets per unit of prior."""

    @property
    def parts(self) -> tuple[IntArray, FloatArray, NDArray[np.int8]]:
        return self.items, self.scores, self.reasons


def training_user_query(model: Model, user: int, k: int, **options: Any) -> Query:
    """The query for training user ``user`` (a position) from the artifact alone: the
    trained vector, the full history, the purchases and the customers-like-you list.
    What the server builds for a known customer with no live events, and what
    ``recsvc evaluate`` scores."""
    items, weights = model.user_history(user)
    bought, bought_weights = model.user_purchases(user)
    peer_items, peer_scores = model.user_peers(user)
    return Query(
        k=k,
        user_vector=model.artifact.user_factors[user],
        history_items=items,
        history_weights=weights,
        purchased_items=bought,
        purchased_weights=bought_weights,
        peer_items=peer_items,
        peer_scores=peer_scores,
        **options,
    )


class Ranker:
    """Ranks items of one :class:`Model` (safe to share across requests: it keeps only
    its last answer's mask of what may be shown, see :meth:`allowed`)."""

    def __init__(self, model: Model, overfetch: int = 4) -> None:
        self.model = model
        self.overfetch = overfetch
        self._last_allowed: tuple[Query, NDArray[np.bool_] | None] | None = None
        a = model.artifact
        self._category = a.item_category
        self._available = a.item_available
        self._n_items = model.n_items
        norms = np.linalg.norm(a.item_factors, axis=1)
        self._item_norms = np.where(norms > 0, norms, 1.0).astype(np.float32)
        self.item_norms = self._item_norms
        """``(n_items,)`` every item's factor norm (1 where it is 0): for cosines."""
        pop = a.popularity.astype(np.float32)
        top = float(pop.max()) if len(pop) and pop.max() > 0 else 1.0
        self.popularity = Popularity(
            (pop / top).astype(np.float32), model.popular_order.astype(np.int32)
        )
        """The trained popularity: the prior scaled to [0, 1] and the popular order."""

    def recommend(self, query: Query) -> Ranking:
        """Top ``query.k`` items for ``query``."""
        k = min(query.k, self._n_items)
        if k <= 0:
            return Ranking(_EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8), Strategy.POPULAR, True)
        popularity = query.popularity or self.popularity
        defaults = self.model.defaults
        policy = query.repeat_policy
        if policy is None or policy is RepeatPolicy.AUTO:
            policy = defaults.repeat_policy

        strategy = self._strategy(query)
        blend = defaults.session if strategy is Strategy.SESSION else defaults.user
        blend = blend.with_repeat_weight(query.repeat_weight)
        blend = blend.with_popularity_weight(query.popularity_weight)
        if policy is RepeatPolicy.EXCLUDE or len(query.purchased_items) == 0:
            blend = blend.without_repeat()
        if self.model.neighbors is None:
            blend = blend.without_neighbors()
        if blend.peers > 0 and len(query.peer_items) == 0:
            blend = blend.without_peers()
        hides = self._hides(query, policy)
        allowed = self._allowed(query, policy, hides)
        hidden_by_policy = any(hides)
        self._last_allowed = (query, allowed)
        neighbor_source = self._neighbor_source(query) if blend.neighbors > 0 else None
        if blend == Blend(cf=0.0, neighbors=blend.neighbors) and neighbor_source is None:
            blend = Blend()  # nothing else to go on: CF, if there is a vector
        # the fold-in costs ~150 µs at 100k items: only when CF is weighed (or fills)
        vector = self._query_vector(query) if blend.cf > 0 else None
        basis = min(k, query.headroom_k or k)
        weights = query.weights
        # weighted scores reorder the candidates: room for an item to climb into the k
        # (2·basis for boosts; a demotion of m items needs m more, each a hole it leaves)
        climb = basis if weights is None else basis + min(basis, weights.room(basis))
        if (
            vector is None
            and blend.repeat == 0.0
            and neighbor_source is None
            and blend.peers == 0.0
            and (blend.popularity == 0.0 or strategy is Strategy.POPULAR)
        ):
            return self._popular(
                k, allowed, popularity, strategy=Strategy.POPULAR, fallback=True,
                weights=weights, climb=climb,
            )  # fmt: skip

        signals = _Signals(
            vector=vector if blend.cf > 0 else None,
            repeat=self._repeat_scores(query) if blend.repeat > 0 else None,
            neighbors=self._neighbor_scores(neighbor_source, k) if neighbor_source else None,
            peers=(query.peer_items, query.peer_scores) if blend.peers > 0 else None,
        )
        cf_reason = Reason.SESSION if strategy is Strategy.SESSION else Reason.CF
        # k·overfetch for small k when filters may reject candidates, but at most
        # k + 60: normscan's cost grows with the fetch (400 candidates cost 612 µs vs
        # 85 µs for 40) and filters that reject more widen the search below anyway.
        # Without filters, 2k (at most k + 60) is the blend's headroom: every
        # candidate's CF score is computed anyway, so a CF item ranked beyond it
        # could only climb into the top k on popularity, and never did (Ta-Feng,
        # Diginetica, Online Retail II: metrics identical to k·4, docs/design.md)
        # a caller that over-fetches for its own reasons (a cap, pins) names the k the
        # headroom is for (basis): its extra items already are headroom. Weights
        # (boosts, buries) double it (climb): about 3k candidates
        headroom = basis * (self.overfetch - 1)
        if allowed is None:
            headroom = min(headroom, climb)
        elif query.filters.only_shown and not hidden_by_policy:
            # a live catalogue that hides a few items (and a request's filters folded
            # into it): the blend's headroom; an index that cannot search under the
            # mask adds what the hidden share would take out of the fetch, 1.5 times
            # over (a search that still falls short widens below)
            if self.model.artifact.index.masks:
                headroom = min(headroom, climb)
            else:
                share = max(query.filters.shown_share, 1e-3)
                rejected = math.ceil((k + climb) * (1.0 - share) / share * 1.5) + 2
                headroom = min(headroom, climb + rejected)
        fetch = min(self._n_items, k + min(headroom, 60))
        index = self.model.artifact.index
        # the filters' own mask (a live catalogue's), searched in the index's order
        searched = (
            query.filters.shown_for(index)
            if allowed is not None and allowed is query.filters.shown and index.masks
            else None
        )
        while True:
            items, scores, reasons = self._blend(
                signals, blend, fetch, k, allowed, cf_reason, popularity, weights, searched
            )
            if len(items) >= k or fetch >= self._n_items or signals.vector is None:
                break
            fetch = min(self._n_items, fetch * 4)
        if len(items) < k and signals.vector is None:
            # a blend without CF, but too few candidates (a session of items no one
            # else clicked): CF fills the rest, ranked after every blended item
            fill_vector = self._query_vector(query)
            if fill_vector is not None:
                items, scores, reasons = self._fill(
                    (items, scores, reasons),
                    k,
                    allowed,
                    lambda left: self._blend(
                        _Signals(fill_vector, None, None, None),
                        Blend(),
                        fetch,
                        k,
                        left,
                        cf_reason,
                        popularity,
                        weights,
                    ),
                )
        if len(items) < k:  # still too few: popular items that pass the filters
            items, scores, reasons = self._fill(
                (items, scores, reasons),
                k,
                allowed,
                lambda left: self._popular(k, left, popularity, weights=weights, climb=climb).parts,
            )
        return Ranking(items[:k], scores[:k], reasons[:k], strategy, False, blend.popularity)

    def allowed(self, query: Query) -> NDArray[np.bool_] | None:
        """The mask of items ``query`` may be shown (its filters, the live catalogue's
        shown items, its repeat policy), as :meth:`recommend` applies it; None when
        every item may. Read it, never write to it: it may be the filters' own
        :attr:`Filters.shown`, or, when ``query`` (this object) is the last one
        :meth:`recommend` answered, the mask that call made (not made again)."""
        last = self._last_allowed
        if last is not None and last[0] is query:
            return last[1]
        policy = query.repeat_policy
        if policy is None or policy is RepeatPolicy.AUTO:
            policy = self.model.defaults.repeat_policy
        return self._allowed(query, policy)

    def _fill(
        self,
        ranked: tuple[IntArray, FloatArray, NDArray[np.int8]],
        k: int,
        allowed: NDArray[np.bool_] | None,
        more: Callable[[NDArray[np.bool_]], tuple[IntArray, FloatArray, NDArray[np.int8]]],
    ) -> tuple[IntArray, FloatArray, NDArray[np.int8]]:
        """``ranked`` followed by ``more``'s items that are not in it yet, their scores
        squeezed below the last ranked score."""
        items, scores, reasons = ranked
        taken = _mask(self._n_items, items)
        left = ~taken if allowed is None else allowed & ~taken
        extra_items, extra_scores, extra_reasons = more(left)
        extra = slice(0, k - len(items))
        floor = float(scores[-1]) if len(scores) else 1.0
        top = float(extra_scores[0]) if len(extra_scores) and extra_scores[0] > 0 else 1.0
        squeezed = (0.5 * floor * np.maximum(extra_scores[extra], 0.0) / top).astype(np.float32)
        return (
            np.concatenate([items, extra_items[extra]]),
            np.concatenate([scores, squeezed]),
            np.concatenate([reasons, extra_reasons[extra]]),
        )

    def direction(self, items: IntArray, extra: FloatArray | None = None) -> FloatArray:
        """The mean of the unit vectors of ``items`` (positions) and of the rows of
        ``extra`` (unit directions of items the model lacks): what :meth:`similar`
        looks near."""
        unit = self.model.artifact.item_factors[items] / self._item_norms[items, None]
        if extra is not None and len(extra):
            unit = np.concatenate([unit, extra])
        direction: FloatArray = unit.mean(axis=0).astype(np.float32)
        return direction

    def similar(
        self,
        items: IntArray,
        k: int,
        filters: Filters | None = None,
        direction: FloatArray | None = None,
    ) -> Ranking:
        """Items like ``items`` (positions): cosine similarity to their mean direction
        (``direction``, when given: see :meth:`direction`).

        Candidates come from the inner-product index (over-fetched) and are
        re-ranked by cosine, so long (popular) vectors do not crowd out close
        neighbours. The query items themselves are never returned.
        """
        k = min(k, self._n_items)
        allowed = self._allowed(Query(k=k, filters=filters or Filters()), RepeatPolicy.ALLOW)
        allowed = np.ones(self._n_items, dtype=bool) if allowed is None else allowed.copy()
        allowed[items] = False
        y = self.model.artifact.item_factors
        norms = self._item_norms
        if k <= 0 or (len(items) == 0 and direction is None):
            return Ranking(_EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8), Strategy.SESSION, False)
        query = self.direction(items) if direction is None else direction
        fetch = min(self._n_items, max(k * self.overfetch * 4, 100) + len(items))
        index = self.model.artifact.index
        masked = allowed if index.masks else None  # allowed items only, when it can
        while True:
            _, ids = index.search(query[None, :], fetch, masked)
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

    @staticmethod
    def _strategy(query: Query) -> Strategy:
        if query.user_vector is not None or len(query.history_items):
            return Strategy.PERSONALIZED
        if len(query.session_items):
            return Strategy.SESSION
        return Strategy.POPULAR

    def _query_vector(self, query: Query) -> FloatArray | None:
        foldin = self.model.foldin
        if len(query.session_items):
            if len(query.history_items) == 0 and query.user_vector is not None:
                # cached vector but no raw history at hand: add the session's pull
                return query.user_vector + foldin.user_vector(
                    query.session_items, query.session_weights
                )
            items = np.concatenate([query.history_items, query.session_items])
            weights = np.concatenate([query.history_weights, query.session_weights])
            return foldin.user_vector(items, weights)
        if query.user_vector is not None:
            return query.user_vector
        if len(query.history_items):
            return foldin.user_vector(query.history_items, query.history_weights)
        return None

    def _hides(self, query: Query, policy: RepeatPolicy) -> tuple[bool, bool]:
        """Whether the repeat policy hides the live session's items, the bought ones."""
        # what the shopper just looked at is shown again only when the shop's
        # sessions revisit items (measured by the trainer) or the request asks for it
        asked = query.repeat_policy
        hide_session = len(query.session_items) > 0 and (
            asked is RepeatPolicy.EXCLUDE
            or (asked is not RepeatPolicy.ALLOW and not self.model.defaults.session_repeats)
        )
        return hide_session, policy is RepeatPolicy.EXCLUDE and len(query.purchased_items) > 0

    def _allowed(
        self, query: Query, policy: RepeatPolicy, hides: tuple[bool, bool] | None = None
    ) -> NDArray[np.bool_] | None:
        """The mask of items that may be shown; None when every item may (the common
        case, which then costs no per-request catalogue-sized array). It may be the
        filters' own :attr:`Filters.shown` (a live catalogue's, shared by requests):
        never write to it. ``hides``: :meth:`_hides` of the same query, when the caller
        has it."""
        f = query.filters
        hide_session, hide_bought = hides if hides is not None else self._hides(query, policy)
        if f.is_empty and not hide_session and not hide_bought:
            return None
        if f.only_shown and not hide_session and not hide_bought:
            return f.shown  # no copy (~30 µs at 100k items): read only
        allowed = np.ones(self._n_items, dtype=bool) if f.shown is None else f.shown.copy()
        if f.in_stock_only:
            allowed &= self._available
        if f.include_categories is not None:
            allowed &= np.isin(self._category, f.include_categories)
        if len(f.exclude_categories):
            allowed &= ~np.isin(self._category, f.exclude_categories)
        if len(f.exclude_items):
            allowed[f.exclude_items] = False
        if hide_bought:
            allowed[query.purchased_items] = False
        if hide_session:
            allowed[query.session_items] = False
        return allowed

    def _repeat_scores(self, query: Query) -> tuple[IntArray, FloatArray]:
        """The user's bought items and their decayed weights, summed per item and
        scaled by the heaviest."""
        items, weights = query.purchased_items, query.purchased_weights
        if len(items) > 1 and np.any(np.diff(items) <= 0):  # live + trained: duplicates
            items, inverse = np.unique(items, return_inverse=True)
            weights = np.bincount(inverse, weights=weights).astype(np.float32)
        top = float(weights.max()) if len(weights) else 0.0
        if top <= 0:
            return _EMPTY_INT, _EMPTY_FLOAT
        return items.astype(np.int32), (weights / top).astype(np.float32)

    def _neighbor_source(self, query: Query) -> tuple[IntArray, FloatArray] | None:
        """What the item neighbours are looked up from: the live session when there is
        one, else the user's purchases (both oldest first / by weight)."""
        if len(query.session_items):
            return query.session_items[-_NEIGHBOR_SOURCE:], query.session_weights[
                -_NEIGHBOR_SOURCE:
            ]
        if len(query.purchased_items):
            # the neighbour model reads its input oldest first; decayed weights grow
            # with recency, so ascending weight approximates purchase order
            order = np.argsort(query.purchased_weights, kind="stable")[-_NEIGHBOR_SOURCE:]
            return query.purchased_items[order], query.purchased_weights[order]
        return None

    def _neighbor_scores(
        self, source: tuple[IntArray, FloatArray], k: int
    ) -> tuple[IntArray, FloatArray]:
        neighbors = self.model.neighbors
        assert neighbors is not None  # the blend drops the signal without them
        items, scores = neighbors.score(source[0], source[1], limit=max(100, 2 * k))
        if len(scores) == 0 or scores[0] <= 0:
            return _EMPTY_INT, _EMPTY_FLOAT
        return items.astype(np.int32), (scores / scores[0]).astype(np.float32)

    def _blend(
        self,
        signals: _Signals,
        blend: Blend,
        fetch: int,
        k: int,
        allowed: NDArray[np.bool_] | None,
        cf_reason: Reason,
        popularity: Popularity,
        weights: ScoreWeights | None = None,
        searched: Mask | None = None,
    ) -> tuple[IntArray, FloatArray, NDArray[np.int8]]:
        """Candidates from every source, each signal scaled to [0, 1], summed with the
        blend's weights (then multiplied by ``weights``), best first. ``searched``:
        ``allowed`` as the index searches it (:meth:`Filters.shown_for`), if made."""
        vector = signals.vector
        parts: list[IntArray] = []
        if vector is not None:
            index = self.model.artifact.index
            # an index that searches under the mask returns allowed items only: the
            # fetch is all candidates, none spent on what the filters reject
            masked = (searched if searched is not None else allowed) if index.masks else None
            _, cf_ids = index.search(vector[None, :], fetch, masked)
            ids = cf_ids[0]
            parts.append(ids[ids >= 0].astype(np.int32))
        if signals.repeat is not None:
            parts.append(signals.repeat[0])
        if signals.neighbors is not None:
            parts.append(signals.neighbors[0])
        if signals.peers is not None:
            parts.append(signals.peers[0])
        if blend.popularity > 0:
            parts.append(popularity.order[: max(100, 2 * k)])
        if not parts:
            return _EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8)
        cand = parts[0] if len(parts) == 1 else _union(parts)
        if allowed is not None:
            cand = cand[allowed[cand]]
        n = len(cand)
        if n == 0:
            return _EMPTY_INT, _EMPTY_FLOAT, np.zeros(0, np.int8)

        # Every array op here has a fixed cost of about a microsecond, more than the
        # arithmetic on the ~100-200 candidates of a request: as few as give the same
        # numbers (score starts at 0.0 + the first part, as it always did).
        reasons = np.empty(n, np.int8)
        reasons.fill(int(cf_reason))
        score: FloatArray | None = None
        best_part: FloatArray | None = None
        if vector is not None:
            cf = self.model.artifact.item_factors[cand] @ vector
            np.maximum(cf, 0.0, out=cf)
            top = float(cf.max())
            part = (blend.cf * cf / (top if top > 0 else 1.0)).astype(np.float32, copy=False)
            score = part + np.float32(0.0)
            best_part = part
        for signal, weight, reason, ascending in (
            (signals.neighbors, blend.neighbors, cf_reason, False),
            (signals.peers, blend.peers, Reason.CF, True),
            (signals.repeat, blend.repeat, Reason.BUY_AGAIN, False),
        ):
            if signal is None or weight == 0:
                continue
            part = weight * (_lookup_sorted(cand, *signal) if ascending else _lookup(cand, *signal))
            if score is None or best_part is None:
                score = part + np.float32(0.0)
                wins = part > 0.0
                best_part = np.maximum(part, np.float32(0.0))
            else:
                score += part
                wins = part > best_part
                best_part = np.maximum(best_part, part)
            reasons[wins] = reason
        if blend.popularity > 0:
            part = blend.popularity * popularity.prior[cand]
            if score is None or best_part is None:
                score = part + np.float32(0.0)
                reasons[part > 0.0] = Reason.POPULAR
            else:
                score += part
                reasons[part > best_part] = Reason.POPULAR
        if score is None:
            score = np.zeros(n, np.float32)
        if weights is not None:
            weights.weigh(cand, score)
        # stable on ascending positions: equal scores keep catalogue order, so answers
        # are reproducible
        order = np.argsort(-score, kind="stable")
        return cand[order], score[order], reasons[order]

    def _popular(
        self,
        k: int,
        allowed: NDArray[np.bool_] | None,
        popularity: Popularity,
        *,
        strategy: Strategy = Strategy.POPULAR,
        fallback: bool = False,
        weights: ScoreWeights | None = None,
        climb: int = 0,
    ) -> Ranking:
        """The ``k`` most popular items ``allowed``; with ``weights``, the best ``k`` of
        the first ``k + climb`` by weighted popularity."""
        order = popularity.order
        head = order if allowed is None else order[allowed[order]]
        if weights is None:
            picked = head[:k]
            scores = popularity.prior[picked]
        else:
            head = head[: k + climb]
            scores = popularity.prior[head]
            weights.weigh(head, scores)
            best = np.argsort(-scores, kind="stable")[:k]
            picked, scores = head[best], scores[best]
        return Ranking(
            picked,
            scores,
            np.full(len(picked), Reason.POPULAR, dtype=np.int8),
            strategy,
            fallback,
            1.0,
        )


@dataclass(frozen=True)
class _Signals:
    vector: FloatArray | None
    repeat: tuple[IntArray, FloatArray] | None
    """Sorted items and their scaled scores."""
    neighbors: tuple[IntArray, FloatArray] | None
    """Items (any order) and their scaled scores."""
    peers: tuple[IntArray, FloatArray] | None
    """The customers-like-you items (ascending) and their scaled scores."""


def _union(parts: list[IntArray]) -> IntArray:
    """The distinct items of ``parts``, ascending (``np.unique`` of their concatenation,
    without its fixed cost of ~10 µs: it dominates at a few hundred items)."""
    c = np.concatenate(parts)
    c.sort()
    if len(c) > 1:
        keep = np.empty(len(c), dtype=bool)
        keep[0] = True
        np.not_equal(c[1:], c[:-1], out=keep[1:])
        c = c[keep]
    return c


def _lookup(cand: IntArray, items: IntArray, values: FloatArray) -> FloatArray:
    """``values`` of ``cand`` where the candidate is in ``items``, else 0."""
    if len(items) == 0:
        return np.zeros(len(cand), np.float32)
    order = np.argsort(items, kind="stable")
    sorted_items = items[order]
    at = np.searchsorted(sorted_items, cand)
    np.minimum(at, len(items) - 1, out=at)
    hit = sorted_items[at] == cand
    return np.where(hit, values[order[at]], 0.0).astype(np.float32, copy=False)


def _lookup_sorted(cand: IntArray, items: IntArray, values: FloatArray) -> FloatArray:
    """:func:`_lookup` for ``items`` already ascending."""
    if len(items) == 0:
        return np.zeros(len(cand), np.float32)
    at = np.searchsorted(items, cand)
    np.minimum(at, len(items) - 1, out=at)
    hit = items[at] == cand
    return np.where(hit, values[at], 0.0).astype(np.float32, copy=False)


def _mask(n: int, items: IntArray) -> NDArray[np.bool_]:
    m = np.zeros(n, dtype=bool)
    m[items] = True
    return m
