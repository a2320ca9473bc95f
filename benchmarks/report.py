"""Gather the benchmark reports' headline figures beside their targets, in one README.

Usage::

    .venv/bin/python benchmarks/report.py [--results benchmarks/results] [--out FILE]

Method
------
Reads the results the benchmark scripts wrote, whatever of them is there, and types in
no figure: ``serving/`` and ``serving-1m/results.json`` (:mod:`bench_serving`),
``quick/summary.json`` (``bench_serving.py --quick``), ``index/results.json``
(:mod:`bench_index`), ``train/results.json`` (:mod:`bench_train`).
For each target area of issue #4 it writes one table: every measured figure, its floor
or bare baseline, the ratio of the two, the target and whether it is met, each row
linking its report and naming the run date and commit recorded there.

- Recommend, cached user, on the largest catalogue of each serving run (as
  :func:`bench_serving.evaluate_targets` picks it): throughput ÷ the no-op floor's at
  concurrency 32, client p99 ÷ the floor's at each open-loop rate, server handling p50.
- Anonymous session: server handling p50 at concurrency 32.
- Index, on the largest shop of the sweep: recsvc's default setting, the HNSW / IVF
  setting with the best recall within the latency budget, the norm-ordered scan; and
  the index each serving run served (its exact latency is not measured there).
- Training, per dataset: ``recsvc train`` wall ÷ bare (load + build + fit + index) and
  ÷ the bare process's wall, peak RSS ÷ (CSR + factor bytes).

Targets are the reports' own (serving ``config.targets``, the quick summary's
``targets``, index ``config.target_recall`` / ``target_speedup``), else the scripts'
constants; :mod:`bench_train` records none, so the training targets are issue #4's
(:data:`TRAIN_TARGETS`). Ratios are recomputed from the two medians shown. A figure no
report holds reads "not measured"; a missing or unreadable report is named at the top.
Then: where the time goes (the serving profiles' py-spy categories and CPU per request,
the training steps) and links to every report, plot and profile in the folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_index import TARGET_RECALL, TARGET_SPEEDUP, _mib, _us
from bench_serving import TARGETS as SERVING_TARGETS
from bench_serving import _ms, get
from bench_train import _s

RESULTS = Path(__file__).resolve().parent / "results"
NOT_MEASURED = "not measured"
CONCURRENCY = 32
"""The closed-loop concurrency issue #4 sets the cached and session targets at."""
TRAIN_TARGETS = {"wall_ratio_max": 1.3, "rss_ratio_max": 2.0}
"""Issue #4's training targets (bench_train.py records none; a report's ``targets`` wins)."""
TOP = 5
"""Profile categories and training steps listed under "where the time goes"."""

REPORTS: dict[str, tuple[str, str, str]] = {  # name: results file, report to link, its command
    "index": ("index/results.json", "index/README.md", "make bench-index"),
    "serving": ("serving/results.json", "serving/README.md", "make bench-serving"),
    "quick": ("quick/summary.json", "quick/summary.json", "make bench-quick"),
    "serving-1m": ("serving-1m/results.json", "serving-1m/README.md", "make bench-serving-1m"),
    "train": ("train/results.json", "train/README.md", "make bench-train"),
}
AREAS: dict[str, tuple[str, ...]] = {  # table heading: the reports that feed it
    "Recommend, cached user, k = 10": ("serving", "quick", "serving-1m"),
    "Anonymous 5-item session": ("serving", "quick", "serving-1m"),
    "Item index (recall@20 against exact, single-query latency)": (
        "index",
        "serving",
        "serving-1m",
    ),
    "Training pipeline (`recsvc train` against a bare implicit fit + index)": ("train",),
}
CACHED, SESSION, INDEX, TRAIN = AREAS


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None
    source: str

    def cells(self) -> list[str]:
        met = NOT_MEASURED if self.met is None else "yes" if self.met else "**no**"
        return [self.figure, self.measured, self.baseline, self.ratio, self.target, met]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _f(x: Any, fmt: Callable[[float], str]) -> str:
    value = _num(x)
    return NOT_MEASURED if value is None else fmt(value)


