"""The merchandising rules in Redis: a shared record collection
(:mod:`recsvc.store.records`) of :class:`recsvc.rules.Rule`, under
``{prefix}:{rules}:*`` (:meth:`recsvc.store.keys.KeyScheme.rules`).

A change sets rules (each replaces the rule of its id) or deletes them (tombstones, so
a replica that was offline sees the deletion too); its number is the rules' version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from recsvc.rules import Rule
from recsvc.store.records import RecordLog

__all__ = ["RuleStore"]


class RuleStore(RecordLog[Rule]):
    """The merchandising rules of one Redis. Raises StoreError for any Redis failure."""

    tag = "rules"
    what = "rules"
    decode = staticmethod(Rule.from_record)

    async def put(self, rules: Sequence[Rule], *, replace_all: bool = False) -> int:
        """Write ``rules``; with ``replace_all``, delete every other live rule in the
        same change. The rules' version."""
        records = list(rules)
        if replace_all:
            now = int(time.time())
            keep = {r.rule_id for r in records}
            current = (await self.snapshot()).records.values()
            records += [
                Rule.tombstone(r.rule_id, now)
                for r in current
                if r.rule_id not in keep and not r.deleted
            ]
        return await self.write("set", records)

    async def delete(self, rule_ids: Sequence[str], now: int | None = None) -> tuple[int, int]:
        """Delete ``rule_ids`` (tombstones); the rules' version and how many of them
        were live rules."""
        stamp = int(time.time()) if now is None else now
        current = (await self.snapshot()).records
        existing = [i for i in dict.fromkeys(rule_ids) if i in current and not current[i].deleted]
        version = await self.write("delete", [Rule.tombstone(i, stamp) for i in existing])
        return version, len(existing)
