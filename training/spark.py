"""The ALS fit on Spark: ``[als] engine = "spark"`` (``recsvc train --engine spark``).

Spark MLlib's ``pyspark.ml.recommendation.ALS`` with ``implicitPrefs`` fits the model
implicit fits (Hu, Koren & Volinsky 2008): preference 1 where a user has a weight,
confidence ``1 + alpha · w``. The weights are the trainer's own (event-type weights,
log quantity, half-life decay: :func:`recsvc.weighting`), so both engines see the same
matrix; the factors come back to the driver in the trainer's user and item order and
the rest of the build (index, recall check, session model, blend) is unchanged: the
artifact is the same format, its manifest records ``als.engine``.

Settings, by our names (implicit's) → Spark's:

=================  ==================================================================
``factors``        ``rank``
``iterations``     ``maxIter``
``alpha``          ``alpha`` (Spark's confidence is ``1 + alpha · |r|``: the same)
``regularization`` ``regParam = regularization / n̄``: Spark scales the ridge by each
                   row's count (ALS-WR: ``regParam · n_u`` for a user with ``n_u``
                   interactions), implicit does not; dividing by the mean count
                   ``n̄`` gives a user with the mean count implicit's ``λ``
``random_state``   ``seed``
``spark_master``   the session's master (``local[*]``, ``spark://host:7077``, ...)
=================  ==================================================================

What runs where: the trainer loads the events on the driver and hands them to Spark,
which weighs and aggregates them (:mod:`training.spark_data`: the matrix, buy-again,
popularity, the visits); the matrix stays in Spark for the fit, which runs on the
executors, and the factors (``(n_users + n_items) × factors`` floats) come back to the
driver. What still runs on the driver, and its size limit: docs/design.md, "Training
beyond one machine". The factors are checkpointed every :data:`_CHECKPOINT_EVERY`
sweeps into a temporary directory (on a cluster, point ``spark.checkpoint.dir`` at
shared storage).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.config import ALSSettings
from recsvc.errors import ConfigError

from .fit import Factors

__all__ = ["fit_als_spark", "spark_session"]

log = logging.getLogger(__name__)

_SESSIONS: dict[tuple[str, str], Any] = {}
_CHECKPOINT_EVERY = 5
"""Sweeps between checkpoints of the factors (truncating the lineage)."""


def spark_session(master: str, driver_memory: str) -> Any:
    """The process's Spark session on ``master`` (started once, stopped at exit, or
    when a session on another master or driver memory is asked for: a process runs one
    SparkContext, and Spark would hand back the running one, on its own master).
    ConfigError without pyspark or a Java runtime."""
    key = (master, driver_memory)
    if key in _SESSIONS:
        return _SESSIONS[key]
    for other in list(_SESSIONS):
        _SESSIONS.pop(other).stop()
    try:
        from pyspark.sql import SparkSession  # noqa: PLC0415 (the spark extra)
    except ImportError as exc:
        raise ConfigError(
            "[als] engine = spark needs the spark extra (pip install 'recsvc[spark]') "
            f"and a Java 17+ runtime: {exc}"
        ) from exc
    started = time.perf_counter()
    builder = (
        SparkSession.builder.master(master)
        .appName("recsvc-train")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    if master.startswith("local"):
        # one machine's cores, not Spark's 200 shuffle partitions a stage (each a task
        # of a few ms at a trainer's sizes); a cluster keeps its own setting
        builder = builder.config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1)))
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j's and the JVM's errors: no common base to name
        raise ConfigError(f"cannot start Spark on {master!r}: {exc}") from exc
    session.sparkContext.setLogLevel("ERROR")
    # ALS's lineage grows with every sweep; without checkpoints its serialisation
    # overflows the JVM's stack after a few hundred stages (StackOverflowError). A
    # cluster's executors must all reach the directory: spark.checkpoint.dir, when
    # set (spark-defaults.conf, --conf), names shared storage and is kept
    if session.sparkContext.getCheckpointDir() is None:
        checkpoints = tempfile.mkdtemp(prefix="recsvc-spark-checkpoints-")
        session.sparkContext.setCheckpointDir(checkpoints)
        atexit.register(shutil.rmtree, checkpoints, ignore_errors=True)
    log.info("Spark session on %s in %.1fs", master, time.perf_counter() - started)
    _SESSIONS[key] = session
    atexit.register(session.stop)
    return session


def fit_als_spark(weights: sp.csr_matrix, settings: ALSSettings, frame: Any = None) -> Factors:
    """Fit ALS on ``weights`` ``(n_users, n_items)`` with Spark (see the module
    docstring for the settings' mapping). ``frame``: the same matrix already in Spark
    (``user``, ``item``, ``w``; :mod:`training.spark_data` leaves it there), so it is
    not sent from the driver again. A user or item Spark returns no factors for (none:
    every row and column of the matrix has a weight) would get zeros."""
    from pyspark.ml.recommendation import ALS  # noqa: PLC0415 (the spark extra)

    session = spark_session(settings.spark_master, settings.spark_driver_memory)
    n_users, n_items = weights.shape
    mean_count = weights.nnz / max(1, int((np.diff(weights.indptr) > 0).sum()))
    started = time.perf_counter()
    if frame is None:
        coo = weights.tocoo()
        table = pa.table(
            {
                "user": coo.row.astype(np.int32),
                "item": coo.col.astype(np.int32),
                "w": coo.data.astype(np.float32),
            }
        )
        frame = session.createDataFrame(table)
    als = ALS(
        rank=settings.factors,
        maxIter=settings.iterations,
        regParam=settings.regularization / mean_count,
        alpha=settings.alpha,
        implicitPrefs=True,
        nonnegative=False,
        seed=settings.random_state,
        userCol="user",
        itemCol="item",
        ratingCol="w",
        checkpointInterval=_CHECKPOINT_EVERY,
    )
    model = als.fit(frame)
    user_factors = _collect(model.userFactors, n_users, settings.factors)
    item_factors = _collect(model.itemFactors, n_items, settings.factors)
    seconds = time.perf_counter() - started
    log.info(
        "Spark ALS fit on %s: %d users x %d items, %d interactions, %d factors, "
        "%d iterations in %.1fs",
        settings.spark_master, n_users, n_items, weights.nnz, settings.factors,
        settings.iterations, seconds,
    )  # fmt: skip
    return Factors(user_factors=user_factors, item_factors=item_factors, seconds=seconds)


def _collect(frame: Any, n: int, factors: int) -> NDArray[np.float32]:
    """A factors DataFrame (``id``, ``features``) as a ``(n, factors)`` array by id."""
    table = frame.toArrow()
    ids = table.column("id").to_numpy()
    features = table.column("features").combine_chunks()
    values = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    out = np.zeros((n, factors), dtype=np.float32)
    out[ids] = values.reshape(len(ids), factors)
    return out
