"""Rotation: items a shopper was shown again and again without engaging sink; and
items like the ones a shopper turned down (:class:`Dissimilar`).

Impressions (IMPRESSION events carrying a user or session id) are counted per shopper
and item in the live state (:meth:`recsvc.store.LiveState.count_shown`); a click, add
to cart or purchase of an item starts its count again. A placement with
``rotate_after = N`` reads, with the shopper's state, the items shown N times or more
and hands the ranking a :class:`Demotion` of them (a
:class:`~recsvc.ranking.ScoreWeights`): their scores times ``rotation_weight``, so
the candidates below climb into the answer (about 3k candidates are ranked when weights
apply) and the list changes from one visit to the next instead of showing the same
items forever.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from recsvc.ranking import ScoreWeights

__all__ = ["Demotion", "Dissimilar", "Weighed"]


class Demotion:
    """Scores of ``items`` (model positions) times ``weight``. It only lowers the scores
    of known items, so the ranking needs one more candidate per item, not room for
    anything to climb (:meth:`room`)."""

    __slots__ = ("items", "weight")

    def __init__(self, items: NDArray[np.int32], weight: float) -> None:
        self.items = np.asarray(items, np.int32)
        self.weight = np.float32(weight)

    def weigh(self, items: NDArray[np.int32], scores: NDArray[np.float32]) -> None:
        scores[_member(items, self.items)] *= self.weight

    def room(self, basis: int) -> int:
        return min(basis, len(self.items))


class Dissimilar:
    """Negative feedback: scores of items whose factors' cosine with one of
    ``dismissed`` (model positions) is at least ``cosine`` times ``weight`` (the
    dismissed items themselves are filtered out before; this sinks what is like them)."""

    __slots__ = ("cosine", "factors", "unit", "weight")

    def __init__(
        self,
        factors: NDArray[np.float32],
        dismissed: NDArray[np.int32],
        cosine: float,
        weight: float,
    ) -> None:
        self.factors = factors
        self.unit = _unit(factors[dismissed])
        self.cosine = np.float32(cosine)
        self.weight = np.float32(weight)

    def weigh(self, items: NDArray[np.int32], scores: NDArray[np.float32]) -> None:
        if not len(items) or not len(self.unit):
            return
        similar = (_unit(self.factors[items]) @ self.unit.T).max(axis=1) >= self.cosine
        scores[similar] *= self.weight

    def room(self, basis: int) -> int:
        return basis  # it lowers items it cannot name in advance: room as for boosts


def _unit(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: NDArray[np.float32] = rows / np.maximum(norms, np.float32(1e-12))
    return unit


class Weighed:
    """Several :class:`~recsvc.ranking.ScoreWeights` in turn (rules, then rotation)."""

    __slots__ = ("parts",)

    def __init__(self, *parts: ScoreWeights) -> None:
        self.parts = parts

    def weigh(self, items: NDArray[np.int32], scores: NDArray[np.float32]) -> None:
        for part in self.parts:
            part.weigh(items, scores)

    def room(self, basis: int) -> int:
        return min(basis, sum(part.room(basis) for part in self.parts))


_SMALL: Final = 64
"""Up to this many items, membership is one broadcast comparison (a few µs for the
ranking's ~30 candidates) rather than np.isin's sort (~70 µs at these sizes)."""


def _member(items: NDArray[np.int32], of: NDArray[np.int32]) -> NDArray[np.bool_]:
    """Whether each of ``items`` is one of ``of``."""
    if len(of) <= _SMALL:
        hit: NDArray[np.bool_] = (items[:, None] == of[None, :]).any(axis=1)
        return hit
    return np.isin(items, of)
