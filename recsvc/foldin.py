"""ALS fold-in: a user vector from a handful of interactions, without refitting.

This is the exact least-squares step ALS takes for one user with the item factors
held fixed (what implicit's ``recalculate_user`` computes with its Cholesky solver)::

    x_u = (YᵀY + Yᵀ(C_u − I)Y + λI)⁻¹ · Yᵀ C_u p_u

``YᵀY + λI`` is computed once per model, so a call costs O(n_u·f² + f³) — tens of
microseconds for a session of a few items at f = 64.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg.lapack import dposv

from recsvc.weighting import confidence

__all__ = ["FoldIn"]


class FoldIn:
    """Solve for a user vector given item factors ``(n_items, factors)`` float32."""

    def __init__(
        self, item_factors: NDArray[np.float32], regularization: float, alpha: float
    ) -> None:
        self.item_factors = item_factors
        self.alpha = alpha
        y = item_factors.astype(np.float64)
        self._gram = y.T @ y + regularization * np.eye(y.shape[1])

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])

    def user_vector(
        self, items: NDArray[np.integer], weights: NDArray[np.floating]
    ) -> NDArray[np.float32]:
        """The vector of a user who interacted with ``items`` ``(n,)`` with ``weights`` ``(n,)``.

        Repeated items are summed first, as the training matrix sums them. Items
        with a weight of 0 carry no preference and are ignored. Returns a zero
        vector for no (positive) interactions.
        """
        items = np.asarray(items, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32)
        if len(items) == 0:
            return np.zeros(self.factors, dtype=np.float32)
        uniq, inverse = np.unique(items, return_inverse=True)
        total = np.bincount(inverse, weights=weights).astype(np.float32)
        keep = total > 0
        if not keep.any():
            return np.zeros(self.factors, dtype=np.float32)
        uniq, total = uniq[keep], total[keep]
        c = confidence(total, self.alpha).astype(np.float64)
        y = self.item_factors[uniq].astype(np.float64)
        a = self._gram + (y.T * (c - 1.0)) @ y
        b = y.T @ c
        # LAPACK's Cholesky solve directly: 16 µs at f=64, against 110 µs for
        # scipy.linalg.solve(assume_a="pos"), whose checks and dispatch dominate
        _, x, info = dposv(a, b)
        if info != 0:  # not positive definite (cannot happen with regularization > 0)
            x = np.linalg.lstsq(a, b, rcond=None)[0]
        return np.asarray(x, dtype=np.float32)
