"""Serving throughput while the next model's user vectors are published: unpaced vs paced.

Usage::

    .venv/bin/python benchmarks/bench_publish.py [--repeats 3] [--concurrency 32]
        [--channels 4] [--before 8] [--after 8] [--copies 4]
        [--variants unpaced paced | RATE:BATCH ...] [--probe-batches 100 1000 10000]
        [--workdir /tmp/recsvc-bench] [--out benchmarks/results/publish]

What it answers: how much serving throughput does loading a new version's user
vectors into the serving Redis cost (issue #14, defect 7), with the old behaviour
(``unpaced``: rate 0, pipelines of 10,000 SETs) and with pacing at the defaults of
``[redis] publish_rate_per_second`` and ``publish_batch_size`` (``paced``)?

Method
------
Processes, as in :mod:`bench_levers`: ``recsvc serve`` (one process, the command a user
runs) on the 100k-item benchmark shop (:func:`_shop.ensure_shop`), its Redis (a
private ``redis-server`` loaded with every trained user's vector, as
:mod:`bench_serving` loads it), :mod:`loadgen` in its own process sending closed-loop
``Recommend`` at ``--concurrency`` over ``--channels`` connections from the ``cached``
pool (2,000 trained users, warmed before measuring), and the publisher, a child
process that does what ``recsvc publish`` does with a version's vectors: ``np.load``
of ``user_ids.npy`` and a memory-mapped ``user_factors.npy``, a client from
``client_from_url(url, socket_timeout=10)``, then ``UserVectorStore.publish`` with
the variant's rate and batch size and the default TTL.

It publishes the serving version's own factors under another version name
(``<version>-next<run>``): the keys differ, so the server, which reads only the current
version's keys, never reads them and its client-side cache gets no invalidation;
Redis does the same work as for a new model's vectors. After each run they are
deleted (UNLINK) and the next run starts 2 s later. ``--copies K`` publishes every
user K times (ids suffixed ``.c1``...), as a model with K times the users would: the
default 4 (240,000 vectors) makes the unpaced publish last ~3 s rather than well
under one, so its throughput is not one sub-second sample of a shared machine.

One run: the publisher starts and loads its arrays, then a window of ``--before`` s of
load, the publish, and ``--after`` s more (the window is sized from the expected
publish time; the load generator's timeline says when each call completed or failed,
on the same monotonic clock the publisher reports its start and end on). Phases:
*before* is the window up to the publish's start, *during* the publish itself, *after*
the rest. Throughput per phase is completed calls over the phase's length; the 1-s
bins are aligned to the publish's start (the worst second of those overlapping the
publish is reported beside the worst second before it: a shared machine's noise).
At each phase edge this script reads the CPU time of the server, Redis and the load
generator (/proc), the machine's busy time and the server's /metrics (degraded
answers, handling time); the publisher reports its own CPU time. Variants alternate
(``unpaced, paced``, then ``paced, unpaced``, ...), ``--repeats`` runs each; medians
are reported.

Before the server starts, ``--probe-batches`` measures what one pipelined batch of N
SETs costs Redis on its own: an unpaced publish of the shop's vectors in batches of N,
while a probe process GETs a published vector back to back (its latency is what a
reader waits); Redis's ``INFO commandstats`` (time executing SET) and its CPU time
(/proc) give the cost per batch and per vector.

Outputs: ``<out>/results.json`` (every run, every bin) and ``<out>/README.md``.
"""

# Heavy libraries load where they are used so --help stays fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import math
import os
import select
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _env import git_revision, machine, versions
from _shop import ensure_shop, recsvc_bin
from bench_serving import (
    LIBRARIES,
    REPO,
    LoadGen,
    _clean_env,
    _free_port,
    build_requests,
    median,
    metric_diff,
    publish_vectors,
    running,
    server_view,
    start_server,
)

HERE = Path(__file__).resolve().parent
UNPACED_BATCH = 10_000
"""The batch size before pacing existed (the old ``publish_batch_size``)."""
UNPACED_ESTIMATE_PER_SECOND = 40_000
"""A low guess of the unpaced publish rate here, only to size the measured window."""


@dataclass(frozen=True)
class Variant:
    name: str
    rate: float
    """Vectors per second; 0 = unpaced."""
    batch: int