def _ms_unit(x: float) -> str:
    return f"{_ms(x)} ms"


def _qps(x: float) -> str:
    return f"{x:,.0f} req/s"


def _items(n: Any) -> str:
    return f"{_f(n, lambda v: f'{v:,.0f}')} items"


def _index_target(recall: float, speedup: float) -> str:
    return f"recall ≥ {recall:g} at ≤ 1/{speedup:g} of exact"


def versus(
    figure: str,
    value: Any,
    base: Any,
    fmt: Callable[[float], str],
    base_label: str,
    target: float,
    source: str,
    *,
    at_least: bool = False,
) -> Row:
    """A figure against its floor or baseline: the ratio decides the target."""
    v, b = _num(value), _num(base)
    ratio = v / b if v is not None and b else None
    met = None if ratio is None else ratio >= target if at_least else ratio <= target
    return Row(
        figure,
        _f(v, fmt),
        f"{_f(b, fmt)} ({base_label})",
        _f(ratio, lambda r: f"{r:.2f}×"),
        f"{'≥' if at_least else '≤'} {target:g}×",
        met,
        source,
    )


def capped(figure: str, value: Any, limit: float, source: str) -> Row:
    """A server-side latency against an absolute limit (no floor to divide by)."""
    v = _num(value)
    met = None if v is None else v <= limit
    return Row(figure, _f(v, _ms_unit), "-", "-", f"≤ {_ms_unit(limit)}", met, source)


# --------------------------------------------------------------------------- the reports


def _main_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A serving run's points on its largest catalogue, the one its targets are read on."""
    points = [p for p in report.get("points") or [] if _num(p.get("catalogue"))]
    main = max((p["catalogue"] for p in points), default=None)
    return [p for p in points if p["catalogue"] == main]


def _cached_point(report: dict[str, Any]) -> dict[str, Any]:
    """The cached-user point at the target's concurrency ({} if the run has none)."""
    want = ("cached", "closed", CONCURRENCY)
    points = _main_points(report)
    return next(
        (p for p in points if (p.get("scenario"), p.get("mode"), p.get("level")) == want), {}
    )


def serving_rows(report: dict[str, Any], source: str) -> Iterator[tuple[str, Row]]:
    t = {**SERVING_TARGETS, **(get(report, "config/targets") or {})}
    points = _main_points(report)
    if not points:
        return
    for p in points:
        m, items = p.get("median") or {}, _items(p.get("model_items"))
        server_p50 = get(m, "service/server/handling_p50_ms")
        closed = p.get("mode") == "closed" and p.get("level") == CONCURRENCY
        if closed and p.get("scenario") == "cached":
            yield (
                CACHED,
                versus(
                    f"throughput, c={CONCURRENCY}, {items}",
                    get(m, "service/qps"),
                    get(m, "floor/qps"),
                    _qps,
                    "floor",
                    t["throughput_ratio_min"],
                    source,
                    at_least=True,
                ),
            )
            yield (
                CACHED,
                capped(
                    f"server p50, c={CONCURRENCY}, {items}",
                    server_p50,
                    t["cached_server_p50_ms_max"],
                    source,
                ),
            )
        elif p.get("mode") == "open" and p.get("scenario") == "cached":
            rate = _f(get(m, "service/offered_rate"), _qps)
            yield (
                CACHED,
                versus(
                    f"client p99, open loop at {rate}, {items}",
                    get(m, "service/latency_ms/p99"),
                    get(m, "floor/latency_ms/p99"),
                    _ms_unit,
                    "floor, same schedule",
                    t["open_loop_p99_ratio_max"],
                    source,
                ),
            )
        elif closed and p.get("scenario") == "session":
            figure = f"server p50, c={CONCURRENCY}, {items}"
            yield SESSION, capped(figure, server_p50, t["session_server_p50_ms_max"], source)
    yield from served_index_rows(report, points[0]["catalogue"], source)


