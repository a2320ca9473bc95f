"""Serving levers side by side: recsvc variants, each against the floor run the same way.

Usage::

    .venv/bin/python benchmarks/bench_levers.py
        [--variants redis-py uncached thin overfetch2 nofreeze uvloop p2 p2-uvloop
                    (the default) or any of these and rpcache-loop rpcache-thread
                    rpcache-worker]
        [--scenario cached]
        [--concurrency 32] [--channels 4] [--repeats 3]
        [--duration 3] [--warmup 1] [--open-fraction 0.5] [--out benchmarks/results/levers]

What it answers: what did each serving lever of issue #4 buy, measured in one run on
a shared machine? Variants (:mod:`serve_variant` runs each):

``redis-py``    one process, asyncio loop, the state read through a redis-py pipeline
``uncached``    one process, asyncio loop, the thin client (:mod:`recsvc.store.thinreader`)
                without its client-side cache: Redis is read on every Recommend
``thin``        ``uncached`` with the client-side cache on (the default)
``rpcache-loop``    the state read through redis-py's own client-side cache
                (``cache_config``, RESP3 key tracking) instead of the thin client: a
                sync ``redis.Redis`` (redis-py caches only there, and only single
                commands) called on the event loop (:mod:`redispy_cache_reader`)
``rpcache-thread``  the same client called through ``asyncio.to_thread`` on every read
``rpcache-worker``  the same client called on one dedicated thread (one read at a time)
``overfetch2``  ``thin`` with ``[ranking] overfetch = 2`` (k + k CF candidates, not k + 3k)
``nofreeze``    ``thin`` with the heap left unfrozen after start-up (the cycle collector's
                full passes walk every imported object, as before ``freeze_heap``)
``uvloop``      ``thin`` on uvloop
``p2``          ``thin`` as 2 processes sharing the port (SO_REUSEPORT)
``p2-uvloop``   ``p2`` on uvloop

Every variant is compared with *its* floor: :mod:`noop_server` with the same number
of processes (``--reuseport``) and the same event loop, so each ratio is to "the same
server setup doing nothing". One Redis (loaded as :mod:`bench_serving` loads it), one
load generator (:mod:`loadgen`) whose calls go round robin over ``--channels``
channels, each its own TCP connection, for every side alike (the kernel spreads
connections, not calls, over SO_REUSEPORT processes).

Each repeat runs every side once (``--warmup`` then ``--duration`` s, closed loop at
``--concurrency``), in an order rotated each repeat. Then, with ``--open-fraction``,
an open-loop pass: each variant and its floor at the same Poisson rate, that
fraction of the variant's median closed-loop throughput, for the client p99 at the
same offered load. Reported per variant: medians of throughput, client p50/p99,
server handling p50 (its ``grpc_server_handling_seconds``, all processes summed),
server CPU per request, the share of state reads its client-side cache answered
(``recsvc_state_cache_lookups_total``), and the ratios to its floor. Writes
``<out>/results.json`` and ``<out>/README.md``. The Redis is the first ``redis-server``
on ``PATH`` (:func:`recsvc.store.embedded.find_redis_server`); the ``rpcache-*`` variants
need Redis >= 7.4, which redis-py requires for its cache. The report names its version.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _env import git_revision, machine
from _shop import ensure_shop
from bench_serving import (
    REPO,
    SEED,
    LoadGen,
    _clean_env,
    _free_port,
    build_requests,
    get,
    histogram,
    histogram_quantile,
    median,
    parse_metrics,
    publish_vectors,
    running,
)

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Variant:
    name: str
    processes: int
    event_loop: str
    thin_reader: bool = True
    state_cache: bool = True
    overfetch: int | None = None
    """``[ranking] overfetch``; None = the default."""
    gc_freeze: bool = True
    redis_py_cache: str | None = None
    """``loop`` or ``thread``: the state read through redis-py's client-side cache."""

    @property
    def floor(self) -> str:
        return f"floor-p{self.processes}-{self.event_loop}"

    @property
    def reader(self) -> str:
        """How Recommend reads its state."""
        if self.redis_py_cache:
            return f"redis-py cache, {self.redis_py_cache}"
        return "thin" if self.thin_reader else "redis-py pipeline"