def variant(spec: str) -> Variant:
    """``unpaced``, ``paced`` (the settings' defaults) or ``RATE:BATCH``."""
    from recsvc.config import RedisSettings

    if spec == "unpaced":
        return Variant("unpaced", 0.0, UNPACED_BATCH)
    if spec == "paced":
        d = RedisSettings()
        return Variant("paced", d.publish_rate_per_second, d.publish_batch_size)
    rate, _, batch = spec.partition(":")
    return Variant(f"rate{float(rate):g}-batch{int(batch)}", float(rate), int(batch))


# --------------------------------------------------------------------------- the publisher


def publisher_main(argv: list[str]) -> int:
    """The publisher child: load, say ``ready``, wait for a start time on stdin, publish,
    print one JSON line (its start and end on ``time.monotonic()``'s clock, its CPU)."""
    p = argparse.ArgumentParser(prog="bench_publish.py publisher")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--version-dir", type=Path, required=True)
    p.add_argument("--as-version", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--copies", type=int, default=1)
    args = p.parse_args(argv)
    import numpy as np

    from recsvc.config import RedisSettings
    from recsvc.store import UserVectorStore, client_from_url

    # as training/publish.py loads a version's vectors
    user_ids = np.load(args.version_dir / "user_ids.npy", allow_pickle=False)
    factors = np.load(args.version_dir / "user_factors.npy", allow_pickle=False, mmap_mode="r")
    users = user_ids.tolist()
    if args.copies > 1:
        # a bigger model's worth of vectors: every user again under another id
        users += [f"{u}.c{k}" for k in range(1, args.copies) for u in user_ids.tolist()]
        factors = np.concatenate([factors] * args.copies)
    client = client_from_url(args.redis_url, socket_timeout=10.0)
    client.ping()
    store = UserVectorStore(client)
    print("ready", flush=True)
    go = float(sys.stdin.readline())
    time.sleep(max(0.0, go - time.monotonic()))
    t0, c0 = time.monotonic(), time.process_time()
    written = store.publish(
        args.as_version,
        users,
        factors,
        ttl_seconds=RedisSettings().vector_ttl_seconds,
        batch_size=args.batch,
        rate_per_second=args.rate,
    )
    t1, c1 = time.monotonic(), time.process_time()
    client.close()
    out = {"start": t0, "end": t1, "written": written, "cpu_seconds": c1 - c0}
    print(json.dumps(out), flush=True)
    return 0


class Publisher:
    """A publisher child, loaded and waiting for its start time."""

    def __init__(
        self, v: Variant, redis_url: str, version_dir: Path, as_version: str, copies: int = 1
    ) -> None:
        self.command = [sys.executable, str(HERE / "bench_publish.py"), "publisher"]
        self.command += ["--redis-url", redis_url, "--version-dir", str(version_dir)]
        self.command += ["--as-version", as_version, "--rate", repr(v.rate)]
        self.command += ["--batch", str(v.batch), "--copies", str(copies)]
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_clean_env(),
            cwd=REPO,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the publisher did not start: {line!r}")

    def go(self, at: float) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{at!r}\n".encode())
        self.process.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if self.process.wait(60) != 0 or not line:
            raise RuntimeError(f"the publisher failed ({self.process.returncode})")
        out: dict[str, Any] = json.loads(line)
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------------- measuring


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / _TICK


def snapshot(pids: dict[str, int], metrics_url: str | None) -> dict[str, Any]:
    """Now on the monotonic clock, CPU seconds of ``pids`` and the machine, /metrics."""
    at = time.monotonic()
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["machine"] = machine_busy_seconds()
    text = None
    if metrics_url:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    return {"at": at, "cpu": cpu, "metrics": text}


def sleep_until(at: float) -> None:
    time.sleep(max(0.0, at - time.monotonic()))


def phase(
    a: dict[str, Any],
    b: dict[str, Any],
    done: list[float],
    failed: list[tuple[float, str]],
    publisher_cpu: float = 0.0,
) -> dict[str, Any]:
    """What happened between snapshots ``a`` and ``b`` (times on the monotonic clock)."""
    t0, t1 = a["at"], b["at"]
    span = t1 - t0
    completed = sum(1 for t in done if t0 <= t < t1)
    codes: dict[str, int] = {}
    for t, code in failed:
        if t0 <= t < t1:
            codes[code] = codes.get(code, 0) + 1
    cpu = {name: b["cpu"][name] - a["cpu"][name] for name in a["cpu"]}
    diff = metric_diff(a["metrics"], b["metrics"])
    view = server_view(diff)
    degraded = sum(
        value for (name, _), value in diff.items() if name == "recsvc_degraded_responses_total"
    )
    ours = cpu["server"] + cpu["redis"] + cpu["loadgen"] + publisher_cpu
    return {
        "seconds": span,
        "completed": completed,
        "qps": completed / span if span > 0 else None,
        "failed": codes,
        "degraded": degraded,
        "server_p50_ms": view["handling_p50_ms"],
        "server_p99_ms": view["handling_p99_ms"],
        "server_cpu_us_per_request": cpu["server"] / completed * 1e6 if completed else None,
        "server_cores": cpu["server"] / span,
        "redis_cores": cpu["redis"] / span,
        "loadgen_cores": cpu["loadgen"] / span,
        "publisher_cores": publisher_cpu / span,
        "other_load_cores": max(0.0, cpu["machine"] - ours) / span,
        "lookups": view["lookups"],
    }


def bins(done: list[float], origin: float, first: int, last: int) -> list[int]:
    """Completions per 1-s bin ``[origin + k, origin + k + 1)`` for ``k`` in first..last."""
    counts = [0] * (last - first + 1)
    for t in done:
        k = math.floor(t - origin)
        if first <= k <= last:
            counts[k - first] += 1
    return counts


def one_run(
    gen: LoadGen,
    v: Variant,
    r: int,
    ctx: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from recsvc.store import UserVectorStore, client_from_url

    as_version = f"{ctx['version']}-next{r}{v.name}"
    publisher = Publisher(v, ctx["redis_url"], ctx["version_dir"], as_version, args.copies)
    try:
        users = ctx["users"] * args.copies
        expected = users / v.rate if v.rate else users / UNPACED_ESTIMATE_PER_SECOND
        duration = args.before + expected * 1.25 + 1.0 + args.after
        start = time.monotonic() + args.warmup
        publish_at = start + args.before
        publisher.go(publish_at)
        command = {
            "op": "run", "target": ctx["target"], "pool": "cached", "mode": "closed",
            "concurrency": args.concurrency, "channels": args.channels,
            "at": start, "duration": duration, "timeline": True,
        }  # fmt: skip
        # sent now, answered after the window: meanwhile this process runs the publish
        assert gen.process.stdin is not None and gen.process.stdout is not None
        gen.process.stdin.write((json.dumps(command) + "\n").encode())
        gen.process.stdin.flush()
        pids = {"server": ctx["server_pid"], "redis": ctx["redis_pid"]}
        pids["loadgen"] = gen.process.pid
        url = ctx["metrics_url"]
        load = os.getloadavg()[0]
        sleep_until(start)
        edges = [snapshot(pids, url)]
        sleep_until(publish_at)
        edges.append(snapshot(pids, url))
        pub = publisher.result()
        edges.append(snapshot(pids, url))
        sleep_until(start + duration)
        edges.append(snapshot(pids, url))
        line = gen.process.stdout.readline()
        raw: dict[str, Any] = json.loads(line)
        if "error" in raw:
            raise RuntimeError(f"load generator: {raw['error']}")
    finally:
        publisher.stop()
    tl = raw["timeline"]
    origin = tl["start_monotonic"]
    done = [origin + t for t in tl["done"]]
    failed = [(origin + t, code) for t, code in tl["failed"]]
    # the publish's own start and end, not the snapshots around it (a few ms apart)
    edges[1]["at"], edges[2]["at"] = pub["start"], pub["end"]
    publish_seconds = pub["end"] - pub["start"]
    before = phase(edges[0], edges[1], done, failed)
    during = phase(edges[1], edges[2], done, failed, pub["cpu_seconds"])
    after = phase(edges[2], edges[3], done, failed)
    n_during = math.ceil(publish_seconds)
    # whole seconds only: the window ends inside the last one
    timeline = bins(
        done, pub["start"], -math.floor(args.before), math.floor(edges[3]["at"] - pub["start"]) - 1
    )
    before_bins = timeline[: math.floor(args.before)]
    during_bins = timeline[math.floor(args.before) : math.floor(args.before) + n_during]
    run: dict[str, Any] = {
        "variant": v.name,
        "rate_per_second": v.rate,
        "batch_size": v.batch,
        "repeat": r,
        "loadavg_before": load,
        "publish": {
            "version": as_version,
            "written": pub["written"],
            "seconds": publish_seconds,
            "vectors_per_second": pub["written"] / publish_seconds,
            "publisher_cpu_seconds": pub["cpu_seconds"],
            "publisher_cpu_us_per_vector": pub["cpu_seconds"] / pub["written"] * 1e6,
        },
        "before": before,
        "during": during,
        "after": after,
        "bins_from": -math.floor(args.before),
        "bins_during": n_during,
        "bins_qps": timeline,
        "window_seconds": raw["window_seconds"],
        "errors": raw["errors"],
        "warmup_errors": raw["warmup_errors"],
        "latency_ms": raw["latency_ms"],
    }
    if before["qps"] and during["qps"]:
        run["ratio_during_before"] = during["qps"] / before["qps"]
    if before_bins and during_bins:
        # the worst whole second that overlaps the publish, against the mean second
        # before; and the worst second before it, as the reference for the noise
        mean_before = sum(before_bins) / len(before_bins)
        run["ratio_worst_second"] = min(during_bins) / mean_before
        run["ratio_worst_second_before"] = min(before_bins) / mean_before
    # Redis's CPU while publishing beyond what serving costs it (its rate before)
    extra_redis = (during["redis_cores"] - before["redis_cores"]) * publish_seconds
    run["publish"]["redis_cpu_us_per_vector"] = extra_redis / pub["written"] * 1e6
    client = client_from_url(ctx["redis_url"], socket_timeout=30.0)
    try:
        UserVectorStore(client).delete_version(as_version)
    finally:
        client.close()
    time.sleep(2.0)
    return run


def probe_batches(ctx: dict[str, Any], sizes: list[int], logs: Path) -> list[dict[str, Any]]:
    """What one pipelined batch of N SETs costs Redis, with nothing else running."""
    import redis

    from recsvc.store import KeyScheme, UserVectorStore, client_from_url

    client = client_from_url(ctx["redis_url"], socket_timeout=30.0)
    key = KeyScheme().vector(ctx["probe_user"], ctx["version"])
    out = []
    try:
        for n in sizes:
            v = Variant(f"batch{n}", 0.0, n)
            as_version = f"{ctx['version']}-probe{n}"
            publisher = Publisher(v, ctx["redis_url"], ctx["version_dir"], as_version)
            probe = subprocess.Popen(
                [sys.executable, str(HERE / "bench_publish.py"), "probe", ctx["redis_url"], key],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_clean_env(),
                cwd=REPO,
            )
            try:
                assert probe.stdout is not None and probe.stdin is not None
                probe.stdout.readline()  # ready
                client.config_resetstat()
                b0, t0 = cpu_seconds(ctx["redis_pid"]), time.monotonic()
                time.sleep(1.0)
                c0 = cpu_seconds(ctx["redis_pid"])
                # what serving the probe alone costs Redis, to read its CPU below by
                probe_cores = (c0 - b0) / (time.monotonic() - t0)
                publisher.go(time.monotonic())
                pub = publisher.result()
                c1 = cpu_seconds(ctx["redis_pid"])
                time.sleep(0.2)
                probe.stdin.close()
                samples = json.loads(probe.stdout.readline())
                probe.wait(30)
                stats = client.info("commandstats").get("cmdstat_set", {})
            finally:
                publisher.stop()
                if probe.poll() is None:
                    probe.kill()
                    probe.wait()
            lat_before = [lat for t, lat in samples if t < pub["start"]]
            lat_during = [lat for t, lat in samples if pub["start"] <= t < pub["end"]]
            written = pub["written"]
            batches = math.ceil(written / n)
            calls = float(stats.get("calls", 0)) or 1.0
            usec = float(stats.get("usec", 0))
            out.append(
                {
                    "batch_size": n,
                    "written": written,
                    "seconds": pub["end"] - pub["start"],
                    "vectors_per_second": written / (pub["end"] - pub["start"]),
                    "set_usec_per_call": usec / calls,
                    "redis_set_ms_per_batch": usec / batches / 1e3,
                    "redis_cpu_us_per_vector": (c1 - c0) / written * 1e6,
                    "redis_cpu_ms_per_batch": (c1 - c0) / batches * 1e3,
                    "redis_cores_probe_alone": probe_cores,
                    "publisher_cpu_us_per_vector": pub["cpu_seconds"] / written * 1e6,
                    "probe_before_ms": _quantiles(lat_before),
                    "probe_during_ms": _quantiles(lat_during),
                }
            )
            print(f"  batch {n:>6,}: {_brief_probe(out[-1])}", flush=True)
            UserVectorStore(client).delete_version(as_version)
            time.sleep(1.0)
    except redis.RedisError as exc:
        raise RuntimeError(f"probe of batch sizes failed: {exc}") from exc
    finally:
        client.close()
    return out


def probe_main(argv: list[str]) -> int:
    """The probe child: GET ``key`` back to back until stdin closes, then print
    ``[[monotonic time, latency s], ...]``."""
    import threading

    import redis

    url, key = argv
    client = redis.Redis.from_url(url)
    client.get(key)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            t = time.monotonic()
            client.get(key)
            samples.append((t, time.monotonic() - t))

    worker = threading.Thread(target=loop)
    worker.start()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    worker.join()
    print(json.dumps(samples), flush=True)
    return 0


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    at = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1e3  # noqa: E731
    return {"n": len(s), "p50": at(0.5), "p99": at(0.99), "max": s[-1] * 1e3}


def _brief_probe(p: dict[str, Any]) -> str:
    d, b = p["probe_during_ms"], p["probe_before_ms"]
    return (
        f"{p['vectors_per_second']:,.0f} vec/s, SET {p['set_usec_per_call']:.2f} µs, "
        f"Redis {p['redis_set_ms_per_batch']:.2f} ms of SETs per batch, "
        f"Redis CPU {p['redis_cpu_us_per_vector']:.1f} µs/vec, "
        f"publisher {p['publisher_cpu_us_per_vector']:.1f} µs/vec; probe GET p99 "
        f"{b.get('p99', 0):.2f} -> {d.get('p99', 0):.2f} ms, max {d.get('max', 0):.2f} ms"
    )


# --------------------------------------------------------------------------- report


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(path: str) -> float | None:
        values = []
        for run in runs:
            x: Any = run
            for part in path.split("/"):
                x = x.get(part) if isinstance(x, dict) else None
            if isinstance(x, int | float):
                values.append(float(x))
        return median(values) if values else None

    failed: dict[str, dict[str, int]] = {}
    for name in ("before", "during", "after"):
        total: dict[str, int] = {}
        for run in runs:
            for code, n in run[name]["failed"].items():
                total[code] = total.get(code, 0) + n
        failed[name] = total
    out = {
        "rate_per_second": runs[0]["rate_per_second"],
        "batch_size": runs[0]["batch_size"],
        "runs": len(runs),
        "failed_by_phase": failed,
        "degraded_by_phase": {
            name: sum(run[name]["degraded"] for run in runs)
            for name in ("before", "during", "after")
        },
        "ratio_runs": [run.get("ratio_during_before") for run in runs],
    }
    for path in (
        "publish/seconds",
        "publish/vectors_per_second",
        "publish/publisher_cpu_us_per_vector",
        "publish/redis_cpu_us_per_vector",
        "before/qps",
        "during/qps",
        "after/qps",
        "ratio_during_before",
        "ratio_worst_second",
        "ratio_worst_second_before",
        "before/server_cpu_us_per_request",
        "during/server_cpu_us_per_request",
        "before/server_cores",
        "during/server_cores",
        "during/publisher_cores",
        "before/redis_cores",
        "during/redis_cores",
        "before/loadgen_cores",
        "before/other_load_cores",
        "during/other_load_cores",
        "before/server_p99_ms",
        "during/server_p99_ms",
        "loadavg_before",
    ):
        out[path.replace("/", "_")] = med(path)
    return out


TARGET_RATIO = 0.9
"""Issue #14, defect 7: serving keeps >= 0.9x its throughput during a publish, 0 failures."""


def verdict(report: dict[str, Any]) -> list[str]:
    """Each variant against the target, by its median ratio and every failed call."""
    out = []
    for name, s in report["variants"].items():
        failed = sum(n for by_code in s["failed_by_phase"].values() for n in by_code.values())
        ratio = s["ratio_during_before"]
        met = ratio is not None and ratio >= TARGET_RATIO and failed == 0
        low = sum(1 for r in s["ratio_runs"] if r is not None and r < TARGET_RATIO)
        out.append(
            f"- {name}: {ratio:.2f}× during / before (median of {s['runs']}; {low} of them "
            f"below {TARGET_RATIO:g}), {failed} failed calls: **{'met' if met else 'not met'}**."
        )
    return [
        f"Target (issue #14, defect 7): during a publish, throughput >= {TARGET_RATIO:g}× "
        "just before, 0 failed calls.",
        "",
        *out,
    ]


def arithmetic(report: dict[str, Any]) -> list[str]:
    """The CPU budget of each paced variant, from its medians."""
    out = []
    for name, s in report["variants"].items():
        pub, red = s["publish_publisher_cpu_us_per_vector"], s["publish_redis_cpu_us_per_vector"]
        cores, per_request = s["before_server_cores"], s["before_server_cpu_us_per_request"]
        if not s["rate_per_second"] or None in (pub, red, cores, per_request):
            continue
        rate, cost = s["rate_per_second"], pub + red
        share = rate * cost * 1e-6
        out.append(
            f"- {name}: a vector written costs {cost:.1f} µs of CPU here ({pub:.1f} in the "
            f"publisher, {red:.1f} in Redis), so {rate:,.0f}/s take {share:.3f} cores. The "
            f"server ran on {cores:.2f} cores before ({per_request:,.0f} µs per request). "
            f"Were all of the publish's CPU taken from the server's (on a saturated machine "
            f"it can be), it would keep {1 - share / cores:.2f}× its throughput; the rate that "
            f"keeps 0.9× even then is 0.1 × {cores:.2f} / {cost:.1f} µs ≈ "
            f"{0.1 * cores / (cost * 1e-6):,.0f}/s. Measured: server "
            f"{s['before_server_cores']:.2f} → {s['during_server_cores']:.2f} cores, "
            f"{per_request:,.0f} → {s['during_server_cpu_us_per_request']:,.0f} µs per request."
        )
    return ["CPU budget (medians):", "", *out] if out else []


def render(report: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".2f") -> str:
        return "–" if x is None else format(x, spec)

    def codes(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "0"

    m, c = report["machine"], report["config"]
    published = report["users"] * c["copies"]
    what = f"all {published:,} user vectors"
    if c["copies"] > 1:
        what = (
            f"{published:,} user vectors (every trained user {c['copies']} times, ids "
            "suffixed: a bigger model's publish, long enough to measure on a shared machine)"
        )
    lines = [
        "# Serving while publishing the next model's vectors",
        "",
        f"Recorded {report['date']} on {m['nproc']} cores ({m['cpu']}), git {report['git']}, "
        f"Redis {report['redis_version']}. `uptime` before: `{report['uptime_before']}`; "
        f"after: `{report['uptime_after']}`. Other sessions share these cores: the "
        "*other load* columns are the machine's busy cores not ours.",
        "",
        f"`recsvc serve` (one process) on the 100k-item benchmark shop "
        f"({report['users']:,} trained users), closed-loop Recommend from `loadgen.py` at "
        f"concurrency {c['concurrency']} over {c['channels']} connections (cached users); "
        f"{c['before']:g} s of load, then a publish of {what} "
        f"under another version name (keys the server never reads), then at least "
        f"{c['after']:g} s more. {c['repeats']} runs per variant, alternating; medians.",
        "",
        "```",
        report["command"],
        "```",
        "",
        "| variant | rate vec/s | batch | publish s | vec/s | req/s before | req/s during "
        "| during / before | worst second during / before (before) | req/s after "
        "| failed calls | degraded | publisher CPU µs/vec | Redis CPU µs/vec |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, s in report["variants"].items():
        failed: dict[str, int] = {}
        for by_code in s["failed_by_phase"].values():
            for code, n in by_code.items():
                failed[code] = failed.get(code, 0) + n
        rate = f(s["rate_per_second"], ",.0f") if s["rate_per_second"] else "0 (unpaced)"
        lines.append(
            f"| {name} | {rate} "
            f"| {s['batch_size']:,} | {f(s['publish_seconds'])} "
            f"| {f(s['publish_vectors_per_second'], ',.0f')} | {f(s['before_qps'], ',.0f')} "
            f"| {f(s['during_qps'], ',.0f')} | **{f(s['ratio_during_before'])}** "
            f"| {f(s['ratio_worst_second'])} ({f(s['ratio_worst_second_before'])}) "
            f"| {f(s['after_qps'], ',.0f')} | {codes(failed)} "
            f"| {s['degraded_by_phase']['during']:,.0f} during, "
            f"{sum(s['degraded_by_phase'].values()):,.0f} in all "
            f"| {f(s['publish_publisher_cpu_us_per_vector'], '.1f')} "
            f"| {f(s['publish_redis_cpu_us_per_vector'], '.1f')} |"
        )
    lines += ["", *verdict(report)]
    lines += [
        "",
        "Ratios of each run (during / before): "
        + "; ".join(
            f"{name} {', '.join(f(x) for x in s['ratio_runs'])}"
            for name, s in report["variants"].items()
        )
        + ".",
        "",
        f"Where the CPU went (medians, cores; the machine has {m['nproc']}):",
        "",
        "| variant | phase | server | server CPU µs/req | server p99 ms | publisher | Redis "
        "| other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["variants"].items():
        for ph in ("before", "during"):
            lines.append(
                f"| {name} | {ph} | {f(s[f'{ph}_server_cores'])} "
                f"| {f(s[f'{ph}_server_cpu_us_per_request'], ',.0f')} "
                f"| {f(s[f'{ph}_server_p99_ms'])} "
                f"| {f(s['during_publisher_cores']) if ph == 'during' else '–'} "
                f"| {f(s[f'{ph}_redis_cores'])} | {f(s[f'{ph}_other_load_cores'])} |"
            )
    lines += ["", *arithmetic(report)]
    lines += [
        "",
        "Throughput per 1-second window (req/s), aligned to the publish's start: before "
        "| [the seconds that overlap the publish; summarised past 8] | after "
        "(every second in `results.json`, `runs[].bins_qps`):",
        "",
    ]
    for run in report["runs"]:
        qps, first, n = run["bins_qps"], -run["bins_from"], run["bins_during"]
        before, during, after = qps[:first], qps[first : first + n], qps[first + n :]
        if n <= 8:
            middle = " ".join(f"[{q:,}]" for q in during)
        else:
            ordered = sorted(during)
            middle = (
                f"[{n} s: mean {sum(during) / n:,.0f}, min {ordered[0]:,}, "
                f"median {ordered[n // 2]:,}, max {ordered[-1]:,}]"
            )
        lines.append(
            f"- {run['variant']} #{run['repeat'] + 1} ({run['publish']['seconds']:.1f} s, "
            f"load {run['loadavg_before']:.2f}): {' '.join(f'{q:,}' for q in before)} "
            f"| {middle} | {' '.join(f'{q:,}' for q in after)}"
        )
    if report.get("probe"):
        lines += [
            "",
            "What one pipelined batch of N SETs costs Redis (an unpaced publish of "
            f"{report['users']:,} vectors into the same Redis, no server running; a probe "
            "process GETs a published vector back to back):",
            "",
            "| batch N | vec/s | SET µs (commandstats) | Redis ms executing SETs per batch "
            "| Redis CPU µs/vec (the probe's GETs included) | publisher CPU µs/vec "
            "| probe GET p99 before → during ms | probe max during ms |",
            "|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for p in report["probe"]:
            b, d = p["probe_before_ms"], p["probe_during_ms"]
            lines.append(
                f"| {p['batch_size']:,} | {p['vectors_per_second']:,.0f} "
                f"| {p['set_usec_per_call']:.2f} | {p['redis_set_ms_per_batch']:.2f} "
                f"| {p['redis_cpu_us_per_vector']:.1f} | {p['publisher_cpu_us_per_vector']:.1f} "
                f"| {f(b.get('p99'))} → {f(d.get('p99'))} | {f(d.get('max'))} |"
            )
        alone = [
            p["redis_cores_probe_alone"] for p in report["probe"] if "redis_cores_probe_alone" in p
        ]
        lines += [
            "",
            "Redis reads a pipelining client's input one socket read at a time (16-32 KiB: "
            "some 45-90 of these ~360-byte SETs), runs those commands "
            "and serves its other clients before the next read, so a batch's SET time is "
            "not one stall: compare the probe's wait with the batch's time. The probe and "
            "the publisher share the 2 cores with Redis, so the probe's own scheduling is "
            "in its latencies."
            + (
                f" Serving the probe alone kept Redis {median(alone):.2f} cores busy."
                if alone
                else ""
            ),
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["publisher"]:
        return publisher_main(argv[1:])
    if argv[:1] == ["probe"]:
        return probe_main(argv[1:])
    p = argparse.ArgumentParser(description="Serving throughput while vectors are published.")
    p.add_argument("--variants", nargs="+", default=["unpaced", "paced"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--before", type=float, default=8.0, help="seconds of load before publishing")
    p.add_argument("--after", type=float, default=8.0, help="seconds of load after publishing")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds before the window")
    p.add_argument(
        "--copies",
        type=int,
        default=4,
        help="publish every trained user this many times (ids suffixed): a bigger model",
    )
    p.add_argument("--probe-batches", type=int, nargs="*", default=[100, 1_000, 10_000])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/publish"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from recsvc.artifact import read_artifact
    from recsvc.store.embedded import start_private_redis

    variants = [variant(spec) for spec in args.variants]
    logs = args.workdir / "publish-logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    report: dict[str, Any] = {
        "benchmark": "serving throughput while publishing user vectors",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_publish.py", *argv]),
        "machine": machine(),
        "uptime_before": uptime.strip(),
        "versions": versions(LIBRARIES),
        "config": {
            k: getattr(args, k)
            for k in ("concurrency", "channels", "repeats", "before", "after", "warmup", "copies")
        },
        "variant_settings": {v.name: {"rate": v.rate, "batch": v.batch} for v in variants},
    }
    shop = ensure_shop(100_000, args.workdir)
    artifact = read_artifact(shop.version_dir, verify_checksums=False)
    owned: list[Any] = []
    with running(owned):
        redis = start_private_redis()
        owned.append(redis)
        import redis as redis_py

        info = redis_py.Redis.from_url(redis.url).info("server")
        report["redis_version"] = str(info["redis_version"])
        written = publish_vectors(artifact, redis.url)
        report["users"] = written
        ctx: dict[str, Any] = {
            "version": shop.version,
            "version_dir": shop.version_dir,
            "redis_url": redis.url,
            "redis_pid": redis.pid,
            "users": written,
            "probe_user": str(artifact.user_ids[0]),
        }
        if args.probe_batches:
            print("what a batch of N SETs costs Redis:", flush=True)
            report["probe"] = probe_batches(ctx, args.probe_batches, logs)
        metrics_port = _free_port()
        cmd = [recsvc_bin(), "-q", "serve", "--artifacts", str(shop.artifacts)]
        cmd += ["--redis-url", redis.url, "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--metrics-port", str(metrics_port)]
        server = start_server("recsvc", cmd, "recsvc serving on", logs / "recsvc.log")
        owned.append(server)
        report["server_command"] = shlex.join(cmd)
        ctx |= {
            "target": server.target,
            "server_pid": server.pid,
            "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
        }
        gen = LoadGen(logs / "loadgen.log")
        owned.append(gen)
        gen.send_pool("cached", build_requests(artifact, 0)["cached"])
        # every user of the pool asked for once: the LRU and the state cache warm
        gen.ask(
            {
                "op": "run", "target": server.target, "pool": "cached", "mode": "closed",
                "concurrency": args.concurrency, "warmup": 0.0, "duration": 3.0,
                "channels": args.channels,
            }
        )  # fmt: skip
        runs: list[dict[str, Any]] = []
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else list(reversed(variants))
            for v in order:
                run = one_run(gen, v, r, ctx, args)
                runs.append(run)
                print(
                    f"  #{r + 1} {v.name:<10} publish {run['publish']['seconds']:5.2f} s "
                    f"({run['publish']['vectors_per_second']:8,.0f} vec/s), "
                    f"{run['before']['qps']:5.0f} -> {run['during']['qps']:5.0f} -> "
                    f"{run['after']['qps']:5.0f} req/s, "
                    f"ratio {run.get('ratio_during_before', float('nan')):.2f}, "
                    f"failed {run['errors'] or 0}, degraded {run['during']['degraded']:.0f}, "
                    f"load {run['loadavg_before']:.2f}",
                    flush=True,
                )
        report["variants"] = {
            v.name: summary([run for run in runs if run["variant"] == v.name]) for v in variants
        }
        report["runs"] = runs
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    report["uptime_after"] = uptime.strip()
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
