"""The live catalogue in Redis: records every replica reads, changes every replica follows.

Keys (:meth:`recsvc.store.keys.KeyScheme.catalog`, one hash slot)::

    {prefix}:{cat}:items   HASH    item id -> record (recsvc.catalog.CatalogItem JSON)
    {prefix}:{cat}:log     STREAM  one entry per change: seq, op, the records written
    {prefix}:{cat}:seq     STRING  the number of the last change (1, 2, 3, ...)

A change (an upsert or a withdrawal of up to a batch of items) is one server-side
script: the records are written, the counter incremented and the change appended to the
stream, atomically. A replica starts from a :meth:`CatalogStore.snapshot` (the counter
first, then every record) and then follows the stream (:meth:`CatalogStore.changes`, a
blocking read): each change carries its number, so a replica that finds a gap — the
stream is trimmed to its last :data:`STREAM_LENGTH` changes — reloads the snapshot.
Applying a change twice is harmless (records replace records). The catalogue's version
is the number of its last change, separate from the model's.

Withdrawing keeps a tombstone record (withdrawn, no attributes), so training and
replicas that were offline see the withdrawal too; upserting the item again brings it
back with the new record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import redis
import redis.asyncio

from recsvc.catalog import CatalogItem
from recsvc.errors import StoreError
from recsvc.store.clients import async_client_from_url, translated_errors
from recsvc.store.keys import KeyScheme

__all__ = ["STREAM_LENGTH", "CatalogChange", "CatalogSnapshot", "CatalogStore"]

STREAM_LENGTH: Final = 10_000
"""Changes kept in the stream (about: trimmed with ``~``); a replica further behind
reloads the whole catalogue."""

_SCAN_COUNT: Final = 2_000
_FOLLOWER_TIMEOUT: Final = 10.0
"""Read timeout of the follower's connection: well past its blocking reads' second."""

_CHANGE: Final = """
-- KEYS: items, log, seq; ARGV: op, stream length, then (item id, record) pairs
local seq = redis.call("INCR", KEYS[3])
local records = {}
for i = 3, #ARGV, 2 do
  redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1])
  records[#records + 1] = ARGV[i + 1]
end
local id = redis.call(
  "XADD", KEYS[2], "MAXLEN", "~", ARGV[2], "*",
  "seq", seq, "op", ARGV[1], "records", "[" .. table.concat(records, ",") .. "]"
)
return {seq, id}
"""


@dataclass(frozen=True)
class CatalogChange:
    """One change read from the stream."""

    seq: int
    """Its number: the catalogue's version once applied."""
    entry_id: str
    """Its stream entry id (where to read on from)."""
    op: Literal["upsert", "withdraw"]
    items: tuple[CatalogItem, ...]
    """The records it wrote."""


@dataclass(frozen=True)
class CatalogSnapshot:
    """The whole catalogue at one version."""

    seq: int
    """The number of the last change it includes (0: empty)."""
    entry_id: str
    """The stream entry to follow on from."""
    items: dict[str, CatalogItem]
    """Every record, withdrawn ones included."""


class CatalogStore:
    """The live catalogue of one Redis (see the module docstring).

    Writes and snapshots go through ``client``; :meth:`changes` blocks, so give it a
    client of its own (``follower``) whose read timeout exceeds the block time.
    Raises StoreError for any Redis failure.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: KeyScheme,
        *,
        follower: redis.asyncio.Redis | None = None,
        owned: bool = False,
    ) -> None:
        self._owned = owned
        self._client = client
        self._follower = follower or client
        self._items, self._log, self._seq = keys.catalog()
        self._change = client.register_script(_CHANGE)

    @classmethod
    def open(cls, url: str, keys: KeyScheme, *, socket_timeout: float) -> CatalogStore:
        """A store at ``url`` with its own two connections pools: writes and snapshots
        (``socket_timeout``), and the follower's blocking reads (a timeout past the
        longest block). Close it with :meth:`aclose`."""
        client = async_client_from_url(url, socket_timeout=socket_timeout)
        follower = async_client_from_url(url, socket_timeout=_FOLLOWER_TIMEOUT, max_connections=2)
        return cls(client, keys, follower=follower, owned=True)

    async def aclose(self) -> None:
        """Close the clients it opened (:meth:`open`); a no-op for given ones."""
        if self._owned:
            await self._client.aclose()
            await self._follower.aclose()

    async def upsert(self, items: Sequence[CatalogItem]) -> int:
        """Write ``items`` (each replaces the item's record); the catalogue's version."""
        return await self._write("upsert", items)

    async def withdraw(self, item_ids: Sequence[str], now: int | None = None) -> int:
        """Withdraw ``item_ids`` (tombstones); the catalogue's version."""
        stamp = int(time.time()) if now is None else now
        tombstones = [CatalogItem(i, withdrawn=True, updated_at=stamp) for i in item_ids]
        return await self._write("withdraw", tombstones)

    async def _write(self, op: str, items: Sequence[CatalogItem]) -> int:
        if not items:
            return await self.version()
        args: list[Any] = [op, STREAM_LENGTH]
        for item in items:
            args += [item.item_id, item.to_json()]
        with translated_errors(f"catalogue {op}"):
            seq, _ = await self._change(keys=[self._items, self._log, self._seq], args=args)
        return int(seq)

    async def version(self) -> int:
        """The number of the last change (0 when nothing was ever written)."""
        with translated_errors("reading the catalogue version"):
            raw = await self._client.get(self._seq)
        return int(raw) if raw is not None else 0

    async def snapshot(self) -> CatalogSnapshot:
        """Every record, at a version: the stream's last entry and the counter are
        read before the records, so following the stream on from there misses nothing
        (a change that lands meanwhile is read twice, which is harmless)."""
        with translated_errors("reading the catalogue"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xrevrange(self._log, count=1)
                pipe.get(self._seq)
                last, raw_seq = await pipe.execute()
            items: dict[str, CatalogItem] = {}
            cursor: int = 0
            while True:
                reply: Any = await self._client.hscan(self._items, cursor, count=_SCAN_COUNT)
                cursor, page = reply
                for raw in page.values():
                    item = _record(raw)
                    if item is not None:
                        items[item.item_id] = item
                if cursor == 0:
                    break
        entry_id = last[0][0].decode() if last else "0-0"
        return CatalogSnapshot(int(raw_seq) if raw_seq is not None else 0, entry_id, items)

    async def changes(self, after: str, *, block_ms: int, count: int = 100) -> list[CatalogChange]:
        """The changes after stream entry ``after``, oldest first, waiting up to
        ``block_ms`` for one (an empty list when none came)."""
        try:
            reply: Any = await self._follower.xread({self._log: after}, count=count, block=block_ms)
        except redis.RedisError as exc:
            raise StoreError(f"Redis following the catalogue failed: {exc}") from exc
        changes: list[CatalogChange] = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                records = _records(fields[b"records"])
                op = fields[b"op"].decode()
                changes.append(
                    CatalogChange(
                        seq=int(fields[b"seq"]),
                        entry_id=entry_id.decode(),
                        op="withdraw" if op == "withdraw" else "upsert",
                        items=tuple(records),
                    )
                )
        return changes


def _record(raw: bytes) -> CatalogItem | None:
    try:
        return CatalogItem.from_json(raw)
    except ValueError:  # a newer record format from another replica: skipped
        return None


def _records(raw: bytes) -> list[CatalogItem]:
    out: list[CatalogItem] = []
    for record in json.loads(raw):
        try:
            out.append(CatalogItem.from_record(record))
        except ValueError:  # a newer record format from another replica: skipped
            continue
    return out
