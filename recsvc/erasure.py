"""The erasure list: user ids ForgetUser has erased.

The server appends (and fsyncs) before it answers ForgetUser, training drops the
listed users' events, and publishing skips their vectors — so an erasure holds
across retraining and rollbacks. Several replicas may share the file: each follows
it (:meth:`ErasureList.refresh`) and appends with ``O_APPEND``.

Format: a header line, then one id per line as a JSON string, so every id reads back
exactly as it was erased, whatever characters it holds::

    # recsvc erasure list v2
    "u00090"
    "caf\u00e9 \u00a0"

A file without the header is the first format (raw ids, one per line): read with only
the line feed removed — never stripped, which once turned ``"u00090\u00a0"`` into the
innocent ``"u00090"`` — and appended to in its own format (ids that reach it are
printable, so never hold a line feed: :mod:`recsvc.serving.validation`). The file is
created owner-only (0600): it names customers.

Replicas that share no directory share the list through the store instead: every
erasure is also an :class:`Erasure` record of the shared collection
(:mod:`recsvc.store.erasures`), which each replica follows and merges into its own file
(:meth:`ErasureList.merge`), so every replica's file, its compaction and the trainer
reading it converge on the union.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsvc.errors import DataError

__all__ = [
    "HEADER",
    "Erasure",
    "ErasureList",
    "append_erasure",
    "append_erasures",
    "read_erasure_list",
]


HEADER = "# recsvc erasure list v2"


def read_erasure_list(path: Path) -> frozenset[str]:
    """User ids erased so far; an absent file means nobody was erased.

    Raises DataError naming the file and line for a line that is not an id.
    """
    try:
        # newline="\n": only a line feed ends a line (a raw id of the first format may
        # hold any other character)
        with path.open(encoding="utf-8", newline="\n") as fh:
            lines = [line.removesuffix("\n") for line in fh]
    except FileNotFoundError:
        return frozenset()
    if not lines or lines[0] != HEADER:
        return frozenset(line for line in lines if line)
    ids = set()
    for number, line in enumerate(lines[1:], 2):
        if line.startswith("#"):
            continue
        try:
            user_id = json.loads(line)
        except ValueError:
            user_id = None
        if not isinstance(user_id, str) or not user_id:
            raise DataError(f"{path}:{number}: not an erased user id (a JSON string): {line!r}")
        ids.add(user_id)
    return frozenset(ids)


def append_erasure(path: Path, user_id: str) -> None:
    """Append ``user_id`` durably: an erasure acknowledged to a client survives a crash."""
    append_erasures(path, [user_id])


def append_erasures(path: Path, user_ids: Sequence[str]) -> None:
    """Append ``user_ids`` durably, in one write (nothing for none)."""
    if not user_ids:
        return
    if not all(user_ids):
        raise ValueError("user ids must be non-empty strings")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        if os.fstat(fd).st_size == 0 or _has_header(path):
            lines = [json.dumps(u, ensure_ascii=False) for u in user_ids]
            if os.fstat(fd).st_size == 0:
                lines.insert(0, HEADER)
        else:  # the first format, kept: never rewritten under replicas appending to it
            if any("\n" in u for u in user_ids):
                raise ValueError("a line feed cannot be written to a first-format erasure list")
            lines = list(user_ids)
        os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_header(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.readline().rstrip(b"\n") == HEADER.encode()


class ErasureList:
    """The erasure list at ``path``, followed: what this process and the other
    replicas sharing the file have erased."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._erased: set[str] = set(read_erasure_list(path))
        self._stamp = _stamp(path)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._erased

    def __len__(self) -> int:
        return len(self._erased)

    def add(self, user_id: str) -> bool:
        """Erase ``user_id`` durably; False if it already was."""
        if user_id in self._erased:
            return False
        append_erasure(self.path, user_id)
        self._erased.add(user_id)
        return True

    def merge(self, user_ids: Iterable[str]) -> Set[str]:
        """Add ids erased elsewhere (another replica, through the store) durably, in one
        append; the ids new here."""
        fresh = [u for u in dict.fromkeys(user_ids) if u and u not in self._erased]
        if fresh:
            append_erasures(self.path, fresh)
            self._erased.update(fresh)
            self._stamp = _stamp(self.path)
        return frozenset(fresh)

    def refresh(self) -> Set[str]:
        """Read what other replicas appended since the last look; the ids new here."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return frozenset()
        self._stamp = stamp
        fresh = read_erasure_list(self.path) - self._erased
        self._erased |= fresh
        return fresh


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


_RECORD_VERSION = 1


@dataclass(frozen=True)
class Erasure:
    """One erased id as a record of the shared erasure list
    (:class:`recsvc.store.erasures.ErasureStore`)."""

    user_id: str
    erased_at: int = 0
    """Unix seconds of the ForgetUser that erased it."""

    @property
    def key(self) -> str:
        """Its key in the shared store: the id."""
        return self.user_id

    def to_json(self) -> str:
        """The stored record: compact JSON."""
        record = {"v": _RECORD_VERSION, "id": self.user_id, "at": self.erased_at}
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_record(cls, record: Any) -> Erasure:
        """The erasure of a decoded record; ValueError for another version or a
        malformed one."""
        if not isinstance(record, dict) or record.get("v") != _RECORD_VERSION:
            raise ValueError("unknown erasure record")
        user_id, at = record.get("id"), record.get("at", 0)
        if not isinstance(user_id, str) or not user_id or not isinstance(at, int):
            raise ValueError(f"malformed erasure record {record!r}")
        return cls(user_id, at)
