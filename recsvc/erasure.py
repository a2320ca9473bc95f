"""The erasure list: user ids ForgetUser has erased, one per line.

The server appends (and fsyncs) before it answers ForgetUser, training drops the
listed users' events, and publishing skips their vectors — so an erasure holds
across retraining and rollbacks.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["append_erasure", "read_erasure_list"]


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
