"""Compaction throughput: how fast erased customers leave a large event log.

Usage (from the repository, with ``make install`` done)::

    .venv/bin/python benchmarks/bench_compact.py --rows 10000000 --out benchmarks/results/compact

Writes an event log of ``--rows`` rows in files of ``--rows-per-file`` (as the server
writes them: the canonical CSV with an event id; 20k customers, 5k items), then times
:func:`recsvc.compaction.compact` twice on it, each run on a fresh copy:

- ``spread``: ``--erased`` customers whose rows are in every file (every file is read
  and rewritten: the worst case, rows/s of the CSV pass);
- ``one file``: one customer whose rows are in one file only (the byte pre-filter
  skips the other files without parsing them: the usual case of a week-old log).

Reports rows/s and MB/s of each, the machine and the command, as JSON and a README in
``--out``. The model versions are left out (an empty artifact root): their rewrite is
a read and a write of one version, timed by the tests, not by rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _env import git_revision, machine

from recsvc.compaction import compact
from recsvc.erasure import append_erasures

HEADER = "user_id,item_id,timestamp,event_type,quantity,basket_id,event_id\n"


def write_log(directory: Path, rows: int, per_file: int, seed: int = 0) -> int:
    """``rows`` rows in files of ``per_file``; the bytes written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    written = 0
    for f, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        users = rng.integers(0, 20_000, n)
        items = rng.integers(0, 5_000, n)
        stamps = 1_790_000_000 + start + np.arange(n)
        lines = [
            f"c{u:05d},i{i:04d},{t},view,1,,e{start + j}"
            for j, (u, i, t) in enumerate(zip(users.tolist(), items.tolist(), stamps.tolist(),
                                              strict=True))
        ]  # fmt: skip
        text = HEADER + "\n".join(lines) + "\n"
        path = (
            directory / f"events-20261201T{f // 3600:02d}{f // 60 % 60:02d}{f % 60:02d}-{f:06d}.csv"
        )
        path.write_text(text)
        written += len(text)
    return written


def timed(log: Path, erased: list[str], work: Path) -> dict[str, Any]:
    """One compaction of a fresh copy of ``log`` erasing ``erased``."""
    if work.exists():
        shutil.rmtree(work)
    root = work / "artifacts"
    root.mkdir(parents=True)
    copy = work / "eventlog"
    shutil.copytree(log, copy)
    erasure = root / "erased_users.txt"
    append_erasures(erasure, erased)
    started = time.perf_counter()
    report = compact(root, erasure, [copy])
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 3),
        "rows_parsed": report.rows_read,
        "rows_removed": report.rows_removed,
        "files_rewritten": report.files_rewritten,
        "completed": len(report.completed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-file", type=int, default=500_000)
    parser.add_argument("--erased", type=int, default=100, help="customers erased (spread)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-compact-") as tmp:
        log = Path(tmp) / "log"
        t = time.perf_counter()
        size = write_log(log, args.rows, args.rows_per_file)
        print(f"wrote {args.rows:,} rows ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
        spread = timed(log, [f"c{u:05d}" for u in range(args.erased)], Path(tmp) / "work")
        # a customer of the first file only: an id no other file holds
        with (log / sorted(p.name for p in log.iterdir())[0]).open("a") as fh:
            fh.write("lone-customer,i0001,1790000000,view,1,,lone\n")
        lone = ["lone-customer"]
        one = timed(log, lone, Path(tmp) / "work")
    total_rows = args.rows
    result = {
        "command": "python benchmarks/bench_compact.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "revision": git_revision(),
        "machine": machine(),
        "rows": total_rows,
        "megabytes": round(size / 1e6, 1),
        "spread": {**spread, "rows_per_second": round(total_rows / spread["seconds"]),
                   "mb_per_second": round(size / 1e6 / spread["seconds"], 1)},
        "one_file": {**one, "rows_per_second": round(total_rows / one["seconds"]),
                     "mb_per_second": round(size / 1e6 / one["seconds"], 1)},
    }  # fmt: skip
    m = result["machine"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compact.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "README.md").write_text(
        "# Compaction throughput\n\n"
        f"`{result['command']}` at `{result['revision']}`; machine: {m['nproc']} cores, "
        f"{m['cpu']}, {m['ram_gib']} GiB, load average at start "
        f"{m['loadavg_at_start'][0]:.1f}.\n\n"
        f"An event log of {total_rows:,} rows ({result['megabytes']} MB) in files of "
        f"{args.rows_per_file:,} rows.\n\n"
        "| case | seconds | rows/s (whole log) | MB/s | rows parsed | rows removed "
        "| files rewritten |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {name} | {r['seconds']} | {r['rows_per_second']:,} | {r['mb_per_second']} | "
            f"{r['rows_parsed']:,} | {r['rows_removed']:,} | {r['files_rewritten']} |\n"
            for name, r in (
                (f"{args.erased} customers in every file", result["spread"]),
                ("1 customer in one file", result["one_file"]),
            )
        )
    )
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
