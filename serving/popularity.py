"""Live popularity: what sells now reaches the popular lists within a second.

Every replica counts the events it accepts into the shared, time-decayed counters of
:class:`recsvc.store.trending.Trending`, and reads their head once a second
(:meth:`LivePopularity.follow`). For the served model the head becomes a
:class:`recsvc.ranking.Popularity` — the ranking's prior and the popular fallback's
order — blended with the trained popularity::

    prior = (trained + weight · live) / (1 + weight)        both scaled to [0, 1]

so a burst of purchases through any replica moves every replica's popular lists (and,
through filters, its category-popular ones) at the next read, and with no live events
the trained popularity rules alone. New products (:mod:`.newitems`) have no trained
part: it is taken to be what they sell now, so their prior is ``live / top``.

Reading never touches a request: a request takes the last computed
:class:`~recsvc.ranking.Popularity` (recomputed only when the head or the new products
changed). If the store fails, the last head stays in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Sequence
from typing import Final

import numpy as np

from recsvc.config import WeightingSettings
from recsvc.errors import StoreError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Popularity, Ranker
from recsvc.store.trending import Trending

__all__ = ["LivePopularity", "event_weight"]

log = logging.getLogger(__name__)

_HEAD: Final = 1_000
"""Items read from the live counters each second (the head that can move a list)."""
_TRAINED_HEAD: Final = 2_000
"""The trained order's head re-sorted with the live counts."""


def event_weight(
    event_type: EventType,
    quantity: float,
    timestamp: int,
    now: float,
    weighting: WeightingSettings,
    half_life: float,
) -> float:
    """An event's weight in the live counters: its type's weight, ``1 + ln(quantity)``
    (as training weighs it), aged from its time to ``now``."""
    weight = weighting.event_weights.get(event_type, 0.0)
    if weight <= 0:
        return 0.0
    if weighting.log_quantity:
        weight *= 1.0 + math.log(max(quantity, 1.0))
    else:
        weight *= quantity
    return float(weight * 2.0 ** (-max(0.0, now - timestamp) / half_life))


_MODELS_KEPT = 4
"""Models whose live popularity is kept computed (the served one, a few variants)."""


class LivePopularity:
    """This replica's view of live popularity (see the module docstring)."""

    def __init__(self, trending: Trending, weight: float) -> None:
        self.trending = trending
        self.weight = weight
        self.head: tuple[tuple[str, float], ...] = ()
        self.new_ids: frozenset[str] = frozenset()
        """The live catalogue's new products (set by :class:`.newitems.NewItems`): they
        share the live scale with the model's items."""
        self._cache: dict[str, tuple[object, object, Popularity | None]] = {}
        """By model version (the served one and an experiment's variants): the head
        and new products it was computed from, and the popularity."""

    def retain(self, versions: set[str]) -> None:
        """Drop what was computed for models not in ``versions``."""
        self._cache = {v: c for v, c in self._cache.items() if v in versions}

    async def count(self, weights: dict[str, float]) -> None:
        """Add events' weights (by item); StoreError when the store fails."""
        await self.trending.add(weights)

    async def refresh(self) -> None:
        self.head = tuple(await self.trending.top(_HEAD))

    def of(self, model: Model, ranker: Ranker) -> Popularity | None:
        """The popularity to rank ``model``'s items by now; None while no live event
        touches its items (the trained one then rules alone)."""
        head, new = self.head, self.new_ids
        cached = self._cache.get(model.version)
        if cached is not None and cached[0] is head and cached[1] is new:
            return cached[2]
        popularity = _blend(model, ranker.popularity, head, self.weight, _top(model, head, new))
        if model.version not in self._cache and len(self._cache) >= _MODELS_KEPT:
            self._cache.pop(next(iter(self._cache)))
        self._cache[model.version] = (head, new, popularity)
        return popularity

    def new_prior(self, item_ids: Sequence[str], model: Model) -> list[float]:
        """The prior of new products ``item_ids`` (not in ``model``): ``live / top``,
        the blend with its missing trained part taken to be what it sells now (a
        product launched last week has no history to weigh against); 0 for an item
        without sales."""
        head = dict(self.head)
        top = _top(model, self.head, self.new_ids)
        if top <= 0 or self.weight <= 0:
            return [0.0] * len(item_ids)
        return [max(head.get(i, 0.0), 0.0) / top for i in item_ids]

    async def follow(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Read the head every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("reading live popularity failed, keeping the last: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


def _top(model: Model, head: Sequence[tuple[str, float]], new: frozenset[str]) -> float:
    """The largest live score of an item the shop sells (the model's or a new one's):
    the live scale's 1 (an id nobody sells, however often sent, does not set it)."""
    known = model.item_position
    return max((s for i, s in head if i in known or i in new), default=0.0)


def _blend(
    model: Model,
    trained: Popularity,
    head: Sequence[tuple[str, float]],
    weight: float,
    top: float,
) -> Popularity | None:
    positions = model.item_position
    live_items = [(positions[i], s) for i, s in head if i in positions and s > 0]
    if weight <= 0 or top <= 0:
        return None
    prior = trained.prior.astype(np.float64)
    prior /= 1.0 + weight
    if not live_items:  # only new products sell: the trained order, on the live scale
        return Popularity(prior.astype(np.float32), trained.order)
    at = np.array([p for p, _ in live_items], dtype=np.int32)
    live = np.array([s for _, s in live_items], dtype=np.float64)
    prior[at] += weight * live / top / (1.0 + weight)
    # re-sort the part of the order live counts can move: the trained head and the live
    # items; the tail keeps its trained order below them
    head_items = np.unique(np.concatenate([trained.order[:_TRAINED_HEAD], at]))
    head_items = head_items[np.argsort(-prior[head_items], kind="stable")].astype(np.int32)
    tail = trained.order[~np.isin(trained.order, head_items)]
    return Popularity(prior.astype(np.float32), np.concatenate([head_items, tail]))
