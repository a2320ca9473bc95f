"""The erasure list: user ids ForgetUser has erased, one per line.

The server appends (and fsyncs) before it answers ForgetUser, training drops the
listed users' events, and publishing skips their vectors — so an erasure holds
across retraining and rollbacks. Several replicas may share the file: each follows
it (:meth:`ErasureList.refresh`) and appends with ``O_APPEND``.
"""

from __future__ import annotations

import os
from collections.abc import Set
from pathlib import Path

__all__ = ["ErasureList", "append_erasure", "read_erasure_list"]


def read_erasure_list(path: Path) -> frozenset[str]:
    """User ids erased so far; an absent file means nobody was erased."""
    try:
        with path.open(encoding="utf-8") as fh:
            return frozenset(line.strip() for line in fh if line.strip())
    except FileNotFoundError:
        return frozenset()


def append_erasure(path: Path, user_id: str) -> None:
    """Append ``user_id`` durably: an erasure acknowledged to a client survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(user_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
