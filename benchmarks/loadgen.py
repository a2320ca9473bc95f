"""Load generator for ``Recommend``: closed and open loop over ``grpc.aio``, in its own process.

Usage::

    # one run from the command line (prints one JSON object)
    .venv/bin/python benchmarks/loadgen.py run --target 127.0.0.1:50051 --concurrency 32 \\
        --duration 5 [--warmup 1] [--user-id u00042 | --session-items i1,i2,... ] [--k 10]
    .venv/bin/python benchmarks/loadgen.py run --target ... --rate 500 --duration 5
    # several servers, each call to the next (gRPC's client-side round robin)
    .venv/bin/python benchmarks/loadgen.py run --target ipv4:127.0.0.1:P1,127.0.0.1:P2 \\
        --lb-policy round_robin --concurrency 32 --duration 5
    # driven by bench_serving.py: JSON lines on stdin, one JSON result line per command
    .venv/bin/python benchmarks/loadgen.py serve

Commands in ``serve`` mode (one JSON object per line)::

    {"op": "pool", "name": "cached", "requests": ["<base64 RecommendRequest>", ...]}
    {"op": "run", "target": "127.0.0.1:PORT", "pool": "cached", "mode": "closed",
     "concurrency": 32, "warmup": 1.0, "duration": 5.0,
     "metrics_url": "http://127.0.0.1:P/metrics" | null, "pids": {"server": 123}}
    {"op": "run", ..., "mode": "open", "rate": 500.0, "seed": 1}
    {"op": "quit"}

Optional in ``run``: ``"channels": N`` spreads the calls round robin over N channels,
each its own TCP connection (a server of several SO_REUSEPORT processes gets the
connections spread by the kernel; one connection stays with one process),
``"lb_policy": "round_robin"`` with a target naming several addresses
(``ipv4:127.0.0.1:P1,127.0.0.1:P2,...``) makes each channel connect to every one and
send each call to the next (gRPC's client-side load balancing, the channel option
``grpc.lb_policy_name``; the default policy, ``pick_first``, would use the first
address only), and ``metrics_url`` may be a list (one endpoint per server process:
the texts come back as lists), ``"at": T`` starts the window at ``T`` on
``time.monotonic()``'s clock (instead of after ``warmup``; everything before it is
warm-up) and ``"timeline": true`` returns when each call completed (and how long it
took) or failed (``timeline``), so another process can line its own work up with the
window (:mod:`bench_publish`, the catalogue sync of :mod:`bench_serving`).

How it measures:

- Requests are serialized once (the pool) and sent as bytes; responses are not parsed
  (one per run is, to check its shape). The client's own per-call work is then the
  gRPC call itself, so as much of the machine as possible is left to the server.
- **Closed loop**: ``concurrency`` coroutines, each sending its next request when the
  previous one is answered. **Open loop**: Poisson arrivals at ``rate`` per second
  (seeded, so the service and the floor get the same schedule); each arrival is its
  own task, whatever the number in flight, up to ``max_outstanding``.
- A run is ``warmup`` seconds, then a measured window of ``duration`` seconds.
  Throughput counts calls *completed* inside the window; latencies are of calls
  *started* (closed) or *due* (open) inside it. Open-loop latency is given both from
  the actual send and from the scheduled arrival time (the latter includes the
  client's own scheduling delay, up to ~1 ms of asyncio timer granularity, and is the
  one that cannot hide queueing in the client).
- At both edges of the window it reads the CPU time (user + system, /proc) of the
  processes in ``pids``, of itself and of the whole machine (``machine``: busy time of
  all cores, so the caller can tell how much other work ran meanwhile), and scrapes
  ``metrics_url`` (in a thread), so the caller can diff the server's own histograms
  over exactly the measured window.
- Python's cyclic GC is off during a run (the loop allocates no cycles), so client
  collection pauses do not land in the latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import itertools
import json
import os
import random
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from recsvc.v1 import recommender_pb2 as pb

METHOD = "/recsvc.v1.RecommenderService/Recommend"
_TICK = os.sysconf("SC_CLK_TCK")

Call = Callable[..., Awaitable[bytes]]


@dataclass
class Pool:
    """Serialized requests, handed out round robin; the cursor persists across runs, so a
    pool of never-seen users (fold-in) keeps giving fresh ones."""

    requests: list[bytes]
    cursor: int = 0
    handed_out: int = 0

    def next(self) -> bytes:
        request = self.requests[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.requests)
        self.handed_out += 1
        return request


@dataclass
class Window:
    """What happened inside the measured window of one run."""

    start: float = 0.0
    end: float = 0.0
    completed: int = 0
    latencies: list[float] = field(default_factory=list)
    intended_latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    warmup_errors: Counter[str] = field(default_factory=Counter)
    done_at: list[float] = field(default_factory=list)
    """When each call completed inside the window (``timeline`` runs)."""
    done_latency: list[float] = field(default_factory=list)
    """How long each call of :attr:`done_at` took, from its send."""
    failed_at: list[tuple[float, str]] = field(default_factory=list)
    """When each call failed and with which code, if it was sent inside the window."""
    arrivals: int = 0
    dropped: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # after the comm field: state is [0], utime [11], stime [12]
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy so far (not idle or waiting for I/O), /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user/nice
    return (sum(values[:8]) - idle) / _TICK


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def snapshot(pids: dict[str, int], metrics_url: str | list[str] | None) -> dict[str, Any]:
    """CPU of ``pids`` and of this process now, then the server's /metrics text (a list
    of texts when ``metrics_url`` lists several processes' endpoints)."""
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["client"] = time.process_time()
    cpu["machine"] = machine_busy_seconds()
    at = time.perf_counter()
    text: str | list[str] | None = None
    if isinstance(metrics_url, list):
        text = [await asyncio.to_thread(scrape, url) for url in metrics_url]
    elif metrics_url:
        text = await asyncio.to_thread(scrape, metrics_url)
    return {"cpu": cpu, "at": at, "metrics": text}


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/p99.9 (nearest rank), mean and max, in milliseconds."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))] * 1e3

    return {
        "n": n,
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "mean": sum(ordered) / n * 1e3,
        "max": ordered[-1] * 1e3,
    }


