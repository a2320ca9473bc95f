"""Live popularity: what sells now reaches the popular lists within a second.

Every replica counts the events it accepts into the shared, time-decayed counters of
:class:`recsvc.store.trending.Trending`, and reads their head once a second
(:meth:`LivePopularity.follow`). For the served model the head becomes a
:class:`recsvc.ranking.Popularity` — the ranking's prior and the popular fallback's
order — blended with the trained popularity::

    prior = (trained + weight · live) / (1 + weight)        both scaled to [0, 1]

so a burst of purchases through any replica moves every replica's popular lists (and,
through filters, its category-popular ones) at the next read, and with no live events
the trained popularity rules alone. Reading never touches a request: a request takes
the last computed :class:`~recsvc.ranking.Popularity` (recomputed only when the head
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


class LivePopularity:
    """This replica's view of live popularity (see the module docstring)."""

    def __init__(self, trending: Trending, weight: float) -> None:
        self.trending = trending
        self.weight = weight
        self.head: tuple[tuple[str, float], ...] = ()
        self._cache: tuple[str, tuple[tuple[str, float], ...], Popularity | None] | None = None

    async def count(self, weights: dict[str, float]) -> None:
        """Add events' weights (by item); StoreError when the store fails."""
        await self.trending.add(weights)

    async def refresh(self) -> None:
        self.head = tuple(await self.trending.top(_HEAD))

    def of(self, model: Model, ranker: Ranker) -> Popularity | None:
        """The popularity to rank ``model``'s items by now; None while no live event
        touches its items (the trained one then rules alone)."""
        cached = self._cache
        if cached is not None and cached[0] == model.version and cached[1] is self.head:
            return cached[2]
        popularity = _blend(model, ranker.popularity, self.head, self.weight)
        self._cache = (model.version, self.head, popularity)
        return popularity

    async def follow(self, stop: asyncio.Event, every: float = 1.0) -> None:
        """Read the head every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("reading live popularity failed, keeping the last: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


def _blend(
    model: Model, trained: Popularity, head: Sequence[tuple[str, float]], weight: float
) -> Popularity | None:
    positions = model.item_position
    live_items = [(positions[i], s) for i, s in head if i in positions and s > 0]
    if not live_items or weight <= 0:
        return None
    at = np.array([p for p, _ in live_items], dtype=np.int32)
    live = np.array([s for _, s in live_items], dtype=np.float64)
    prior = trained.prior.astype(np.float64)
    prior[at] += weight * live / live.max()
    prior /= 1.0 + weight
    # re-sort the part of the order live counts can move: the trained head and the live
    # items; the tail keeps its trained order below them
    head_items = np.unique(np.concatenate([trained.order[:_TRAINED_HEAD], at]))
    head_items = head_items[np.argsort(-prior[head_items], kind="stable")].astype(np.int32)
    tail = trained.order[~np.isin(trained.order, head_items)]
    return Popularity(prior.astype(np.float32), np.concatenate([head_items, tail]))