VARIANTS = {
    v.name: v
    for v in (
        Variant("redis-py", 1, "asyncio", thin_reader=False, state_cache=False),
        Variant("uncached", 1, "asyncio", state_cache=False),
        Variant("thin", 1, "asyncio"),
        Variant("rpcache-loop", 1, "asyncio", redis_py_cache="loop"),
        Variant("rpcache-thread", 1, "asyncio", redis_py_cache="thread"),
        Variant("rpcache-worker", 1, "asyncio", redis_py_cache="worker"),
        Variant("overfetch2", 1, "asyncio", overfetch=2),
        Variant("nofreeze", 1, "asyncio", gc_freeze=False),
        Variant("uvloop", 1, "uvloop"),
        Variant("p2", 2, "asyncio"),
        Variant("p2-uvloop", 2, "uvloop"),
    )
}


@dataclass
class Side:
    """A server under test: one or more processes on one port."""

    name: str
    process: subprocess.Popen[bytes]
    target: str
    metrics_urls: list[str]
    command: list[str]
    log: Path
    pids: list[int]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawned_children(pid: int) -> list[int]:
    """Server processes ``multiprocessing`` spawned under ``pid`` (not its tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                out.append(int(child))
    return out


def _free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (process i serves metrics
    on the first + i)."""
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000)
        try:
            for port in range(base, base + n):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


