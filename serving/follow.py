"""Following a shared record collection (:mod:`recsvc.store.records`): this replica's
copy of the live catalogue, of the merchandising rules, kept in memory.

A :class:`Follower` loads a snapshot at start-up and then follows the change stream: a
change written through any replica reaches this one within a blocking read (well under
a second). Requests never wait for the store; they read the follower's state. If the
store fails, the replica keeps serving what it has and retries; a replica that finds a
gap in the changes (it fell behind the stream's trimming) reloads the snapshot.
Subclasses keep their derived state in step through :meth:`Follower.reloaded` and
:meth:`Follower.changed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from typing import Final, Generic, TypeVar

from recsvc.errors import StoreError
from recsvc.store.records import Change, Record, RecordLog

__all__ = ["Follower", "set_heap_frozen"]

_SETTLE_AFTER: Final = 500
"""Records applied at once past which they are moved out of the cyclic collector's
reach (see :func:`_settle`)."""

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)

_FOLLOW_BLOCK_MS: Final = 1_000
_RETRY_SECONDS: Final = 1.0


_heap_frozen = False
"""Whether this process froze its heap (see :func:`set_heap_frozen`)."""


def set_heap_frozen(frozen: bool) -> None:
    """Say whether this process froze its heap (serving.server.freeze_heap does, once
    started): large changes are then frozen too (:func:`_settle`). A flag, not
    ``gc.get_freeze_count()``: that walks every frozen object to count them, ~20 ms
    with a synced 100k-item catalogue, and it was asked at every large change."""
    global _heap_frozen  # noqa: PLW0603 (one process-wide fact)
    _heap_frozen = frozen


def _settle(applied: int) -> None:
    """After a large change (a catalogue sync), freeze the heap again as the server did
    at start-up (serving.server.freeze_heap): otherwise every full collection walks the
    new records, a pause of ~100 ms with the event loop stopped, a dozen times per
    100k-item sync. The records hold no reference cycles, so a record replaced later is
    still freed by reference counting. Nothing happens in a process that never froze."""
    if applied >= _SETTLE_AFTER and _heap_frozen:
        gc.collect()
        gc.freeze()


class Follower(Generic[R]):
    """This replica's copy of the collection of ``store``."""

    def __init__(self, store: RecordLog[R]) -> None:
        self.store = store
        self.records: dict[str, R] = {}
        """Every record by key, tombstones included."""
        self.seq = 0
        self._entry = "0-0"
        self._loaded = False

    @property
    def version(self) -> int:
        """The number of the last change this replica applied."""
        return self.seq

    async def load(self) -> None:
        """Load the whole collection (StoreError if the store cannot be read)."""
        snapshot = await self.store.snapshot()
        self.records = snapshot.records
        self.seq, self._entry = snapshot.seq, snapshot.entry_id
        self._loaded = True
        self.reloaded(time.time())
        _settle(len(self.records))

    def apply(self, changes: Sequence[Change[R]]) -> bool:
        """Apply ``changes`` in order; False (nothing more applied) on a gap in their
        numbers."""
        now = time.time()
        applied = 0
        try:
            for change in changes:
                if change.seq <= self.seq:
                    continue  # read twice across a snapshot: already in
                if change.seq != self.seq + 1:
                    return False
                for record in change.records:
                    self.records[record.key] = record
                    self.changed(record, now)
                applied += len(change.records)
                self.seq, self._entry = change.seq, change.entry_id
            return True
        finally:
            _settle(applied)

    def reloaded(self, now: float) -> None:
        """Hook: :attr:`records` were replaced by a snapshot."""

    def changed(self, record: R, now: float) -> None:
        """Hook: ``record`` replaced its key's record."""

    def tick(self) -> None:
        """Hook: called after each blocking read (about once a second)."""

    async def follow(self, stop: asyncio.Event) -> None:
        """Load, then apply changes as they come, until ``stop`` is set; store failures
        are retried (the replica serves what it has meanwhile)."""
        what = self.store.what
        while not stop.is_set():
            try:
                if not self._loaded:
                    await self.load()
                changes = await self.store.changes(self._entry, block_ms=_FOLLOW_BLOCK_MS)
                if not self.apply(changes):
                    log.warning("%s changes missed (behind the stream): reloading", what)
                    self._loaded = False
                self.tick()
            except StoreError as exc:
                log.warning("following the %s failed, retrying: %s", what, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=_RETRY_SECONDS)