def served_index_rows(report: dict[str, Any], main: Any, source: str) -> Iterator[tuple[str, Row]]:
    """The index a serving run served: recall from ``recsvc train``, search time in use."""
    shops = (report.get("shops") or {}).values()
    shop = next((s for s in shops if get(s, "config/n_items") == main), None)
    if shop is None:
        return
    search = get(_cached_point(report), "median/service/server/index_search_p50_ms")
    yield (
        INDEX,
        Row(
            f"served `{shop.get('index_kind')}` index, {_items(shop.get('model_items'))}",
            f"recall {_f(shop.get('index_recall'), lambda r: f'{r:.4f}')} (`recsvc train`'s "
            f"check), search p50 {_f(search, _ms_unit)} in the server at c={CONCURRENCY}",
            f"exact: {NOT_MEASURED} in this run",
            NOT_MEASURED,
            _index_target(TARGET_RECALL, TARGET_SPEEDUP),
            None,
            source,
        ),
    )


def quick_rows(summary: dict[str, Any], source: str) -> Iterator[tuple[str, Row]]:
    t = summary.get("targets") or {}
    items = _items(summary.get("model_items"))

    def target(key: str, fallback: str) -> float:
        return float(t.get(key, SERVING_TARGETS[fallback]))

    yield (
        CACHED,
        versus(
            f"throughput, quick run, {items}",
            summary.get("recommend_qps"),
            summary.get("floor_qps"),
            _qps,
            "floor",
            target("ratio_min", "throughput_ratio_min"),
            source,
            at_least=True,
        ),
    )
    rate = _f(summary.get("open_rate"), _qps)
    yield (
        CACHED,
        versus(
            f"client p99, open loop at {rate}, {items}",
            summary.get("open_client_p99_ms"),
            summary.get("open_floor_p99_ms"),
            _ms_unit,
            "floor, same schedule",
            target("open_p99_ratio_max", "open_loop_p99_ratio_max"),
            source,
        ),
    )
    limit = target("server_p50_ms_max", "cached_server_p50_ms_max")
    yield (
        CACHED,
        capped(f"server p50, quick run, {items}", summary.get("server_p50_ms"), limit, source),
    )
    limit = target("session_server_p50_ms_max", "session_server_p50_ms_max")
    figure = f"server p50, quick run, {items}"
    yield SESSION, capped(figure, summary.get("session_server_p50_ms"), limit, source)


def index_rows(report: dict[str, Any], source: str) -> Iterator[tuple[str, Row]]:
    shops = [s for s in report.get("shops") or [] if s.get("variants")]
    if not shops:
        return
    shop = max(shops, key=lambda s: _num(s.get("indexed_items")) or 0.0)
    recall_min = float(get(report, "config/target_recall") or TARGET_RECALL)
    speedup = float(get(report, "config/target_speedup") or TARGET_SPEEDUP)
    variants = shop["variants"]
    exact = next((v for v in variants if v.get("family") == "exact"), {})
    exact_us = _num(exact.get("single_us_median"))
    budget = exact_us / speedup if exact_us else None
    within = [  # the approximate settings fast enough for the target
        v
        for v in variants
        if v.get("family") in ("hnsw", "ivf")
        and budget is not None
        and (_num(v.get("single_us_median")) or budget) < budget
    ]
    picks = {  # variant: why it is shown (the same variant once, under its first reason)
        "recsvc's default in that run": next(
            (v for v in variants if v.get("name") == get(shop, "target/default_variant")), None
        ),
        f"best HNSW / IVF recall within 1/{speedup:g} of exact": max(
            within, key=lambda v: _num(v.get("recall")) or 0.0, default=None
        ),
        "": next((v for v in variants if v.get("family") == "norm-scan"), None),
    }
    seen: set[str] = set()
    for label, v in picks.items():
        if v is None or v.get("name") in seen:
            continue
        seen.add(v.get("name", ""))
        recall, us = _num(v.get("recall")), _num(v.get("single_us_median"))
        ok = (
            None
            if recall is None or us is None or budget is None
            else (recall >= recall_min and us <= budget)
        )
        yield (
            INDEX,
            Row(
                f"{v.get('name')}{f' ({label})' if label else ''}, "
                f"{_items(shop.get('indexed_items'))}",
                f"recall {_f(recall, lambda r: f'{r:.4f}')} at {_f(us, _us)}",
                f"{_f(exact_us, _us)} (exact)",
                _f(exact_us / us if exact_us and us else None, lambda r: f"1/{r:.0f} of exact"),
                _index_target(recall_min, speedup),
                ok,
                source,
            ),
        )