def start_side(
    name: str, cmd: list[str], announce: str, count: int, log: Path, timeout: float = 180
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``cmd`` and wait until ``count`` processes announced ``announce HOST:PORT``."""
    out = log.open("wb")
    process = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), cwd=REPO
    )
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith(announce)]
        if len(lines) >= count:
            return process, lines[0].removeprefix(announce).strip()
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")


def start_variant(v: Variant, artifacts: Path, redis_url: str, logs: Path) -> Side:
    port = _free_port() if v.processes > 1 else 0
    metrics = _free_port_run(v.processes)
    cmd = [sys.executable, str(HERE / "serve_variant.py"), "--artifacts", str(artifacts)]
    cmd += ["--redis-url", redis_url, "--port", str(port), "--metrics-port", str(metrics)]
    cmd += ["--processes", str(v.processes), "--event-loop", v.event_loop]
    if not v.thin_reader:
        cmd.append("--redis-py-read")
    if v.redis_py_cache:
        cmd += ["--redis-py-cache", v.redis_py_cache]
    if not v.state_cache:
        cmd += ["--state-cache-size", "0"]
    if v.overfetch is not None:
        cmd += ["--overfetch", str(v.overfetch)]
    if not v.gc_freeze:
        cmd.append("--no-gc-freeze")
    log = logs / f"{v.name}.log"
    process, target = start_side(v.name, cmd, "recsvc serving on", v.processes, log)
    pids = [process.pid] if v.processes == 1 else _spawned_children(process.pid)
    urls = [f"http://127.0.0.1:{metrics + i}/metrics" for i in range(v.processes)]
    return Side(v.name, process, target, urls, cmd, log, pids)


class FloorGroup:
    """``processes`` no-op servers on one port (SO_REUSEPORT when more than one)."""

    def __init__(self, name: str, processes: int, event_loop: str, logs: Path) -> None:
        self.name = name
        port = _free_port() if processes > 1 else 0
        self.sides: list[Side] = []
        for i in range(processes):
            cmd = [sys.executable, str(HERE / "noop_server.py"), "--port", str(port)]
            cmd += ["--event-loop", event_loop]
            if processes > 1:
                cmd.append("--reuseport")
            log = logs / f"{name}-{i}.log"
            process, target = start_side(name, cmd, "noop serving on", 1, log)
            self.sides.append(Side(name, process, target, [], cmd, log, [process.pid]))
        self.target = self.sides[0].target
        self.pids = [s.pids[0] for s in self.sides]
        self.metrics_urls: list[str] = []
        self.command = [shlex.join(s.command) for s in self.sides]

    def stop(self) -> None:
        for side in self.sides:
            side.stop()


def _summed_diff(before: list[str], after: list[str]) -> dict[Any, float]:
    total: dict[Any, float] = {}
    for b, a in zip(before, after, strict=True):
        pb, pa = parse_metrics(b), parse_metrics(a)
        for key, value in pa.items():
            total[key] = total.get(key, 0.0) + value - pb.get(key, 0.0)
    return total


def one_run(
    gen: LoadGen,
    side: Side | FloorGroup,
    args: argparse.Namespace,
    *,
    rate: float | None = None,
    seed: int = SEED,
) -> dict[str, Any]:
    pids = {f"server{i}": pid for i, pid in enumerate(side.pids)}
    if isinstance(side, Side) and side.name != "redis" and side.metrics_urls:
        pids["redis"] = args.redis_pid
    command: dict[str, Any] = {
        "op": "run",
        "target": side.target,
        "pool": "cached",
        "mode": "closed" if rate is None else "open",
        "warmup": args.warmup,
        "duration": args.duration,
        "channels": args.channels,
        "metrics_url": side.metrics_urls or None,
        "pids": pids,
    }
    if rate is None:
        command["concurrency"] = args.concurrency
    else:
        command["rate"] = rate
        command["seed"] = seed
    load = os.getloadavg()[0]
    raw = gen.ask(command)
    n = max(1, raw["completed"])
    cpu = raw["cpu_seconds"]
    server_cpu = sum(v for k, v in cpu.items() if k.startswith("server"))
    ours = sum(v for k, v in cpu.items() if k != "machine")
    run: dict[str, Any] = {
        "side": side.name,
        "loadavg_before": load,
        "qps": raw["qps"],
        "latency_ms": raw["latency_ms"],
        "errors": raw["errors"],
        "server_cpu_us_per_request": server_cpu / n * 1e6,
        "client_cpu_us_per_request": cpu["client"] / n * 1e6,
        "redis_cpu_us_per_request": cpu.get("redis", 0.0) / n * 1e6,
        "other_load_cores": max(0.0, cpu["machine"] - ours) / raw["cpu_span_seconds"],
        "sample": raw["sample"],
    }
    if "intended_latency_ms" in raw:
        run["intended_latency_ms"] = raw["intended_latency_ms"]
        run["offered_rate"] = raw["offered_rate"]
    if raw.get("metrics_before") and raw.get("metrics_after"):
        diff = _summed_diff(raw["metrics_before"], raw["metrics_after"])
        buckets = histogram(diff, "grpc_server_handling_seconds", grpc_method="Recommend")
        p50 = histogram_quantile(0.5, buckets)
        p99 = histogram_quantile(0.99, buckets)
        run["server_p50_ms"] = None if p50 is None else p50 * 1e3
        run["server_p99_ms"] = None if p99 is None else p99 * 1e3
        run["handled"] = buckets[-1][1] if buckets else 0.0
        lookups = {
            dict(labels).get("result"): value
            for (sample, labels), value in diff.items()
            if sample == "recsvc_state_cache_lookups_total"
        }
        if lookups:
            run["state_cache_hits"] = lookups.get("hit", 0.0)
            run["state_cache_misses"] = lookups.get("miss", 0.0)
        run["degraded"] = sum(
            value
            for (sample, _), value in diff.items()
            if sample == "recsvc_degraded_responses_total"
        )
    return run


def redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def _med(runs: list[dict[str, Any]], path: str) -> float | None:
    values = [get(r, path) for r in runs]
    values = [v for v in values if isinstance(v, int | float)]
    return median(values) if values else None


def summary(
    runs: dict[str, list[dict[str, Any]]], open_runs: dict[str, list[dict[str, Any]]], v: Variant
) -> dict[str, Any]:
    s, f = runs[v.name], runs[v.floor]
    out: dict[str, Any] = {
        "processes": v.processes,
        "event_loop": v.event_loop,
        "thin_reader": v.thin_reader and not v.redis_py_cache,
        "reader": v.reader,
        "state_cache": v.state_cache and v.thin_reader,
        "qps": _med(s, "qps"),
        "floor_qps": _med(f, "qps"),
        "client_p50_ms": _med(s, "latency_ms/p50"),
        "client_p99_ms": _med(s, "latency_ms/p99"),
        "floor_p99_ms": _med(f, "latency_ms/p99"),
        "server_p50_ms": _med(s, "server_p50_ms"),
        "server_p99_ms": _med(s, "server_p99_ms"),
        "server_cpu_us_per_request": _med(s, "server_cpu_us_per_request"),
        "floor_server_cpu_us_per_request": _med(f, "server_cpu_us_per_request"),
        "client_cpu_us_per_request": _med(s, "client_cpu_us_per_request"),
        "other_load_cores": _med(s + f, "other_load_cores"),
        "ratio_runs": [a["qps"] / b["qps"] for a, b in zip(s, f, strict=True) if b["qps"]],
    }
    if out["qps"] and out["floor_qps"]:
        out["ratio"] = out["qps"] / out["floor_qps"]
    out["degraded"] = sum(r.get("degraded", 0.0) for r in s)
    hits = sum(r.get("state_cache_hits", 0.0) for r in s)
    misses = sum(r.get("state_cache_misses", 0.0) for r in s)
    if hits + misses:
        out["state_cache_hit_share"] = hits / (hits + misses)
    key = f"{v.name}@open"
    if open_runs.get(key):
        o, of = open_runs[key], open_runs[f"{v.floor}@open/{v.name}"]
        out["open_rate"] = o[0]["offered_rate"] if o else None
        out["open_client_p99_ms"] = _med(o, "latency_ms/p99")
        out["open_floor_p99_ms"] = _med(of, "latency_ms/p99")
        out["open_intended_p99_ms"] = _med(o, "intended_latency_ms/p99")
        out["open_floor_intended_p99_ms"] = _med(of, "intended_latency_ms/p99")
        if out["open_client_p99_ms"] and out["open_floor_p99_ms"]:
            out["open_p99_ratio"] = out["open_client_p99_ms"] / out["open_floor_p99_ms"]
        out["open_server_p50_ms"] = _med(o, "server_p50_ms")
    return out


def render(report: dict[str, Any]) -> str:
    def f(x: Any, spec: str = ".2f") -> str:
        return "–" if x is None else format(x, spec)

    def cache_cell(s: dict[str, Any]) -> str:
        share = s.get("state_cache_hit_share")
        cached = s.get("state_cache") or str(s.get("reader", "")).startswith("redis-py cache")
        if not cached:
            return "no"
        return "yes" if share is None else f"yes, {share:.1%} hits"

    lines = [
        "# Serving levers, side by side",
        "",
        f"Recorded {report['date']} on {report['machine']['nproc']} cores "
        f"({report['machine']['cpu']}), load average at start "
        f"{', '.join(f'{x:.2f}' for x in report['machine']['loadavg_at_start'])}; "
        f"git {report['git']}. Scenario `{report['scenario']}` (100k-item shop, k=10), "
        f"closed loop at concurrency {report['config']['concurrency']} over "
        f"{report['config']['channels']} client channels; {report['config']['repeats']} "
        f"repeats of {report['config']['duration']:g} s per side, medians. Each variant's "
        "floor is the no-op server with the same process count and event loop. "
        f"Redis {report.get('redis_version', 'version not recorded')}.",
        "",
        "```",
        report["command"],
        "```",
        "",
        "| variant | procs | loop | state read | state cache | req/s | floor req/s | ratio "
        "| server p50 ms | client p99 ms | floor p99 ms | server CPU µs/req "
        "| floor CPU µs/req | other load |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["variants"].items():
        lines.append(
            f"| {name} | {s['processes']} | {s['event_loop']} "
            f"| {s.get('reader') or ('thin' if s['thin_reader'] else 'redis-py pipeline')} "
            f"| {cache_cell(s)} "
            f"| {f(s['qps'], ',.0f')} | {f(s['floor_qps'], ',.0f')} | {f(s.get('ratio'))} "
            f"| {f(s['server_p50_ms'], '.3f')} | {f(s['client_p99_ms'], '.1f')} "
            f"| {f(s['floor_p99_ms'], '.1f')} | {f(s['server_cpu_us_per_request'], ',.0f')} "
            f"| {f(s['floor_server_cpu_us_per_request'], ',.0f')} "
            f"| {f(s['other_load_cores'])} |"
        )
    if any("open_rate" in s for s in report["variants"].values()):
        lines += [
            "",
            f"Open loop at {report['config']['open_fraction']:g} × each variant's closed-loop "
            "throughput (the same seeded Poisson schedule for the variant and its floor):",
            "",
            "| variant | offered req/s | client p99 ms | floor p99 ms | p99 ratio "
            "| p99 from arrival ms | floor's | server p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in report["variants"].items():
            if "open_rate" not in s:
                continue
            lines.append(
                f"| {name} | {f(s['open_rate'], ',.0f')} | {f(s['open_client_p99_ms'])} "
                f"| {f(s['open_floor_p99_ms'])} | {f(s.get('open_p99_ratio'))} "
                f"| {f(s['open_intended_p99_ms'])} | {f(s['open_floor_intended_p99_ms'])} "
                f"| {f(s['open_server_p50_ms'], '.3f')} |"
            )
    lines += ["", "Ratios of each repeat (variant ÷ its floor, same repeat):", ""]
    for name, s in report["variants"].items():
        lines.append(f"- {name}: {', '.join(f'{r:.2f}' for r in s['ratio_runs'])}")
    degraded = {name: s["degraded"] for name, s in report["variants"].items() if s.get("degraded")}
    if degraded:
        lines += [
            "",
            "Degraded answers (the state read failed; answered without it) in the closed-loop "
            "runs: " + ", ".join(f"{name} {n:,.0f}" for name, n in degraded.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Serving levers side by side against their floors.")
    # the rpcache-* variants need Redis >= 7.4, more than most hosts have: named only
    default = [name for name, v in VARIANTS.items() if not v.redis_py_cache]
    p.add_argument("--variants", nargs="+", default=default, choices=list(VARIANTS))
    p.add_argument("--scenario", default="cached", choices=["cached"])
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--open-fraction", type=float, default=0.5, help="0 = no open-loop pass")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/levers"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from recsvc.artifact import read_artifact
    from recsvc.store.embedded import start_private_redis

    variants = [VARIANTS[name] for name in args.variants]
    logs = args.workdir / "levers-logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "serving levers vs their floors",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_levers.py", *argv]),
        "machine": machine(),
        "scenario": args.scenario,
        "config": {
            k: getattr(args, k)
            for k in ("concurrency", "channels", "repeats", "duration", "warmup", "open_fraction")
        },
        "servers": {},
    }
    shop = ensure_shop(100_000, args.workdir)
    artifact = read_artifact(shop.version_dir, verify_checksums=False)
    owned: list[Any] = []
    with running(owned):
        redis = start_private_redis()
        owned.append(redis)
        args.redis_pid = redis.pid
        report["redis_version"] = redis_version(redis.url)
        publish_vectors(artifact, redis.url)
        gen = LoadGen(logs / "loadgen.log")
        owned.append(gen)
        gen.send_pool("cached", build_requests(artifact, 0)["cached"])
        sides: dict[str, Side | FloorGroup] = {}
        for v in variants:
            if v.floor not in sides:
                sides[v.floor] = FloorGroup(v.floor, v.processes, v.event_loop, logs)
                owned.append(sides[v.floor])
            print(f"starting {v.name} ...", flush=True)
            sides[v.name] = start_variant(v, shop.artifacts, redis.url, logs)
            owned.append(sides[v.name])
        for name, side in sides.items():
            report["servers"][name] = (
                side.command if isinstance(side, FloorGroup) else shlex.join(side.command)
            )
            gen.ask(
                {
                    "op": "run", "target": side.target, "pool": "cached", "mode": "closed",
                    "concurrency": 16, "warmup": 0.0, "duration": 1.0, "channels": args.channels,
                }
            )  # fmt: skip
        names = list(sides)
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(args.repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            if r % 2:
                order.reverse()
            for name in order:
                run = one_run(gen, sides[name], args)
                runs[name].append(run)
                srv = run.get("server_p50_ms")
                print(
                    f"  #{r + 1} {name:<22} {run['qps']:7.0f} qps, "
                    f"p99 {run['latency_ms'].get('p99', 0):6.2f} ms"
                    + (f", server p50 {srv:.3f} ms" if srv else "")
                    + (f", errors {run['errors']}" if run["errors"] else "")
                    + (f", degraded {run['degraded']:.0f}" if run.get("degraded") else ""),
                    flush=True,
                )
        open_runs: dict[str, list[dict[str, Any]]] = {}
        if args.open_fraction > 0:
            for v in variants:
                qps = median([x["qps"] for x in runs[v.name]])
                rate = float(round(args.open_fraction * qps, -1))
                for r in range(args.repeats):
                    pair = [(v.name, f"{v.name}@open"), (v.floor, f"{v.floor}@open/{v.name}")]
                    for name, key in pair if r % 2 == 0 else reversed(pair):
                        run = one_run(gen, sides[name], args, rate=rate, seed=SEED + r)
                        open_runs.setdefault(key, []).append(run)
                        print(
                            f"  open {rate:.0f}/s #{r + 1} {name:<22} "
                            f"p99 {run['latency_ms'].get('p99', 0):6.2f} ms",
                            flush=True,
                        )
        report["variants"] = {v.name: summary(runs, open_runs, v) for v in variants}
        report["runs"] = runs
        report["open_runs"] = open_runs
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "README.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
