"""Issue #15's figure pooled over serving runs: the live ÷ cached server p50 of every
repeat, not only the ratio of one run's medians.

Usage::

    .venv/bin/python benchmarks/live_ratio.py RESULTS.json [RESULTS.json ...]
        [--concurrency 8] [--target 1.25] [--label NAME=RESULTS.json,RESULTS.json ...]

Each ``results.json`` is a :mod:`bench_serving` run with the ``cached`` and ``live``
scenarios. In each of its repeats the two ran back to back on their own servers, so
each repeat gives one paired ratio (server p50, server mean, server CPU per request).
On a shared 2-core machine one run's ratio moved between 1.1× and 1.4× from run to
run with the same code: pooling the repeats of several runs gives the median and the
spread that decide whether a change or the target is within the noise. Prints one
line per group of files (``--label``; else one group of all files given).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path


def paired(path: Path, concurrency: int) -> list[tuple[float, float, float]]:
    """Per repeat at ``concurrency``: live ÷ cached of the server p50, the server mean
    and the server CPU per request."""
    runs: dict[str, list[dict]] = {}
    for point in json.loads(path.read_text())["points"]:
        if point["mode"] == "closed" and point["level"] == concurrency:
            runs[point["scenario"]] = point["service_runs"]
    if "live" not in runs or "cached" not in runs:
        raise SystemExit(f"{path}: no cached and live runs at concurrency {concurrency}")
    out = []
    for cached, live in zip(runs["cached"], runs["live"], strict=True):
        c, lv = cached["server"], live["server"]
        out.append(
            (
                lv["handling_p50_ms"] / c["handling_p50_ms"],
                lv["handling_mean_ms"] / c["handling_mean_ms"],
                live["cpu_us_per_request"]["server"] / cached["cpu_us_per_request"]["server"],
            )
        )
    return out


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:  # one repeat: its ratio is all there is
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def summary(label: str, ratios: list[tuple[float, float, float]], target: float) -> str:
    p50, mean, cpu = ([r[i] for r in ratios] for i in range(3))
    cells = []
    for values in (p50, mean, cpu):
        q1, q2, q3 = _quartiles(values)
        cells.append(f"{q2:.2f}× ({q1:.2f}–{q3:.2f})")
    within = sum(1 for r in p50 if r <= target)
    return f"| {label} | {len(ratios)} | " + " | ".join(cells) + f" | {within} of {len(p50)} |"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="*", type=Path, help="bench_serving results.json files")
    p.add_argument("--label", action="append", default=[], help="NAME=FILE,FILE,... a group")
    p.add_argument("--concurrency", type=int, default=8, help="the level compared (default 8)")
    p.add_argument("--target", type=float, default=1.25, help="the p50 ratio to meet")
    args = p.parse_args(argv)
    groups: list[tuple[str, list[Path]]] = []
    for spec in args.label:
        name, _, files = spec.partition("=")
        groups.append((name, [Path(f) for f in files.split(",") if f]))
    if args.results:
        groups.append(("all given", list(args.results)))
    if not groups:
        p.error("give results.json files or --label groups")
    print(
        f"Live ÷ cached at concurrency {args.concurrency}, per repeat: the median over the "
        "repeats (quartiles)."
    )
    print()
    print(
        "| code | repeats | server p50 | server mean | server CPU per request | "
        f"repeats with p50 ≤ {args.target:g}× |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, files in groups:
        ratios = [r for f in files for r in paired(f, args.concurrency)]
        print(summary(name, ratios, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