def train_rows(report: dict[str, Any], source: str) -> Iterator[tuple[str, Row]]:
    t = {**TRAIN_TARGETS, **(report.get("targets") or {})}
    for size in report.get("sizes") or []:
        label = size.get("dataset") or _f(size.get("n_events"), lambda n: f"{n:,.0f} events")
        m = size.get("median") or {}
        wall = get(m, "recsvc/wall_seconds")
        csr, factors = _num(get(m, "matrix/csr_bytes")), _num(get(m, "matrix/factor_bytes"))
        yield (
            TRAIN,
            versus(
                f"wall, {label}",
                wall,
                get(m, "bare/load_build_fit_index_seconds"),
                _s,
                "bare load + build + fit + index",
                t["wall_ratio_max"],
                source,
            ),
        )
        yield (
            TRAIN,
            versus(
                f"process wall, {label}",
                wall,
                get(m, "bare/wall_seconds"),
                _s,
                "bare process",
                t["wall_ratio_max"],
                source,
            ),
        )
        yield (
            TRAIN,
            versus(
                f"peak RSS, {label}",
                get(m, "recsvc/max_rss_bytes"),
                csr + factors if csr is not None and factors is not None else None,
                _mib,
                "CSR + factors",
                t["rss_ratio_max"],
                source,
            ),
        )


ROWS: dict[str, Callable[[dict[str, Any], str], Iterator[tuple[str, Row]]]] = {
    "serving": serving_rows,
    "serving-1m": serving_rows,
    "quick": quick_rows,
    "index": index_rows,
    "train": train_rows,
}


# --------------------------------------------------------------------------- where the time goes


def serving_time(name: str, report: dict[str, Any], source: str) -> list[str]:
    cats = get(report, "profile/summary/categories") or {}
    top = sorted(cats.items(), key=lambda kv: -kv[1])[:TOP]
    point = _cached_point(report)
    cpu = get(point, "median/service/cpu_us_per_request/server")
    floor = get(point, "median/floor/cpu_us_per_request/server")
    if not top and cpu is None:
        return []
    us = f"{_f(cpu, _us)} of server CPU per cached request at c={CONCURRENCY}"
    us += f" (floor {_f(floor, _us)})"
    shares = ", ".join(f"{k} {v:.0%}" for k, v in top) or NOT_MEASURED
    profile = f"[profile]({name}/profile.md)" if top else "no profile"
    return [f"- {source}: {us}; busy time: {shares} ({profile})."]


def train_time(report: dict[str, Any], source: str) -> list[str]:
    lines = []
    for size in report.get("sizes") or []:
        m = size.get("median") or {}
        steps = sorted((get(m, "recsvc/timings") or {}).items(), key=lambda kv: -kv[1])[:TOP]
        if not steps:
            continue
        label = size.get("dataset") or _f(size.get("n_events"), lambda n: f"{n:,.0f} events")
        parts = ", ".join(f"{k} {_s(v)}" for k, v in steps)
        rest = _f(get(m, "recsvc/unrecorded_seconds"), _s)
        wall = _f(get(m, "recsvc/wall_seconds"), _s)
        lines.append(f"- {source}, {label}: {wall} wall; {parts}; outside the manifest {rest}.")
    return lines


# --------------------------------------------------------------------------- the README


