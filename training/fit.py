"""Fit implicit's ALS on the weight matrix."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from recsvc.config import ALSSettings
from recsvc.errors import DataError
from recsvc.weighting import confidence

__all__ = ["Factors", "fit_als"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Factors:
    """Fitted factors."""

    user_factors: NDArray[np.float32]
    """``(n_users, factors)``"""
    item_factors: NDArray[np.float32]
    """``(n_items, factors)``"""
    seconds: float


def fit_als(
    weights: sp.csr_matrix,
    settings: ALSSettings,
    *,
    progress: bool = False,
    spark_frame: Any = None,
) -> Factors:
    """Fit ALS on ``weights`` ``(n_users, n_items)`` (summed decayed event weights), with
    ``settings.engine``: implicit here, or Spark MLlib (:func:`training.spark.fit_als_spark`;
    ``spark_frame``: the matrix where Spark already holds it).

    The matrix handed to implicit holds the confidences ``1 + alpha · w`` and
    implicit's own ``alpha`` is left at 1: implicit scales the stored values by its
    alpha (``C = alpha · value``), which would drop the Hu-Koren-Volinsky ``1 +``.
    """
    n_users, n_items = weights.shape
    if weights.nnz == 0 or n_users < 2 or n_items < 2:
        raise DataError(
            f"too little data to fit: {n_users} users, {n_items} items, "
            f"{weights.nnz} interactions (need at least 2 users and 2 items)"
        )
    if settings.engine == "spark":
        from .spark import fit_als_spark  # noqa: PLC0415 (the spark extra, optional)

        return fit_als_spark(weights, settings, spark_frame)
    cui = weights.astype(np.float32, copy=True)
    cui.data = confidence(cui.data, settings.alpha)
    # implicit parallelises over users itself; BLAS threads on top of that only
    # oversubscribe the cores (implicit warns about it and runs slower).
    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            alpha=1.0,
            iterations=settings.iterations,
            random_state=settings.random_state,
            num_threads=settings.num_threads,
            use_cg=settings.use_cg,
            dtype=np.float32,
        )
        start = time.perf_counter()
        model.fit(cui, show_progress=progress)
        seconds = time.perf_counter() - start
    log.info(
        "ALS fit: %d users x %d items, %d interactions, %d factors, %d iterations in %.1fs",
        n_users, n_items, cui.nnz, settings.factors, settings.iterations, seconds,
    )  # fmt: skip
    return Factors(
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        item_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
        seconds=seconds,
    )
