"""Two commits' serving side by side: ``bench_serving.py --quick`` of each, alternating.

Usage (from the repository, with ``make install`` done)::

    .venv/bin/python benchmarks/ab_serving.py OLD_REV NEW_REV --rounds 2 --out DIR

Each side runs from a detached worktree of its commit, its own code first on the path
(``PYTHONPATH``), from a neutral working directory, with this checkout's virtualenv
(the same libraries on both sides) and this checkout's benchmark (the same harness and
figures on both sides: only the code under test differs); runs alternate old, new,
old, new, so drift of a shared, noisy machine falls on both. ``DIR/README.md`` gets
the medians over the rounds of each side's figures and their ratio; each run's
``summary.json`` stays beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIGURES = (
    ("ratio", "cached Recommend / no-op floor, throughput"),
    ("recommend_qps", "cached Recommend, calls/s (concurrency 32)"),
    ("server_p50_ms", "cached Recommend, server p50 ms"),
    ("server_p99_ms", "cached Recommend, server p99 ms"),
    ("session_ratio", "anonymous session / floor, throughput"),
    ("session_server_p50_ms", "anonymous session, server p50 ms"),
    ("open_p99_ratio", "open loop p99 / floor p99"),
    ("cpu_us_per_request/cached", "cached Recommend, server CPU µs per request"),
    ("cpu_us_per_request/session", "anonymous session, server CPU µs per request"),
    ("cpu_us_per_request/floor", "no-op floor, server CPU µs per request"),
    ("cached_cpu_ratio_to_floor", "cached / floor, server CPU per request"),
    ("session_cpu_ratio_to_cached", "session / cached, server CPU per request"),
)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="the baseline commit")
    p.add_argument("new", help="the commit measured against it")
    p.add_argument("--rounds", type=int, default=2, help="runs per side (default 2)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    out_dir = args.out.resolve()  # the runs work from a neutral directory
    sides = {"old": _git("rev-parse", args.old), "new": _git("rev-parse", args.new)}
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="ab-serving-") as tmp:
        work = Path(tmp)
        try:
            for side, rev in sides.items():
                tree = work / side
                _git("worktree", "add", "--quiet", "--detach", str(tree), rev)
                # the roles install as recsvc.training and recsvc.serving
                for role in ("training", "serving"):
                    link = tree / "recsvc" / role
                    if (tree / role).is_dir() and not link.exists():
                        link.symlink_to(Path("..") / role)
            for i in range(1, args.rounds + 1):
                for side in sides:
                    tree = work / side
                    out = out_dir / f"{side}{i}"
                    print(f"round {i}: {side} ({sides[side][:10]})", flush=True)
                    with (out_dir / f"{side}{i}.log").open("w") as log:
                        subprocess.run(
                            [sys.executable, str(REPO / "benchmarks" / "bench_serving.py"),
                             "--quick", "--workdir", str(work / f"shop-{side}"), "--out", str(out)],
                            cwd=work, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=log, stderr=subprocess.STDOUT, check=True,
                        )  # fmt: skip
                    runs[side].append(json.loads((out / "summary.json").read_text()))
        finally:
            for side in sides:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / side)],
                    check=False,
                    capture_output=True,
                )
    (out_dir / "README.md").write_text(_report(sides, runs, args))
    print((out_dir / "README.md").read_text())
    return 0


def _figure(summary: dict[str, Any], path: str) -> float:
    """A summary's figure by its ``a/b`` path."""
    value: Any = summary
    for part in path.split("/"):
        value = value[part]
    return float(value)


def _report(
    sides: dict[str, str], runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace
) -> str:
    machine = runs["new"][0].get("machine", {})
    lines = [
        f"# Serving, {args.old} against {args.new}",
        "",
        f"`benchmarks/bench_serving.py --quick` (100k items), {args.rounds} alternating "
        f"rounds per side; medians. old = `{sides['old'][:10]}`, new = `{sides['new'][:10]}`; "
        f"machine: {machine.get('nproc')} cores, {machine.get('cpu')}.",
        "",
        "| figure | old | new | new / old |",
        "|---|---|---|---|",
    ]
    for key, label in FIGURES:
        old = statistics.median(_figure(r, key) for r in runs["old"])
        new = statistics.median(_figure(r, key) for r in runs["new"])
        lines.append(f"| {label} | {old:.3f} | {new:.3f} | {new / old:.2f} |")
    lines += [
        "",
        "Load average at the start of each run: "
        + ", ".join(
            f"{side}{i + 1} {r['machine']['loadavg_at_start'][0]:.1f}"
            for side in ("old", "new")
            for i, r in enumerate(runs[side])
        ),
        "",
        "Reproduce: `.venv/bin/python benchmarks/ab_serving.py "
        f"{args.old} {args.new} --rounds {args.rounds} --out {args.out}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