def _load(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    return (data, None) if isinstance(data, dict) else (None, "unreadable (not an object)")


def _source(name: str, report: dict[str, Any]) -> str:
    date = str(report.get("date") or "date not recorded")[:10]
    return f"[{name}]({REPORTS[name][1]}) {date}, {report.get('git') or 'commit not recorded'}"


def _links(results: Path, out: Path) -> list[str]:
    lines = []
    for path in sorted(results.iterdir()):
        if path.is_file() and path.suffix == ".md" and path.resolve() != out.resolve():
            lines.append(f"- [{path.name}]({path.name})")
        elif path.is_dir():
            files = sorted(
                f for f in path.iterdir() if f.suffix in (".md", ".json", ".png", ".svg")
            )
            files.sort(key=lambda f: f.name != "README.md")  # the report first
            cells = ", ".join(f"[{f.name}]({path.name}/{f.name})" for f in files)
            lines.append(f"- `{path.name}/`: {cells}")
    return lines


def render(results: Path, out: Path) -> str:
    loaded: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name, (file, _, command) in REPORTS.items():
        data, problem = _load(results / file)
        if data is None:
            problems.append(f"- `{file}`: {problem} (written by `{command}`)")
        else:
            loaded[name] = data
    rows: dict[str, list[Row]] = {area: [] for area in AREAS}
    for name, report in loaded.items():
        for area, row in ROWS[name](report, _source(name, report)):
            rows[area].append(row)

    lines = [
        "# Benchmark summary",
        "",
        "Generated by [`benchmarks/report.py`](../report.py) from the results JSON in this "
        "folder (`make bench-report`; `make bench` re-runs every benchmark first): do not "
        "edit by hand. Each row links the report it comes from, with the date and commit of "
        "that run. Floors, baselines and targets are the ones the reports recorded; "
        "`bench_train.py` records no targets, so the training ones are issue #4's. Ratios "
        "are taken within one run; figures from different runs (other days, other load on "
        "a shared machine) are not comparable with each other.",
        "",
    ]
    if problems:
        lines += ["Reports not read:", "", *problems, ""]
    header = ["figure", "measured", "floor / baseline", "ratio", "target", "met", "report"]
    for area, area_rows in rows.items():
        lines += [f"## {area}", ""]
        if not area_rows:
            files = ", ".join(f"`{REPORTS[n][0]}`" for n in AREAS[area])
            lines += [f"{NOT_MEASURED.capitalize()}: no report read ({files}).", ""]
            continue
        lines += ["| " + " | ".join(header) + " |", "|---" * 5 + "|:---:|---|"]
        lines += ["| " + " | ".join([*r.cells(), r.source]) + " |" for r in area_rows]
        lines.append("")

    lines += [
        "## Runs",
        "",
        "| report | date | commit | machine | command |",
        "|---|---|---|---|---|",
    ]
    for name, report in loaded.items():
        mach = report.get("machine") or {}
        lines.append(
            f"| [{name}]({REPORTS[name][1]}) | {report.get('date', '?')} | "
            f"{report.get('git', '?')} | {mach.get('nproc', '?')} cores, "
            f"{mach.get('cpu', '?')} | `{report.get('command', '?')}` |"
        )
    lines += ["", "## Where the time goes", ""]
    time_lines = []
    for name in ("serving", "serving-1m"):
        if name in loaded:
            time_lines += serving_time(name, loaded[name], _source(name, loaded[name]))
    if "train" in loaded:
        time_lines += train_time(loaded["train"], _source("train", loaded["train"]))
    lines += time_lines or [f"- {NOT_MEASURED}"]
    analysis = {
        "serving/profile.md": "where a cached request's CPU goes",
        "levers.md": "what each serving lever bought, and the bound CPU per request puts "
        "on the throughput ratio",
    }
    lines += ["", "The analysis:", ""]
    lines += [
        f"- [{f}]({f}): {what}" if (results / f).exists() else f"- `{f}`: missing"
        for f, what in analysis.items()
    ]
    lines += [
        "",
        "## Every report",
        "",
        *_links(results, out),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Summarise the benchmark reports beside their targets in one README."
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the reports")
    p.add_argument("--out", type=Path, help="the summary (default: <results>/README.md)")
    args = p.parse_args(argv)
    out = args.out or args.results / "README.md"
    out.write_text(render(args.results, out))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
