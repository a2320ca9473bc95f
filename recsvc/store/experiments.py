"""The A/B experiments in Redis: a shared record collection
(:mod:`recsvc.store.records`) of :class:`recsvc.experiments.Experiment`, under
``{prefix}:{experiments}:*``.

A change replaces the whole set: the experiments written, and a tombstone for every
other one still running, so replicas that were offline see an experiment end too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from recsvc.experiments import Experiment
from recsvc.store.records import RecordLog

__all__ = ["ExperimentStore"]


class ExperimentStore(RecordLog[Experiment]):
    """The experiments of one Redis. Raises StoreError for any Redis failure."""

    tag = "experiments"
    what = "experiments"
    decode = staticmethod(Experiment.from_record)

    async def replace(self, experiments: Sequence[Experiment], now: int | None = None) -> int:
        """Make ``experiments`` the whole set, in one change; its version. Nothing is
        written when the set is already that (a file several replicas watch)."""
        stamp = int(time.time()) if now is None else now
        current = {e.name: e for e in (await self.snapshot()).records.values() if not e.deleted}
        wanted = {e.name: e for e in experiments}
        if {n: e.to_json() for n, e in current.items()} == {
            n: e.to_json() for n, e in wanted.items()
        }:
            return await self.version()
        records = [*experiments]
        records += [Experiment.tombstone(n, stamp) for n in current if n not in wanted]
        return await self.write("set", records)
