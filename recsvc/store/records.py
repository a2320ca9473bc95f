"""Shared, versioned records every replica reads and follows: the layer under the live
catalogue (:mod:`recsvc.store.catalog`) and the merchandising rules
(:mod:`recsvc.store.rules`).

A collection is three keys in one hash slot (:meth:`recsvc.store.keys.KeyScheme.records`)::

    {prefix}:{<tag>}:items   HASH    record key -> record (compact JSON)
    {prefix}:{<tag>}:log     STREAM  one entry per change: seq, op, the records written
    {prefix}:{<tag>}:seq     STRING  the number of the last change (1, 2, 3, ...)

A change (a batch of records written) is one server-side script: the records are
written, the counter incremented and the change appended to the stream, atomically. A
replica starts from a :meth:`RecordLog.snapshot` (the stream's last entry and the
counter first, then every record) and then follows the stream
(:meth:`RecordLog.changes`, a blocking read): each change carries its number, so a
replica that finds a gap — the stream is trimmed to its last :data:`STREAM_LENGTH`
changes — reloads the snapshot. Applying a change twice is harmless (records replace
records). The collection's version is the number of its last change.

Nothing is ever deleted, only replaced: a removal writes a tombstone record, so
replicas that were offline, and the trainer, see it too. Because the three keys share
a slot, the same script runs unchanged on Redis Cluster.

Records are any type with a ``key`` and ``to_json``; a collection decodes its records
(:meth:`RecordLog.decode`), which raises ValueError for a record it does not understand
(a newer format from another replica): such records are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, Protocol, Self, TypeVar

import redis
import redis.asyncio

from recsvc.store.clients import REDIS_ERRORS, async_client_from_url, store_error, translated_errors
from recsvc.store.keys import KeyScheme

__all__ = ["STREAM_LENGTH", "Change", "Record", "RecordLog", "Snapshot"]

STREAM_LENGTH: Final = 10_000
"""Changes kept in the stream (about: trimmed with ``~``); a replica further behind
reloads the whole collection."""

_SCAN_COUNT: Final = 2_000
_FOLLOWER_TIMEOUT: Final = 10.0
"""Read timeout of the follower's connection: well past its blocking reads' second."""

_CHANGE: Final = """
-- KEYS: items, log, seq; ARGV: op, stream length, then (key, record) pairs
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


class Record(Protocol):
    """What a collection stores: a key, and a JSON form its decoder reads back."""

    @property
    def key(self) -> str: ...

    def to_json(self) -> str: ...


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Change(Generic[R]):
    """One change read from the stream."""

    seq: int
    """Its number: the collection's version once applied."""
    entry_id: str
    """Its stream entry id (where to read on from)."""
    op: str
    """What the writer called it (``upsert``, ``withdraw``, ``delete``, ...)."""
    records: tuple[R, ...]
    """The records it wrote."""


@dataclass(frozen=True)
class Snapshot(Generic[R]):
    """The whole collection at one version."""

    seq: int
    """The number of the last change it includes (0: empty)."""
    entry_id: str
    """The stream entry to follow on from."""
    records: dict[str, R]
    """Every record by key, tombstones included."""


class RecordLog(Generic[R]):
    """One collection of records in one Redis (see the module docstring). A collection
    is a subclass naming its :attr:`tag`, its name in errors (:attr:`what`) and how to
    :meth:`decode` its records.

    Writes and snapshots go through ``client``; :meth:`changes` blocks, so give it a
    client of its own (``follower``) whose read timeout exceeds the block time.
    Raises StoreError for any Redis failure.
    """

    tag: ClassVar[str]
    """Its hash tag: the keys are ``{prefix}:{<tag>}:*``."""
    what: ClassVar[str]
    """Its name in errors (``catalogue``, ``rules``)."""

    @staticmethod
    def decode(record: Any) -> R:
        """The record of a decoded JSON value; ValueError if it cannot be one."""
        raise NotImplementedError

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
        self._items, self._log, self._seq = keys.records(self.tag)
        self._change = client.register_script(_CHANGE)

    @classmethod
    def open(cls, url: str, keys: KeyScheme, *, socket_timeout: float) -> Self:
        """The collection at ``url`` with two clients of its own: writes and snapshots
        (``socket_timeout``), and the follower's blocking reads (a timeout past the
        longest block). Close it with :meth:`aclose`."""
        client = async_client_from_url(url, socket_timeout=socket_timeout)
        follower = async_client_from_url(url, socket_timeout=_FOLLOWER_TIMEOUT, max_connections=2)
        return cls(client, keys, follower=follower, owned=True)

    async def aclose(self) -> None:
        """Close the clients, if it owns them (``owned=True``); a no-op otherwise."""
        if self._owned:
            await self._client.aclose()
            await self._follower.aclose()

    async def write(self, op: str, records: Sequence[R]) -> int:
        """Write ``records`` (each replaces the record of its key) as one change; the
        collection's version (unchanged, and nothing written, for no records)."""
        if not records:
            return await self.version()
        args: list[Any] = [op, STREAM_LENGTH]
        for record in records:
            args += [record.key, record.to_json()]
        with translated_errors(f"{self.what} {op}"):
            seq, _ = await self._change(keys=[self._items, self._log, self._seq], args=args)
        return int(seq)

    async def version(self) -> int:
        """The number of the last change (0 when nothing was ever written)."""
        with translated_errors(f"reading the {self.what} version"):
            raw = await self._client.get(self._seq)
        return int(raw) if raw is not None else 0

    async def snapshot(self) -> Snapshot[R]:
        """Every record, at a version: the stream's last entry and the counter are
        read before the records, so following the stream on from there misses nothing
        (a change that lands meanwhile is read twice, which is harmless)."""
        with translated_errors(f"reading the {self.what}"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xrevrange(self._log, count=1)
                pipe.get(self._seq)
                last, raw_seq = await pipe.execute()
            records: dict[str, R] = {}
            cursor: int = 0
            while True:
                reply: Any = await self._client.hscan(self._items, cursor, count=_SCAN_COUNT)
                cursor, page = reply
                for raw in page.values():
                    record = self._record(raw)
                    if record is not None:
                        records[record.key] = record
                if cursor == 0:
                    break
        entry_id = last[0][0].decode() if last else "0-0"
        return Snapshot(int(raw_seq) if raw_seq is not None else 0, entry_id, records)

    async def changes(self, after: str, *, block_ms: int, count: int = 100) -> list[Change[R]]:
        """The changes after stream entry ``after``, oldest first, waiting up to
        ``block_ms`` for one (an empty list when none came)."""
        try:
            reply: Any = await self._follower.xread({self._log: after}, count=count, block=block_ms)
        except REDIS_ERRORS as exc:
            raise store_error(f"following the {self.what}", exc) from exc
        changes: list[Change[R]] = []
        for _, entries in reply or ():
            for entry_id, fields in entries:
                records = []
                for raw in json.loads(fields[b"records"]):
                    record = self._decoded(raw)
                    if record is not None:
                        records.append(record)
                changes.append(
                    Change(
                        seq=int(fields[b"seq"]),
                        entry_id=entry_id.decode(),
                        op=fields[b"op"].decode(),
                        records=tuple(records),
                    )
                )
        return changes

    def _record(self, raw: bytes) -> R | None:
        try:
            return self._decoded(json.loads(raw))
        except json.JSONDecodeError:
            return None

    def _decoded(self, record: Any) -> R | None:
        try:
            return self.decode(record)
        except ValueError:  # a newer record format from another replica: skipped
            return None
