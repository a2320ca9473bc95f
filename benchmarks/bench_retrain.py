"""The retraining loop's cost: ``recsvc retrain`` on Online Retail II plus a day of
synthetic live events, beside ``recsvc train`` on Online Retail II alone.

Usage (from the repository, with ``make install`` done)::

    .venv/bin/python benchmarks/bench_retrain.py --out benchmarks/results/retrain

The day of live events is an event log as a server writes it: ``--events`` events
(70% views, 20% add-to-carts, 10% purchases) of customers and items drawn from the
dataset, in the day after its last event. Each side runs ``--rounds`` times in its own
process, alternating (train, retrain, train, retrain), into its own artifact root;
wall time and peak RSS (``wait4``) are reported as medians with their ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _env import REPO, git_revision, machine

from recsvc.training.loading import load_events

RETAIL = REPO.parent / "shared" / "data" / "online_retail_ii.csv.gz"


def write_live_day(data: Path, directory: Path, n: int, seed: int = 0) -> int:
    """An event log of ``n`` events in the day after ``data``'s last event."""
    table, _ = load_events(data, format="online-retail")
    users = np.unique(np.array([u for u in table["user_id"].to_pylist() if u is not None]))
    items = np.unique(np.array(table["item_id"].to_pylist()))
    start = int(table["timestamp"].to_numpy().max()) + 60
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["view", "add_to_cart", "purchase"], size=n, p=[0.7, 0.2, 0.1])
    directory.mkdir(parents=True)
    path = directory / "events-20111210T000000-000000.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("user_id", "item_id", "timestamp", "event_type", "quantity",
                         "basket_id", "event_id"))  # fmt: skip
        for i in range(n):
            writer.writerow((rng.choice(users), rng.choice(items),
                             start + int(rng.integers(0, 86_400)), kinds[i], 1, "",
                             f"live-{i}"))  # fmt: skip
    return n


def run(command: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
    return {"seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="live events in the day")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    recsvc = [sys.executable, "-m", "recsvc", "-q"]
    base = ["--events", str(RETAIL), "--format", "online-retail"]
    runs: dict[str, list[dict[str, float]]] = {"train": [], "retrain": []}
    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        logs = Path(tmp) / "eventlog"
        write_live_day(RETAIL, logs, args.events)
        for r in range(args.rounds):
            for side in ("train", "retrain"):
                root = Path(tmp) / f"{side}-{r}"
                extra = ["--event-log", str(logs)] if side == "retrain" else []
                runs[side].append(run([*recsvc, side, *base, *extra, "--artifacts", str(root)]))
                print(side, r, runs[side][-1], flush=True)
    med: dict[str, Any] = {
        side: {k: round(statistics.median(x[k] for x in rs), 2) for k in rs[0]}
        for side, rs in runs.items()
    }
    ratio = {k: round(med["retrain"][k] / med["train"][k], 2) for k in med["train"]}
    result = {
        "command": "python benchmarks/bench_retrain.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "revision": git_revision(),
        "machine": machine(),
        "live_events": args.events,
        "median": med,
        "retrain_over_train": ratio,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "retrain.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    (args.out / "README.md").write_text(
        "# The retraining loop on Online Retail II plus a day of live events\n\n"
        f"`{result['command']}` at `{result['revision']}`; machine: {m['nproc']} cores, "
        f"{m['cpu']}, {m['ram_gib']} GiB. Medians of {args.rounds} alternating runs.\n\n"
        "| command | wall s | peak RSS GiB |\n|---|---|---|\n"
        f"| `recsvc train` (Online Retail II) | {med['train']['seconds']} | "
        f"{med['train']['peak_rss_gib']} |\n"
        f"| `recsvc retrain` (+ {args.events:,} live events: train, gate, publish, "
        f"retention) | {med['retrain']['seconds']} | {med['retrain']['peak_rss_gib']} |\n"
        f"| ratio | {ratio['seconds']} | {ratio['peak_rss_gib']} |\n"
    )
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
