"""Erasure that deletes: removing erased customers from every file that holds them.

ForgetUser takes effect at once for serving (the live state is deleted, the id goes on
the erasure list, and every replica stops using it), but files written before still
name the customer: the event log's rows and every kept model version (ids, factors,
histories). :func:`compact` removes them:

- **Event-log files** (``events-*.csv`` in each directory given): a file holding a row
  of a pending customer is rewritten without those rows into a temporary sibling,
  fsync'd and renamed over the original (then the directory fsync'd): a reader, or a
  crash at any moment, sees the old file or the new one, never half of one. A file a
  server is appending to holds a shared ``flock`` while it is open
  (:class:`recsvc.serving.eventlog.EventLog`); it is left alone and its customers stay
  pending (the server rotates its log before it compacts, so its own next round gets
  it).
- **Model versions**: :func:`recsvc.artifact.remove_users` rewrites each version that
  holds a pending customer and swaps it in under the same name.

A customer is *complete* once a round found nothing of theirs left that it could not
remove; completion is appended (fsync'd) to the erasure list's completion record
(:func:`completion_path`), so ``recsvc forget --status`` and ForgetUser's receipt can
say ``pending`` or ``complete``. The erasure list itself keeps the ids: it is what
keeps them out of every later training and replica. Rounds are serialised by an
``flock`` on ``<artifact root>/.compaction.lock``: replicas sharing a root never
compact the same files at once. Every step is safe to repeat, so a round a crash
interrupted is finished by the next.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from recsvc import artifact as art
from recsvc.erasure import append_erasures, read_erasure_list
from recsvc.errors import StoreError

__all__ = [
    "CompactionBusy",
    "CompactionReport",
    "ErasureStatus",
    "compact",
    "completion_path",
    "erasure_status",
    "event_files",
    "exclusive",
    "round_lock",
]

EVENT_FILE_RE: Final = re.compile(r"events-\d{8}T\d{6}-\d+\.csv")
LOCK_NAME: Final = ".compaction.lock"
_CHUNK: Final = 1 << 20


class CompactionBusy(Exception):  # noqa: N818 (a state, reported, not a failure)
    """Another process is compacting the same artifact root."""


@dataclass
class CompactionReport:
    """What one :func:`compact` round did."""

    completed: tuple[str, ...] = ()
    """Customers complete after this round (nothing of theirs left)."""
    pending: tuple[str, ...] = ()
    """Customers still pending: a file holding them was in use."""
    files_rewritten: int = 0
    rows_removed: int = 0
    rows_read: int = 0
    """Rows of the event-log files that held a pending customer (read to rewrite)."""
    versions_rewritten: int = 0
    users_removed: int = 0
    """Customer rows removed from model versions (one per version that held them)."""
    skipped_files: list[str] = field(default_factory=list)
    """Files in use (a server appending) that held a pending customer."""
    recovered_versions: list[str] = field(default_factory=list)
    """Versions whose swap an earlier, interrupted round left half done."""
    seconds: float = 0.0


def completion_path(erasure_path: Path) -> Path:
    """Where the completion record of ``erasure_path`` lives:
    ``erased_users.txt`` → ``erased_users.done.txt`` (the same format)."""
    return erasure_path.with_name(f"{erasure_path.stem}.done{erasure_path.suffix}")


ErasureStatus = str
"""``none`` (not erased), ``pending`` (erased, files not compacted yet), ``complete``."""


def erasure_status(erasure_path: Path, user_id: str) -> ErasureStatus:
    """Where ``user_id``'s erasure stands, from the erasure list and its record."""
    if user_id not in read_erasure_list(erasure_path):
        return "none"
    return "complete" if user_id in read_erasure_list(completion_path(erasure_path)) else "pending"