async def closed_loop(
    call: Call, pool: Pool, concurrency: int, start: float, end: float, timeout: float
) -> Window:
    """``concurrency`` callers back to back until ``end``; measured from ``start``."""
    w = Window(start=start, end=end)

    async def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= w.end:
                return
            try:
                await call(pool.next(), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                (w.errors if t0 >= w.start else w.warmup_errors)[exc.code().name] += 1
                if t0 >= w.start:
                    w.failed_at.append((time.perf_counter(), exc.code().name))
                continue
            t1 = time.perf_counter()
            if w.start <= t1 < w.end:
                w.completed += 1
                w.done_at.append(t1)
                w.done_latency.append(t1 - t0)
            if t0 >= w.start:
                w.latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return w


async def open_loop(
    call: Call,
    pool: Pool,
    rate: float,
    start: float,
    end: float,
    timeout: float,
    seed: int,
    max_outstanding: int,
) -> Window:
    """Poisson arrivals at ``rate``/s from now until ``end``; measured from ``start``."""
    w = Window(start=start, end=end)
    rng = random.Random(seed)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(request: bytes, due: float) -> None:
        t0 = time.perf_counter()
        try:
            await call(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            (w.errors if due >= w.start else w.warmup_errors)[exc.code().name] += 1
            if due >= w.start:
                w.failed_at.append((time.perf_counter(), exc.code().name))
            return
        t1 = time.perf_counter()
        if w.start <= t1 < w.end:
            w.completed += 1
            w.done_at.append(t1)
            w.done_latency.append(t1 - t0)
        if w.start <= due < w.end:
            w.latencies.append(t1 - t0)
            w.intended_latencies.append(t1 - due)
            w.send_lags.append(t0 - due)

    due = time.perf_counter()
    while True:
        due += rng.expovariate(rate)
        if due >= w.end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if due >= w.start:
            w.arrivals += 1
        if len(in_flight) >= max_outstanding:
            w.dropped += due >= w.start
            continue
        task = asyncio.create_task(one(pool.next(), due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return w


def describe(raw: bytes) -> dict[str, Any]:
    """The shape of one response, to check the server answered what was asked."""
    response = pb.RecommendResponse.FromString(raw)
    return {
        "items": len(response.items),
        "strategy": pb.Strategy.Name(response.strategy),
        "fallback": response.fallback,
        "degraded": response.degraded,
        "reasons": sorted({pb.Reason.Name(i.reason) for i in response.items}),
        "applied_rule_ids": list(response.applied_rule_ids),
        "items_with_rules": sum(1 for i in response.items if i.rule_ids),
    }


class LoadGenerator:
    """One channel per target, kept across runs; named request pools."""

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.calls: dict[str, Call] = {}
        self.pools: dict[str, Pool] = {}

    def call_for(self, target: str, channels: int = 1, lb_policy: str | None = None) -> Call:
        """A call on ``target`` spread round robin over ``channels`` connections (each
        its own TCP connection, so a server of several SO_REUSEPORT processes gets
        them spread by the kernel); with ``lb_policy`` (``round_robin``), each channel
        spreads its calls over the addresses ``target`` names by that gRPC policy."""
        key = f"{target}#{channels}#{lb_policy or ''}"
        if key not in self.calls:
            calls = []
            for i in range(channels):
                # a local subchannel pool per channel: its own connection, not a shared one
                options: list[tuple[str, Any]] = (
                    [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
                )
                if lb_policy:
                    options.append(("grpc.lb_policy_name", lb_policy))
                channel = grpc.aio.insecure_channel(target, options=options)
                self.channels[f"{key}/{i}"] = channel
                # no (de)serializers: requests go out as the bytes in the pool,
                # responses come back as bytes
                calls.append(channel.unary_unary(METHOD))
            if channels == 1:
                self.calls[key] = calls[0]
            else:
                turn = itertools.cycle(calls)

                def spread(request: bytes, timeout: float) -> Awaitable[bytes]:
                    return next(turn)(request, timeout=timeout)  # type: ignore[no-any-return]

                self.calls[key] = spread
        return self.calls[key]

    def add_pool(self, name: str, requests: Sequence[bytes]) -> dict[str, Any]:
        if not requests:
            raise ValueError(f"pool {name!r} is empty")
        self.pools[name] = Pool(list(requests))
        return {"pool": name, "size": len(requests)}

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        call = self.call_for(
            spec["target"], int(spec.get("channels", 1)), spec.get("lb_policy") or None
        )
        pool = self.pools[spec["pool"]]
        timeout = float(spec.get("timeout", 10.0))
        pids: dict[str, int] = {k: int(v) for k, v in (spec.get("pids") or {}).items()}
        metrics_url = spec.get("metrics_url")
        warmup, duration = float(spec.get("warmup", 1.0)), float(spec["duration"])
        sample = describe(await call(pool.next(), timeout=timeout))
        handed_before = pool.handed_out
        edges: dict[str, Any] = {}

        async def edge(name: str, at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            edges[name] = await snapshot(pids, metrics_url)

        gc.collect()
        gc.disable()
        try:
            if "at" in spec:
                # a start on time.monotonic()'s clock, so another process can schedule
                # its own work against this window (bench_publish.py)
                start_at = float(spec["at"]) - time.monotonic() + time.perf_counter()
            else:
                start_at = time.perf_counter() + warmup
            end_at = start_at + duration
            runner: Awaitable[Window]
            if spec["mode"] == "closed":
                concurrency = int(spec["concurrency"])
                runner = closed_loop(call, pool, concurrency, start_at, end_at, timeout)
            else:
                runner = open_loop(
                    call,
                    pool,
                    float(spec["rate"]),
                    start_at,
                    end_at,
                    timeout,
                    int(spec.get("seed", 1)),
                    int(spec.get("max_outstanding", 5000)),
                )
            w, _, _ = await asyncio.gather(runner, edge("start", start_at), edge("end", end_at))
        finally:
            gc.enable()
        start, end = edges["start"], edges["end"]
        span = end["at"] - start["at"]
        cpu = {name: end["cpu"][name] - start["cpu"][name] for name in start["cpu"]}
        result: dict[str, Any] = {
            "mode": spec["mode"],
            "concurrency": spec.get("concurrency"),
            "rate": spec.get("rate"),
            "window_seconds": w.end - w.start,
            "completed": w.completed,
            "qps": w.completed / (w.end - w.start),
            "latency_ms": percentiles(w.latencies),
            "errors": dict(w.errors),
            "warmup_errors": dict(w.warmup_errors),
            "cpu_seconds": cpu,
            "cpu_span_seconds": span,
            "requests_handed_out": pool.handed_out - handed_before,
            "pool_size": len(pool.requests),
            "sample": sample,
            "metrics_before": start["metrics"],
            "metrics_after": end["metrics"],
        }
        if spec.get("timeline"):
            # seconds from the window's start, and the start on time.monotonic()'s clock
            result["timeline"] = {
                "start_monotonic": w.start - time.perf_counter() + time.monotonic(),
                "done": [round(t - w.start, 5) for t in w.done_at],
                "latency": [round(t, 6) for t in w.done_latency],
                "failed": [[round(t - w.start, 5), code] for t, code in w.failed_at],
            }
        if spec["mode"] == "open":
            result["intended_latency_ms"] = percentiles(w.intended_latencies)
            result["send_lag_ms"] = percentiles(w.send_lags)
            result["offered_rate"] = w.arrivals / (w.end - w.start)
            result["dropped"] = w.dropped
        return result

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


async def serve_stdio() -> int:
    """The ``serve`` mode: commands on stdin, results on stdout, one JSON line each."""
    gen = LoadGenerator()
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 0
            command = json.loads(line)
            op = command.get("op")
            try:
                if op == "quit":
                    return 0
                if op == "pool":
                    requests = [base64.b64decode(r) for r in command["requests"]]
                    reply: dict[str, Any] = gen.add_pool(command["name"], requests)
                elif op == "run":
                    reply = await gen.run(command)
                else:
                    reply = {"error": f"unknown op {op!r}"}
            except (grpc.aio.AioRpcError, KeyError, ValueError, OSError) as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await gen.close()


def one_request(args: argparse.Namespace) -> bytes:
    request = pb.RecommendRequest(
        user_id=args.user_id,
        k=args.k,
        session_events=[
            pb.SessionEvent(item_id=i, event_type=pb.EVENT_TYPE_VIEW)
            for i in args.session_items.split(",")
            if i
        ],
        filters=pb.Filters(in_stock_only=args.in_stock),
    )
    return request.SerializeToString()


async def run_once(args: argparse.Namespace) -> int:
    gen = LoadGenerator()
    try:
        gen.add_pool("cli", [one_request(args)])
        spec: dict[str, Any] = {
            "target": args.target,
            "pool": "cli",
            "mode": "open" if args.rate else "closed",
            "concurrency": args.concurrency,
            "rate": args.rate,
            "warmup": args.warmup,
            "duration": args.duration,
            "metrics_url": args.metrics_url,
            "lb_policy": args.lb_policy,
        }
        result = await gen.run(spec)
    finally:
        await gen.close()
    result.pop("metrics_before")
    result.pop("metrics_after")
    print(json.dumps(result, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Load generator for recsvc Recommend (grpc.aio).")
    sub = p.add_subparsers(dest="mode", required=True)
    sub.add_parser("serve", help="JSON-lines commands on stdin (used by bench_serving.py)")
    r = sub.add_parser("run", help="one run against --target, result as JSON")
    r.add_argument("--target", required=True, help="HOST:PORT, or ipv4:HOST:PORT,HOST:PORT,...")
    r.add_argument(
        "--lb-policy",
        choices=["round_robin", "pick_first"],
        help="gRPC load-balancing policy over the addresses of --target (default pick_first)",
    )
    r.add_argument("--concurrency", type=int, default=32, help="closed loop: calls in flight")
    r.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    r.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    r.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    r.add_argument("--metrics-url", help="the server's /metrics, scraped at both edges")
    r.add_argument("--user-id", default="", help="user of every request (default anonymous)")
    r.add_argument("--session-items", default="", help="inline session items, A,B,C")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--in-stock", action="store_true", help="filters.in_stock_only")
    args = p.parse_args(argv)
    if args.mode == "serve":
        return asyncio.run(serve_stdio())
    return asyncio.run(run_once(args))


if __name__ == "__main__":
    sys.exit(main())
