"""Accepted events appended to disk, in the canonical CSV the trainer reads.

Files are named ``events-<UTC yyyymmddThhmmss>-<seq>.csv`` after the moment they were
opened and start with the header ``user_id,item_id,timestamp,event_type,quantity,
basket_id,event_id,recommendation_id,placement,revenue`` (files of older servers end
at ``event_id``; the last three are filled for events attributed to a recommendation);
quoting is the csv module's (minimal), so ids with commas or quotes load
unchanged with :func:`training.loading.load_events`. A file is created on the first
append after start or rotation (no header-only files, which the loader rejects) and
rotates once the next batch would take it past ``max_bytes``; a single batch larger
than that gets a file of its own. The open file holds a shared ``flock``, so
compaction (:mod:`recsvc.compaction`) never rewrites a file under a writer. Several
replicas may share a directory: names are created exclusively and the sequence number
moves on when one is taken.

Durability (what a crash can lose):

- When :meth:`EventLog.append` returns, the rows are in the operating system's page
  cache, written with one ``write`` per batch: a crash or kill of the process loses
  nothing that was accepted.
- A power loss or kernel crash loses what was not yet fsync'd. ``fsync`` costs ~0.2 ms
  median and several ms at p99 on a typical disk, too much for every RecordEvents, so
  by default it runs at most once per ``fsync_interval_seconds`` (on the first append
  after the interval has passed), on rotation, on :meth:`EventLog.sync` and on
  :meth:`EventLog.close`. Call ``sync()`` from a timer to bound the loss to the
  interval when traffic stops; ``fsync_interval_seconds=0`` fsyncs every append.
  The last file may then end in a partial row: load it with ``skip_bad_rows=True``.

Rows are validated before anything is written (a bad row rejects its batch), so every
file loads: ``load_events`` wants a user and an item on every row, cannot read line
breaks inside values, wants quantities > 0 and timestamps in Unix seconds. Events of
anonymous sessions are logged without a user, their visit as the basket. A failed
write (disk full) is cut back to the last complete row and the file closed, so the
next append starts a fresh one.

Thread-safe: one lock serialises writes; the server calls :meth:`EventLog.append` from
a worker thread (``asyncio.to_thread``), never on the event loop, since a write can
block on a busy disk.
"""

from __future__ import annotations

import csv
import fcntl
import io
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import numpy as np

from recsvc.errors import StoreError
from recsvc.events import CANONICAL_COLUMNS, EventType

__all__ = ["LOG_COLUMNS", "EventLog", "EventRow"]

LOG_COLUMNS: Final = ("event_id", "recommendation_id", "placement", "revenue")
"""The columns the log writes after the canonical ones (the loader reads those and
``event_id``; the experiment report reads the rest)."""

_NAME_RE: Final = re.compile(r"events-(\d{8}T\d{6})-(\d+)\.csv")
# What load_events accepts: |Unix seconds| below 1e11 (beyond are milliseconds), and
# quantities that fit a float32.
_MAX_ABS_TIMESTAMP: Final = 10**11
_MAX_QUANTITY: Final = float(np.finfo(np.float32).max)
_LINE_BREAKS: Final = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class EventRow:
    """One accepted event, as a row of the canonical event table."""

    user_id: str
    """Customer id; empty for an anonymous visit's event (then ``basket_id`` names the
    visit: the loader reads it as a guest's row)."""
    item_id: str
    """Product id (non-empty)."""
    timestamp: int
    """Unix seconds, UTC."""
    event_type: str
    """One of the :class:`~recsvc.events.EventType` values."""
    quantity: float = 1.0
    """Units (> 0)."""
    basket_id: str = ""
    """Order or basket; empty means ``user_id@timestamp`` to the loader."""
    event_id: str = ""
    """The event's id (RecordEvents' ``event_id``, or one derived from its content): a
    retried batch may log an event twice, and the loader keeps the first row of an id."""
    recommendation_id: str = ""
    """The answer the event is attributed to (its shopper's, within the attribution
    window); empty otherwise. ``recsvc experiment report`` reads it."""
    placement: str = ""
    """An attributed event's placement label."""
    revenue: float | None = None
    """An attributed purchase's price x quantity, when the price is known."""


