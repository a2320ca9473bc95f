"""Batch recommendations for campaigns (``recsvc batch``): the top k of many customers,
written to a Parquet or CSV file through the ranking the server runs.

A newsletter built from stale data is the campaign a shop regrets: so each customer's
list comes from :meth:`recsvc.serving.engine.Engine.recommend` on an engine wired
exactly as ``recsvc serve`` wires it (:func:`recsvc.serving.server.create_server`, on
a free loopback port, no /metrics): the live catalogue (no unavailable or withdrawn
item), the merchandising rules of the placement, live history from Redis (which
expires by its TTLs) and the current model. Customers are skipped, and counted by
reason, when they are erased (``erased``), when their stored consent is off
(``opted_out``) or session-only (``session_only``: a campaign is not the visit they
allowed), or when the ranking has nothing personal for them (``no_signal``: a
popular-items list is not a personal recommendation). With ``[privacy]
pseudonymous_ids`` the ids are hashed as the server hashes them; the file names them
as given.

Memory stays bounded: ids are read and answered ``chunk`` at a time and each chunk's
rows are appended to the file before the next is read.
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.config import Settings
from recsvc.consent import Consent
from recsvc.errors import ConfigError
from recsvc.pseudonyms import pseudonyms_from
from recsvc.ranking import Strategy
from recsvc.v1 import recommender_pb2 as pb

from . import validation
from .server import create_server

__all__ = ["BatchReport", "run_batch"]

_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("rank", pa.int32()),
        ("item_id", pa.string()),
        ("score", pa.float32()),
        ("reason", pa.string()),
        ("model_version", pa.string()),
    ]
)


@dataclass
class BatchReport:
    """What :func:`run_batch` wrote and skipped."""

    customers: int = 0
    """Customers asked for."""
    written: int = 0
    """Customers with a list in the file."""
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Customers left out, by reason (erased, opted_out, session_only, no_signal)."""
    model_version: str = ""


async def run_batch(
    settings: Settings,
    out: Path,
    users: Iterable[str] | None = None,
    *,
    k: int = 10,
    placement: str = "email",
    chunk: int = 1000,
) -> BatchReport:
    """Write the top ``k`` of each of ``users`` (None: every customer of the current
    model) to ``out`` (``.parquet`` or ``.csv``); see the module docstring."""
    if out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"the output must be a .parquet or .csv file, got {out}")
    quiet = settings.model_copy(
        update={"server": settings.server.model_copy(update={"port": 0, "metrics_port": None,
                                                             "compact_interval_seconds": 0})}
    )  # fmt: skip
    running = await create_server(quiet)
    try:
        engine = running.engine
        loaded = engine.models.require()
        report = BatchReport(model_version=loaded.version)
        if users is None:
            users = (str(u) for u in loaded.model.artifact.user_ids)
        pseudonyms = pseudonyms_from(settings)
        skipped: Counter[str] = Counter()
        with _Writer(out) as writer:
            for ids in _chunks(users, chunk):
                stored = [i if pseudonyms is None else pseudonyms(i) for i in ids]
                customers = await engine.state.customers(stored)
                rows: list[tuple[Any, ...]] = []
                for given, user in zip(ids, stored, strict=True):
                    report.customers += 1
                    customer, consent = customers.get(user, (user, Consent.FULL))
                    if user in engine.erasures or customer in engine.erasures:
                        skipped["erased"] += 1
                        continue
                    if consent is not Consent.FULL:
                        skipped["opted_out" if consent is Consent.OFF else "session_only"] += 1
                        continue
                    request = pb.RecommendRequest(user_id=given, k=k, placement=placement)
                    req = replace(validation.recommend_input(request, settings.server),
                                  user_id=user)  # fmt: skip
                    answer = await engine.recommend(req)
                    if answer.strategy is Strategy.POPULAR or not answer.items:
                        skipped["no_signal"] += 1
                        continue
                    report.written += 1
                    rows += [
                        (
                            given,
                            rank,
                            i.item_id,
                            i.score,
                            i.reason.name.lower(),
                            answer.model_version,
                        )
                        for rank, i in enumerate(answer.items, 1)
                    ]
                writer.write(rows)
                report.rows += len(rows)
        report.skipped = dict(skipped)
        return report
    finally:
        await running.stop(0)


def _chunks(users: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(users)
    while batch := list(itertools.islice(it, size)):
        yield batch


class _Writer:
    """Rows appended to a Parquet file (one row group per chunk) or a CSV file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self._parquet: pq.ParquetWriter | None = None
        self._csv: Any = None

    def __enter__(self) -> _Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".parquet":
            self._parquet = pq.ParquetWriter(self.tmp, _SCHEMA)
        else:
            self._file = self.tmp.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file, lineterminator="\n")
            self._csv.writerow(_SCHEMA.names)
        return self

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self._parquet is not None:
            columns = list(zip(*rows, strict=True))
            table = pa.table(
                [pa.array(c, f.type) for c, f in zip(columns, _SCHEMA, strict=True)],
                schema=_SCHEMA,
            )
            self._parquet.write_table(table)
        else:
            self._csv.writerows(rows)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._parquet is not None:
            self._parquet.close()
        else:
            self._file.close()
        if exc_type is None:
            self.tmp.chmod(0o600)  # customer ids: owner-only
            self.tmp.replace(self.path)  # a reader never sees half a file
        else:
            self.tmp.unlink(missing_ok=True)
