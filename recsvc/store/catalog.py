"""The live catalogue in Redis: a shared record collection (:mod:`recsvc.store.records`)
of :class:`recsvc.catalog.CatalogItem`, under ``{prefix}:{cat}:*``
(:meth:`recsvc.store.keys.KeyScheme.catalog`).

A change is an upsert or a withdrawal of up to a batch of items; its number is the
catalogue's version, separate from the model's. Withdrawing keeps a tombstone record
(withdrawn, no attributes), so training and replicas that were offline see the
withdrawal too; upserting the item again brings it back with the new record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from recsvc.catalog import CatalogItem
from recsvc.store.records import STREAM_LENGTH, Change, RecordLog, Snapshot

__all__ = ["STREAM_LENGTH", "CatalogChange", "CatalogSnapshot", "CatalogStore"]

CatalogChange = Change[CatalogItem]
CatalogSnapshot = Snapshot[CatalogItem]


class CatalogStore(RecordLog[CatalogItem]):
    """The live catalogue of one Redis. Raises StoreError for any Redis failure."""

    tag = "cat"
    what = "catalogue"
    decode = staticmethod(CatalogItem.from_record)

    async def upsert(self, items: Sequence[CatalogItem]) -> int:
        """Write ``items`` (each replaces the item's record); the catalogue's version."""
        return await self.write("upsert", items)

    async def withdraw(self, item_ids: Sequence[str], now: int | None = None) -> int:
        """Withdraw ``item_ids`` (tombstones); the catalogue's version."""
        stamp = int(time.time()) if now is None else now
        return await self.write(
            "withdraw", [CatalogItem(i, withdrawn=True, updated_at=stamp) for i in item_ids]
        )