class EventLog:
    """Append-only, size-rotated CSV files of accepted events in ``directory``.

    Args:
        directory: where the files go; created if missing.
        max_bytes: a file rotates before a batch would take it past this size.
        fsync_interval_seconds: least time between two fsyncs triggered by appends
            (see the module docstring); 0 = fsync every append.

    Raises StoreError when the directory cannot be created.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int, fsync_interval_seconds: float = 1.0
    ) -> None:
        if max_bytes <= 0 or fsync_interval_seconds < 0:
            raise ValueError("max_bytes must be > 0 and fsync_interval_seconds >= 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.fsync_interval_seconds = fsync_interval_seconds
        try:
            # owner-only: the rows name customers (a directory that exists keeps its mode)
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create event log directory {self.directory}: {exc}") from exc
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._dirty = False
        self._synced_at = 0.0
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------ public

    @property
    def current(self) -> Path | None:
        """The file being appended to, None before the first append or after rotation."""
        with self._lock:
            return self._path

    def rows_of(self, *user_ids: str) -> list[dict[str, str]]:
        """Every row of any of ``user_ids`` in this log's files, oldest file first
        (right of access; a pass over every file: an administrative call)."""
        wanted = set(user_ids)
        found: list[dict[str, str]] = []
        try:
            paths = sorted(p for p in self.directory.iterdir() if _NAME_RE.fullmatch(p.name))
            for path in paths:
                with path.open(newline="", encoding="utf-8") as f:
                    found += [
                        {"file": path.name, **row}
                        for row in csv.DictReader(f)
                        if row.get("user_id") in wanted
                    ]
        except OSError as exc:
            raise StoreError(f"cannot read the event log in {self.directory}: {exc}") from exc
        return found

    def append(self, rows: Sequence[EventRow]) -> None:
        """Append ``rows`` as one write; durability as in the module docstring.

        Raises ValueError for a row the loader could not read back (nothing of the
        batch is written), StoreError when the disk fails, ValueError after close().
        """
        if not rows:
            return
        payload = _encode(rows)
        with self._lock:
            if self._closed:
                raise ValueError("event log is closed")
            if self._fd is not None and self._size + len(payload) > self.max_bytes:
                self._close_file()
            if self._fd is None:
                self._open_file()
                payload = _HEADER + payload
            self._write(payload)
            if time.monotonic() - self._synced_at >= self.fsync_interval_seconds:
                self._fsync()

    def sync(self) -> None:
        """Flush appended rows to the disk now (no-op when nothing is pending)."""
        with self._lock:
            if self._dirty:
                self._fsync()

    def rotate(self) -> None:
        """Finish the current file (fsync'd), so :meth:`files` includes it."""
        with self._lock:
            self._close_file()

    def files(self) -> list[Path]:
        """Finished event files in the directory, oldest first (the one being written
        is left out: it may end mid-batch). Includes files of earlier runs and of other
        processes sharing the directory."""
        with self._lock:
            current = self._path
        try:
            names = [path.name for path in self.directory.iterdir()]
        except OSError as exc:
            raise StoreError(f"cannot list event log directory {self.directory}: {exc}") from exc
        found = []
        for name in names:
            match = _NAME_RE.fullmatch(name)
            if match and self.directory / name != current:
                found.append((match.group(1), int(match.group(2)), self.directory / name))
        return [path for _, _, path in sorted(found)]

    def close(self) -> None:
        """Fsync and close the current file; further appends raise. Idempotent."""
        with self._lock:
            self._closed = True
            self._close_file()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ files (lock held)

    def _open_file(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        while True:
            path = self.directory / f"events-{stamp}-{self._seq:06d}.csv"
            self._seq += 1
            try:
                # O_EXCL: another replica (or an earlier run within the same second)
                # may already own this name; O_APPEND: each write lands at the end.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot create event log file {path}: {exc}") from exc
            # held while the file is open: compaction (recsvc.compaction) leaves a file
            # being appended to alone (it would replace it under this descriptor)
            fcntl.flock(fd, fcntl.LOCK_SH)
            break
        self._fd, self._path, self._size = fd, path, 0
        self._synced_at = time.monotonic()
        try:
            # The new name must survive a power loss too, not only the file's bytes.
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self._close_file()
            raise StoreError(f"cannot sync event log directory {self.directory}: {exc}") from exc

    def _write(self, payload: bytes) -> None:
        assert self._fd is not None and self._path is not None
        view = memoryview(payload)
        try:
            while view:  # a regular file takes it in one go unless the disk fills up
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            path = self._path
            try:
                os.ftruncate(self._fd, self._size)  # back to the last complete row
            finally:
                self._close_file()
                if self._size == 0:
                    path.unlink(missing_ok=True)
            raise StoreError(f"cannot append to event log file {path}: {exc}") from exc
        self._size += len(payload)
        self._dirty = True

    def _fsync(self) -> None:
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise StoreError(f"cannot sync event log file {self._path}: {exc}") from exc
        self._dirty = False
        self._synced_at = time.monotonic()

    def _close_file(self) -> None:
        fd, self._fd, self._path = self._fd, None, None
        if fd is None:
            return
        try:
            if self._dirty:
                os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"cannot sync event log file: {exc}") from exc
        finally:
            self._dirty = False
            os.close(fd)


def _header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow((*CANONICAL_COLUMNS, *LOG_COLUMNS))
    return buffer.getvalue().encode()


_HEADER: Final = _header()
_EVENT_TYPES: Final = frozenset(e.value for e in EventType)


def _encode(rows: Sequence[EventRow]) -> bytes:
    """The CSV lines of ``rows`` (no header); ValueError names the first bad row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for index, row in enumerate(rows):
        problem = _problem(row)
        if problem:
            raise ValueError(f"event row {index}: {problem}")
        quantity = float(row.quantity)
        writer.writerow(
            (
                row.user_id,
                row.item_id,
                int(row.timestamp),
                str(row.event_type),
                str(int(quantity)) if quantity.is_integer() else repr(quantity),
                row.basket_id,
                row.event_id,
                row.recommendation_id,
                row.placement,
                "" if row.revenue is None else repr(float(row.revenue)),
            )
        )
    return buffer.getvalue().encode()


def _problem(row: EventRow) -> str | None:
    """Why ``load_events`` would not read ``row`` back as it is, or None."""
    if not row.user_id and not row.basket_id:
        # a guest's row (an anonymous visit) is read back by its basket: the visit
        return "empty user_id and basket_id (a guest's row needs its visit as basket)"
    if not row.item_id:
        return "empty item_id"
    for name in ("user_id", "item_id", "basket_id", "event_id", "recommendation_id", "placement"):
        if _LINE_BREAKS.search(getattr(row, name)):
            return f"{name} contains a line break"
    if str(row.event_type) not in _EVENT_TYPES:
        return f"event_type must be one of {sorted(_EVENT_TYPES)}, got {row.event_type!r}"
    if isinstance(row.timestamp, bool) or not isinstance(row.timestamp, int | np.integer):
        return f"timestamp must be an integer (Unix seconds), got {row.timestamp!r}"
    if abs(int(row.timestamp)) >= _MAX_ABS_TIMESTAMP:
        return f"timestamp {row.timestamp} is not Unix seconds"
    quantity = float(row.quantity)
    if not (math.isfinite(quantity) and 0 < quantity <= _MAX_QUANTITY):
        return f"quantity must be finite and > 0, got {row.quantity!r}"
    if row.revenue is not None and not (math.isfinite(row.revenue) and row.revenue >= 0):
        return f"revenue must be finite and >= 0, got {row.revenue!r}"
    return None