def compact(
    artifact_root: Path, erasure_path: Path, event_log_dirs: Sequence[Path]
) -> CompactionReport:
    """Remove every pending customer (erased, not yet complete) from the event-log
    files in ``event_log_dirs`` and the model versions under ``artifact_root``; record
    those now complete. Raises CompactionBusy when another process holds the round's
    lock, StoreError when a file cannot be read or written (what was done stays done:
    rerun it)."""
    started = time.monotonic()
    report = CompactionReport()
    with round_lock(artifact_root):
        report.recovered_versions = art.finish_replacements(artifact_root)
        done = completion_path(erasure_path)
        pending = read_erasure_list(erasure_path) - read_erasure_list(done)
        if not pending:
            report.seconds = time.monotonic() - started
            return report
        blocked: set[str] = set()
        for directory in event_log_dirs:
            for path in event_files(directory):
                _compact_file(path, pending, report, blocked)
        for version in art.list_versions(artifact_root):
            removed = art.remove_users(artifact_root, version, pending)
            if removed:
                report.versions_rewritten += 1
                report.users_removed += removed
        completed = sorted(pending - blocked)
        append_erasures(done, completed)
        report.completed = tuple(completed)
        report.pending = tuple(sorted(blocked))
    report.seconds = time.monotonic() - started
    return report


@contextlib.contextmanager
def exclusive(path: Path, busy: Exception) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created owner-only) for the
    block; raise ``busy`` at once if another process holds it. A dead holder's lock
    goes with its process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise busy from exc
        yield
    finally:
        os.close(fd)  # releases the lock


def round_lock(root: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the artifact root's maintenance lock (compaction, retention) for the block;
    CompactionBusy at once if another process holds it."""
    return exclusive(root / LOCK_NAME, CompactionBusy(f"another process is compacting {root}"))


def event_files(directory: Path) -> list[Path]:
    """The event-log files of ``directory``, oldest first; temporary files an
    interrupted round left are removed (they hold no pending customer's row)."""
    try:
        for stale in directory.glob(".compact-*.tmp"):
            stale.unlink(missing_ok=True)
        return sorted(p for p in directory.iterdir() if EVENT_FILE_RE.fullmatch(p.name))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list event log directory {directory}: {exc}") from exc


def _needles(users: Set[str]) -> list[bytes]:
    """What a row of one of ``users`` holds in a CSV file, written by the csv module:
    the id as is, or quoted with its quotes doubled."""
    out = []
    for u in users:
        out.append(u.encode())
        out.append(('"' + u.replace('"', '""') + '"').encode())
    return out


def _mentions(path: Path, needles: list[bytes]) -> bool:
    """Whether the file's bytes hold any of ``needles`` (a cheap first pass: most files
    hold no erased customer and are not parsed)."""
    overlap = max(len(n) for n in needles)
    tail = b""
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            window = tail + chunk
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:]
    return False


def _compact_file(
    path: Path, pending: Set[str], report: CompactionReport, blocked: set[str]
) -> None:
    needles = _needles(pending)
    try:
        if not _mentions(path, needles):
            return
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # rotated away or rewritten by another round meanwhile
    except OSError as exc:
        raise StoreError(f"cannot read event log file {path}: {exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # a server is appending to it: whose rows it holds stay pending
            report.skipped_files.append(str(path))
            blocked.update(_users_in(path, pending))
            return
        _rewrite(path, fd, pending, report)
    finally:
        os.close(fd)


def _users_in(path: Path, pending: Set[str]) -> set[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row[0] for row in csv.reader(fh) if row and row[0] in pending}


def _rewrite(path: Path, fd: int, pending: Set[str], report: CompactionReport) -> None:
    """``path`` (open as ``fd``, locked) without the rows of ``pending``, atomically."""
    tmp = path.with_name(f".compact-{path.name}.tmp")
    removed = read = 0
    try:
        with (
            open(fd, newline="", encoding="utf-8", closefd=False) as src,
            tmp.open("w", newline="", encoding="utf-8") as dst,
        ):
            os.chmod(tmp, os.stat(fd).st_mode & 0o777)
            reader = csv.reader(src)
            writer = csv.writer(dst, lineterminator="\n")
            header = next(reader, None)
            if header is not None:
                writer.writerow(header)
            for row in reader:
                read += 1
                if row and row[0] in pending:
                    removed += 1
                    continue
                writer.writerow(row)
            dst.flush()
            os.fsync(dst.fileno())
        if removed:
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        else:  # the bytes matched inside another field: nothing to remove
            tmp.unlink()
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot rewrite event log file {path}: {exc}") from exc
    report.rows_read += read
    if removed:
        report.files_rewritten += 1
        report.rows_removed += removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
