"""Compaction killed with SIGKILL at random moments: every file is always the old one or
the new one, never half-written, and a rerun finishes the erasure."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recsvc import artifact as art
from recsvc.compaction import erasure_status
from recsvc.erasure import append_erasure

from server_harness import publish_block_model

pytestmark = pytest.mark.slow

FILES = 30
ROWS_PER_FILE = 30_000
ERASED = ("g0u01", "g1u02", "x-erased")


def write_log(directory: Path) -> dict[str, list[tuple[str, ...]]]:
    """The event-log files, as the server writes them; their rows by file name."""
    rng = random.Random(7)
    directory.mkdir(parents=True)
    users = [f"g{g}u{u:02d}" for g in (0, 1) for u in range(30)] + ["x-erased"]
    written = {}
    for f in range(FILES):
        name = f"events-20261201T0000{f:02d}-{f:06d}.csv"
        rows = [
            (rng.choice(users), f"g0i{rng.randrange(12):02d}", str(1_700_000_000 + i),
             "view", "1", "", f"e{f}-{i}")
            for i in range(ROWS_PER_FILE)
        ]  # fmt: skip
        with (directory / name).open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(("user_id", "item_id", "timestamp", "event_type", "quantity",
                             "basket_id", "event_id"))  # fmt: skip
            writer.writerows(rows)
        written[name] = rows
    return written


def read_rows(path: Path) -> list[tuple[str, ...]]:
    with path.open(newline="") as fh:
        return [tuple(r) for r in list(csv.reader(fh))[1:]]


def test_kill_9_at_any_moment_leaves_old_or_new_files_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    root = tmp_path / "artifacts"
    publish_block_model(root, seed=0)
    publish_block_model(root, seed=1)
    versions = art.list_versions(root)
    logs = root / "eventlog"
    original = write_log(logs)
    for user in ERASED:
        append_erasure(root / "erased_users.txt", user)
    command = [sys.executable, "-m", "recsvc", "compact", "--artifacts", str(root)]
    rng = random.Random(11)
    states: set[str] = set()
    sizes = {name: (logs / name).stat().st_size for name in original}

    def rewritten_files() -> int:
        return sum((logs / n).stat().st_size != size for n, size in sizes.items())

    for attempt in range(6):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt == 0:  # the first kill lands once the round is part-way through the files
            deadline = time.monotonic() + 120
            while rewritten_files() == 0 and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        else:  # the others at random moments: start-up, the files, the versions, done
            time.sleep(rng.uniform(0.2, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        rewritten = 0
        for name, rows in original.items():
            got = read_rows(logs / name)
            kept = [r for r in rows if r[0] not in ERASED]
            assert got in (rows, kept), name  # never half of one
            rewritten += got == kept
        states.add("none" if rewritten == 0 else "all" if rewritten == FILES else "some")
        # the versions: what the next round does first makes every one whole
        art.finish_replacements(root)
        assert art.list_versions(root) == versions
        for version in versions:
            art.read_artifact(root / version)  # loads, checksums verified
    assert "some" in states  # at least one kill landed mid-way through the files
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for name, rows in original.items():
        assert read_rows(logs / name) == [r for r in rows if r[0] not in ERASED]
    assert not list(logs.glob(".compact-*"))
    for user in ERASED:
        assert erasure_status(root / "erased_users.txt", user) == "complete"
        for version in versions:
            assert user not in art.read_artifact(root / version).user_ids
