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

import numpy as np
from numpy.typing import NDArray

from recsvc.ranking import ScoreWeights

__all__ = ["Demotion", "Dissimilar", "Weighed"]


class Demotion:
    """Scores of ``items`` (model positions) times ``weight``."""

    __slots__ = ("items", "weight")

    def __init__(self, items: NDArray[np.int32], weight: float) -> None:
        self.items = np.unique(items)
        self.weight = np.float32(weight)

    def weigh(self, items: NDArray[np.int32], scores: NDArray[np.float32]) -> None:
        hit = np.isin(items, self.items, assume_unique=False)
        scores[hit] *= self.weight


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
