"""Benchmark ``recsvc train --engine spark`` (local mode) against ``--engine implicit``.

Usage::

    .venv/bin/python benchmarks/bench_spark_train.py --sizes 1000000 10000000 --repeats 2 \\
        [--master 'local[2]'] [--out benchmarks/results/spark-train] [--workdir /tmp/recsvc-bench]

Method
------
The synthetic shops of ``benchmarks/bench_train.py`` (:func:`bench_train.ensure_shop`,
the same seed, cached under ``--workdir``). Per size, the two engines alternate
``--repeats`` times (implicit, spark, implicit, spark, ...), each ``recsvc -q train``
as a user types it in a fresh process with a fresh artifact root and the default
settings. Measured per run:

- wall seconds, and CPU seconds of the process tree (the trainer and what it reaped:
  ``RUSAGE_CHILDREN`` before and after) and of the JVM (``/proc/<pid>/stat``, sampled
  until it exits);
- peak RSS of the driver (the Python trainer: ``VmHWM``), and of the Spark JVM (local
  mode: the executors run inside it), each the high-water mark its kernel keeps,
  sampled every 0.2 s until the process exits;
- the step timings the trainer stores in the manifest (``fit`` is the ALS fit,
  Spark's including the session start, the matrix's trip to the JVM and the factors'
  trip back).

Reported: medians, every raw value, ratios spark/implicit of medians, and the
machine. Results: ``<out>/results.json`` and ``<out>/README.md``.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import Shop, ensure_shop

ENGINES = ("implicit", "spark")


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "java"
    except OSError:
        return False


def run_train(shop: Shop, engine: str, master: str, workdir: Path) -> dict[str, Any]:
    """One ``recsvc -q train`` with ``engine``; wall, CPU, peaks and manifest timings."""
    artifacts = Path(tempfile.mkdtemp(prefix="artifacts-", dir=workdir))
    cmd = [
        str(Path(sys.executable).parent / "recsvc"), "-q", "train", *shop.data_flags(),
        "--artifacts", str(artifacts), "--engine", engine, "--spark-master", master,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    load = os.getloadavg()[0]
    log = workdir / f"train-{engine}.log"
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with log.open("wb") as out:
            started = time.perf_counter()
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            driver_peak = 0
            jvm_peak: dict[int, int] = {}
            jvm_cpu: dict[int, float] = {}
            while child.poll() is None:
                driver_peak = max(driver_peak, _status(child.pid).get("VmHWM", 0))
                for pid in _descendants(child.pid):
                    if _is_java(pid):
                        jvm_peak[pid] = max(jvm_peak.get(pid, 0), _status(pid).get("VmHWM", 0))
                        jvm_cpu[pid] = max(jvm_cpu.get(pid, 0.0), _cpu_seconds(pid))
                time.sleep(0.2)
            wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if child.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {child.returncode}:\n{log.read_text()[-3000:]}"
            )
        from recsvc.artifact import read_manifest

        manifest = read_manifest(next(artifacts.glob("*/manifest.json")).parent)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    return {
        "wall_seconds": wall,
        "driver_peak_rss_bytes": driver_peak,
        "jvm_peak_rss_bytes": max(jvm_peak.values(), default=0),
        "jvm_cpu_seconds": sum(jvm_cpu.values()),
        "tree_cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "loadavg_before": load,
        "timings": {k.removesuffix("_seconds"): v for k, v in manifest.timings.items()},
        "engine": manifest.config.als.engine,
        "users": manifest.data.users,
        "items": manifest.data.items,
        "interactions": manifest.data.interactions,
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = (
        "wall_seconds",
        "tree_cpu_seconds",
        "driver_peak_rss_bytes",
        "jvm_peak_rss_bytes",
        "jvm_cpu_seconds",
    )
    med = {e: {k: _median(rs, k) for k in keys} for e, rs in runs.items()}
    for e, rs in runs.items():
        med[e]["fit_seconds"] = float(statistics.median(r["timings"]["fit"] for r in rs))
    imp, spk = med["implicit"], med["spark"]
    return {
        "median": med,
        "ratios_spark_over_implicit": {
            "wall": spk["wall_seconds"] / imp["wall_seconds"],
            "fit": spk["fit_seconds"] / imp["fit_seconds"],
            "driver_peak": spk["driver_peak_rss_bytes"] / imp["driver_peak_rss_bytes"],
            "driver_plus_jvm_peak": (spk["driver_peak_rss_bytes"] + spk["jvm_peak_rss_bytes"])
            / imp["driver_peak_rss_bytes"],
        },
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def render(report: dict[str, Any]) -> str:
    lines = [
        "# `recsvc train --engine spark` (local mode) against `--engine implicit`",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. Spark master `{report['master']}`; "
        f"{report['repeats']} alternating runs per size, medians.",
        "",
        "| events | engine | wall | ALS fit | CPU (tree) | driver peak RSS | JVM peak RSS "
        "| JVM CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in report["sizes"]:
        for engine in ENGINES:
            m = size["summary"]["median"][engine]
            lines.append(
                f"| {size['label']} | {engine} | {m['wall_seconds']:.1f} s | "
                f"{m['fit_seconds']:.1f} s | {m['tree_cpu_seconds']:.0f} s | "
                f"{_mib(m['driver_peak_rss_bytes'])} | "
                f"{_mib(m['jvm_peak_rss_bytes']) if m['jvm_peak_rss_bytes'] else '-'} | "
                f"{m['jvm_cpu_seconds']:.0f} s |"
            )
    lines += ["", "Ratios spark / implicit (of medians):", ""]
    for size in report["sizes"]:
        r = size["summary"]["ratios_spark_over_implicit"]
        lines.append(
            f"- {size['label']}: wall {r['wall']:.2f}x, fit {r['fit']:.2f}x, driver peak "
            f"{r['driver_peak']:.2f}x, driver + JVM peak {r['driver_plus_jvm_peak']:.2f}x"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/spark-train"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = []
    for n in args.sizes:
        shop = ensure_shop(n, args.workdir)
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        for _ in range(args.repeats):
            for engine in ENGINES:
                run = run_train(shop, engine, args.master, args.workdir)
                runs[engine].append(run)
                print(f"[{shop.label}] {engine}: {run['wall_seconds']:.1f} s wall, fit "
                      f"{run['timings']['fit']:.1f} s, driver "
                      f"{_mib(run['driver_peak_rss_bytes'])}, JVM "
                      f"{_mib(run['jvm_peak_rss_bytes'])}", flush=True)  # fmt: skip
        sizes.append({"label": shop.label, "runs": runs, "summary": summarise(runs)})
    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}",
        "master": args.master,
        "repeats": args.repeats,
        "sizes": sizes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render(report))
    print((args.out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
