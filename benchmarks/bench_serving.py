"""Benchmark ``recsvc serve`` (Recommend) against the gRPC floor, side by side.

Usage::

    .venv/bin/python benchmarks/bench_serving.py [--catalogues 10000 100000] [--repeats 5] \\
        [--duration 2.5] [--warmup 0.5] [--concurrency 1 8 32 64] [--rates auto | R ...] \\
        [--out benchmarks/results/serving] [--workdir /tmp/recsvc-bench] [--profile-seconds 20]
    .venv/bin/python benchmarks/bench_serving.py --quick      # make bench-quick (< 3 min)
    .venv/bin/python benchmarks/bench_serving.py --catalogues 100000 --scenarios cached live \\
        --concurrency 1 8 32 --sync-repeats 3 --out benchmarks/results/live-catalogue
    .venv/bin/python benchmarks/bench_serving.py --catalogues 100000 --scenarios cached rotation \\
        --concurrency 1 32 --repeats 3 --out benchmarks/results/rotation
    .venv/bin/python benchmarks/bench_serving.py --catalogues 100000 \\
        --scenarios cached experiment --concurrency 1 32 --repeats 3 --profile-seconds 0 \\
        --out benchmarks/results/experiments
    .venv/bin/python benchmarks/bench_serving.py --catalogues 100000 --scenarios cached scaleout \\
        --concurrency 1 32 --repeats 3 --duration 5 --warmup 1 --profile-seconds 0 \\
        --out benchmarks/results/scaleout

Method
------
Four processes share the machine: ``recsvc serve`` (one process, its private Redis
passed as ``--redis-url``), the no-op floor (:mod:`noop_server`: same ``grpc.aio``
server and options, one process, no interceptors, a prebuilt response of the same
shape), the Redis server, and the load generator (:mod:`loadgen`, an async
``grpc.aio`` client in its own process). This script only sets up, tells the load
generator what to run, and writes the results. (With ``scaleout``, three more
``recsvc serve`` and the six ``redis-server`` nodes of a Redis Cluster join them.)

For every catalogue size a synthetic shop is built once (:mod:`_shop`: synth, then
``recsvc train --publish``), cached under ``--workdir``. Before serving, this script
starts a private Redis and loads it: every trained user's vector with
``UserVectorStore.publish`` (as ``recsvc publish`` does), and a live history of 10
events (6 views, 3 add-to-carts, 1 purchase, items of a trained user's history) for
each fold-in user, who has no vector anywhere.

Scenarios (every request is built up front, serialized once, cycled in order):

``cached``       known user whose vector is published in Redis, the server's LRU and
                 client-side state cache warmed (a pool of 2,000 trained users, each
                 asked for before measuring, nobody writing meanwhile, kept for the
                 whole run: :data:`WARM_SECONDS`; the server's counters tell which
                 layer answered), k = 10
``cached_k100``  the same, k = 100 (the floor then answers 100 items too)
``foldin``       known user with live history in Redis but no vector: the server
                 folds the history in and writes the vector back, so each request
                 uses a user never seen before (ids ``fold000000``...)
``session``      anonymous visitor, 5 inline session events (VIEW, items of one
                 trained user's history), no session id: no Redis round trip
``session_sid``  the same with a session id (one Redis LRANGE, empty)
``filter``       ``cached`` with ``in_stock_only``: 90% of the shop is out of stock,
                 so ~90% of the candidates are rejected (measured below)
``live``         ``cached`` (placement ``home``) on a second ``recsvc serve`` of the same
                 model whose live catalogue holds every item of the shop (two-level
                 category path, 2% unavailable, price, brand of 50, rating), loaded
                 with ``recsvc catalog load``, and 10 rules (5 boosts by predicate, 3
                 buries of 20 items, 2 pins; :mod:`_live`) with ``recsvc rules load``;
                 each request filters on a price range keeping ~80% of the items.
                 Only with ``--scenarios ... live``; measured together with ``cached``
                 at the same load (each repeat runs both, back to back), so the
                 ratio live/cached (issue #15: server p50 ≤ 1.25×) is of one run
``rotation``     ``cached`` (the same users, k = 10) with placement ``home``, on a second
                 ``recsvc serve`` of the same model on the same Redis whose settings
                 (``--config``, written under ``--workdir``) give that placement
                 ``rotate_after = 3`` and ``rotation_weight = 0.2`` (a process of its
                 own: its reads take no room in the client-side state cache of
                 ``cached``'s server). Before measuring, each pool user's impression
                 counts (``{prefix}:{u:<user>}:shown``, written to Redis directly) hold 5
                 items of the user's cached top 10 shown 3 to 6 times and 20 items of
                 their ranks 11-40 shown once or twice, so each request's state read also
                 fetches the 5 overexposed items (ZRANGEBYSCORE, in the same pipeline and
                 client-side cache as the rest) and the ranking demotes them. Only with
                 ``--scenarios ... rotation``; measured together with ``cached`` like
                 ``live`` (issue #16: server p50 ≤ 1.25× cached's); before measuring, the
                 cached and rotation answers of every pool user are compared (gRPC) to
                 check the demotion took place
``experiment``   ``cached`` (the same users, k = 10) with placement ``home``, on a second
                 ``recsvc serve`` of the same shop on the same Redis whose settings
                 (``--config``, written under ``--workdir``) set ``[server]
                 experiments_file`` to a file declaring one experiment on ``home``, two
                 variants of 50% each: ``control`` (the published model) and
                 ``candidate``, a second model version of the same shop (``recsvc train``
                 on the same events with ALS ``random_state`` 43, not published, written
                 under the same artifact root and cached there), so the server holds two
                 models and each shopper is answered by their variant's (assigned by the
                 hash of the user id). Both versions' user vectors are published to the
                 same Redis under the key prefix ``abexp`` (``[redis] prefix`` of that
                 server: the experiment set is a shared record in Redis, and under
                 ``cached``'s prefix ``cached``'s server would follow it and load the
                 candidate model too). What it measures: the cost of answering a split
                 placement with two models loaded (variant assignment, the second model's
                 index and vectors); the target (issue #17) is server p50 ≤ 1.1×
                 ``cached``'s, measured together with ``cached`` like ``live``. Before
                 measuring, every pool user is asked once (gRPC) to check both variants
                 answer (the split, each variant's model version, each answer against
                 ``cached``'s); the memory each loaded variant model added is read from
                 ListExperiments (``model_bytes``) and ``/metrics``, and both servers' RSS
                 from ``/proc`` (after that check and again after the measurements)
``scaleout``     ``cached``'s requests (the same users, k = 10, no placement) on three
                 ``recsvc serve`` processes of the same artifact root on one private
                 Redis Cluster (:func:`recsvc.store.embedded.start_private_cluster`: 3
                 primaries, 1 replica each, every node a ``redis-server`` on loopback;
                 ``--redis-url redis+cluster://...``), the load generator sending to all
                 three through one channel with gRPC's ``round_robin`` policy (target
                 ``ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3``). Every trained user's
                 vector is published into the cluster too (``UserVectorStore.publish``,
                 the cluster pipeline), and each replica is warmed on its own with every
                 pool user, as ``cached``'s server is. Before measuring, every pool user is
                 asked once of each replica (gRPC) and the answers compared with
                 ``cached``'s. Only with ``--scenarios cached scaleout``; measured together
                 with ``cached`` and ``cached_cluster`` like ``live`` (each repeat runs
                 the three, back to back; their floor is ``cached``'s runs of the same
                 no-op at the same load), at the same loads. Read for: throughput and
                 p50/p99 of three replicas on the cluster against one on a standalone
                 Redis, and the CPU per request of each part (every ``recsvc serve``
                 summed, every Redis node summed, the load generator), each process's from
                 ``/proc``; on a machine of few cores every process of both setups shares
                 them, so throughput cannot scale there (the report says what such a
                 machine can and cannot show)
``cached_cluster`` ``cached``'s requests on one more ``recsvc serve`` on the same Redis
                 Cluster, asked directly (no balancing), planned with ``scaleout`` at its
                 loads: one replica on the cluster, so the difference between ``cached``
                 and ``scaleout`` splits into the cluster's path (``cached_cluster`` ÷
                 ``cached``) and the spreading over three processes (``scaleout`` ÷
                 ``cached_cluster``: each at a third of the load, a user's calls dealt to
                 three client-side caches, ten processes on the cores)

Each measured point (catalogue, scenario, closed-loop concurrency or open-loop rate)
runs ``--repeats`` times on both servers, alternating (recsvc, floor, floor, recsvc,
...), each run ``--warmup`` s plus a ``--duration`` s window. Per run: client QPS
and latency percentiles, CPU seconds per request of each process (from /proc), and
the server's own metrics diffed over exactly the window: the
``grpc_server_handling_seconds`` histogram of Recommend (p50/p99 estimated by linear
interpolation inside its buckets, as Prometheus' ``histogram_quantile``), where user
vectors came from and which strategy answered (to check the scenario is what it
claims). Reported: medians over the repeats, and ratios of medians to the floor.

Open-loop rates (``--rates auto``): 25%, 50% and 75% of recsvc's own closed-loop
throughput for ``cached`` at concurrency 32 in this run, rounded; both servers get
the same seeded Poisson schedule.

With ``--profile-seconds`` > 0, py-spy records the recsvc server for that long under
the ``cached`` load at concurrency 32 (a flame graph and raw stacks), summarised in
``profile.md`` (and the live server under the ``live`` load, ``profile-live.md``; the
``rotation`` load, ``profile-rotation.md``; the ``experiment`` load,
``profile-experiment.md``; ``scaleout`` is not profiled: its work is spread over three
processes).

Catalogue sync (``--sync-repeats N``, with ``live``): while the load generator runs
closed-loop requests (``--sync-pool``, default ``live``) at ``--sync-concurrency`` on
the live server, this script runs ``recsvc catalog load FILE`` against it, N times,
alternating two files that differ in every item (:mod:`_live`). Per run: the
command's wall and CPU time, when its first and last change reached Redis (a thread
reads the change counter every 20 ms), when the server had applied the last one, and
for the window before / during / after the sync the calls completed, failed (by
status code) and their latency (client p50/p99/max, the worst 1-s p99, the server's
histogram), the CPU of each process.

Outputs: ``<out>/results.json`` (every run), ``<out>/README.md`` (tables),
``latency_vs_concurrency.png`` and ``latency_vs_catalogue.png``; with ``--quick``
only ``<out>/summary.json``.
"""

# Heavy libraries load where they are used so --help stays fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _live
from _env import git_revision, machine, versions
from _live import LiveSetup
from _shop import Shop, ensure_shop, recsvc_bin

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from recsvc.artifact import ModelArtifact
    from recsvc.store.embedded import PrivateCluster, PrivateRedis
    from recsvc.v1 import recommender_pb2 as pb

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SEED = 7
POOL_USERS = 2_000
FOLDIN_EVENTS = 10
FOLDIN_USERS_PER_RUN_SECOND = 2_500
"""Fold-in users to prepare per second of service run (above any rate seen here)."""
LIBRARIES = ("grpcio", "protobuf", "faiss-cpu", "numpy", "redis", "hiredis", "prometheus_client")
HANDLING = "grpc_server_handling_seconds"
RATE_FRACTIONS = (0.25, 0.5, 0.75)
TARGETS = {
    "throughput_ratio_min": 0.6,
    "open_loop_p99_ratio_max": 2.0,
    "cached_server_p50_ms_max": 1.0,
    "session_server_p50_ms_max": 1.5,
    "session_cpu_ratio_to_cached_max": 1.3,
    "cached_cpu_ratio_to_floor_max": 2.0,
}
"""Issue #21: server CPU per request, an anonymous 5-item session ≤ 1.3× a cached
customer's and a cached customer's ≤ 2× the no-op floor's (100k items, c=32)."""

SCENARIOS: dict[str, str] = {
    "cached": "known user, vector in Redis, LRU and client-side state cache warmed, k=10",
    "cached_k100": "known user, vector cached, k=100",
    "foldin": "known user, live history, no vector (fold-in + write-back), k=10",
    "session": "anonymous, 5 inline session events, no session id, k=10",
    "session_sid": "anonymous, 5 inline session events + session id (Redis LRANGE), k=10",
    "filter": "cached user + in_stock_only (90% of items out of stock), k=10",
    "live": "cached user, placement home, on a server with a live catalogue of every item "
    "(category path, availability, price, brand of 50, rating) and 10 active rules (5 "
    "boosts by predicate, 3 buries of 20 items, 2 pins); each request filters on a price "
    "range keeping ~80% of the items, k=10",
    "rotation": "cached user, placement home with rotate_after = 3 (rotation_weight 0.2): "
    "each user's impression counts hold 5 of their cached top 10 shown 3-6 times (demoted) "
    "and 20 more items shown once or twice, k=10",
    "experiment": "cached user, placement home split 50/50 by an A/B experiment between the "
    "published model (control) and a second model version of the same shop (candidate, "
    "another ALS seed), both loaded in the server; each user answered by their variant's "
    "model with its own cached vector, k=10",
    "scaleout": "cached's requests (the same users, k=10) on 3 recsvc serve replicas of the "
    "same artifact root on one private Redis Cluster (3 primaries + 3 replicas, vectors "
    "published into it), the client spreading calls over the 3 with gRPC round robin; each "
    "replica's LRU and client-side state cache warmed with every pool user",
    "cached_cluster": "cached's requests on one more recsvc serve on the same Redis Cluster "
    "as scaleout's, asked directly (one replica on the cluster; planned with scaleout)",
}
PAIRED = ("cached", "live", "rotation", "experiment", "scaleout", "cached_cluster")
"""Scenarios measured together, alternating, when planned at the same load: ``live``'s,
``rotation``'s, ``experiment``'s, ``scaleout``'s and ``cached_cluster``'s figures are read
against ``cached``'s of the same repeats."""
COMPARED = ("live", "rotation", "experiment", "scaleout", "cached_cluster")
"""The :data:`PAIRED` scenarios read against ``cached`` (``vs_cached``)."""
SCALEOUT_SCENARIOS = ("scaleout", "cached_cluster")
"""The scale-out scenarios: planned together (``cached_cluster`` only with ``scaleout``),
their floor runs those of ``cached`` at the same load (the same single no-op)."""
PROFILED = ("cached", "session", "live", "rotation", "experiment")
"""The scenarios py-spy records (one server process each; not ``scaleout``'s three)."""
LIVE_RULES_MAX_P50_RATIO = 1.25
"""Issue #15: server p50 with a live catalogue, 10 rules and a filter ≤ 1.25× cached."""
ROTATION_MAX_P50_RATIO = 1.25
"""Issue #16: server p50 with rotation on (``rotate_after``) ≤ 1.25× cached."""
EXPERIMENT_MAX_P50_RATIO = 1.1
"""Issue #17: server p50 with two variants (two models) loaded ≤ 1.1× cached."""
MAX_P50_RATIO = {
    "live": LIVE_RULES_MAX_P50_RATIO,
    "rotation": ROTATION_MAX_P50_RATIO,
    "experiment": EXPERIMENT_MAX_P50_RATIO,
}
ROTATION_PLACEMENT = "home"
ROTATE_AFTER = 3
ROTATION_WEIGHT = 0.2
ROTATION_OVEREXPOSED = 5
"""Items of each pool user's cached top 10 given ``ROTATE_AFTER`` or more impressions."""
ROTATION_OVEREXPOSED_COUNTS = (3, 6)
"""Their impression counts: uniform integers in this range (both ends included)."""
ROTATION_OTHERS = 20
"""Items of the user's ranks 11 to :data:`ROTATION_DEPTH` shown fewer times (1 or 2)."""
ROTATION_DEPTH = 40
EXPERIMENT_PLACEMENT = "home"
EXPERIMENT_NAME = "bench-model"
EXPERIMENT_VARIANTS = (("control", 0.5), ("candidate", 0.5))
"""The variants (name, share); the first is the published model, the second the
candidate version."""
EXPERIMENT_SEED = 43
"""ALS ``random_state`` of the candidate model (the published one has the default, 42)."""
EXPERIMENT_PREFIX = "abexp"
"""The experiment server's ``[redis] prefix``: its experiment set, user vectors and state
apart from ``cached``'s server (which would otherwise follow the set and load the
candidate model too), in the same Redis. Not a prefix of ``recsvc`` nor the reverse."""
SCALEOUT_REPLICAS = 3
"""``recsvc serve`` processes of the ``scaleout`` scenario, behind the client's round robin."""
SCALEOUT_PRIMARIES = 3
"""Primaries of its Redis Cluster (the fewest a Redis Cluster takes)."""
SCALEOUT_NODE_REPLICAS = 1
"""Redis replicas per primary (a production-shaped cluster: 3 + 3 nodes)."""
SCALEOUT_LB_POLICY = "round_robin"
"""The gRPC client's load-balancing policy over the replicas (channel option
``grpc.lb_policy_name``, :mod:`loadgen`'s ``lb_policy``)."""
SCALEOUT_WARM_SECONDS = 3.0
"""Seconds of ``cached``'s requests each replica gets on its own before measuring (enough
passes over the pool of :data:`POOL_USERS` at any rate seen here)."""
SCALEOUT_IDLE_SECONDS = 10.0
"""Seconds both scale-out setups are watched at rest before measuring (:func:`idle_cores`)."""


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Point:
    """One measured point: a scenario on one catalogue under one load."""

    catalogue: int
    scenario: str
    mode: str
    """closed | open"""
    level: float
    """concurrency (closed) or requests per second (open; 0 = decided in the run)."""
    rate_fraction: float = 0.0
    interceptors: bool = False
    """Also run the no-op behind recsvc's interceptors (a diagnostic, not the floor)."""


def plan(args: argparse.Namespace) -> list[Point]:
    """The points to measure, in order (open-loop points after their reference): every
    scenario but ``live``, ``rotation``, ``experiment`` and ``scaleout`` by default,
    only those of ``--scenarios`` when given (``scaleout`` at ``cached``'s open-loop
    loads too, and ``cached_cluster`` with it)."""
    points = _plan(args)
    if args.scenarios is None:
        return points
    wanted = set(args.scenarios)
    chosen = [p for p in points if p.scenario in wanted]
    main = max(args.catalogues)
    for scenario in COMPARED:
        if scenario not in wanted:
            continue
        for n in sorted(args.catalogues, reverse=True):
            levels = args.concurrency if n == main else [1, 32]
            chosen += [Point(n, scenario, "closed", c) for c in levels]
    if "scaleout" in wanted:
        # the same offered loads as cached's open-loop points (measured together)
        chosen += [
            replace(p, scenario="scaleout", interceptors=False)
            for p in points
            if p.scenario == "cached" and p.mode == "open"
        ]
        # and one replica on the cluster at every load of the three
        chosen += [
            replace(p, scenario="cached_cluster") for p in chosen if p.scenario == "scaleout"
        ]
    # keep the catalogues largest first, as the rigs are started
    return sorted(chosen, key=lambda p: -p.catalogue)


def _plan(args: argparse.Namespace) -> list[Point]:
    if args.quick:
        n = args.catalogues[-1]
        return [
            Point(n, "cached", "closed", 32),
            Point(n, "session", "closed", 32),
            Point(n, "cached", "open", 0, 0.5),  # the client p99 at the same offered load
        ]
    main = max(args.catalogues)
    points: list[Point] = []
    for n in sorted(args.catalogues, reverse=True):
        if n == main:
            points += [
                Point(n, "cached", "closed", c, interceptors=c in (1, 32)) for c in args.concurrency
            ]
            points += [Point(n, "session", "closed", c) for c in args.concurrency]
            for scenario in ("cached_k100", "foldin", "filter"):
                points += [Point(n, scenario, "closed", c) for c in (1, 32)]
            points.append(Point(n, "session_sid", "closed", 32))
            if args.rates == ["auto"]:
                points += [Point(n, "cached", "open", 0, f) for f in RATE_FRACTIONS]
            else:
                points += [Point(n, "cached", "open", float(r)) for r in args.rates]
        else:
            for scenario in ("cached", "session", "foldin", "filter"):
                points += [Point(n, scenario, "closed", c) for c in (1, 32)]
    return points


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


WARM_SECONDS = 3600.0
"""How long every ``recsvc serve`` here keeps what it read (``[server]``
``state_cache_seconds`` and ``lru_ttl_seconds``; 30 s by default): longer than a run, so
the users warmed before measuring stay warm for every point, as the scenarios say. With
the default, what was read while warming expired in the middle of the run and a point's
state-cache hit rate (0.4 to 1.0 in two runs of the same points) depended on when it
ran: ``live`` against ``cached`` at concurrency 1 compared a half-cold server with a
warm one."""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    env["RECSVC_SERVER__STATE_CACHE_SECONDS"] = str(WARM_SECONDS)
    env["RECSVC_SERVER__LRU_TTL_SECONDS"] = str(WARM_SECONDS)
    return env


@dataclass
class Server:
    """A server child process whose stdout announced ``<prefix> HOST:PORT``."""

    name: str
    process: subprocess.Popen[bytes]
    target: str
    command: list[str]
    log: Path
    serving_pids: list[int] = field(default_factory=list)
    """The processes that serve (``recsvc serve`` with several: its spawned children);
    empty = ``process`` itself."""
    others: list[Server] = field(default_factory=list)
    """More processes on the same port (a floor of several ``--reuseport`` no-ops), or
    behind the same client-side balanced target (the ``scaleout`` replicas)."""
    lb_policy: str | None = None
    """The client's gRPC load-balancing policy over the addresses ``target`` names (None:
    one address, gRPC's default)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> dict[str, int]:
        """The serving processes, as the load generator's ``pids``: ``server`` for one,
        ``server0``, ``server1``, ... for several (summed back into ``server``)."""
        pids = (self.serving_pids or [self.process.pid]) + [o.process.pid for o in self.others]
        if len(pids) == 1:
            return {"server": pids[0]}
        return {f"server{i}": pid for i, pid in enumerate(pids)}

    def stop(self) -> None:
        for other in self.others:
            other.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    name: str, cmd: list[str], announce: str, log: Path, timeout: float = 180, count: int = 1
) -> Server:
    """Start ``cmd`` (output to ``log``) and wait for ``count`` ``announce HOST:PORT``
    lines (one per serving process)."""
    out = log.open("wb")
    process = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), cwd=REPO
    )
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [
            line
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith(announce)
        ]
        if len(lines) >= count:
            target = lines[0].removeprefix(announce).strip()
            return Server(name, process, target, cmd, log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not start ({shlex.join(cmd)}):\n{tail}")


def spawned_children(pid: int) -> list[int]:
    """Processes ``multiprocessing`` spawned under ``pid`` (its servers; not a tracker)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
    return out


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000)
        try:
            for port in range(base, base + n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


def start_floor(
    name: str, args: argparse.Namespace, logs: Path, interceptors: bool = False
) -> Server:
    """The no-op floor as ``args.processes`` processes on one port, like recsvc's."""
    port = _free_port() if args.processes > 1 else 0
    servers = []
    for i in range(args.processes):
        cmd = [sys.executable, str(HERE / "noop_server.py"), "--port", str(port)]
        if args.processes > 1:
            cmd.append("--reuseport")
        if interceptors:
            cmd.append("--interceptors")
        log = logs / (f"{name}.log" if args.processes == 1 else f"{name}-{i}.log")
        servers.append(start_server(name, cmd, "noop serving on", log))
    first = servers[0]
    first.others = servers[1:]
    return first


class LoadGen:
    """The load generator child, spoken to in JSON lines."""

    def __init__(self, log: Path) -> None:
        self.command = [sys.executable, str(HERE / "loadgen.py"), "serve"]
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=_clean_env(),
            cwd=REPO,
        )

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({self.process.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"load generator: {reply['error']}")
        return reply

    def send_pool(self, name: str, requests: Sequence[bytes]) -> None:
        encoded = [base64.b64encode(r).decode() for r in requests]
        self.ask({"op": "pool", "name": name, "requests": encoded})

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write(b'{"op": "quit"}\n')
            self.process.stdin.flush()
            self.process.wait(30)
        self._log.close()


# --------------------------------------------------------------------------- a catalogue


@dataclass
class LiveRig:
    """The second ``recsvc serve`` of a catalogue, for the ``live`` scenario: its own
    Redis (the same user vectors), a live catalogue of every item and 10 rules, loaded
    through ``recsvc catalog load`` and ``recsvc rules load`` as a shop loads them."""

    redis: PrivateRedis
    server: Server
    metrics_url: str | list[str]
    setup: LiveSetup
    report: dict[str, Any] = field(default_factory=dict)
    """What was loaded, how long it took, what the server says it holds."""


@dataclass
class RotationRig:
    """The ``recsvc serve`` of the ``rotation`` scenario: the same model on the same
    Redis as ``cached``'s, its settings file giving placement :data:`ROTATION_PLACEMENT`
    ``rotate_after``; a server of its own, so neither scenario's reads take the other's
    room in the client-side state cache."""

    server: Server
    metrics_url: str | list[str]
    report: dict[str, Any] = field(default_factory=dict)
    """The impressions written and the answers beside cached's
    (:func:`seed_impressions`, :func:`check_rotation`)."""


@dataclass
class ExperimentRig:
    """The ``recsvc serve`` of the ``experiment`` scenario: the same shop on the same
    Redis as ``cached``'s (key prefix :data:`EXPERIMENT_PREFIX`), its settings file
    naming an experiments file that splits placement :data:`EXPERIMENT_PLACEMENT`
    between the published model and a second version; a server of its own."""

    server: Server
    metrics_url: str | list[str]
    report: dict[str, Any] = field(default_factory=dict)
    """The candidate model, the vectors published, the check of both variants
    (:func:`check_experiment`) and the memory read (:func:`experiment_memory`)."""


@dataclass
class ScaleoutRig:
    """The ``scaleout`` scenario: :data:`SCALEOUT_REPLICAS` ``recsvc serve`` of the same
    shop on one private Redis Cluster, reached as one client-side balanced target."""

    cluster: PrivateCluster
    replicas: list[Server]
    """Each ``recsvc serve`` on its own (its own target: warm-up, the check)."""
    server: Server
    """All of them as one: the target ``ipv4:P1,P2,...`` with :data:`SCALEOUT_LB_POLICY`;
    its pids are every replica's (``server0``, ``server1``, ...), stopping it stops all."""
    metrics_url: list[str]
    """One /metrics per replica (summed when diffed)."""
    single: Server
    """One more ``recsvc serve`` on the same cluster, asked on its own
    (``cached_cluster``)."""
    single_metrics_url: str
    report: dict[str, Any] = field(default_factory=dict)
    """The cluster's nodes, the vectors published, the check of every replica's answers
    (:func:`check_scaleout`), the commands."""

    def redis_pids(self) -> dict[str, int]:
        """Every cluster node as the load generator's ``pids``: ``redis0``, ``redis1``,
        ... (summed back into ``redis``), primaries first as created."""
        return {f"redis{i}": node.pid for i, node in enumerate(self.cluster.nodes)}

    def stop(self) -> None:
        """Every replica, then every node of the cluster."""
        try:
            self.single.stop()
            self.server.stop()
        finally:
            self.cluster.stop()


@dataclass
class Rig:
    """Everything running for one catalogue: shop, Redis, recsvc, the request pools."""

    shop: Shop
    redis: PrivateRedis
    server: Server
    metrics_url: str | list[str]
    """One /metrics, or one per serving process."""
    pools: dict[str, int] = field(default_factory=dict)
    filter_rejection: dict[str, float] = field(default_factory=dict)
    setup_seconds: dict[str, float] = field(default_factory=dict)
    live: LiveRig | None = None
    """The server of the ``live`` scenario, when it is planned."""
    rotation: RotationRig | None = None
    """The server of the ``rotation`` scenario, when it is planned."""
    experiment: ExperimentRig | None = None
    """The server of the ``experiment`` scenario, when it is planned."""
    scaleout: ScaleoutRig | None = None
    """The replicas and cluster of the ``scaleout`` scenario, when it is planned."""

    def stop_started(self) -> None:
        """Stop whatever of it has started, the scenarios' servers first (a start that
        failed half-way leaves nothing running)."""
        parts: list[Any] = []
        if self.scaleout is not None:
            parts.append(self.scaleout)
        if self.live is not None:
            parts += [self.live.server, self.live.redis]
        parts += [x.server for x in (self.rotation, self.experiment) if x is not None]
        parts += [self.server, self.redis]
        for part in parts:
            with contextlib.suppress(Exception):
                part.stop()

    def serving(self, scenario: str) -> tuple[Server, str | list[str], dict[str, int]]:
        """The recsvc server that answers ``scenario``, its /metrics and its pids
        (Redis included)."""
        if scenario == "live":
            if self.live is None:
                raise RuntimeError("the live scenario needs its server (start_rig)")
            live = self.live
            return live.server, live.metrics_url, {**live.server.pids(), "redis": live.redis.pid}
        if scenario == "rotation":
            if self.rotation is None:
                raise RuntimeError("the rotation scenario needs its server (start_rig)")
            rot = self.rotation
            return rot.server, rot.metrics_url, {**rot.server.pids(), "redis": self.redis.pid}
        if scenario == "experiment":
            if self.experiment is None:
                raise RuntimeError("the experiment scenario needs its server (start_rig)")
            ex = self.experiment
            return ex.server, ex.metrics_url, {**ex.server.pids(), "redis": self.redis.pid}
        if scenario == "scaleout":
            if self.scaleout is None:
                raise RuntimeError("the scaleout scenario needs its servers (start_rig)")
            out = self.scaleout
            return out.server, out.metrics_url, {**out.server.pids(), **out.redis_pids()}
        if scenario == "cached_cluster":
            if self.scaleout is None:
                raise RuntimeError("the cached_cluster scenario needs scaleout's (start_rig)")
            out = self.scaleout
            pids = {**out.single.pids(), **out.redis_pids()}
            return out.single, out.single_metrics_url, pids
        return self.server, self.metrics_url, {**self.server.pids(), "redis": self.redis.pid}


def _timed(store: dict[str, float], name: str) -> Callable[[], None]:
    t = time.perf_counter()

    def done() -> None:
        store[name] = time.perf_counter() - t

    return done


def publish_vectors(artifact: ModelArtifact, url: str, prefix: str | None = None) -> int:
    """Every trained user's vector into Redis, as ``recsvc publish`` loads them (under
    key prefix ``prefix``; None: the default)."""
    from recsvc.config import RedisSettings
    from recsvc.store import UserVectorStore, client_from_url

    client = client_from_url(url, socket_timeout=10.0)
    try:
        store = (
            UserVectorStore(client) if prefix is None else UserVectorStore(client, prefix=prefix)
        )
        return store.publish(
            artifact.model_version,
            artifact.user_ids.tolist(),
            artifact.user_factors,
            ttl_seconds=RedisSettings().vector_ttl_seconds,
        )
    finally:
        client.close()


def foldin_user(i: int) -> str:
    return f"fold{i:06d}"


def write_foldin_histories(artifact: ModelArtifact, url: str, n_users: int) -> None:
    """``n_users`` users with a live history of 10 events and no vector anywhere."""
    import numpy as np

    from recsvc.events import EventType, LiveEvent
    from recsvc.store import KeyScheme, client_from_url, encode_event

    rng = np.random.default_rng(SEED + 1)
    m = artifact.user_items
    lengths = np.diff(m.indptr)
    donors = np.flatnonzero(lengths >= 3)
    kinds = [EventType.VIEW] * 6 + [EventType.ADD_TO_CART] * 3 + [EventType.PURCHASE]
    now = int(time.time())
    client = client_from_url(url, socket_timeout=10.0)
    try:
        for start in range(0, n_users, 5_000):
            with client.pipeline(transaction=False) as pipe:
                for i in range(start, min(n_users, start + 5_000)):
                    u = donors[rng.integers(len(donors))]
                    row = m.indices[m.indptr[u] : m.indptr[u + 1]]
                    items = rng.choice(row, FOLDIN_EVENTS, replace=len(row) < FOLDIN_EVENTS)
                    events = [
                        encode_event(
                            LiveEvent(str(artifact.item_ids[item]), kind, now - 60 * (10 - j), 1.0)
                        )
                        for j, (item, kind) in enumerate(zip(items, kinds, strict=True))
                    ]
                    # oldest pushed first, so the list reads newest first like the server's
                    key = KeyScheme().history(foldin_user(i))
                    pipe.execute_command("LPUSH", key, *events)  # type: ignore[no-untyped-call]
                pipe.execute()
    finally:
        client.close()


def write_rotation_config(folder: Path) -> Path:
    """The settings file of a server whose placement :data:`ROTATION_PLACEMENT` rotates
    (every other setting its default)."""
    path = folder / "rotation.toml"
    path.write_text(
        "# bench_serving.py, the rotation scenario: recsvc serve --config <this file>\n"
        f"[placements.{ROTATION_PLACEMENT}]\n"
        f"rotate_after = {ROTATE_AFTER}\n"
        f"rotation_weight = {ROTATION_WEIGHT}\n"
    )
    return path


def _answers(target: str, user_ids: Sequence[str], k: int, placement: str = "") -> list[list[str]]:
    """The item ids ``target`` recommends to each of ``user_ids`` (one call each)."""
    from recsvc.client import RecommenderClient

    with RecommenderClient(target, timeout=10.0) as client:
        return [
            [i.item_id for i in client.recommend(user_id=u, k=k, placement=placement).items]
            for u in user_ids
        ]


def seed_impressions(artifact: ModelArtifact, target: str, url: str) -> dict[str, Any]:
    """Impression counts of every pool user, written to Redis as the server's
    ``count_shown`` keeps them (a ZSET per shopper, item -> times shown, with its TTL):
    :data:`ROTATION_OVEREXPOSED` items of the user's top 10 (the server's answer at
    ``target``, no placement) shown :data:`ROTATION_OVEREXPOSED_COUNTS` times, and
    :data:`ROTATION_OTHERS` of their ranks 11 to :data:`ROTATION_DEPTH` once or twice.
    What was written; under ``"overexposed"``, each user's items shown that often."""
    import numpy as np

    from recsvc.config import ServerSettings
    from recsvc.store import KeyScheme, client_from_url

    user_ids = [str(artifact.user_ids[u]) for u in pool_users(artifact)]
    t = time.perf_counter()
    answers = _answers(target, user_ids, ROTATION_DEPTH)
    asked = time.perf_counter() - t
    rng = np.random.default_rng(SEED + 2)
    low, high = ROTATION_OVEREXPOSED_COUNTS
    ttl = ServerSettings().shown_ttl_seconds
    keys = KeyScheme()
    overexposed: dict[str, list[str]] = {}
    members = 0
    client = client_from_url(url, socket_timeout=10.0)
    try:
        with client.pipeline(transaction=False) as pipe:
            for user, items in zip(user_ids, answers, strict=True):
                top, rest = items[:10], items[10:]
                hot = [str(i) for i in rng.choice(top, min(ROTATION_OVEREXPOSED, len(top)), False)]
                cold = [str(i) for i in rng.choice(rest, min(ROTATION_OTHERS, len(rest)), False)]
                # overexposed: shown ROTATE_AFTER times or more; the others fewer
                shown = rng.integers(low, high + 1, len(hot)).tolist()
                shown += rng.integers(1, ROTATE_AFTER, len(cold)).tolist()
                counts = dict(zip(hot + cold, shown, strict=True))
                key = keys.shown(user)
                pipe.delete(key)
                if counts:
                    pipe.zadd(key, counts)
                    pipe.expire(key, ttl)
                overexposed[user] = hot
                members += len(counts)
            pipe.execute()
    finally:
        client.close()
    n = max(1, len(user_ids))
    return {
        "users": len(user_ids),
        "placement": ROTATION_PLACEMENT,
        "rotate_after": ROTATE_AFTER,
        "rotation_weight": ROTATION_WEIGHT,
        "overexposed_per_user": sum(len(v) for v in overexposed.values()) / n,
        "overexposed_counts": list(ROTATION_OVEREXPOSED_COUNTS),
        "members_per_user": members / n,
        "depth_asked": ROTATION_DEPTH,
        "seconds_asking_answers": asked,
        "overexposed": overexposed,
    }


def check_rotation(
    artifact: ModelArtifact, cached_target: str, rotation_target: str, seeded: dict[str, Any]
) -> dict[str, Any]:
    """Every pool user's ``cached`` answer (k = 10, no placement, the server at
    ``cached_target``) beside their ``rotation`` answer (placement
    :data:`ROTATION_PLACEMENT`, the server at ``rotation_target``): how many of the
    user's overexposed items (``seeded``) each holds, and how many items differ."""
    user_ids = [str(artifact.user_ids[u]) for u in pool_users(artifact)]
    cached = _answers(cached_target, user_ids, 10)
    rotated = _answers(rotation_target, user_ids, 10, ROTATION_PLACEMENT)
    hot = [set(seeded["overexposed"][u]) for u in user_ids]
    n = max(1, len(user_ids))
    return {
        "users": len(user_ids),
        "overexposed_per_answer": {
            "cached": sum(len(h & set(a)) for h, a in zip(hot, cached, strict=True)) / n,
            "rotation": sum(len(h & set(a)) for h, a in zip(hot, rotated, strict=True)) / n,
        },
        "answers_differing_share": sum(a != b for a, b in zip(cached, rotated, strict=True)) / n,
        "items_replaced_per_answer": sum(
            len(set(a) - set(b)) for a, b in zip(cached, rotated, strict=True)
        )
        / n,
        "example": {
            "user": user_ids[0],
            "cached": cached[0],
            "rotation": rotated[0],
            "overexposed": sorted(hot[0]),
        },
    }


def ensure_candidate(shop: Shop) -> dict[str, Any]:
    """The ``experiment`` scenario's second model version of ``shop``: ``recsvc -q
    train`` on the shop's events and catalogue with ALS ``random_state``
    :data:`EXPERIMENT_SEED`, into the shop's artifact root without ``--publish`` (so
    CURRENT stays the shop's version and a server of that root can load it by name).
    Trained once and reused while the shop is (``candidate-seed<N>.json`` in the shop's
    folder, written last, names it); what was trained."""
    from recsvc.artifact import read_manifest

    stamp = shop.folder / f"candidate-seed{EXPERIMENT_SEED}.json"
    if stamp.exists():
        saved: dict[str, Any] = json.loads(stamp.read_text())
        if (
            saved.get("base_version") == shop.version
            and (shop.artifacts / saved.get("version", "-")).is_dir()
        ):
            print(
                f"[shop {shop.config.n_items:,}] reusing candidate {saved['version']}", flush=True
            )
            return {**saved, "reused": True}
    before = {p.name for p in shop.artifacts.iterdir() if p.is_dir()}
    cmd = [
        recsvc_bin(),
        "-q",
        "train",
        "--events",
        str(shop.events),
        "--catalog",
        str(shop.catalog),
    ]
    cmd += ["--artifacts", str(shop.artifacts), "--random-state", str(EXPERIMENT_SEED)]
    log = shop.folder / f"train-candidate-seed{EXPERIMENT_SEED}.log"
    print(
        f"[shop {shop.config.n_items:,}] training the candidate model (random_state "
        f"{EXPERIMENT_SEED}) ...",
        flush=True,
    )
    t = time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), check=False
        )
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"recsvc train (candidate) exited {done.returncode}:\n{tail}")
    new = sorted({p.name for p in shop.artifacts.iterdir() if p.is_dir()} - before)
    if len(new) != 1:
        raise RuntimeError(f"recsvc train (candidate) wrote {new} under {shop.artifacts}")
    current = (shop.artifacts / "CURRENT").read_text().strip()
    if current != shop.version:
        raise RuntimeError(f"training the candidate moved CURRENT to {current}")
    manifest = read_manifest(shop.artifacts / new[0])
    saved = {
        "version": new[0],
        "base_version": shop.version,
        "random_state": EXPERIMENT_SEED,
        "model_items": manifest.data.items,
        "model_users": manifest.data.users,
        "index_kind": manifest.index.kind,
        "index_recall": manifest.index.recall,
        "train_seconds": seconds,
        "train_command": shlex.join(cmd),
        "git": git_revision(),
    }
    stamp.write_text(json.dumps(saved, indent=2) + "\n")
    print(
        f"[shop {shop.config.n_items:,}] candidate {new[0]} trained in {seconds:.0f}s", flush=True
    )
    return {**saved, "reused": False}


def write_experiment_files(folder: Path, n_items: int, candidate: str) -> tuple[Path, Path]:
    """The ``experiment`` server's settings file and the experiments file it names: one
    experiment on :data:`EXPERIMENT_PLACEMENT`, :data:`EXPERIMENT_VARIANTS` (the second
    serving model version ``candidate``)."""
    experiments = folder / f"experiments-{n_items}.toml"
    lines = [
        "# bench_serving.py, the experiment scenario: [server] experiments_file",
        "[[experiment]]",
        f'name = "{EXPERIMENT_NAME}"',
        f'placements = ["{EXPERIMENT_PLACEMENT}"]',
    ]
    for i, (name, share) in enumerate(EXPERIMENT_VARIANTS):
        lines += ["", "[[experiment.variant]]", f'name = "{name}"', f"share = {share}"]
        if i > 0:
            lines.append(f'model = "{candidate}"')
    experiments.write_text("\n".join(lines) + "\n")
    config = folder / f"experiment-{n_items}.toml"
    config.write_text(
        "# bench_serving.py, the experiment scenario: recsvc serve --config <this file>\n"
        "[server]\n"
        f"experiments_file = {json.dumps(str(experiments))}\n"
        "\n"
        "[redis]\n"
        f'prefix = "{EXPERIMENT_PREFIX}"\n'
    )
    return config, experiments


def proc_memory(pid: int) -> dict[str, int]:
    """Resident bytes of process ``pid`` from ``/proc/<pid>/status``: VmRSS, and its
    anonymous and file-backed parts, and VmHWM (the peak)."""
    fields = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "peak_rss"}
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            out[f"{fields[key]}_bytes"] = int(value.split()[0]) * 1024  # kB
    return out


def _fetch_metrics(url: str | list[str]) -> dict[MetricKey, float]:
    import urllib.request

    out: dict[MetricKey, float] = {}
    for one in [url] if isinstance(url, str) else url:
        with urllib.request.urlopen(one, timeout=10) as response:
            for key, value in parse_metrics(response.read().decode()).items():
                out[key] = out.get(key, 0.0) + value
    return out


def experiment_memory(rig: Rig, candidate: str) -> dict[str, Any]:
    """What the experiment server says its variant model added (ListExperiments'
    ``model_bytes``, the ``recsvc_variant_model_bytes`` gauge) beside both servers'
    resident memory from ``/proc`` now."""
    from recsvc.client import RecommenderClient

    assert rig.experiment is not None
    ex = rig.experiment
    with RecommenderClient(ex.server.target, timeout=10.0) as client:
        listed = client.list_experiments()
    gauge = {
        dict(labels).get("model_version", ""): value
        for (name, labels), value in _fetch_metrics(ex.metrics_url).items()
        if name == "recsvc_variant_model_bytes"
    }
    cached, experiment = proc_memory(rig.server.pid), proc_memory(ex.server.pid)
    return {
        "model_bytes": dict(listed.model_bytes),
        "variant_model_bytes_gauge": gauge,
        "candidate_model_bytes": int(listed.model_bytes.get(candidate, 0)),
        "cached_server": cached,
        "experiment_server": experiment,
        "rss_difference_bytes": experiment["rss_bytes"] - cached["rss_bytes"],
        "rss_anon_difference_bytes": experiment.get("rss_anon_bytes", 0)
        - cached.get("rss_anon_bytes", 0),
    }


def _wait_for_variant_model(target: str, version: str, timeout: float = 180.0) -> float:
    """Seconds until the server at ``target`` lists the experiment with ``version``
    loaded (``model_bytes`` names it); RuntimeError after ``timeout``."""
    from recsvc.client import RecommenderClient

    t = time.perf_counter()
    listed = None
    with RecommenderClient(target, timeout=10.0) as client:
        while time.perf_counter() - t < timeout:
            listed = client.list_experiments()
            if any(e.name == EXPERIMENT_NAME for e in listed.experiments) and (
                version in listed.model_bytes
            ):
                return time.perf_counter() - t
            time.sleep(0.2)
    raise RuntimeError(f"the experiment server did not load {version} in {timeout:g}s: {listed}")


def check_experiment(
    artifact: ModelArtifact,
    cached_target: str,
    experiment_target: str,
    versions: dict[str, str],
    experiments_file: Path,
) -> dict[str, Any]:
    """Every pool user's ``experiment`` answer (k = 10, placement
    :data:`EXPERIMENT_PLACEMENT`) beside their ``cached`` answer: which variant answered
    and with which model version (``versions``: variant -> the version it should
    carry), its strategy, whether the variant is the one the experiment's hash assigns,
    and whether the answer is ``cached``'s. RuntimeError unless both variants answered,
    each with its own model."""
    from collections import Counter

    from recsvc.client import RecommenderClient
    from recsvc.experiments import read_experiments
    from recsvc.v1 import recommender_pb2 as pb

    (declared,) = read_experiments(experiments_file)
    user_ids = [str(artifact.user_ids[u]) for u in pool_users(artifact)]
    cached = _answers(cached_target, user_ids, 10)
    per: dict[str, dict[str, Any]] = {}
    experiments: Counter[str] = Counter()
    hashed = 0
    with RecommenderClient(experiment_target, timeout=10.0) as client:
        for user, reference in zip(user_ids, cached, strict=True):
            r = client.recommend(user_id=user, k=10, placement=EXPERIMENT_PLACEMENT)
            experiments[r.experiment] += 1
            hashed += r.variant == declared.assign(user).name
            v = per.setdefault(
                r.variant,
                {"answers": 0, "model_versions": Counter(), "strategies": Counter(),
                 "same_as_cached": 0, "example": None},
            )  # fmt: skip
            items = [i.item_id for i in r.items]
            v["answers"] += 1
            v["model_versions"][r.model_version] += 1
            v["strategies"][pb.Strategy.Name(r.strategy)] += 1
            v["same_as_cached"] += items == reference
            if v["example"] is None:
                v["example"] = {"user": user, "experiment": items, "cached": reference}
    n = max(1, len(user_ids))
    variants = {
        name: {
            **v,
            "share": v["answers"] / n,
            "model_versions": dict(v["model_versions"]),
            "strategies": dict(v["strategies"]),
            "same_as_cached_share": v["same_as_cached"] / max(1, v["answers"]),
        }
        for name, v in sorted(per.items())
    }
    report = {
        "users": len(user_ids),
        "experiments": dict(experiments),
        "variants": variants,
        "assigned_as_hashed_share": hashed / n,
        "expected_versions": versions,
    }
    wrong = [
        f"{name}: {variants.get(name, {}).get('model_versions')} (want {version})"
        for name, version in versions.items()
        if set(variants.get(name, {}).get("model_versions", {})) != {version}
    ]
    if wrong or set(variants) != set(versions):
        raise RuntimeError(
            f"the experiment's variants did not both answer with their models: {wrong}; "
            f"answers by variant: { {k: v['answers'] for k, v in variants.items()} }"
        )
    return report


def start_experiment(
    shop: Shop, artifact: ModelArtifact, rig: Rig, args: argparse.Namespace, logs: Path
) -> ExperimentRig:
    """The ``experiment`` scenario's server: the candidate model trained (once), both
    versions' user vectors published to ``rig``'s Redis under
    :data:`EXPERIMENT_PREFIX`, ``recsvc serve`` of the same shop with the settings of
    :func:`write_experiment_files`; then both variants checked and the memory read."""
    from recsvc.artifact import read_artifact

    n = shop.config.n_items
    timings = rig.setup_seconds
    done = _timed(timings, "train_candidate")
    candidate = ensure_candidate(shop)
    done()
    version = candidate["version"]
    done = _timed(timings, "publish_vectors_experiment")
    published = {shop.version: publish_vectors(artifact, rig.redis.url, EXPERIMENT_PREFIX)}
    second = read_artifact(shop.artifacts / version, verify_checksums=False)
    published[version] = publish_vectors(second, rig.redis.url, EXPERIMENT_PREFIX)
    del second
    done()
    config, experiments_file = write_experiment_files(args.workdir, n, version)
    done = _timed(timings, "start_recsvc_experiment")
    server, metrics_url = start_recsvc(
        f"recsvc-{n}-experiment", shop, rig.redis, args, logs, config=config
    )
    done()
    ex = ExperimentRig(server, metrics_url)
    try:
        loaded_after = _wait_for_variant_model(server.target, version)
        done = _timed(timings, "check_experiment")
        versions = {
            EXPERIMENT_VARIANTS[0][0]: shop.version,
            EXPERIMENT_VARIANTS[1][0]: version,
        }
        check = check_experiment(
            artifact, rig.server.target, server.target, versions, experiments_file
        )
        done()
        rig.experiment = ex
        memory = experiment_memory(rig, version)
    except BaseException:
        rig.experiment = None
        server.stop()
        raise
    sizes = {
        v: sum(f.stat().st_size for f in (shop.artifacts / v).rglob("*") if f.is_file())
        for v in (shop.version, version)
    }
    ex.report = {
        "placement": EXPERIMENT_PLACEMENT,
        "experiment": EXPERIMENT_NAME,
        "variants": [
            {"name": name, "share": share, "model": versions[name]}
            for name, share in EXPERIMENT_VARIANTS
        ],
        "published_version": shop.version,
        "candidate": candidate,
        "prefix": EXPERIMENT_PREFIX,
        "vectors_published": published,
        "artifact_bytes_on_disk": sizes,
        "experiments_file": experiments_file.read_text(),
        "settings_file": config.read_text(),
        "variant_model_loaded_seconds_after_start": loaded_after,
        "check": check,
        "memory_after_check": memory,
        "server_command": shlex.join(server.command),
    }
    split = ", ".join(
        f"{name} {v['share']:.1%} ({next(iter(v['model_versions']))})"
        for name, v in check["variants"].items()
    )
    print(
        f"[{n:,} items] experiment server: {split}; candidate model added "
        f"{memory['candidate_model_bytes'] / 2**20:.0f} MiB (model_bytes), RSS "
        f"{memory['experiment_server']['rss_bytes'] / 2**20:.0f} MiB vs cached's "
        f"{memory['cached_server']['rss_bytes'] / 2**20:.0f} MiB",
        flush=True,
    )
    return ex


def build_requests(
    artifact: ModelArtifact,
    n_foldin: int,
    live_filters: pb.Filters | None = None,
    *,
    rotation: bool = False,
    experiment: bool = False,
    scaleout: bool = False,
) -> dict[str, list[bytes]]:
    """The serialized request pools of every scenario (``live`` with ``live_filters``,
    ``rotation``, ``experiment`` and ``scaleout`` when asked)."""
    import numpy as np

    from recsvc.v1 import recommender_pb2 as pb

    rng = np.random.default_rng(SEED)
    users = rng.choice(len(artifact.user_ids), min(POOL_USERS, len(artifact.user_ids)), False)
    user_ids = [str(artifact.user_ids[u]) for u in users]
    m = artifact.user_items
    lengths = np.diff(m.indptr)
    donors = rng.choice(np.flatnonzero(lengths >= 5), POOL_USERS)
    sessions = []
    for u in donors:
        row = m.indices[m.indptr[u] : m.indptr[u + 1]]
        sessions.append([str(artifact.item_ids[i]) for i in rng.choice(row, 5, replace=False)])

    def ser(request: pb.RecommendRequest) -> bytes:
        return request.SerializeToString()

    def session_request(items: list[str], session_id: str = "") -> pb.RecommendRequest:
        events = [pb.SessionEvent(item_id=i, event_type=pb.EVENT_TYPE_VIEW) for i in items]
        return pb.RecommendRequest(session_id=session_id, session_events=events, k=10)

    pools = {
        "cached": [ser(pb.RecommendRequest(user_id=u, k=10)) for u in user_ids],
        "cached_k100": [ser(pb.RecommendRequest(user_id=u, k=100)) for u in user_ids],
        "filter": [
            ser(pb.RecommendRequest(user_id=u, k=10, filters=pb.Filters(in_stock_only=True)))
            for u in user_ids
        ],
        "session": [ser(session_request(s)) for s in sessions],
        "session_sid": [ser(session_request(s, f"bench-s{i:05d}")) for i, s in enumerate(sessions)],
    }
    if live_filters is not None:
        pools["live"] = [
            ser(
                pb.RecommendRequest(
                    user_id=u, k=10, filters=live_filters, placement=_live.PLACEMENT
                )
            )
            for u in user_ids
        ]
    if rotation:
        pools["rotation"] = [
            ser(pb.RecommendRequest(user_id=u, k=10, placement=ROTATION_PLACEMENT))
            for u in user_ids
        ]
    if experiment:
        pools["experiment"] = [
            ser(pb.RecommendRequest(user_id=u, k=10, placement=EXPERIMENT_PLACEMENT))
            for u in user_ids
        ]
    if scaleout:  # cached's very requests, sent to the replicas (and to one alone)
        pools["scaleout"] = list(pools["cached"])
        pools["cached_cluster"] = list(pools["cached"])
    if n_foldin:
        pools["foldin"] = [
            ser(pb.RecommendRequest(user_id=foldin_user(i), k=10)) for i in range(n_foldin)
        ]
    return pools


def filter_rejection(artifact: ModelArtifact, overfetch: int, k: int = 10) -> dict[str, float]:
    """Share of out-of-stock items among the first ``k * overfetch`` exact candidates of
    the pool's users (what ``in_stock_only`` rejects before the ranker widens)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    users = rng.choice(len(artifact.user_ids), min(POOL_USERS, len(artifact.user_ids)), False)
    sample = users[:200]
    scores = artifact.user_factors[sample] @ artifact.item_factors.T
    fetch = k * overfetch
    top = np.argpartition(-scores, fetch, axis=1)[:, :fetch]
    rejected = ~artifact.item_available[top]
    return {
        "candidates_per_user": float(fetch),
        "rejected_share": float(rejected.mean()),
        "catalogue_out_of_stock_share": float(1.0 - artifact.item_available.mean()),
        "users_sampled": float(len(sample)),
    }


def start_rig(
    shop: Shop, points: list[Point], args: argparse.Namespace, logs: Path, gen: LoadGen
) -> Rig:
    from recsvc.artifact import read_artifact
    from recsvc.config import RankingSettings
    from recsvc.store.embedded import start_private_redis

    setup: dict[str, float] = {}
    done = _timed(setup, "read_artifact")
    artifact = read_artifact(shop.version_dir, verify_checksums=False)
    done()
    done = _timed(setup, "start_redis")
    redis = start_private_redis()
    done()
    try:
        done = _timed(setup, "publish_vectors")
        written = publish_vectors(artifact, redis.url)
        done()
        foldin_runs = sum(1 for p in points if p.scenario == "foldin")
        n_foldin = math.ceil(
            foldin_runs
            * args.repeats
            * (args.warmup + args.duration + 0.5)
            * FOLDIN_USERS_PER_RUN_SECOND
        )
        if n_foldin:
            done = _timed(setup, "write_foldin_histories")
            write_foldin_histories(artifact, redis.url, n_foldin)
            done()
        done = _timed(setup, "start_recsvc")
        server, metrics_url = start_recsvc(f"recsvc-{shop.config.n_items}", shop, redis, args, logs)
        done()
    except BaseException:
        redis.stop()
        raise
    rig = Rig(shop, redis, server, metrics_url)
    rig.setup_seconds = setup
    rig.pools["published_vectors"] = written
    rig.pools["foldin_users"] = n_foldin
    live_filters = None
    try:
        if any(p.scenario == "rotation" for p in points):
            rig.rotation = start_rotation(shop, artifact, rig, args, logs)
        if any(p.scenario == "experiment" for p in points):
            rig.experiment = start_experiment(shop, artifact, rig, args, logs)
        if any(p.scenario == "filter" for p in points):
            rig.filter_rejection = filter_rejection(artifact, RankingSettings().overfetch)
        if any(p.scenario == "live" for p in points):
            rig.live = start_live(shop, artifact, args, logs)
            live_filters = rig.live.setup.filters()
        if any(p.scenario == "scaleout" for p in points):
            rig.scaleout = start_scaleout(shop, artifact, rig, args, logs)
    except BaseException:
        rig.stop_started()
        raise
    pools = build_requests(
        artifact,
        n_foldin,
        live_filters,
        rotation=rig.rotation is not None,
        experiment=rig.experiment is not None,
        scaleout=rig.scaleout is not None,
    )
    for scenario, requests in pools.items():
        for side in ("service", "floor"):
            gen.send_pool(pool_name(shop.config.n_items, scenario, side), requests)
        rig.pools[scenario] = len(requests)
    return rig


def start_recsvc(
    name: str,
    shop: Shop,
    redis: PrivateRedis | PrivateCluster,
    args: argparse.Namespace,
    logs: Path,
    *,
    config: Path | None = None,
    processes: int | None = None,
) -> tuple[Server, str | list[str]]:
    """``recsvc serve`` of ``shop`` on ``redis`` (a Redis, or a Redis Cluster: its
    ``redis+cluster://`` URL) as ``processes`` processes (default ``args.processes``;
    with ``config``, its settings file: one process only); the server and its /metrics
    URL (a list for several processes)."""
    processes = args.processes if processes is None else processes
    if config is not None and processes != 1:
        raise ValueError("a settings file needs one recsvc process (serve_variant.py)")
    if processes == 1:
        metrics_port = _free_port()
        cmd = [recsvc_bin(), "-q", "serve", "--artifacts", str(shop.artifacts)]
        if config is not None:
            cmd += ["--config", str(config)]
        cmd += ["--redis-url", redis.url, "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--metrics-port", str(metrics_port)]
    else:
        # recsvc serve's CLI has no process count yet: recsvc.serving.server.run through
        # serve_variant.py, the same settings otherwise
        metrics_port = free_port_run(processes)
        cmd = [sys.executable, str(HERE / "serve_variant.py")]
        cmd += ["--artifacts", str(shop.artifacts), "--redis-url", redis.url]
        cmd += ["--port", str(_free_port()), "--metrics-port", str(metrics_port)]
        cmd += ["--processes", str(processes)]
    server = start_server(name, cmd, "recsvc serving on", logs / f"{name}.log", count=processes)
    if processes > 1:
        server.serving_pids = spawned_children(server.pid)
    urls = [f"http://127.0.0.1:{metrics_port + i}/metrics" for i in range(processes)]
    return server, urls[0] if len(urls) == 1 else urls


def start_rotation(
    shop: Shop, artifact: ModelArtifact, rig: Rig, args: argparse.Namespace, logs: Path
) -> RotationRig:
    """The ``rotation`` scenario's server: ``recsvc serve`` of the same shop on
    ``rig``'s Redis with the settings file of :func:`write_rotation_config`; then every
    pool user's impressions written and their answers compared with ``cached``'s."""
    n = shop.config.n_items
    timings = rig.setup_seconds
    config = write_rotation_config(args.workdir)
    done = _timed(timings, "start_recsvc_rotation")
    server, metrics_url = start_recsvc(
        f"recsvc-{n}-rotation", shop, rig.redis, args, logs, config=config
    )
    done()
    try:
        done = _timed(timings, "seed_impressions")
        # the answers without a placement (no rotation): what cached's server answers
        report = seed_impressions(artifact, server.target, rig.redis.url)
        done()
        done = _timed(timings, "check_rotation")
        report["check"] = check_rotation(artifact, rig.server.target, server.target, report)
        done()
    except BaseException:
        server.stop()
        raise
    report["server_command"] = shlex.join(server.command)
    check = report["check"]
    print(
        f"[{n:,} items] rotation server: overexposed items per answer "
        f"{check['overexposed_per_answer']['cached']:.2f} cached, "
        f"{check['overexposed_per_answer']['rotation']:.2f} rotation; "
        f"{check['answers_differing_share']:.0%} of {check['users']:,} answers differ",
        flush=True,
    )
    return RotationRig(server, metrics_url, report)


def pool_users(artifact: ModelArtifact) -> NDArray[np.int64]:
    """Model positions of the cached-user pool (as :func:`build_requests` draws them)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    users: NDArray[np.int64] = rng.choice(
        len(artifact.user_ids), min(POOL_USERS, len(artifact.user_ids)), False
    )
    return users


def start_live(
    shop: Shop, artifact: ModelArtifact, args: argparse.Namespace, logs: Path
) -> LiveRig:
    """The ``live`` scenario's server: a private Redis with the user vectors, ``recsvc
    serve``, then the live catalogue and the rules loaded through the CLI."""
    from recsvc.config import RankingSettings
    from recsvc.store.embedded import start_private_redis

    n = shop.config.n_items
    setup = _live.prepare(shop, artifact, args.workdir / f"live-{n}", pool_users(artifact))
    timings: dict[str, float] = {}
    done = _timed(timings, "start_redis")
    redis = start_private_redis()
    done()
    try:
        done = _timed(timings, "publish_vectors")
        publish_vectors(artifact, redis.url)
        done()
        done = _timed(timings, "start_recsvc")
        server, metrics_url = start_recsvc(f"recsvc-{n}-live", shop, redis, args, logs)
        done()
        try:
            catalogue = _live.load_catalogue(server.target, setup.catalogues[0])
            rules = _live.load_rules(server.target, setup.rules)
            # the replica follows the change stream: wait until it has both
            info: dict[str, Any] = {}
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info = _live.model_info(server.target)
                if int(info.get("catalog_item_count", 0)) >= setup.facts["catalogue_items"] and int(
                    info.get("live_rule_count", 0)
                ) >= len(setup.rule_ids):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"the live server did not take the catalogue and rules: {info}")
        except BaseException:
            server.stop()
            raise
    except BaseException:
        redis.stop()
        raise
    fetch = 10 * RankingSettings().overfetch
    report = {
        "setup_seconds": timings,
        "facts": setup.facts,
        "candidates": _live.candidate_rejection(artifact, setup, pool_users(artifact), fetch),
        "catalogue_load": {k: v for k, v in catalogue.items() if "monotonic" not in k},
        "rules_load": {k: v for k, v in rules.items() if "monotonic" not in k},
        "model_info": {
            k: info.get(k)
            for k in ("catalog_version", "catalog_item_count", "rules_version", "live_rule_count")
        },
        "server_command": shlex.join(server.command),
    }
    print(
        f"[{n:,} items] live server: {setup.facts['catalogue_items']:,} items loaded in "
        f"{catalogue['seconds']:.1f}s (recsvc catalog load, no other load), "
        f"{info.get('live_rule_count')} live rules",
        flush=True,
    )
    return LiveRig(redis, server, metrics_url, setup, report)


def check_scaleout(
    artifact: ModelArtifact, cached_target: str, replicas: Sequence[Server]
) -> dict[str, Any]:
    """Every pool user's answer (k = 10) from each of ``replicas``, one call each,
    beside their answer from ``cached``'s server at ``cached_target`` (the same model on
    a standalone Redis): the share of users each replica answers with the very same
    items. It also puts every pool user in each replica's LRU once."""
    user_ids = [str(artifact.user_ids[u]) for u in pool_users(artifact)]
    cached = _answers(cached_target, user_ids, 10)
    n = max(1, len(user_ids))
    per_replica = []
    for replica in replicas:
        answers = _answers(replica.target, user_ids, 10)
        per_replica.append(
            {
                "target": replica.target,
                "same_as_cached_share": sum(a == b for a, b in zip(answers, cached, strict=True))
                / n,
                "empty_answers": sum(not a for a in answers),
            }
        )
    return {"users": len(user_ids), "replicas": per_replica}


def cluster_nodes(cluster: PrivateCluster) -> list[dict[str, Any]]:
    """Each node of ``cluster`` as created (primaries first): port, pid, its role now
    (``ROLE``) and how many keys it holds (``DBSIZE``)."""
    import redis

    out = []
    for i, node in enumerate(cluster.nodes):
        client = redis.Redis(host=node.host, port=node.port, socket_timeout=5.0)
        try:
            role = client.execute_command("ROLE")[0]  # type: ignore[no-untyped-call]
            keys = int(client.dbsize())
        finally:
            client.close()
        out.append(
            {
                "name": f"redis{i}",
                "port": node.port,
                "pid": node.pid,
                "role": "primary" if role in (b"master", "master") else "replica",
                "keys": keys,
            }
        )
    return out


def start_scaleout(
    shop: Shop, artifact: ModelArtifact, rig: Rig, args: argparse.Namespace, logs: Path
) -> ScaleoutRig:
    """The ``scaleout`` scenario: a private Redis Cluster (:data:`SCALEOUT_PRIMARIES`
    primaries with :data:`SCALEOUT_NODE_REPLICAS` replica each), every trained user's
    vector published into it, :data:`SCALEOUT_REPLICAS` ``recsvc serve`` of ``shop`` on
    it (one process each, its own port and /metrics), joined as one target the client
    balances with :data:`SCALEOUT_LB_POLICY`, and one more asked on its own
    (``cached_cluster``); then each one's answers checked against ``cached``'s server
    (:func:`check_scaleout`)."""
    from recsvc.store.embedded import start_private_cluster

    n = shop.config.n_items
    timings = rig.setup_seconds
    done = _timed(timings, "start_redis_cluster")
    cluster = start_private_cluster(masters=SCALEOUT_PRIMARIES, replicas=SCALEOUT_NODE_REPLICAS)
    done()
    replicas: list[Server] = []
    try:
        done = _timed(timings, "publish_vectors_cluster")
        published = publish_vectors(artifact, cluster.url)
        done()
        done = _timed(timings, "start_recsvc_scaleout")
        urls = []
        for i in range(SCALEOUT_REPLICAS):
            server, metrics_url = start_recsvc(
                f"recsvc-{n}-scaleout-{i}", shop, cluster, args, logs, processes=1
            )
            replicas.append(server)
            urls.append(str(metrics_url))
        single, single_url = start_recsvc(
            f"recsvc-{n}-cluster", shop, cluster, args, logs, processes=1
        )
        replicas.append(single)  # (stopped with them if what follows fails)
        done()
        done = _timed(timings, "check_scaleout")
        check = check_scaleout(artifact, rig.server.target, replicas)
        done()
        nodes = cluster_nodes(cluster)
    except BaseException:
        for server in replicas:
            server.stop()
        cluster.stop()
        raise
    replicas.pop()
    first = replicas[0]
    balanced = Server(
        f"recsvc-{n}-scaleout",
        first.process,
        "ipv4:" + ",".join(r.target for r in replicas),
        first.command,
        first.log,
        others=replicas[1:],
        lb_policy=SCALEOUT_LB_POLICY,
    )
    check["single"] = check["replicas"].pop()
    report = {
        "replicas": SCALEOUT_REPLICAS,
        "primaries": SCALEOUT_PRIMARIES,
        "replicas_per_primary": SCALEOUT_NODE_REPLICAS,
        "lb_policy": SCALEOUT_LB_POLICY,
        "target": balanced.target,
        "cluster_url": cluster.url,
        "nodes": nodes,
        "vectors_published": published,
        "publish_seconds": {
            "standalone": timings.get("publish_vectors"),
            "cluster": timings.get("publish_vectors_cluster"),
        },
        "check": check,
        "server_commands": [shlex.join(r.command) for r in replicas],
        "single_command": shlex.join(single.command),
    }
    same = ", ".join(
        f"{r['same_as_cached_share']:.1%}" for r in [*check["replicas"], check["single"]]
    )
    print(
        f"[{n:,} items] scaleout: {SCALEOUT_REPLICAS} replicas (+ 1 alone) on a Redis "
        f"Cluster of {len(nodes)} nodes ({published:,} vectors published); answers the same "
        f"as cached's: {same}",
        flush=True,
    )
    return ScaleoutRig(cluster, replicas, balanced, urls, single, str(single_url), report)


def idle_cores(rig: Rig, gen: LoadGen, seconds: float) -> dict[str, Any]:
    """Cores each process of the scale-out setups (:data:`SCALEOUT_SETUPS`) used over
    ``seconds`` with no request sent (their background work: a replica's followers and
    metrics, Redis' own cron and the cluster bus), by part and in all, beside the load
    generator's and the whole machine's: what a part costs whatever the request rate."""
    from loadgen import cpu_seconds, machine_busy_seconds

    assert rig.scaleout is not None
    setups = {
        "cached": {"server": rig.server.pid, "redis": rig.redis.pid},
        "scaleout": {**rig.scaleout.server.pids(), **rig.scaleout.redis_pids()},
        "cached_cluster": {"server": rig.scaleout.single.pid},
    }
    pids = {f"{setup}/{k}": pid for setup, group in setups.items() for k, pid in group.items()}
    pids["loadgen"] = gen.process.pid
    before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    machine_before, t = machine_busy_seconds(), time.perf_counter()
    time.sleep(seconds)
    used = {k: cpu_seconds(pid) - before[k] for k, pid in pids.items()}
    span = time.perf_counter() - t
    out: dict[str, Any] = {"seconds": span}
    for setup, group in setups.items():
        cores = {k: used[f"{setup}/{k}"] / span for k in group}
        for part in PARTS:
            several = [v for k, v in cores.items() if _one_of(k, part)]
            if several:
                cores[part] = sum(several)
        out[setup] = cores
    out["loadgen"] = used["loadgen"] / span
    out["machine"] = (machine_busy_seconds() - machine_before) / span
    return out


def pool_name(catalogue: int, scenario: str, side: str) -> str:
    return f"{catalogue}/{scenario}/{side}"


# --------------------------------------------------------------------------- metrics


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def parse_metrics(text: str) -> dict[MetricKey, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_diff(before: str | list[str], after: str | list[str]) -> dict[MetricKey, float]:
    """``after - before`` per sample; lists (one text per process) are summed."""
    if isinstance(before, str) or isinstance(after, str):
        before, after = [str(before)], [str(after)]
    out: dict[MetricKey, float] = {}
    for one_before, one_after in zip(before, after, strict=True):
        a, b = parse_metrics(one_before), parse_metrics(one_after)
        for key, value in b.items():
            out[key] = out.get(key, 0.0) + value - a.get(key, 0.0)
    return out


def histogram(diff: dict[MetricKey, float], name: str, **match: str) -> list[tuple[float, float]]:
    """Cumulative ``(le, count)`` buckets of ``name`` whose labels include ``match``."""
    rows = []
    for (sample, labels), value in diff.items():
        if sample != f"{name}_bucket":
            continue
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            rows.append((float(d["le"]), value))
    return sorted(rows)


def _bucket_bounds_ms() -> str:
    """The server's latency bucket bounds up to 5 ms, as the report lists them."""
    from recsvc.serving.metrics import LATENCY_BUCKETS_SECONDS

    return ", ".join(f"{b * 1000:g}" for b in LATENCY_BUCKETS_SECONDS if b <= 0.005)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Linear interpolation inside the bucket holding rank ``q``, as Prometheus does."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: report that bound
            if cumulative == below:
                return le
            return lower + (le - lower) * (rank - below) / (cumulative - below)
        lower, below = le, cumulative
    return lower


def _sum(diff: dict[MetricKey, float], sample: str, **match: str) -> float:
    total = 0.0
    for (name, labels), value in diff.items():
        d = dict(labels)
        if name == sample and all(d.get(k) == v for k, v in match.items()):
            total += value
    return total


def server_view(diff: dict[MetricKey, float]) -> dict[str, Any]:
    """What the server's own metrics say about one window."""
    rec = {"grpc_method": "Recommend"}
    buckets = histogram(diff, HANDLING, **rec)
    count = buckets[-1][1] if buckets else 0.0
    seconds = _sum(diff, f"{HANDLING}_sum", **rec)
    search = histogram(diff, "recsvc_index_search_seconds")
    lookups = {
        f"{dict(labels)['layer']}_{dict(labels)['result']}": value
        for (name, labels), value in diff.items()
        if name == "recsvc_user_vector_lookups_total" and value
    }
    # reads of live state answered by the server's client-side cache, or by Redis
    lookups |= {
        f"state_cache_{dict(labels)['result']}": value
        for (name, labels), value in diff.items()
        if name == "recsvc_state_cache_lookups_total" and value
    }
    strategies: dict[str, float] = {}
    placements: dict[str, float] = {}
    variants: dict[str, float] = {}  # answers by experiment/variant (the experiment scenario)
    for (name, labels), value in diff.items():
        if name == "recsvc_recommendations_total" and value:
            d = dict(labels)
            strategies[d["strategy"]] = strategies.get(d["strategy"], 0.0) + value
            where = d.get("placement", "unknown")
            placements[where] = placements.get(where, 0.0) + value
            if d.get("experiment"):
                arm = f"{d['experiment']}/{d.get('variant', '')}"
                variants[arm] = variants.get(arm, 0.0) + value
    codes = {
        dict(labels)["grpc_code"]: value
        for (name, labels), value in diff.items()
        if name == "grpc_server_handled_total"
        and dict(labels).get("grpc_method") == "Recommend"
        and value
    }
    # answers a merchandising rule touched, by the rule's action (the live scenario)
    rules = {
        dict(labels)["action"]: value
        for (name, labels), value in diff.items()
        if name == "recsvc_rule_applications_total" and value
    }

    def ms(x: float | None) -> float | None:
        return None if x is None else x * 1e3

    return {
        "handled": count,
        "handling_p50_ms": ms(histogram_quantile(0.5, buckets)),
        "handling_p99_ms": ms(histogram_quantile(0.99, buckets)),
        "handling_mean_ms": ms(seconds / count) if count else None,
        "index_search_p50_ms": ms(histogram_quantile(0.5, search)),
        "index_search_mean_ms": ms(_sum(diff, "recsvc_index_search_seconds_sum") / search[-1][1])
        if search and search[-1][1]
        else None,
        "foldins": _sum(diff, "recsvc_foldin_seconds_count"),
        "lookups": lookups,
        "strategies": strategies,
        "placements": placements,
        "variants": variants,
        "codes": codes,
        "rule_applications": rules,
        "degraded": _sum(diff, "recsvc_degraded_responses_total"),
        # full collections walk every object not frozen at start-up (a live catalogue's)
        "gc_generation2_collections": _sum(diff, "python_gc_collections_total", generation="2"),
    }


# --------------------------------------------------------------------------- one run


def run_once(
    gen: LoadGen,
    point: Point,
    side: str,
    server: Server,
    args: argparse.Namespace,
    *,
    metrics_url: str | list[str] | None,
    pids: dict[str, int],
    rate: float | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    command: dict[str, Any] = {
        "op": "run",
        "target": server.target,
        "lb_policy": server.lb_policy,
        # the interceptor-only no-op reads the floor's pool (no state: cursors do not matter)
        "pool": pool_name(point.catalogue, point.scenario, "floor" if side != "service" else side),
        "mode": point.mode,
        "warmup": args.warmup,
        "duration": args.duration,
        "metrics_url": metrics_url,
        "pids": pids,
        "channels": args.channels,
    }
    if point.mode == "closed":
        command["concurrency"] = int(point.level)
    else:
        command["rate"] = rate
        command["seed"] = seed
    load = os.getloadavg()[0]
    raw = gen.ask(command)
    n = max(1, raw["completed"])
    cpu = dict(raw["cpu_seconds"])
    for part in PARTS:
        several = [v for k, v in cpu.items() if _one_of(k, part)]
        if part not in cpu and several:  # several processes: their sum is the part's
            cpu[part] = sum(several)
    raw["cpu_seconds"] = cpu
    run: dict[str, Any] = {
        "side": side,
        "loadavg_before": load,
        "qps": raw["qps"],
        "completed": raw["completed"],
        "latency_ms": raw["latency_ms"],
        "errors": raw["errors"],
        "warmup_errors": raw["warmup_errors"],
        "cpu_us_per_request": {
            k: v / n * 1e6 for k, v in raw["cpu_seconds"].items() if k != "machine"
        },
        "cpu_utilisation": {k: v / raw["cpu_span_seconds"] for k, v in raw["cpu_seconds"].items()},
        "sample": raw["sample"],
        "requests_handed_out": raw["requests_handed_out"],
        "pool_size": raw["pool_size"],
    }
    # (per-process "server0", "redis0", ... are already in "server", "redis")
    ours = sum(
        v
        for k, v in raw["cpu_seconds"].items()
        if k != "machine" and not any(_one_of(k, part) for part in PARTS)
    )
    # cores busy with work that is not this benchmark's (the machine is shared)
    run["other_load_cores"] = (
        max(0.0, raw["cpu_seconds"]["machine"] - ours) / raw["cpu_span_seconds"]
    )
    for key in ("intended_latency_ms", "send_lag_ms", "offered_rate", "dropped"):
        if key in raw:
            run[key] = raw[key]
    before, after = raw.get("metrics_before"), raw.get("metrics_after")
    if before and after:
        run["server"] = server_view(metric_diff(before, after))
        if isinstance(before, list) and len(before) > 1:
            # Recommends each serving process handled (how a balancer spread them)
            run["server"]["handled_by_process"] = {
                f"server{i}": (histogram(metric_diff(b, a), HANDLING, grpc_method="Recommend")
                               or [(0.0, 0.0)])[-1][1]
                for i, (b, a) in enumerate(zip(before, after, strict=True))
            }  # fmt: skip
    return run


PARTS = ("server", "redis")
"""Parts of a setup that may run as several processes (``server0``, ``redis0``, ...
in the load generator's ``pids``), each summed into the part's own figure."""


def _one_of(key: str, part: str) -> bool:
    """Whether ``key`` names one of several processes of ``part`` (``server1``,
    ``redis4``), not the part itself."""
    return key.startswith(part) and key[len(part) :].isdigit()


def _brief(run: dict[str, Any]) -> str:
    lat = run["latency_ms"]
    parts = [f"{run['side']:<7}", f"{run['qps']:7.0f} qps", f"p50 {lat.get('p50', 0):6.2f}"]
    parts.append(f"p99 {lat.get('p99', 0):6.2f} ms")
    srv = run.get("server")
    if srv and srv["handling_p50_ms"] is not None:
        parts.append(f"server p50 {srv['handling_p50_ms']:.3f} ms")
    if run["errors"]:
        parts.append(f"errors {run['errors']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- summaries


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _paths(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _paths(value, f"{path}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield path


def get(tree: Any, path: str) -> Any:
    for key in path.split("/"):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric leaf present in all ``runs``."""
    out: dict[str, Any] = {}
    if not runs:
        return out
    for path in _paths(runs[0]):
        values = [get(r, path) for r in runs]
        if all(isinstance(v, int | float) for v in values):
            _set(out, path, median(values))
    return out


RATIO_PATHS = (
    "qps",
    "latency_ms/p50",
    "latency_ms/p95",
    "latency_ms/p99",
    "latency_ms/p999",
    "latency_ms/mean",
    "intended_latency_ms/p50",
    "intended_latency_ms/p99",
    "intended_latency_ms/p999",
    "cpu_us_per_request/server",
)


def _ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    out = {}
    for path in RATIO_PATHS:
        x, y = get(a, path), get(b, path)
        if isinstance(x, float) and isinstance(y, float) and y > 0:
            out[path.replace("/", "_")] = x / y
    return out


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per side; ``ratio`` is recsvc ÷ floor, ``interceptors_ratio`` the
    interceptor-only server ÷ floor."""
    s, f = medians(runs["service"]), medians(runs["floor"])
    out = {"service": s, "floor": f, "ratio": _ratios(s, f)}
    if runs.get("interceptors"):
        i = medians(runs["interceptors"])
        out["interceptors"] = i
        out["interceptors_ratio"] = _ratios(i, f)
    return out


# --------------------------------------------------------------------------- profile


def profile(
    gen: LoadGen, rig: Rig, args: argparse.Namespace, out: Path, scenario: str = "cached"
) -> dict[str, Any]:
    """py-spy on recsvc under ``scenario``'s load at concurrency 32: flame graph + raw
    (``profile.*`` for ``cached``, ``profile-<scenario>.*`` for another)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: no profile (pip install py-spy)", flush=True)
        return {}
    seconds = math.ceil(args.profile_seconds)  # py-spy takes whole seconds
    point = Point(rig.shop.config.n_items, scenario, "closed", 32)
    server, metrics_url, pids = rig.serving(scenario)
    command = {
        "op": "run",
        "target": server.target,
        "pool": pool_name(point.catalogue, point.scenario, "service"),
        "mode": "closed",
        "concurrency": 32,
        "warmup": 1.0,
        "duration": 2 * seconds + 3,
        "metrics_url": metrics_url,
        "pids": pids,
        "channels": args.channels,
    }
    stem = "profile" if scenario == "cached" else f"profile-{scenario}"
    svg, raw = out / f"{stem}.svg", args.workdir / f"serving-{stem}-raw.txt"
    pid = str(server.pid)
    commands = [
        [spy, "record", "--pid", pid, "--duration", str(seconds), "--rate", "100", "-o", str(svg)],
        [
            *(spy, "record", "--pid", pid, "--duration", str(seconds), "--rate", "100"),
            *("--native", "--threads", "--idle", "--format", "raw", "-o", str(raw)),
        ],
    ]
    assert gen.process.stdin is not None and gen.process.stdout is not None
    gen.process.stdin.write((json.dumps(command) + "\n").encode())
    gen.process.stdin.flush()
    time.sleep(1.5)
    logs = []
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        logs.append((done.stdout + done.stderr).strip())
    reply = json.loads(gen.process.stdout.readline())
    if "error" in reply:
        raise RuntimeError(f"load generator: {reply['error']}")
    if svg.exists():
        svg.write_text(_relative(svg.read_text()))
    summary = summarise_profile(raw) if raw.exists() else {}
    text = render_profile(summary, commands, reply, scenario)
    (out / f"{stem}.md").write_text(_relative(text))
    return {
        "commands": [shlex.join(c) for c in commands],
        "qps_under_profiling": reply["qps"],
        "py_spy_output": logs,
        "summary": summary,
    }


# Where a frame's time belongs: the innermost frame matching one of these (by file).
# NumPy is not listed: its time counts for the recsvc code that called it.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("serving/interceptors.py", "recsvc interceptors"),
    ("serving/servicer.py", "recsvc servicer (proto <-> domain)"),
    ("serving/validation.py", "recsvc validation"),
    ("serving/state.py", "recsvc live state (Redis commands)"),
    ("serving/rotation.py", "recsvc rotation (demotion)"),
    ("serving/engine.py", "recsvc engine"),
    ("recsvc/ranking.py", "recsvc ranking"),
    ("recsvc/foldin.py", "recsvc fold-in"),
    ("recsvc/index.py", "item index search (recsvc/index.py, FAISS)"),
    ("faiss", "item index search (recsvc/index.py, FAISS)"),
    ("recsvc/store.py", "recsvc store (vector decoding)"),
    ("recsvc/", "recsvc other (model, weighting)"),
    ("redis/", "redis-py client (asyncio)"),
    ("prometheus_client", "prometheus_client"),
    ("grpc/_cython", "gRPC core (cygrpc: transport, completion queue)"),
    ("grpc/", "gRPC Python layer"),
    ("google/protobuf", "protobuf"),
    ("_message.abi3.so", "protobuf"),
    ("asyncio/", "asyncio event loop"),
    ("uuid.py", "uuid"),
)
_IDLE_MARKERS = (
    "epoll_wait",  # the event loop or gRPC's poller waiting for I/O
    "poll (libc",  # the /metrics HTTP server
    "SimpleQueue_get",  # an idle executor thread
)
_GIL_MARKER = "take_gil"
_OUTER_FRAMES = (
    "recsvc/cli.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
)


def _where(frame: str) -> str:
    """``path/file.py:line`` or ``lib.so`` of a py-spy frame ``function (where)``."""
    return frame.rpartition(" (")[2].rstrip(")")


def _short(frame: str, *, line: bool = True) -> str:
    name, _, where = frame.rpartition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", f"{REPO}/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if not line:
        where = where.rpartition(":")[0] or where
    return f"{name} ({where})"


def summarise_profile(raw: Path) -> dict[str, Any]:
    """Top frames of a py-spy ``record --native --threads --idle --format raw`` file."""
    stacks: list[tuple[list[str], int]] = []
    for text_line in raw.read_text(errors="replace").splitlines():
        text, _, count = text_line.rpartition(" ")
        if text and count.isdigit():
            stacks.append((text.split(";"), int(count)))

    def idle(frames: list[str]) -> bool:
        tail = " ".join(frames[-8:])
        return _GIL_MARKER not in tail and any(marker in tail for marker in _IDLE_MARKERS)

    def ours(frame: str) -> bool:
        where = _where(frame)
        mine = where.startswith(("serving/", "recsvc/")) or "/serving/" in where
        return (
            ".py:" in where
            and (mine or "/recsvc/" in where)
            and not any(o in where for o in _OUTER_FRAMES)
        )

    busy_by_thread: dict[str, int] = {}
    all_by_thread: dict[str, int] = {}
    for frames, c in stacks:
        all_by_thread[frames[0]] = all_by_thread.get(frames[0], 0) + c
        if not idle(frames):
            busy_by_thread[frames[0]] = busy_by_thread.get(frames[0], 0) + c
    main = next((t for t in all_by_thread if "MainThread" in t), "")
    busy = [(f, c) for f, c in stacks if f[0] == main and not idle(f)]
    n_busy = sum(c for _, c in busy) or 1
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    category: dict[str, int] = {}
    request_path: dict[str, int] = {}
    for frames, c in busy:
        leaf = _short(frames[-1])
        self_time[leaf] = self_time.get(leaf, 0) + c
        for key in {_short(fr) for fr in frames[1:] if ".py:" in fr}:
            inclusive[key] = inclusive.get(key, 0) + c
        for key in {_short(fr, line=False) for fr in frames[1:] if ours(fr)}:
            request_path[key] = request_path.get(key, 0) + c
        gil = any(_GIL_MARKER in fr for fr in frames[-8:])
        label = "waiting for the GIL" if gil else "other (interpreter, libc)"
        for fr in reversed(frames[1:] if not gil else []):
            hit = next((name for pat, name in CATEGORIES if pat in _where(fr)), None)
            if hit:
                label = hit
                break
        category[label] = category.get(label, 0) + c

    def top(d: dict[str, int], n: int) -> list[dict[str, Any]]:
        rows = sorted(d.items(), key=lambda kv: -kv[1])[:n]
        return [{"frame": k, "samples": v, "share_of_busy": v / n_busy} for k, v in rows]

    all_busy = sum(busy_by_thread.values()) or 1
    return {
        "samples": sum(all_by_thread.values()),
        "main_thread": main,
        "main_thread_busy_share": n_busy / max(1, all_by_thread.get(main, 1)),
        "busy_samples_by_thread": {
            k: v / all_busy for k, v in sorted(busy_by_thread.items(), key=lambda kv: -kv[1])
        },
        "categories": {k: v / n_busy for k, v in sorted(category.items(), key=lambda kv: -kv[1])},
        "request_path_inclusive": top(request_path, 30),
        "top_self": top(self_time, 25),
        "top_inclusive_python": [
            row for row in top(inclusive, 60) if not any(o in row["frame"] for o in _OUTER_FRAMES)
        ][:35],
    }


def render_profile(
    summary: dict[str, Any],
    commands: list[list[str]],
    reply: dict[str, Any],
    scenario: str = "cached",
) -> str:
    m = machine()
    per_request = reply["cpu_seconds"]["server"] / max(1, reply["completed"]) * 1e6
    main_share = summary.get("busy_samples_by_thread", {}).get(summary.get("main_thread"), 1.0)
    loop_us = per_request * main_share

    def us(share: float) -> str:
        return f"{share * loop_us:,.0f}"

    what = "cached user, k=10" if scenario == "cached" else f"`{scenario}`: {SCENARIOS[scenario]}"
    stem = "profile" if scenario == "cached" else f"profile-{scenario}"
    lines = [
        f"# Profile of `recsvc serve` under Recommend load ({what}, concurrency 32)",
        "",
        f"Recorded {datetime.now(UTC).isoformat(timespec='seconds')} on {_machine_line(m)}.",
        "",
        "Commands (meanwhile the load generator drove the "
        f"{'cached-user' if scenario == 'cached' else f'`{scenario}`'} scenario of the largest "
        f"catalogue at concurrency 32: {reply['qps']:.0f} requests/s while sampled, the "
        f"server using {per_request:,.0f} µs of CPU per request; py-spy pauses the process "
        "to sample, so throughput is lower than unprofiled):",
        "",
        "```",
        *[shlex.join(c) for c in commands],
        "```",
        "",
        f"The flame graph is `{stem}.svg` (first command, Python frames). The tables come "
        "from the second command (native frames too, every thread, idle samples kept). "
        "Shares are of the event-loop thread's *busy* samples (not waiting in epoll); "
        "µs/request spreads the process's measured CPU per request over them "
        f"(the event-loop thread holds {main_share:.0%} of all busy samples).",
        "",
    ]
    if not summary:
        return "\n".join([*lines, "No samples were recorded.", ""])
    lines += [
        f"Samples: {summary['samples']:,}; the event-loop thread was busy in "
        f"{summary['main_thread_busy_share']:.0%} of its samples (the server is CPU-bound "
        "on that one thread when this is near 100%).",
        "",
        "Busy samples by thread:",
        "",
        *[f"- `{t}`: {s:.0%}" for t, s in summary["busy_samples_by_thread"].items()],
        "",
        "## Where the event-loop thread's busy time goes (innermost known frame)",
        "",
        "| component | share | ≈ µs CPU / request |",
        "|---|---:|---:|",
        *[f"| {k} | {v:.1%} | {us(v)} |" for k, v in summary["categories"].items()],
        "",
        "## recsvc's own functions on the request path (inclusive)",
        "",
        "| function (file) | share | ≈ µs CPU / request |",
        "|---|---:|---:|",
        *[
            f"| `{r['frame']}` | {r['share_of_busy']:.1%} | {us(r['share_of_busy'])} |"
            for r in summary["request_path_inclusive"]
        ],
        "",
        "## Top Python frames by inclusive time (file:line executing)",
        "",
        "| frame | share | ≈ µs CPU / request |",
        "|---|---:|---:|",
        *[
            f"| `{r['frame']}` | {r['share_of_busy']:.1%} | {us(r['share_of_busy'])} |"
            for r in summary["top_inclusive_python"]
        ],
        "",
        "## Top frames by self time (leaf; native frames included)",
        "",
        "| frame | share | ≈ µs CPU / request |",
        "|---|---:|---:|",
        *[
            f"| `{r['frame']}` | {r['share_of_busy']:.1%} | {us(r['share_of_busy'])} |"
            for r in summary["top_self"]
        ],
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- catalogue sync


SYNC_PHASES = ("before", "during", "after")


def _sync_snapshot(pids: dict[str, int], metrics_url: str | list[str]) -> dict[str, Any]:
    """Now (monotonic clock), the CPU seconds of ``pids`` and of the machine, /metrics."""
    from loadgen import cpu_seconds, machine_busy_seconds, scrape

    at = time.monotonic()
    cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu["machine"] = machine_busy_seconds()
    urls = metrics_url if isinstance(metrics_url, list) else [metrics_url]
    texts = [scrape(url) for url in urls]
    return {"at": at, "cpu": cpu, "metrics": texts if isinstance(metrics_url, list) else texts[0]}


def _catalogue_version(metrics: str | list[str]) -> int:
    """The catalogue version the replica (the first process) has applied."""
    text = metrics[0] if isinstance(metrics, list) else metrics
    key = ("recsvc_live_version", (("collection", "catalogue"),))
    return int(parse_metrics(text).get(key, 0.0))


class SeqWatch:
    """A thread reading the live catalogue's change counter in Redis every 20 ms: when
    the sync's first and last change were written (the server is not asked)."""

    def __init__(self, url: str) -> None:
        import threading

        from recsvc.store import KeyScheme, client_from_url

        self._client = client_from_url(url, socket_timeout=5.0)
        self._key = KeyScheme().catalog()[2]
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            seq = int(self._client.get(self._key) or 0)
            if seq != last:
                self.changes.append((time.monotonic(), seq))
                last = seq
            self._stop.wait(0.02)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(5)
        self._client.close()
        return self.changes


def _latency_stats(latencies: list[float]) -> dict[str, float]:
    from loadgen import percentiles

    return percentiles(latencies)


def sync_phase(
    a: dict[str, Any],
    b: dict[str, Any],
    done: list[tuple[float, float]],
    failed: list[tuple[float, str]],
    sync_cpu: float = 0.0,
) -> dict[str, Any]:
    """Calls completed between snapshots ``a`` and ``b`` (``done``: completion time and
    latency, monotonic clock), failures by code, the server's own view, CPU."""
    t0, t1 = a["at"], b["at"]
    span = t1 - t0
    latencies = [lat for t, lat in done if t0 <= t < t1]
    codes: dict[str, int] = {}
    for t, code in failed:
        if t0 <= t < t1:
            codes[code] = codes.get(code, 0) + 1
    cpu = {name: b["cpu"][name] - a["cpu"][name] for name in a["cpu"]}
    diff = metric_diff(a["metrics"], b["metrics"])
    view = server_view(diff)
    upserts = histogram(diff, HANDLING, grpc_method="UpsertItems")
    n_upserts = upserts[-1][1] if upserts else 0.0
    servers = sum(v for k, v in cpu.items() if k.startswith("server"))
    ours = servers + cpu.get("redis", 0.0) + cpu.get("loadgen", 0.0) + sync_cpu
    return {
        "seconds": span,
        "completed": len(latencies),
        "qps": len(latencies) / span if span > 0 else None,
        "failed": codes,
        "latency_ms": _latency_stats(latencies),
        "server_p50_ms": view["handling_p50_ms"],
        "server_p99_ms": view["handling_p99_ms"],
        "server_codes": view["codes"],
        "degraded": view["degraded"],
        "rule_applications": view["rule_applications"],
        "gc_generation2_collections": view["gc_generation2_collections"],
        "upsert_calls": n_upserts,
        "upsert_handling_mean_ms": _sum(diff, f"{HANDLING}_sum", grpc_method="UpsertItems")
        / n_upserts
        * 1e3
        if n_upserts
        else None,
        "upsert_handling_p99_ms": (histogram_quantile(0.99, upserts) or 0.0) * 1e3
        if n_upserts
        else None,
        "server_cores": servers / span if span > 0 else None,
        "redis_cores": cpu.get("redis", 0.0) / span if span > 0 else None,
        "loadgen_cores": cpu.get("loadgen", 0.0) / span if span > 0 else None,
        "sync_client_cores": sync_cpu / span if span > 0 else None,
        "other_load_cores": max(0.0, cpu["machine"] - ours) / span if span > 0 else None,
    }


def sync_once(
    gen: LoadGen, rig: Rig, args: argparse.Namespace, path: Path, r: int
) -> dict[str, Any]:
    """One ``recsvc catalog load PATH`` into the live server while the load generator
    runs closed-loop ``args.sync_pool`` requests at ``args.sync_concurrency``."""
    assert rig.live is not None
    live = rig.live
    n = rig.shop.config.n_items
    server, metrics_url, pids = rig.serving("live")
    pids = {**pids, "loadgen": gen.process.pid}
    # the window: --sync-before s, the sync (sized from the load with nothing else
    # running, generously), --sync-after s at least
    expected = max(10.0, 4.0 * live.report["catalogue_load"]["seconds"])
    duration = args.sync_before + expected + args.sync_after
    start = time.monotonic() + 1.0  # 1 s of load before the window: warm-up
    sync_at = start + args.sync_before
    command = {
        "op": "run", "target": server.target,
        "pool": pool_name(n, args.sync_pool, "service"), "mode": "closed",
        "concurrency": args.sync_concurrency, "channels": args.channels,
        "at": start, "duration": duration, "timeline": True,
    }  # fmt: skip
    # sent now, answered after the window: meanwhile this process runs the sync
    assert gen.process.stdin is not None and gen.process.stdout is not None
    gen.process.stdin.write((json.dumps(command) + "\n").encode())
    gen.process.stdin.flush()
    load = os.getloadavg()[0]
    time.sleep(max(0.0, start - time.monotonic()))
    edges = [_sync_snapshot(pids, metrics_url)]
    time.sleep(max(0.0, sync_at - time.monotonic()))
    edges.append(_sync_snapshot(pids, metrics_url))
    version_before = _catalogue_version(edges[-1]["metrics"])
    watch = SeqWatch(live.redis.url)
    try:
        sync = _live.load_catalogue(server.target, path)
    finally:
        changes = watch.stop()
    edges.append(_sync_snapshot(pids, metrics_url))
    # the replica applies the changes from the stream: when had it applied the last?
    last_seq = changes[-1][1] if changes else version_before
    applied_at = None
    while time.monotonic() < start + duration:
        if _catalogue_version(_sync_snapshot({}, metrics_url)["metrics"]) >= last_seq:
            applied_at = time.monotonic()
            break
        time.sleep(0.05)
    time.sleep(max(0.0, start + duration - time.monotonic()))
    edges.append(_sync_snapshot(pids, metrics_url))
    line = gen.process.stdout.readline()
    raw: dict[str, Any] = json.loads(line)
    if "error" in raw:
        raise RuntimeError(f"load generator: {raw['error']}")
    tl = raw["timeline"]
    origin = tl["start_monotonic"]
    done = [(origin + t, lat) for t, lat in zip(tl["done"], tl["latency"], strict=True)]
    failed = [(origin + t, code) for t, code in tl["failed"]]
    # the sync's own start and end (the snapshots around it are milliseconds apart)
    edges[1]["at"], edges[2]["at"] = sync["start_monotonic"], sync["end_monotonic"]
    phases = {
        name: sync_phase(
            edges[i], edges[i + 1], done, failed, sync["cpu_seconds"] if i == 1 else 0.0
        )
        for i, name in enumerate(SYNC_PHASES)
    }
    written = [(t, seq) for t, seq in changes if seq > version_before]
    # per whole second of the window: calls completed, their p99 and worst latency
    seconds = []
    for k in range(math.floor(duration)):
        lat = [x for t, x in done if start + k <= t < start + k + 1]
        stats = _latency_stats(lat)
        phase = (
            "before" if start + k + 1 <= sync["start_monotonic"]
            else "after" if start + k >= sync["end_monotonic"]
            else "during"
        )  # fmt: skip
        seconds.append(
            {
                "second": k,
                "phase": phase,
                "completed": len(lat),
                "p99_ms": stats.get("p99"),
                "max_ms": stats.get("max"),
            }
        )
    run = {
        "repeat": r,
        "file": path.name,
        "items": live.setup.facts["catalogue_items"],
        "loadavg_before": load,
        "sync": {
            "seconds": sync["seconds"],
            "cpu_seconds": sync["cpu_seconds"],
            "command": shlex.join(["recsvc", *sync["command"][1:]]),
            "output": sync["output"],
            "changes_written": len(written),
            "first_change_after_seconds": written[0][0] - sync["start_monotonic"]
            if written
            else None,
            "writes_span_seconds": written[-1][0] - written[0][0] if written else None,
            "applied_after_return_seconds": applied_at - sync["end_monotonic"]
            if applied_at is not None
            else None,
            "catalogue_version": [version_before, last_seq],
        },
        "window_covers_sync": sync["end_monotonic"] <= start + duration - 1.0,
        "phases": phases,
        "seconds": seconds,
        "errors": raw["errors"],
        "warmup_errors": raw["warmup_errors"],
        "completed": raw["completed"],
    }
    return run


def measure_syncs(gen: LoadGen, rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    """``args.sync_repeats`` syncs of the whole catalogue under load, alternating the
    two files (B over A, A over B, ...: every record changes each time)."""
    assert rig.live is not None
    runs = []
    for r in range(args.sync_repeats):
        path = rig.live.setup.catalogues[(r + 1) % 2]
        run = sync_once(gen, rig, args, path, r)
        runs.append(run)
        ph = run["phases"]
        print(
            f"    #{r + 1} sync {run['sync']['seconds']:.1f}s ({run['sync']['changes_written']} "
            f"changes), failed {sum(sum(p['failed'].values()) for p in ph.values())}, client p99 "
            f"before {ph['before']['latency_ms'].get('p99', 0):.1f} / during "
            f"{ph['during']['latency_ms'].get('p99', 0):.1f} / after "
            f"{ph['after']['latency_ms'].get('p99', 0):.1f} ms",
            flush=True,
        )
        time.sleep(2.0)
    summary: dict[str, Any] = {
        "sync_seconds": median([r["sync"]["seconds"] for r in runs]),
        "writes_span_seconds": median([r["sync"]["writes_span_seconds"] or 0.0 for r in runs]),
        "failed_calls": sum(sum(p["failed"].values()) for r in runs for p in r["phases"].values()),
        "errors_in_window": sum(sum(r["errors"].values()) for r in runs),
    }
    for name in SYNC_PHASES:
        for figure in ("latency_ms/p50", "latency_ms/p99", "latency_ms/max", "qps",
                       "server_p50_ms", "server_p99_ms"):  # fmt: skip
            values = [get(r["phases"][name], figure) for r in runs]
            if all(isinstance(v, int | float) for v in values):
                _set(summary, f"{name}/{figure}", median(values))
    ratios = [
        r["phases"]["during"]["latency_ms"]["p99"] / r["phases"]["before"]["latency_ms"]["p99"]
        for r in runs
        if r["phases"]["before"]["latency_ms"].get("p99")
        and r["phases"]["during"]["latency_ms"].get("p99")
    ]
    summary["p99_during_over_before"] = median(ratios) if ratios else None
    summary["p99_during_over_before_per_run"] = ratios
    return {
        "config": {
            "repeats": args.sync_repeats,
            "concurrency": args.sync_concurrency,
            "pool": args.sync_pool,
            "before_seconds": args.sync_before,
            "after_seconds": args.sync_after,
            "channels": args.channels,
        },
        "initial_load": rig.live.report["catalogue_load"],
        "summary": summary,
        "runs": runs,
    }


# --------------------------------------------------------------------------- report


def _machine_line(m: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    return (
        f"{m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; "
        f"load average at start {load} (a shared machine: only same-run ratios are meaningful)"
    )


def code_source() -> str:
    """Where the measured ``recsvc`` is imported from: ``"checkout"`` (this repository),
    or the folder first on ``PYTHONPATH`` that holds it (another revision's tree, with
    ``recsvc/serving`` and ``recsvc/training`` linked in, as :mod:`ab_serving` runs one)."""
    import importlib.util

    spec = importlib.util.find_spec("recsvc")
    if spec is None or spec.origin is None:
        return "checkout"
    root = Path(spec.origin).resolve().parent.parent
    return "checkout" if root == REPO else str(root)


def code_state() -> dict[str, str]:
    """sha256 (12 hex) of every uncommitted file under serving/, recsvc/ and training/:
    other work may be in progress in the tree this benchmark measured (none when the
    code measured is not this checkout's, :func:`code_source`)."""
    import hashlib

    if code_source() != "checkout":
        return {}

    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--",
                "serving",
                "recsvc",
                "training",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    state = {}
    for line in out.splitlines():
        path = REPO / line[3:].strip()
        if path.is_file():
            state[line[3:].strip()] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return state


def _ms(x: Any) -> str:
    return "-" if not isinstance(x, int | float) else f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _ratio(x: Any) -> str:
    return "" if not isinstance(x, int | float) else f" ({x:.2f}×)"


def _cell(entry: dict[str, Any], path: str, ratio_key: str | None = None) -> str:
    value = get(entry["median"]["service"], path)
    ratio = entry["median"]["ratio"].get(ratio_key or path.replace("/", "_"))
    return f"{_ms(value)}{_ratio(ratio)}"


BUSY_MACHINE_CORES = 0.25
"""Other work above this many cores (median of a side's runs) marks a point with †."""


def _label(entry: dict[str, Any]) -> str:
    m = entry["median"]
    others = [get(m[side], "other_load_cores") or 0.0 for side in ("service", "floor")]
    return f"{entry['scenario']}{' †' if max(others) > BUSY_MACHINE_CORES else ''}"


def closed_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| items | scenario | c | recsvc QPS (÷ floor) | floor QPS | p50 ms (× floor) | "
        "p95 ms | p99 ms | p99.9 ms | floor p50 / p99 ms | server p50 / p99 ms | "
        "server CPU µs/req (× floor) | Redis CPU µs/req |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        s, f, r = e["median"]["service"], e["median"]["floor"], e["median"]["ratio"]
        srv = s.get("server", {})
        lines.append(
            f"| {e['model_items']:,} | {_label(e)} | {int(e['level'])} | "
            f"{s['qps']:,.0f}{_ratio(r.get('qps'))} | {f['qps']:,.0f} | "
            f"{_cell(e, 'latency_ms/p50')} | {_cell(e, 'latency_ms/p95')} | "
            f"{_cell(e, 'latency_ms/p99')} | {_cell(e, 'latency_ms/p999')} | "
            f"{_ms(get(f, 'latency_ms/p50'))} / {_ms(get(f, 'latency_ms/p99'))} | "
            f"{_ms(srv.get('handling_p50_ms'))} / {_ms(srv.get('handling_p99_ms'))} | "
            f"{get(s, 'cpu_us_per_request/server'):,.0f}"
            f"{_ratio(r.get('cpu_us_per_request_server'))} | "
            f"{(get(s, 'cpu_us_per_request/redis') or 0):,.0f} |"
        )
    return lines


def open_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| items | scenario | offered req/s | recsvc p50 ms (× floor) | p99 ms (× floor) | "
        "p99.9 ms (× floor) | floor p50 / p99 ms | p99 from due time, recsvc / floor ms | "
        "send lag p99 ms (recsvc / floor) | server p50 / p99 ms | p99 ≤ 2× floor |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for e in entries:
        s, f, r = e["median"]["service"], e["median"]["floor"], e["median"]["ratio"]
        srv = s.get("server", {})
        met = r.get("latency_ms_p99", math.inf) <= TARGETS["open_loop_p99_ratio_max"]
        lines.append(
            f"| {e['model_items']:,} | {_label(e)} | {s.get('offered_rate', 0):,.0f} | "
            f"{_cell(e, 'latency_ms/p50')} | {_cell(e, 'latency_ms/p99')} | "
            f"{_cell(e, 'latency_ms/p999')} | "
            f"{_ms(get(f, 'latency_ms/p50'))} / {_ms(get(f, 'latency_ms/p99'))} | "
            f"{_ms(get(s, 'intended_latency_ms/p99'))} / "
            f"{_ms(get(f, 'intended_latency_ms/p99'))} | "
            f"{_ms(get(s, 'send_lag_ms/p99'))} / {_ms(get(f, 'send_lag_ms/p99'))} | "
            f"{_ms(srv.get('handling_p50_ms'))} / {_ms(srv.get('handling_p99_ms'))} | "
            f"{'met' if met else 'not met'} |"
        )
    return lines


def interceptor_table(entries: list[dict[str, Any]]) -> list[str]:
    """The no-op behind recsvc's interceptors, beside the floor and recsvc."""
    lines = [
        "| items | c | floor QPS | no-op + interceptors QPS (÷ floor) | recsvc QPS (÷ floor) | "
        "p50 ms: floor / + interceptors / recsvc | server CPU µs/req: floor / "
        "+ interceptors / recsvc |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        m = e["median"]
        f, i, s = m["floor"], m["interceptors"], m["service"]
        lines.append(
            f"| {e['model_items']:,} | {int(e['level'])} | {f['qps']:,.0f} | "
            f"{i['qps']:,.0f}{_ratio(m['interceptors_ratio'].get('qps'))} | "
            f"{s['qps']:,.0f}{_ratio(m['ratio'].get('qps'))} | "
            f"{_ms(get(f, 'latency_ms/p50'))} / {_ms(get(i, 'latency_ms/p50'))} / "
            f"{_ms(get(s, 'latency_ms/p50'))} | "
            f"{get(f, 'cpu_us_per_request/server'):,.0f} / "
            f"{get(i, 'cpu_us_per_request/server'):,.0f} / "
            f"{get(s, 'cpu_us_per_request/server'):,.0f} |"
        )
    return lines


def check_table(entries: list[dict[str, Any]]) -> list[str]:
    """Evidence that each scenario did what it claims, from the server's own counters."""
    rules = any(e["scenario"] == "live" for e in entries)
    lines = [
        "| items | scenario | load | strategy (server counters) | user-vector lookups per "
        "request | fold-ins per request | items in a response | "
        + (
            "rule applications per answer, by action (server counters) | rules the sample "
            "answer names (its items a rule placed or moved) | "
            if rules
            else ""
        )
        + "errors | other work on the machine, cores (recsvc / floor runs, median) |",
        "|---:|---|---:|---|---|---:|---:|" + ("---|---|" if rules else "") + "---|---:|",
    ]
    for e in entries:
        run = e["service_runs"][len(e["service_runs"]) // 2]
        srv = run.get("server", {})
        handled = max(1.0, srv.get("handled", 1.0))
        strategies = ", ".join(
            f"{k} {v / handled:.0%}" for k, v in sorted(srv.get("strategies", {}).items())
        )
        named = {k: v for k, v in srv.get("placements", {}).items() if k != "unknown"}
        if named:  # requests that named a placement (live, rotation, experiment)
            strategies += (
                " (placement "
                + ", ".join(f"{k} {v / handled:.0%}" for k, v in sorted(named.items()))
                + ")"
            )
        arms = srv.get("variants", {})
        if arms:  # answers by experiment/variant (experiment)
            strategies += (
                " (variant "
                + ", ".join(f"{k} {v / handled:.0%}" for k, v in sorted(arms.items()))
                + ")"
            )
        lookups = ", ".join(
            f"{k} {v / handled:.2f}" for k, v in sorted(srv.get("lookups", {}).items())
        )
        errors = {**run["errors"]}
        load = f"c={int(e['level'])}" if e["mode"] == "closed" else f"{e['level']:.0f}/s"
        rule_cells = ""
        if rules:
            applied = ", ".join(
                f"{k} {v / handled:.2f}"
                for k, v in sorted(srv.get("rule_applications", {}).items())
            )
            named = run["sample"].get("applied_rule_ids", [])
            rule_cells = (
                f"{applied or '-'} | "
                + (
                    f"{len(named)}: {', '.join(named)} ({run['sample'].get('items_with_rules', 0)} "
                    "items)"
                    if named
                    else "-"
                )
                + " | "
            )
        lines.append(
            f"| {e['model_items']:,} | {e['scenario']} | {load} | {strategies or '-'} | "
            f"{lookups or '-'} | {srv.get('foldins', 0) / handled:.2f} | "
            f"{run['sample']['items']} | {rule_cells}{errors or 'none'} | "
            f"{_ms(get(e['median']['service'], 'other_load_cores'))} / "
            f"{_ms(get(e['median']['floor'], 'other_load_cores'))} |"
        )
    return lines


def same_load(entries: list[dict[str, Any]], e: dict[str, Any], scenario: str) -> Any:
    """The entry of ``scenario`` measured at ``e``'s catalogue and load, or None."""
    return next(
        (
            c
            for c in entries
            if c["scenario"] == scenario
            and (c["catalogue"], c["mode"], c["level"]) == (e["catalogue"], e["mode"], e["level"])
        ),
        None,
    )


def versus_table(entries: list[dict[str, Any]], scenario: str = "live") -> list[str]:
    """``scenario`` (``live``, ``rotation``, ``experiment``) beside ``cached`` of the same repeats:
    server p50, its bound (:data:`MAX_P50_RATIO`) and the other figures."""
    bound = MAX_P50_RATIO[scenario]
    x = scenario
    lines = [
        f"| items | c | server p50 ms: cached / {x} | {x} ÷ cached (per-repeat median, range) | "
        f"server mean ms: cached / {x} (÷) | server p99 ms: cached / {x} | QPS: cached / {x} "
        f"/ floor | server CPU µs/req: cached / {x} (÷) | client p50 / p99 ms: cached / {x} | "
        f"p50 ≤ {bound}× cached |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for e in entries:
        vs = e.get("vs_cached")
        if e["scenario"] != scenario or not vs:
            continue
        cached = same_load(entries, e, "cached")
        if cached is None:
            continue
        s, c = e["median"]["service"], cached["median"]["service"]
        p50 = vs["server_handling_p50_ms"]
        per = p50["per_repeat"]
        ratio = p50["ratio_of_medians"]
        met = ratio is not None and ratio <= bound
        spread = f"{p50['per_repeat_median']:.2f}, {min(per):.2f}–{max(per):.2f}" if per else "-"
        mean = vs["server_handling_mean_ms"]["ratio_of_medians"]
        cpu = vs["cpu_us_per_request_server"]["ratio_of_medians"]
        lines.append(
            f"| {e['model_items']:,} | {int(e['level'])} | "
            f"{_ms(get(c, 'server/handling_p50_ms'))} / {_ms(get(s, 'server/handling_p50_ms'))} | "
            f"**{ratio:.2f}×** ({spread}) | "
            f"{_ms(get(c, 'server/handling_mean_ms'))} / {_ms(get(s, 'server/handling_mean_ms'))}"
            f"{_ratio(mean)} | "
            f"{_ms(get(c, 'server/handling_p99_ms'))} / {_ms(get(s, 'server/handling_p99_ms'))} | "
            f"{c['qps']:,.0f} / {s['qps']:,.0f} / {e['median']['floor']['qps']:,.0f} | "
            f"{get(c, 'cpu_us_per_request/server'):,.0f} / "
            f"{get(s, 'cpu_us_per_request/server'):,.0f}{_ratio(cpu)} | "
            f"{_ms(get(c, 'latency_ms/p50'))} / {_ms(get(c, 'latency_ms/p99'))} ; "
            f"{_ms(get(s, 'latency_ms/p50'))} / {_ms(get(s, 'latency_ms/p99'))} | "
            f"{'met' if met else '**not met**'} |"
        )
    return lines


def experiment_memory_table(experiments: dict[str, Any]) -> list[str]:
    """The memory per loaded variant: what the experiment server says its candidate
    model added, and both servers' resident memory from /proc."""
    if not experiments:
        return []
    mib = 2**20
    lines = [
        "Memory of the loaded variant: `model_bytes` is what ListExperiments reports (the "
        "resident bytes the candidate model added when the server loaded it; the gauge "
        "`recsvc_variant_model_bytes` on /metrics says the same), beside the two servers' "
        "VmRSS (and its anonymous part) from `/proc/<pid>/status`, read after the check of "
        "both variants (before measuring) and after the measurements. The RSS difference "
        "also holds what else differs between the two servers (the experiment server's "
        "second model's state reads, its experiment follower); the cached server has the "
        "published model alone.",
        "",
        "| items | read | candidate `model_bytes` MiB (gauge) | RSS MiB: cached / experiment "
        "server | RSS difference MiB | anonymous RSS difference MiB | candidate artifact on "
        "disk MiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, ex in experiments.items():
        version = ex["candidate"]["version"]
        disk = ex["artifact_bytes_on_disk"].get(version, 0) / mib
        for label, key in (("after the check", "memory_after_check"),
                           ("after measuring", "memory_after_measuring")):  # fmt: skip
            m = ex.get(key)
            if not m:
                continue
            gauge = m["variant_model_bytes_gauge"].get(version)
            lines.append(
                f"| {int(n):,} | {label} | {m['candidate_model_bytes'] / mib:,.1f} "
                f"({'-' if gauge is None else f'{gauge / mib:,.1f}'}) | "
                f"{m['cached_server']['rss_bytes'] / mib:,.0f} / "
                f"{m['experiment_server']['rss_bytes'] / mib:,.0f} | "
                f"{m['rss_difference_bytes'] / mib:,.1f} | "
                f"{m['rss_anon_difference_bytes'] / mib:,.1f} | {disk:,.1f} |"
            )
    return [*lines, ""]


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    main = max(s["config"]["n_items"] for s in report["shops"].values())
    # the targets are set at 100k items; a run on another catalogue says which it measured
    items = "100k items" if main == 100_000 else f"{main:,} items (target set at 100k)"
    found = []

    def entry(scenario: str, mode: str, level: float | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in report["points"]
            if e["catalogue"] == main
            and e["scenario"] == scenario
            and e["mode"] == mode
            and (level is None or e["level"] == level)
        ]

    for e in entry("cached", "closed", 32):
        ratio = e["median"]["ratio"]["qps"]
        found.append(
            {
                "target": f"Recommend, cached user, {items}, k=10: throughput ≥ 0.6× the "
                "no-op floor at concurrency 32",
                "measured": f"{ratio:.2f}× ({e['median']['service']['qps']:,.0f} vs "
                f"{e['median']['floor']['qps']:,.0f} req/s)",
                "met": ratio >= TARGETS["throughput_ratio_min"],
            }
        )
        p50 = get(e["median"]["service"], "server/handling_p50_ms")
        found.append(
            {
                "target": f"Recommend, cached user, {items}, k=10: server-side handling "
                "p50 ≤ 1 ms (at concurrency 32)",
                "measured": f"{_ms(p50)} ms",
                "met": p50 is not None and p50 <= TARGETS["cached_server_p50_ms_max"],
            }
        )
    for e in entry("cached", "closed", 1):
        p50 = get(e["median"]["service"], "server/handling_p50_ms")
        found.append(
            {
                "target": "(same, at concurrency 1: no other call interleaved)",
                "measured": f"{_ms(p50)} ms",
                "met": p50 is not None and p50 <= TARGETS["cached_server_p50_ms_max"],
            }
        )
    for e in entry("cached", "open"):
        ratio = e["median"]["ratio"].get("latency_ms_p99", math.inf)
        offered = e["median"]["service"]["offered_rate"]
        found.append(
            {
                "target": f"Recommend, cached user, {items}, k=10: client p99 ≤ 2× the "
                f"floor's p99 at the same offered load ({offered:,.0f} req/s, open loop)",
                "measured": f"{ratio:.2f}× ({_ms(get(e['median']['service'], 'latency_ms/p99'))} "
                f"vs {_ms(get(e['median']['floor'], 'latency_ms/p99'))} ms)"
                + (" †" if _label(e).endswith("†") else ""),
                "met": ratio <= TARGETS["open_loop_p99_ratio_max"],
            }
        )
    for e in entry("cached", "closed", 32):
        ours, floor = cpu_per_request(e, "service"), cpu_per_request(e, "floor")
        ratio = ours / floor if ours and floor else None
        found.append(
            {
                "target": f"Recommend, cached user, {items}, k=10: server CPU per request "
                "≤ 2× the no-op floor's (concurrency 32)",
                "measured": f"{_ratio_text(ratio)} ({ours or 0:,.0f} vs {floor or 0:,.0f} µs)",
                "met": _at_most(ratio, TARGETS["cached_cpu_ratio_to_floor_max"]),
            }
        )
        for s in entry("session", "closed", 32):
            session = cpu_per_request(s, "service")
            ratio = session / ours if session and ours else None
            found.append(
                {
                    "target": f"Anonymous 5-item session, {items}: server CPU per request "
                    "≤ 1.3× the cached user's in the same run (concurrency 32)",
                    "measured": f"{_ratio_text(ratio)} ({session or 0:,.0f} vs "
                    f"{ours or 0:,.0f} µs)",
                    "met": _at_most(ratio, TARGETS["session_cpu_ratio_to_cached_max"]),
                }
            )
    for level in (32, 1):
        for e in entry("session", "closed", level):
            p50 = get(e["median"]["service"], "server/handling_p50_ms")
            found.append(
                {
                    "target": f"Anonymous 5-item session, {items}: server-side p50 ≤ 1.5 ms "
                    f"(concurrency {level})",
                    "measured": f"{_ms(p50)} ms",
                    "met": p50 is not None and p50 <= TARGETS["session_server_p50_ms_max"],
                }
            )
    for e in sorted(entry("live", "closed"), key=lambda e: -e["level"]):
        vs = e.get("vs_cached")
        if not vs:
            continue
        ratio = vs["server_handling_p50_ms"]["ratio_of_medians"]
        cached = same_load(report["points"], e, "cached")
        live_p50 = _ms(get(e["median"]["service"], "server/handling_p50_ms"))
        cached_p50 = (
            _ms(get(cached["median"]["service"], "server/handling_p50_ms")) if cached else "-"
        )
        found.append(
            {
                "target": f"Recommend, cached user, {items}, with a live catalogue, 10 active "
                "rules and an attribute filter: server p50 ≤ "
                f"{LIVE_RULES_MAX_P50_RATIO}× cached's in the same run (issue #15; "
                f"concurrency {int(e['level'])})",
                "measured": f"{ratio:.2f}× ({live_p50} vs {cached_p50} ms)"
                if ratio is not None
                else "-",
                "met": ratio is not None and ratio <= LIVE_RULES_MAX_P50_RATIO,
            }
        )
    for e in sorted(entry("rotation", "closed"), key=lambda e: -e["level"]):
        vs = e.get("vs_cached")
        if not vs:
            continue
        ratio = vs["server_handling_p50_ms"]["ratio_of_medians"]
        cached = same_load(report["points"], e, "cached")
        rotation_p50 = _ms(get(e["median"]["service"], "server/handling_p50_ms"))
        cached_p50 = (
            _ms(get(cached["median"]["service"], "server/handling_p50_ms")) if cached else "-"
        )
        found.append(
            {
                "target": f"Recommend, cached user, {items}, with rotation on (placement "
                f"rotate_after = {ROTATE_AFTER}, {ROTATION_OVEREXPOSED} of the top 10 "
                f"overexposed): server p50 ≤ {ROTATION_MAX_P50_RATIO}× cached's in the same "
                f"run (issue #16; concurrency {int(e['level'])})",
                "measured": f"{ratio:.2f}× ({rotation_p50} vs {cached_p50} ms)"
                if ratio is not None
                else "-",
                "met": ratio is not None and ratio <= ROTATION_MAX_P50_RATIO,
            }
        )
    for e in sorted(entry("experiment", "closed"), key=lambda e: -e["level"]):
        vs = e.get("vs_cached")
        if not vs:
            continue
        ratio = vs["server_handling_p50_ms"]["ratio_of_medians"]
        cached = same_load(report["points"], e, "cached")
        experiment_p50 = _ms(get(e["median"]["service"], "server/handling_p50_ms"))
        cached_p50 = (
            _ms(get(cached["median"]["service"], "server/handling_p50_ms")) if cached else "-"
        )
        found.append(
            {
                "target": f"Recommend, cached user, {items}, placement split 50/50 by an A/B "
                "experiment between the published model and a second version (two models "
                f"loaded): server p50 ≤ {EXPERIMENT_MAX_P50_RATIO}× cached's in the same run "
                f"(issue #17; concurrency {int(e['level'])})",
                "measured": f"{ratio:.2f}× ({experiment_p50} vs {cached_p50} ms)"
                if ratio is not None
                else "-",
                "met": ratio is not None and ratio <= EXPERIMENT_MAX_P50_RATIO,
            }
        )
    for n, sync in sorted(report.get("sync", {}).items()):
        summary = sync["summary"]
        found.append(
            {
                "target": f"A catalogue sync of {int(n):,} items (recsvc catalog load) under "
                f"closed-loop load (concurrency {sync['config']['concurrency']}): completes in "
                "seconds and fails no concurrent call (issue #15)",
                "measured": f"{summary['sync_seconds']:.1f} s (median of "
                f"{len(sync['runs'])}), {summary['failed_calls']} failed calls",
                "met": summary["failed_calls"] == 0
                and summary["errors_in_window"] == 0
                and summary["sync_seconds"] < 60,
            }
        )
    return found


def sync_markdown(syncs: dict[str, Any]) -> list[str]:
    """The catalogue sync section: the sync's time, failures, latency before/during/after."""
    lines = []
    for n, sync in sorted(syncs.items()):
        cfg, summary = sync["config"], sync["summary"]
        lines += [
            f"## Catalogue sync of {int(n):,} items under load",
            "",
            f"While the load generator ran closed-loop `{cfg['pool']}` requests at concurrency "
            f"{cfg['concurrency']} on the live server, this script ran `recsvc catalog load "
            "FILE` against it — what a shop runs: the file read and checked, then "
            "`UpsertItems` calls of 1000 items — alternating two files that differ in every "
            "item's price and in which 2% are unavailable, so every record changes each time. "
            f"The window: {cfg['before_seconds']:g} s of load before the sync, the sync, "
            f"{cfg['after_seconds']:g} s or more after. The command's wall time includes "
            "starting Python and reading the file; 'writes' is from its first to its last "
            "change in Redis (a thread reading the change counter every 20 ms); 'applied' is "
            "how long after the command returned the server had applied the last change "
            "(its `recsvc_live_version`). Calls that failed are counted by status code "
            "(every non-OK status the client got).",
            "",
            f"The first load of the catalogue, with nothing else running, took "
            f"{sync['initial_load']['seconds']:.1f} s.",
            "",
            "| run | file | sync s | writes s | applied s after | changes | failed calls | "
            "client p50 ms before / during / after | client p99 ms before / during / after | "
            "worst call ms before / during | worst 1-s p99 ms before / during | QPS before / "
            "during | server p99 ms before / during | UpsertItems handling mean / p99 ms | "
            "sync client CPU s | server's full GC collections (during) | other work, cores "
            "(during) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sync["runs"]:
            ph, sy = r["phases"], r["sync"]
            failed = sum(sum(p["failed"].values()) for p in ph.values())
            codes = {k: v for p in ph.values() for k, v in p["failed"].items()}
            worst = {
                name: max(
                    (b["p99_ms"] for b in r["seconds"] if b["phase"] == name and b["p99_ms"]),
                    default=None,
                )
                for name in ("before", "during")
            }

            def lat(name: str, q: str, ph: dict[str, Any] = ph) -> str:
                return _ms(ph[name]["latency_ms"].get(q))

            lines.append(
                f"| {r['repeat'] + 1} | `{r['file']}` | {sy['seconds']:.1f} | "
                f"{_ms(sy['writes_span_seconds'])} | {_ms(sy['applied_after_return_seconds'])} | "
                f"{sy['changes_written']} | {failed}{f' {codes}' if codes else ''} | "
                f"{lat('before', 'p50')} / {lat('during', 'p50')} / {lat('after', 'p50')} | "
                f"{lat('before', 'p99')} / {lat('during', 'p99')} / {lat('after', 'p99')} | "
                f"{lat('before', 'max')} / {lat('during', 'max')} | "
                f"{_ms(worst['before'])} / {_ms(worst['during'])} | "
                f"{ph['before']['qps']:,.0f} / {ph['during']['qps']:,.0f} | "
                f"{_ms(ph['before']['server_p99_ms'])} / {_ms(ph['during']['server_p99_ms'])} | "
                f"{_ms(ph['during']['upsert_handling_mean_ms'])} / "
                f"{_ms(ph['during']['upsert_handling_p99_ms'])} | {sy['cpu_seconds']:.1f} | "
                f"{ph['during'].get('gc_generation2_collections', 0):.0f} | "
                f"{_ms(ph['during']['other_load_cores'])} |"
            )
        ratio = summary.get("p99_during_over_before")
        lines += [
            "",
            f"Medians over the runs: sync {summary['sync_seconds']:.1f} s, client p99 "
            f"{_ms(get(summary, 'before/latency_ms/p99'))} ms before and "
            f"{_ms(get(summary, 'during/latency_ms/p99'))} ms during"
            + (f" ({ratio:.2f}×)" if ratio else "")
            + f"; {summary['failed_calls']} failed calls in all runs"
            + (
                ""
                if all(r["window_covers_sync"] for r in sync["runs"])
                else " (**a sync outlasted its window**: its last seconds are not measured)"
            )
            + ".",
            "",
        ]
    return lines


def _method_markdown() -> list[str]:
    """The module docstring's Method section, as Markdown (scenarios are listed above)."""
    import re

    text = (__doc__ or "").split("Method\n------\n", 1)[-1]
    head, _, rest = text.partition("Scenarios (every request")
    tail = rest.partition("Each measured point")[2]
    text = head + "Scenarios: see above; every request is built up front, serialized once "
    text += "and cycled in order.\n\nEach measured point" + tail
    text = re.sub(r":mod:`([^`]+)`", r"`\1.py`", text).replace("``", "`")
    return text.splitlines()


SCALEOUT_SETUPS = (
    ("cached", "(a) 1 replica, standalone Redis"),
    ("cached_cluster", "(b) 1 replica, Redis Cluster (3+3)"),
    ("scaleout", "(c) 3 replicas, Redis Cluster (3+3), round robin"),
)
"""The setups of the scale-out comparison: scenario, how the report names it."""
SCALEOUT_RATIOS = (
    ("cached_cluster", "cached", "(b) ÷ (a): the cluster's path"),
    ("scaleout", "cached_cluster", "(c) ÷ (b): spread over 3 replicas"),
    ("scaleout", "cached", "(c) ÷ (a): in all"),
)
"""The ratios the report gives: numerator, denominator, what the ratio tells."""
CPU_PARTS = (("server", "recsvc serve"), ("redis", "Redis"), ("client", "load generator"))
"""The parts whose CPU per request the scale-out tables give: key, name."""
ScaleoutSet = dict[str, dict[str, Any]]
"""The entries of the scale-out setups measured together, by scenario."""


def _load(entry: dict[str, Any]) -> str:
    """``c=32`` (closed loop) or ``1,150/s`` (open loop, offered)."""
    if entry["mode"] == "closed":
        return f"c={int(entry['level'])}"
    return f"{entry['level']:,.0f}/s"


def _us(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:,.0f}"


def _times(a: Any, b: Any) -> str:
    """``a ÷ b`` as ``1.23×``, or ``-``."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.2f}×"


def _share(entry: dict[str, Any]) -> str:
    """:func:`_hit_share` as a percentage, or ``-``."""
    share = _hit_share(entry)
    return "-" if share is None else f"{share:.0%}"


def _hit_share(entry: dict[str, Any]) -> float | None:
    """The median over ``entry``'s runs of the share of Recommends whose state read the
    client-side cache answered (the server's counters, summed over its processes)."""
    shares = []
    for run in entry["service_runs"]:
        hits = get(run, "server/lookups/state_cache_hit") or 0.0
        misses = get(run, "server/lookups/state_cache_miss") or 0.0
        if hits + misses:
            shares.append(hits / (hits + misses))
    return median(shares) if shares else None


def _cpu_total(figures: dict[str, Any]) -> float | None:
    """CPU µs per request of the parts of :data:`CPU_PARTS`, summed (None if one is
    missing)."""
    values = [get(figures, f"cpu_us_per_request/{key}") for key, _ in CPU_PARTS]
    if not all(isinstance(v, int | float) for v in values):
        return None
    return float(sum(values))


def _errors(entry: dict[str, Any]) -> int:
    """Calls that failed in ``entry``'s measured windows, all runs."""
    return int(sum(sum(r["errors"].values()) for r in entry["service_runs"]))


def scaleout_sets(points: list[dict[str, Any]]) -> list[ScaleoutSet]:
    """The entries of every setup of :data:`SCALEOUT_SETUPS` measured together (same
    catalogue and load), in the order measured; a load that lacks one is left out."""
    sets = []
    for e in points:
        if e["scenario"] == "scaleout":
            found = {scenario: same_load(points, e, scenario) for scenario, _ in SCALEOUT_SETUPS}
            if all(found.values()):
                sets.append({k: v for k, v in found.items() if v is not None})
    return sets


def scaleout_markdown(report: dict[str, Any]) -> list[str]:
    """The scale-out section: 3 replicas on a Redis Cluster behind the client's round
    robin, 1 replica on the same cluster and 1 on a standalone Redis, measured together;
    throughput, latency and the CPU per request of each part, then what the machine can
    and cannot show."""
    sets = scaleout_sets(report["points"])
    if not sets:
        return []
    cfg = report["config"]
    lines = [
        "## Scale-out: 3 replicas on a Redis Cluster vs 1 replica on a standalone Redis",
        "",
        "The same requests (`cached`: 2,000 trained users whose vectors are published, "
        "k=10, each server's LRU and client-side state cache warmed) against (a) one "
        "`recsvc serve` on one private `redis-server`; (b) one `recsvc serve` on one private "
        "Redis Cluster of 3 primaries and 3 replicas (`--redis-url redis+cluster://...`; "
        "the user vectors published into it too); (c) three more `recsvc serve` of the "
        "same artifact root on that cluster, the load generator sending to all three "
        "through one gRPC channel with the `round_robin` policy (target "
        "`ipv4:127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`). (b) splits (a) → (c) in two: "
        "what the cluster's path costs one replica, and what spreading the calls over "
        "three replicas does. All three at the same loads, in the same run: per repeat "
        "one run of each, back to back, then the floor, the order reversed every other "
        f"repeat; medians of {cfg['repeats']} runs of {cfg['warmup']:g} s warm-up + "
        f"{cfg['duration']:g} s measured. Open-loop rates (`/s`) are the same seeded "
        "Poisson schedule for all three, set from (a)'s closed-loop throughput at c=32. "
        "(Their floor, in the tables further down, is (a)'s runs of the single no-op.)",
        "",
        "**CPU per request** of a part is its processes' CPU time (user + system, "
        "`/proc/<pid>/stat`) over the measured window ÷ the requests completed in it: "
        "`recsvc serve` is every replica's summed, Redis every node's summed (primaries and "
        "replicas), the load generator its own process. 'Cores busy' is the whole "
        "machine's busy time ÷ the window (`/proc/stat`): everything on it, this "
        "benchmark's processes and any other work. 'State-cache hits' is the share of "
        "Recommends whose state read the server's client-side cache answered without Redis "
        "(its counters, median over the runs).",
        "",
    ]
    for n, out in report.get("scaleout", {}).items():
        nodes = out["nodes"]
        primaries = [x for x in nodes if x["role"] == "primary"]
        check = out["check"]
        same = ", ".join(f"{r['same_as_cached_share']:.1%}" for r in check["replicas"])
        single = check.get("single", {}).get("same_as_cached_share")
        publish = out.get("publish_seconds", {})
        lines += [
            f"Setup on {int(n):,} items: {out['vectors_published']:,} user vectors published "
            f"into the cluster in {_ms(publish.get('cluster'))} s (cluster pipeline; "
            f"{_ms(publish.get('standalone'))} s into the standalone Redis); keys per "
            "primary "
            + ", ".join(f"{x['keys']:,}" for x in primaries)
            + " (each replica node holds its primary's). Asked before measuring (gRPC, "
            f"k=10, every one of the {check['users']:,} pool users, one call each): the "
            f"three replicas of (c) answered {same} of them, (b) "
            + ("-" if single is None else f"{single:.1%}")
            + ", with the very items (a) answers.",
            "",
        ]
    lines += [
        "| items | load | setup | QPS | client p50 ms | client p99 ms | client p99.9 ms | "
        "server p50 / p99 ms | CPU µs/req: "
        + " | ".join(name for _, name in CPU_PARTS)
        + " | CPU µs/req, all three | cores busy (machine) | state-cache hits | errors |",
        "|---:|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(CPU_PARTS) + "---:|" * 4,
    ]
    for found in sets:
        for scenario, label in SCALEOUT_SETUPS:
            e = found[scenario]
            m = e["median"]["service"]
            lines.append(
                f"| {e['model_items']:,} | {_load(e)} | {label} | {m['qps']:,.0f} | "
                f"{_ms(get(m, 'latency_ms/p50'))} | {_ms(get(m, 'latency_ms/p99'))} | "
                f"{_ms(get(m, 'latency_ms/p999'))} | "
                f"{_ms(get(m, 'server/handling_p50_ms'))} / "
                f"{_ms(get(m, 'server/handling_p99_ms'))} | "
                + " | ".join(_us(get(m, f"cpu_us_per_request/{key}")) for key, _ in CPU_PARTS)
                + f" | {_us(_cpu_total(m))} | {_ms(get(m, 'cpu_utilisation/machine'))} | "
                f"{_share(e)} | {_errors(e)} |"
            )
    lines += [
        "",
        "Ratios of those medians:",
        "",
        "| items | load | ratio | QPS | client p50 | client p99 | server p50 | server p99 | "
        "CPU/req: " + " | ".join(name for _, name in CPU_PARTS) + " | CPU/req, all three |",
        "|---:|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(CPU_PARTS) + 1),
    ]
    paths = (
        "qps",
        "latency_ms/p50",
        "latency_ms/p99",
        "server/handling_p50_ms",
        "server/handling_p99_ms",
        *(f"cpu_us_per_request/{key}" for key, _ in CPU_PARTS),
    )
    for found in sets:
        e = found["scaleout"]
        for top, bottom, label in SCALEOUT_RATIOS:
            a, b = found[top]["median"]["service"], found[bottom]["median"]["service"]
            lines.append(
                f"| {e['model_items']:,} | {_load(e)} | {label} | "
                + " | ".join(_times(get(a, path), get(b, path)) for path in paths)
                + f" | {_times(_cpu_total(a), _cpu_total(b))} |"
            )
    lines += [
        "",
        "Each process of (c) (medians; CPU µs of that process ÷ every request completed, "
        "so each part's processes add up to its figure above; the Recommends each replica "
        "handled, from its own /metrics):",
        "",
    ]
    nodes_by_n = {int(k): v["nodes"] for k, v in report.get("scaleout", {}).items()}
    for n in sorted({f["scaleout"]["catalogue"] for f in sets}):
        nodes = nodes_by_n.get(n, [])
        names = [f"{x['name']} ({x['role']})" for x in nodes]
        lines += [
            "| items | load | "
            + " | ".join(f"server{i} µs/req (handled share)" for i in range(SCALEOUT_REPLICAS))
            + " | "
            + " | ".join(f"{name} µs/req" for name in names)
            + " |",
            "|---:|---|" + "---:|" * (SCALEOUT_REPLICAS + len(nodes)),
        ]
        for e in [f["scaleout"] for f in sets if f["scaleout"]["catalogue"] == n]:
            m = e["median"]["service"]
            handled = get(m, "server/handled_by_process") or {}
            total = sum(handled.values()) or 1.0
            cells = [
                f"{_us(get(m, f'cpu_us_per_request/server{i}'))} "
                f"({handled.get(f'server{i}', 0.0) / total:.1%})"
                for i in range(SCALEOUT_REPLICAS)
            ]
            cells += [_us(get(m, f"cpu_us_per_request/{x['name']}")) for x in nodes]
            lines.append(f"| {e['model_items']:,} | {_load(e)} | " + " | ".join(cells) + " |")
        lines.append("")
    runs = report.get("scaleout", {})
    idle = runs[max(runs, key=int)].get("idle") if runs else None
    lines += scaleout_limits(sets, report["machine"]["nproc"], idle)
    return lines


def scaleout_limits(
    sets: list[ScaleoutSet], nproc: int, idle: dict[str, Any] | None = None
) -> list[str]:
    """What a machine of ``nproc`` cores can and cannot show of the scale-out, with the
    run's own figures (``idle``: :func:`idle_cores` of the largest catalogue)."""
    closed = [f for f in sets if f["cached"]["mode"] == "closed"]
    if not closed:
        return []
    top = max(closed, key=lambda f: f["cached"]["level"])
    low = min(closed, key=lambda f: f["cached"]["level"])
    c_top, c_low = int(top["cached"]["level"]), int(low["cached"]["level"])
    a, b, c = top["cached"], top["cached_cluster"], top["scaleout"]
    la, lb, lc = low["cached"], low["cached_cluster"], low["scaleout"]

    def cores(e: dict[str, Any], key: str) -> float:
        value = get(e["median"]["service"], f"cpu_utilisation/{key}")
        return float(value) if isinstance(value, int | float) else 0.0

    def cpu(e: dict[str, Any], key: str) -> str:
        return _us(get(e["median"]["service"], f"cpu_us_per_request/{key}"))

    def ms(e: dict[str, Any], path: str) -> str:
        return _ms(get(e["median"]["service"], path))

    def qps(x: dict[str, Any], y: dict[str, Any]) -> str:
        return _times(x["median"]["service"]["qps"], y["median"]["service"]["qps"])

    busy_a, busy_c = cores(a, "machine"), cores(c, "machine")
    full = busy_c >= 0.85 * nproc
    errors = {s: sum(_errors(f[s]) for f in sets) for s, _ in SCALEOUT_SETUPS}
    lines = [
        f"### What {nproc} cores can and cannot show",
        "",
        f"Every process runs on this machine's {nproc} cores: in (c)'s runs three `recsvc "
        "serve`, the six `redis-server` nodes of the cluster and the load generator (the "
        "other setups' servers, the standalone Redis and the no-op floor idle beside "
        "them); in (a)'s, one `recsvc serve`, one Redis and the load generator. One "
        "`recsvc serve` is one Python process whose event loop runs on one core at a "
        f"time: at c={c_top} (a) used {cores(a, 'server'):.2f} cores for it, "
        f"{cores(a, 'client'):.2f} for the load generator and {cores(a, 'redis'):.2f} for "
        f"Redis (the machine, everything on it, {busy_a:.2f} of {nproc}). Three replicas "
        "can also use what that leaves of the other core: at c="
        f"{c_top} (c)'s used {cores(c, 'server'):.2f} cores in all and answered "
        f"{qps(c, a)} (a)'s requests per second, the machine busy {busy_c:.2f} of {nproc}"
        + (": nothing is left to take, so that is as far as replicas go here. " if full else ". ")
        + "So throughput cannot scale with replicas on this machine: (c)'s throughput is "
        "one process's core plus what the client and Redis leave of the second, not three "
        "replicas' worth, and its closed-loop latency (p99 above all) is that of ten "
        "processes taking turns on the cores. How throughput grows with replicas, and the "
        "latency of a fleet under a load one replica cannot carry, need a core for each "
        "replica and each Redis primary besides the client's; so does a failover under "
        "load (`docs/reliability.md` has the one measured so far, without a throughput "
        "figure).",
        "",
        "What can be read here: the CPU per request of each part, which times the request "
        "rate is what a deployment must give each part: every `recsvc serve` summed "
        f"({cpu(c, 'server')} µs with three replicas, {cpu(b, 'server')} with one on the "
        f"cluster, {cpu(a, 'server')} with one on a standalone Redis, at c={c_top}), every "
        f"Redis node summed ({cpu(c, 'redis')}, {cpu(b, 'redis')} and {cpu(a, 'redis')} µs; "
        "the replica nodes, with nothing written, only their own background: see the last "
        "table), the "
        f"load generator ({cpu(c, 'client')}, {cpu(b, 'client')} and {cpu(a, 'client')} µs). "
        "That the client's round robin spreads the calls evenly (the handled shares). "
        "That nothing is lost: every replica answers the pool users with (a)'s items "
        f"(checked before measuring), and {errors['scaleout']} calls failed in (c)'s runs, "
        f"{errors['cached_cluster']} in (b)'s, {errors['cached']} in (a)'s. And where a "
        "request's cost goes, in the ratios: (b) ÷ (a) is the cluster's path for one "
        f"replica — at c={c_low}, where no call waits for another, client p50 "
        f"{ms(lb, 'latency_ms/p50')} against {ms(la, 'latency_ms/p50')} ms, server p50 "
        f"{ms(lb, 'server/handling_p50_ms')} against {ms(la, 'server/handling_p50_ms')} ms, "
        f"`recsvc serve` {cpu(lb, 'server')} against {cpu(la, 'server')} µs of CPU per "
        f"request (state-cache hits {_share(lb)} and {_share(la)}); a user's keys share one "
        "hash slot, so a cached Recommend's state read is still one round trip, to the "
        "primary of that slot. (c) ÷ (b) is the spreading: each replica at a third of the "
        "load (less work to share each wake-up with), ten processes on the cores, and a "
        "user's calls dealt to three client-side caches — a kept value answers for 30 s at "
        "most after it was read from Redis (`state_cache_seconds`), and with the pool of "
        "2,000 users asked in order and the calls dealt in turn, a user comes back to the "
        "same replica only every third pass (6,000 calls) instead of every pass, so each "
        "replica's cache holds a recently read user a third as often as a single server's "
        f"(state-cache hits at c={c_low}: {_share(lc)} for (c), {_share(lb)} for (b); the "
        "share also depends on how long since that server last read the user, so on the "
        "order of the runs). Without affinity of users to replicas, that is part of what "
        "replicas cost.",
        "",
    ]
    if idle:
        one, three = idle["cached"], idle["scaleout"]
        alone = idle.get("cached_cluster", {})
        lines += [
            f"At rest ({idle['seconds']:.0f} s before measuring, no request sent): "
            f"(a)'s `recsvc serve` used {one.get('server', 0.0):.3f} cores and its Redis "
            f"{one.get('redis', 0.0):.3f}; (b)'s `recsvc serve` "
            f"{alone.get('server', 0.0):.3f}; (c)'s three {three.get('server', 0.0):.3f} in "
            f"all, and the six cluster nodes {three.get('redis', 0.0):.3f} (the machine "
            f"{idle['machine']:.2f}, everything on it). That background work is in the CPU "
            "per request of every run and weighs most at low rates: it grows with the "
            "number of processes, not with requests.",
            "",
        ]
    lines += [
        "Every figure is of one shared machine, the setups measured in the same repeats: "
        "only the ratios within this run mean anything.",
        "",
    ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    shops = report["shops"]
    closed = [e for e in report["points"] if e["mode"] == "closed"]
    opened = [e for e in report["points"] if e["mode"] == "open"]
    cfg = report["config"]
    measured = {e["scenario"] for e in report["points"]}
    busy_note = (
        f"† other work on the machine took more than {BUSY_MACHINE_CORES} of a core during "
        "these runs (median; see the last table): both sides ran under it, expect noise."
    )
    source = report.get("code_source", "checkout")
    provenance = (
        f"uncommitted files measured: "
        f"{', '.join(f'`{k}`' for k in report.get('uncommitted', {})) or 'none'}, their "
        "hashes are in `results.json`"
        if source == "checkout"
        else f"the code measured is not this checkout's: `recsvc` imported from `{source}` "
        "(`PYTHONPATH`)"
    )
    lines = [
        "# Serving: `recsvc serve` (Recommend) vs the gRPC floor",
        "",
        f"Run {report['date']} (repo at {report['git']}; {provenance}). Reproduce from the "
        "repo root with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {_machine_line(m)}; load average at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_end', []))}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        f"Medians of {cfg['repeats']} runs per point, recsvc and floor alternating "
        f"(ABBA); each run {cfg['warmup']:g} s warm-up + {cfg['duration']:g} s measured. "
        "Ratios are ratios of medians: QPS ÷ floor (higher is better), latency and CPU "
        "× floor (lower is better). Every raw run is in `results.json`.",
        "",
        "**The floor** is `benchmarks/noop_server.py`: the same `grpc.aio` server and "
        "options as `recsvc serve`, one process, no interceptors, a prebuilt response of "
        "the same shape (10 items; 100 for k=100). **Client** latency is measured by "
        "`benchmarks/loadgen.py`, an async `grpc.aio` client in its own process on the same "
        "2 cores (its CPU use is in `results.json`: at high load the client, the server "
        "and Redis compete for the cores, which is part of what the floor measures). "
        "**Server** p50/p99 are estimated from recsvc's own `grpc_server_handling_seconds` "
        f"histogram (bucket bounds {_bucket_bounds_ms()} ms ...; "
        "linear interpolation inside a bucket), diffed over the measured window; it times "
        "the handler inside the interceptors, not the gRPC transport or (de)serialization.",
        "",
        "## Shops",
        "",
        "| catalogue (synth `n_items`) | items in the model | users | events | index | "
        "recall@20 | built in | trained at |",
        "|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for s in shops.values():
        lines.append(
            f"| {s['config']['n_items']:,} | {s['model_items']:,} | {s['model_users']:,} | "
            f"{s['config']['n_events']:,} | {s['index_kind']} | {s['index_recall']:.3f} | "
            f"{s['build_seconds']:.0f} s | {s.get('built_at_git', '?')} |"
        )
    lines += [
        "",
        "Shops: `training.synth` (seed 7, 90% of items out of stock, see below) then "
        "`recsvc train --publish` with default settings (64 factors; the index kind is "
        "what `recsvc train` picks for the size, see the table: the catalogues also "
        "differ in index kind).",
        "",
        "## Scenarios",
        "",
        *[f"- `{k}`: {v}" for k, v in SCENARIOS.items() if k in measured],
        "",
    ]
    for n, rejection in report.get("filter_rejection", {}).items():
        if rejection:
            lines.append(
                f"- filter on {int(n):,} items: {rejection['rejected_share']:.0%} of the first "
                f"{rejection['candidates_per_user']:.0f} exact candidates of "
                f"{rejection['users_sampled']:.0f} pool users are out of stock "
                f"({rejection['catalogue_out_of_stock_share']:.0%} of the catalogue)."
            )
    for n, live in report.get("live", {}).items():
        f, cand, info = live["facts"], live["candidates"], live["model_info"]
        lines.append(
            f"- live on {int(n):,} items: a catalogue of {f['catalogue_items']:,} items "
            f"({f['model_items']:,} in the model; {f['departments']} departments over the "
            f"categories, {f['brands']} brands, {f['unavailable_share']:.1%} unavailable) "
            f"loaded by `recsvc catalog load` in {live['catalogue_load']['seconds']:.1f} s "
            f"with nothing else running, and {len(f['rules'])} rules by `recsvc rules load` "
            f"(the server then reported {int(info.get('catalog_item_count') or 0):,} "
            f"catalogue items, catalogue version {info.get('catalog_version')}, "
            f"{info.get('live_rule_count')} live rules). The price filter "
            f"[{f['price_range'][0]:g}, {f['price_range'][1]:g}] keeps "
            f"{f['filter_keeps_model_items_share']:.0%} of the model's items; with the "
            f"unavailable ones, {cand['rejected_share']:.0%} of the first "
            f"{cand['candidates_per_user']:.0f} exact candidates of "
            f"{cand['users_sampled']:.0f} pool users are hidden. Files: `_live.py` in "
            "`benchmarks/` writes them (not kept in the repository)."
        )
    for n, rot in report.get("rotation", {}).items():
        check = rot.get("check", {})
        per = check.get("overexposed_per_answer", {})
        lines.append(
            f"- rotation on {int(n):,} items: placement `{rot['placement']}` with "
            f"`rotate_after = {rot['rotate_after']}`, `rotation_weight = "
            f"{rot['rotation_weight']}` (`--config`); each of the {rot['users']:,} pool "
            f"users' impression counts hold {rot['overexposed_per_user']:.1f} items of their "
            f"cached top 10 shown {rot['overexposed_counts'][0]}-{rot['overexposed_counts'][1]} "
            f"times and {rot['members_per_user'] - rot['overexposed_per_user']:.1f} of their "
            f"ranks 11-{rot['depth_asked']} shown once or twice. Asked before measuring (gRPC, "
            f"k=10, every pool user): the cached answers hold {per.get('cached', 0):.2f} of the "
            f"user's overexposed items, the rotation answers {per.get('rotation', 0):.2f}; "
            f"{check.get('answers_differing_share', 0):.0%} of the answers differ, by "
            f"{check.get('items_replaced_per_answer', 0):.2f} items on average."
        )
    for n, ex in report.get("experiment", {}).items():
        cand, check = ex["candidate"], ex["check"]
        trained = "reused" if cand.get("reused") else f"trained in {cand['train_seconds']:.0f} s"
        split = "; ".join(
            f"`{name}` {v['answers']:,} ({v['share']:.1%}), model "
            + ", ".join(f"`{m}`" for m in v["model_versions"])
            + ", strategy "
            + ", ".join(f"{k} {c / max(1, v['answers']):.0%}" for k, c in v["strategies"].items())
            + f", {v['same_as_cached_share']:.0%} of them the same items as cached's answer"
            for name, v in check["variants"].items()
        )
        lines.append(
            f"- experiment on {int(n):,} items: experiment `{ex['experiment']}` on placement "
            f"`{ex['placement']}` (`[server] experiments_file`), "
            + ", ".join(f"`{v['name']}` {v['share']:.0%} (`{v['model']}`)" for v in ex["variants"])
            + f"; the candidate is `recsvc train` of the same events with ALS random_state "
            f"{cand['random_state']} ({cand['model_items']:,} items, {cand['model_users']:,} "
            f"users, {cand['index_kind']}), not published, in the same artifact root "
            f"({trained}). Both versions' user vectors ("
            + ", ".join(f"{c:,}" for c in ex["vectors_published"].values())
            + f") published to the same Redis under key prefix `{ex['prefix']}` (that "
            "server's `[redis] prefix`: the experiment set is shared through Redis, and "
            "`cached`'s server would otherwise follow it and load the candidate too). Asked "
            f"before measuring (gRPC, k=10, every one of the {check['users']:,} pool users): "
            f"{split}; {check['assigned_as_hashed_share']:.0%} of the users got the variant "
            "the experiment's hash assigns them."
        )
    lines += ["", *scaleout_markdown(report)]
    lines += [
        "",
        "## Targets",
        "",
        "| target | measured | met? |",
        "|---|---|:---:|",
        *[
            f"| {t['target']} | {t['measured']} | {'met' if t['met'] else '**not met**'} |"
            for t in report["targets"]
        ],
        "",
        "## Closed loop (fixed concurrency)",
        "",
        *closed_table(closed),
        "",
        busy_note,
        "",
    ]
    if opened:
        lines += [
            "## Open loop (Poisson arrivals, same schedule for both servers)",
            "",
            "Rates are fractions of recsvc's own closed-loop QPS (cached, concurrency 32) "
            "in this run. Latency from the actual send; 'from due time' adds the client's "
            "scheduling delay (asyncio timers have ~1 ms granularity).",
            "",
            *open_table(opened),
            "",
            busy_note,
            "",
        ]
    if any(e.get("vs_cached") and e["scenario"] == "live" for e in report["points"]):
        lines += [
            "## Live catalogue, 10 rules and a filter vs cached (same run)",
            "",
            "`live` and `cached` at the same concurrency were measured together: in each "
            "repeat one run of each on its own `recsvc serve` (the same model and vectors; "
            "the `live` server also holds the live catalogue and the rules), back to back, "
            "then their floors, the order reversed every other repeat. The ratio is of the "
            "medians; in brackets the median and range of the ratio within each repeat. "
            "Server p50 is read from histogram buckets (0.1, 0.25, 0.5 ms ...: linear "
            "interpolation inside one), so the mean (exact: sum ÷ count) is given beside it.",
            "",
            *versus_table(report["points"], "live"),
            "",
        ]
    if any(e.get("vs_cached") and e["scenario"] == "rotation" for e in report["points"]):
        lines += [
            "## Rotation vs cached (same run)",
            "",
            "`rotation` and `cached` at the same concurrency were measured together, each on "
            "its own `recsvc serve` (the same model, the same Redis; the `rotation` server's "
            "settings give placement `home` `rotate_after`): in each repeat one run of each, "
            "back to back, then their floors, the order reversed every other repeat. The "
            "ratio is of the medians; in brackets the median and range of the ratio within "
            "each repeat. Server p50 is "
            "read from histogram buckets (0.1, 0.25, 0.5 ms ...: linear interpolation inside "
            "one), so the mean (exact: sum ÷ count) is given beside it.",
            "",
            *versus_table(report["points"], "rotation"),
            "",
        ]
    if any(e.get("vs_cached") and e["scenario"] == "experiment" for e in report["points"]):
        lines += [
            "## Two variants (two models loaded) vs cached (same run)",
            "",
            "`experiment` and `cached` at the same concurrency were measured together, each "
            "on its own `recsvc serve` (the same shop and Redis; the `experiment` server "
            "splits placement `home` between the published model and a second version, both "
            "loaded, its keys under their own prefix): in each repeat one run of each, back "
            "to back, then their floors, the order reversed every other repeat. The ratio is "
            "of the medians; in brackets the median and range of the ratio within each "
            "repeat. Server p50 is read from histogram buckets (0.1, 0.25, 0.5 ms ...: "
            "linear interpolation inside one), so the mean (exact: sum ÷ count) is given "
            "beside it.",
            "",
            *versus_table(report["points"], "experiment"),
            "",
            *experiment_memory_table(report.get("experiment", {})),
        ]
    if report.get("sync"):
        lines += sync_markdown(report["sync"])
    with_interceptors = [e for e in report["points"] if "interceptors" in e["median"]]
    if with_interceptors:
        lines += [
            "## What recsvc's interceptors cost on their own",
            "",
            "A diagnostic, not the floor: `noop_server.py --interceptors` puts recsvc's "
            "interceptor chain (metrics, auth off, concurrency limit; default settings) in "
            "front of the same no-op, measured in the same alternation (cached-user "
            "requests).",
            "",
            *interceptor_table(with_interceptors),
            "",
        ]
    lines += [
        "## Did each scenario do what it says? (server counters, middle run)",
        "",
        *check_table(report["points"]),
        "",
        "## Plots",
        "",
        "![latency vs concurrency](latency_vs_concurrency.png)",
        "",
        "![latency vs catalogue size](latency_vs_catalogue.png)",
        "",
    ]
    if report.get("profile"):
        lines += ["## Profile", "", "See [`profile.md`](profile.md) and `profile.svg`.", ""]
    for scenario in PROFILED:
        if report.get(f"profile_{scenario}"):
            lines += [
                f"## Profile of the {scenario} scenario",
                "",
                f"See [`profile-{scenario}.md`](profile-{scenario}.md) and "
                f"`profile-{scenario}.svg`.",
                "",
            ]
    if report.get("engine_path"):
        lines += [
            "## The live path step by step",
            "",
            "[`engine-path.md`](engine-path.md) (`benchmarks/bench_live_path.py`, its command "
            "there): the engine in process, cached and live and the layers between them, each "
            "step of a Recommend timed, and a catalogue sync's work step by step.",
            "",
        ]
    lines += [
        "## Method",
        "",
        *_method_markdown(),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    footer = f"{_machine_line(report['machine'])}\n{report['command']}"
    main = max(s["config"]["n_items"] for s in report["shops"].values())
    closed = [e for e in report["points"] if e["mode"] == "closed"]

    fig, (ax_lat, ax_qps) = plt.subplots(1, 2, figsize=(13, 5.5))
    for scenario, color in (("cached", "tab:blue"), ("session", "tab:green")):
        rows = sorted(
            (e for e in closed if e["catalogue"] == main and e["scenario"] == scenario),
            key=lambda e: e["level"],
        )
        if len(rows) < 2:
            continue
        xs = [e["level"] for e in rows]
        for side, style in (("service", "-"), ("floor", ":")):
            who = "recsvc" if side == "service" else "floor"
            p50 = [get(e["median"][side], "latency_ms/p50") for e in rows]
            p99 = [get(e["median"][side], "latency_ms/p99") for e in rows]
            ax_lat.plot(xs, p50, style, marker="o", color=color, label=f"{who} {scenario} p50")
            ax_lat.plot(
                xs, p99, style, marker="^", color=color, alpha=0.5, label=f"{who} {scenario} p99"
            )
            qps = [e["median"][side]["qps"] for e in rows]
            ax_qps.plot(xs, qps, style, marker="o", color=color, label=f"{who} {scenario}")
        srv = [get(e["median"]["service"], "server/handling_p50_ms") for e in rows]
        ax_lat.plot(xs, srv, "--", marker="s", color=color, label=f"server p50 {scenario}")
    for ax, title, ylabel in (
        (ax_lat, f"Client latency, {main:,}-item catalogue", "ms (log)"),
        (ax_qps, "Throughput", "requests / s"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (closed loop)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_lat.set_yscale("log")
    fig.text(0.01, 0.01, footer, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "latency_vs_concurrency.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    scenarios = ("cached", "session", "foldin", "filter")
    colors = ("tab:blue", "tab:green", "tab:red", "tab:purple")
    for ax, level in zip(axes, (1, 32), strict=True):
        for scenario, color in zip(scenarios, colors, strict=True):
            rows = sorted(
                (e for e in closed if e["scenario"] == scenario and e["level"] == level),
                key=lambda e: e["model_items"],
            )
            if not rows:
                continue
            xs = [e["model_items"] for e in rows]
            srv = [get(e["median"]["service"], "server/handling_p50_ms") for e in rows]
            cli = [get(e["median"]["service"], "latency_ms/p50") for e in rows]
            ax.plot(xs, srv, "-", marker="s", color=color, label=f"{scenario}: server p50")
            ax.plot(xs, cli, "--", marker="o", color=color, alpha=0.6, label=f"{scenario}: client")
        rows = sorted(
            (e for e in closed if e["scenario"] == "cached" and e["level"] == level),
            key=lambda e: e["model_items"],
        )
        if rows:
            xs = [e["model_items"] for e in rows]
            ax.plot(
                xs,
                [get(e["median"]["floor"], "latency_ms/p50") for e in rows],
                ":",
                marker="o",
                color="black",
                label="floor: client p50",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items in the model (log)")
        ax.set_ylabel("ms (log)")
        ax.set_title(f"Latency vs catalogue size, concurrency {level}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncols=2)
    fig.text(0.01, 0.01, footer, fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "latency_vs_catalogue.png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


@contextmanager
def running(items: list[Any]) -> Iterator[None]:
    """Stop what was started, last first, whatever happens."""
    try:
        yield
    finally:
        for item in reversed(items):
            try:
                item.stop() if hasattr(item, "stop") else item.close()
            except Exception as exc:  # cleanup of the others must go on
                print(f"cleanup of {item!r} failed: {exc}", file=sys.stderr)


def measure(
    gen: LoadGen,
    rig: Rig,
    floors: dict[str, Server],
    group: list[Point],
    args: argparse.Namespace,
    rate: float | None,
) -> list[dict[str, Any]]:
    """``args.repeats`` runs of each side of every point of ``group`` (points at the
    same load, measured together), in ABBA order (reversed every other repeat); for a
    group, each side's runs of the points are adjacent (recsvc cached, recsvc live,
    floor, floor, ...). The scale-out setups (:data:`SCALEOUT_SCENARIOS`) have no floor
    runs of their own: theirs are ``cached``'s (``floor_runs_of``). One entry per point."""
    cached = next((p for p in group if p.scenario == "cached"), None)

    def own_floor(p: Point) -> bool:  # the scale-out setups read cached's floor runs
        return cached is None or p.scenario not in SCALEOUT_SCENARIOS

    sides = {
        p: ["service"] + (["floor"] if own_floor(p) else [])
        + (["interceptors"] if p.interceptors else [])
        for p in group
    }  # fmt: skip
    order = [(p, side) for side in ("service", "floor", "interceptors") for p in group
             if side in sides[p]]  # fmt: skip
    runs: dict[Point, dict[str, list[dict[str, Any]]]] = {
        p: {side: [] for side in sides[p]} for p in group
    }
    for r in range(args.repeats):
        for point, side in order if r % 2 == 0 else reversed(order):
            if side == "service":
                server, metrics_url, pids = rig.serving(point.scenario)
                run = run_once(
                    gen, point, side, server, args,
                    metrics_url=metrics_url, pids=pids, rate=rate, seed=SEED + r,
                )  # fmt: skip
            else:
                server = floors[side]
                run = run_once(
                    gen, point, side, server, args,
                    metrics_url=None, pids=server.pids(), rate=rate, seed=SEED + r,
                )  # fmt: skip
            runs[point][side].append(run)
            who = f"{point.scenario} " if len(group) > 1 else ""
            print(f"    #{r + 1} {who}{_brief(run)}", flush=True)
    entries = [
        {
            "catalogue": point.catalogue,
            "model_items": rig.shop.model_items,
            "scenario": point.scenario,
            "mode": point.mode,
            "level": rate if point.mode == "open" else point.level,
            "rate_fraction": point.rate_fraction or None,
            "median": summarise(
                runs[point] if own_floor(point) else {**runs[point], "floor": runs[cached]["floor"]}
            ),
            **{f"{side}_runs": side_runs for side, side_runs in runs[point].items()},
            **({} if own_floor(point) else {"floor_runs_of": "cached"}),
        }
        for point in group
    ]
    by_scenario = {e["scenario"]: e for e in entries}
    for scenario in COMPARED:
        if scenario in by_scenario and "cached" in by_scenario:
            by_scenario[scenario]["vs_cached"] = versus(
                by_scenario[scenario], by_scenario["cached"]
            )
    return entries


VERSUS_PATHS = (
    "server/handling_p50_ms",
    "server/handling_p99_ms",
    "server/handling_mean_ms",
    "qps",
    "latency_ms/p50",
    "latency_ms/p99",
    "cpu_us_per_request/server",
)


def versus(entry: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """``entry``'s recsvc figures over ``reference``'s, measured in the same repeats:
    the ratio of the medians, and the ratio within each repeat (its median and range)."""
    out: dict[str, Any] = {"reference": reference["scenario"]}
    for path in VERSUS_PATHS:
        a, b = get(entry["median"]["service"], path), get(reference["median"]["service"], path)
        pairs = [
            (get(x, path), get(y, path))
            for x, y in zip(entry["service_runs"], reference["service_runs"], strict=True)
        ]
        per_repeat = [
            x / y for x, y in pairs if isinstance(x, float) and isinstance(y, float) and y
        ]
        out[path.replace("/", "_")] = {
            "ratio_of_medians": a / b
            if isinstance(a, float) and isinstance(b, float) and b
            else None,
            "per_repeat": per_repeat,
            "per_repeat_median": median(per_repeat) if per_repeat else None,
        }
    return out


def groups(points: list[Point]) -> list[list[Point]]:
    """``points`` as measurement groups, in order: each :data:`PAIRED` scenario with the
    others planned at the same catalogue and load, every other point on its own."""
    out: list[list[Point]] = []
    taken: set[Point] = set()
    for point in points:
        if point in taken:
            continue
        group = [point]
        if point.scenario in PAIRED:
            group += [
                p
                for p in points
                if p not in taken
                and p is not point
                and p.scenario in PAIRED
                and p.scenario != point.scenario
                and (p.catalogue, p.mode, p.level, p.rate_fraction)
                == (point.catalogue, point.mode, point.level, point.rate_fraction)
            ]
        taken.update(group)
        out.append(group)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark recsvc serve against a no-op gRPC floor.")
    p.add_argument("--catalogues", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--rates", nargs="+", default=["auto"], help="open-loop req/s, or auto")
    p.add_argument("--repeats", type=int, help="runs per side and point (default 5; quick 3)")
    p.add_argument("--duration", type=float, help="measured seconds per run (2.5; quick 3)")
    p.add_argument("--warmup", type=float, help="seconds before each window (0.5; quick 1)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    p.add_argument("--out", type=Path)
    p.add_argument("--profile-seconds", type=float, default=20.0, help="0 = no profile")
    p.add_argument(
        "--processes",
        type=int,
        default=int(os.environ.get("RECSVC_BENCH_PROCESSES", "1")),
        help="recsvc serve processes sharing the port (SO_REUSEPORT), and as many no-op "
        "floor processes; default $RECSVC_BENCH_PROCESSES or 1",
    )
    p.add_argument(
        "--channels",
        type=int,
        help="client channels (TCP connections) the calls are spread over "
        "(default 1 for one process, else 4)",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        choices=[s for s in SCENARIOS if s != "cached_cluster"],
        help="measure only these scenarios (default: every one but live, rotation, "
        "experiment and scaleout); cached, live, rotation, experiment and scaleout at the "
        "same load are measured together, alternating (scaleout needs cached, and brings "
        "cached_cluster: one replica on its cluster)",
    )
    p.add_argument(
        "--sync-repeats",
        type=int,
        default=0,
        help="with the live scenario: this many syncs of the whole catalogue (recsvc catalog "
        "load) into its server under closed-loop load (default 0: none)",
    )
    p.add_argument("--sync-concurrency", type=int, default=8, help="calls in flight meanwhile")
    p.add_argument(
        "--sync-pool",
        choices=["live", "cached"],
        default="live",
        help="the requests of that load (both go to the live server)",
    )
    p.add_argument("--sync-before", type=float, default=5.0, help="seconds of load before")
    p.add_argument("--sync-after", type=float, default=5.0, help="seconds of load after, at least")
    p.add_argument(
        "--quick",
        action="store_true",
        help="100k items, cached and session at concurrency 32, cached open loop at half "
        "the closed-loop rate -> <out>/summary.json",
    )
    args = p.parse_args(argv)
    # short runs, many alternations: on a shared machine the median of 5 short
    # alternating runs is steadier than that of 3 long ones
    defaults = (3, 3.0, 1.0) if args.quick else (5, 2.5, 0.5)
    for name, value in zip(("repeats", "duration", "warmup"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.catalogues = [100_000]
        args.profile_seconds = 0.0
    if args.out is None:
        args.out = Path("benchmarks/results/quick" if args.quick else "benchmarks/results/serving")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.quick and args.scenarios:
        p.error("--scenarios does not combine with --quick")
    if args.sync_repeats and "live" not in (args.scenarios or []):
        p.error("--sync-repeats needs the live scenario (--scenarios ... live)")
    if args.processes < 1:
        p.error("--processes must be >= 1")
    for scenario in ("rotation", "experiment"):
        if args.processes > 1 and scenario in (args.scenarios or []):
            p.error(
                f"the {scenario} scenario needs --processes 1 (its server takes a settings file)"
            )
    if "scaleout" in (args.scenarios or []):
        if "cached" not in args.scenarios:
            p.error("the scaleout scenario is read against cached: --scenarios cached scaleout")
        if args.processes > 1:
            p.error("the scaleout scenario needs --processes 1 (each replica is one process)")
    if args.channels is None:
        args.channels = 1 if args.processes == 1 else 4
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    # SIGTERM (and SIGINT, which a background job ignores) unwind through the cleanup
    # below, so no server, Redis or load generator outlives the benchmark
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "serving-logs"
    logs.mkdir(exist_ok=True)
    points = plan(args)
    report: dict[str, Any] = {
        "benchmark": "recsvc serve (Recommend) vs no-op gRPC floor",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "code_source": code_source(),
        "uncommitted": code_state(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_serving.py", *argv]),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        "config": {
            "repeats": args.repeats,
            "duration": args.duration,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "rates": args.rates,
            "rate_fractions": RATE_FRACTIONS,
            "pool_users": POOL_USERS,
            "processes": args.processes,
            "channels": args.channels,
            "targets": TARGETS,
        },
        "scenarios": SCENARIOS,
        "shops": {},
        "servers": {},
        "filter_rejection": {},
        "setup_seconds": {},
        "live": {},
        "rotation": {},
        "experiment": {},
        "scaleout": {},
        "sync": {},
        "points": [],
    }
    if any(p.scenario == "scaleout" for p in points):
        report["config"]["scaleout"] = {
            "replicas": SCALEOUT_REPLICAS,
            "cluster_primaries": SCALEOUT_PRIMARIES,
            "cluster_replicas_per_primary": SCALEOUT_NODE_REPLICAS,
            "lb_policy": SCALEOUT_LB_POLICY,
            "warm_seconds_per_replica": SCALEOUT_WARM_SECONDS,
        }
    shops = {n: ensure_shop(n, args.workdir) for n in sorted(set(args.catalogues))}
    for n, shop in shops.items():
        report["shops"][str(n)] = shop.to_json()
    owned: list[Any] = []
    with running(owned):
        gen = LoadGen(logs / "loadgen.log")
        owned.append(gen)
        floor = start_floor("floor", args, logs)
        owned.append(floor)
        floors = {"floor": floor}
        report["servers"]["floor"] = f"{args.processes} x {shlex.join(floor.command)}"
        if any(p.interceptors for p in points):
            floors["interceptors"] = start_floor("interceptors", args, logs, interceptors=True)
            owned.append(floors["interceptors"])
            report["servers"]["interceptors"] = shlex.join(floors["interceptors"].command)
        report["servers"]["loadgen"] = shlex.join(gen.command)
        reference_qps: float | None = None
        for n in sorted({p.catalogue for p in points}, reverse=True):
            mine = [p for p in points if p.catalogue == n]
            print(f"[{n:,} items] starting Redis and recsvc ...", flush=True)
            rig = start_rig(shops[n], mine, args, logs, gen)
            owned += [rig.redis, rig.server]
            report["servers"][f"recsvc-{n}"] = shlex.join(rig.server.command)
            report["filter_rejection"][str(n)] = rig.filter_rejection
            report["setup_seconds"][str(n)] = rig.setup_seconds
            report["shops"][str(n)]["pools"] = rig.pools
            warm = [("service", rig.server, "cached")]
            if rig.rotation is not None:
                owned.append(rig.rotation.server)
                report["servers"][f"recsvc-{n}-rotation"] = rig.rotation.report["server_command"]
                report["rotation"][str(n)] = {
                    k: v for k, v in rig.rotation.report.items() if k != "overexposed"
                }
                warm.append(("service", rig.rotation.server, "rotation"))
            if rig.experiment is not None:
                owned.append(rig.experiment.server)
                report["servers"][f"recsvc-{n}-experiment"] = rig.experiment.report[
                    "server_command"
                ]
                report["experiment"][str(n)] = rig.experiment.report
                warm.append(("service", rig.experiment.server, "experiment"))
            if rig.live is not None:
                owned += [rig.live.redis, rig.live.server]
                report["servers"][f"recsvc-{n}-live"] = shlex.join(rig.live.server.command)
                report["live"][str(n)] = rig.live.report
                warm.append(("service", rig.live.server, "live"))
            if rig.scaleout is not None:
                out = rig.scaleout
                owned.append(out)
                report["servers"][f"recsvc-{n}-scaleout"] = out.report["server_commands"]
                report["servers"][f"recsvc-{n}-cluster"] = out.report["single_command"]
                report["scaleout"][str(n)] = out.report
                # each replica on its own (every pool user in each one's LRU and state
                # cache), then all of them through the balanced channel the runs use
                warm += [("service", r, "scaleout") for r in out.replicas]
                warm.append(("service", out.server, "scaleout"))
                warm.append(("service", out.single, "cached_cluster"))
            # warm the LRU with every cached user, and both servers' code paths
            warm += [("floor", f, "cached") for f in floors.values()]
            for side, server, scenario in warm:
                gen.ask(
                    {
                        "op": "run", "target": server.target, "lb_policy": server.lb_policy,
                        "pool": pool_name(n, scenario, side), "mode": "closed",
                        "concurrency": 16, "warmup": 0.0,
                        "duration": SCALEOUT_WARM_SECONDS
                        if scenario in SCALEOUT_SCENARIOS
                        else 2.0,
                        "channels": args.channels,
                    }
                )  # fmt: skip
            if rig.scaleout is not None:
                print(f"[{n:,} items] the scale-out setups at rest ...", flush=True)
                rig.scaleout.report["idle"] = idle_cores(rig, gen, SCALEOUT_IDLE_SECONDS)
            for group in groups(mine):
                point = group[0]
                rate = None
                if point.mode == "open":
                    if point.rate_fraction:
                        if reference_qps is None:
                            raise RuntimeError("auto rates need cached at concurrency 32 first")
                        rate = float(round(point.rate_fraction * reference_qps, -1))
                    else:
                        rate = point.level
                what = f"c={int(point.level)}" if point.mode == "closed" else f"{rate:.0f}/s"
                names = " + ".join(p.scenario for p in group)
                print(f"[{n:,} items] {names} {what}", flush=True)
                for entry in measure(gen, rig, floors, group, args, rate):
                    report["points"].append(entry)
                    if (
                        entry["scenario"] == "cached"
                        and entry["mode"] == "closed"
                        and entry["level"] == 32
                    ):
                        reference_qps = entry["median"]["service"]["qps"]
                write_outputs(report, args)  # partial results survive a later failure
            if rig.experiment is not None:
                ex = rig.experiment
                ex.report["memory_after_measuring"] = experiment_memory(
                    rig, ex.report["candidate"]["version"]
                )
                write_outputs(report, args)
            if rig.live is not None and args.sync_repeats > 0:
                print(f"[{n:,} items] catalogue sync under load, {args.sync_repeats} runs ...")
                report["sync"][str(n)] = measure_syncs(gen, rig, args)
                write_outputs(report, args)
            if args.profile_seconds > 0 and n == max(args.catalogues):
                for scenario in [s for s in PROFILED if any(p.scenario == s for p in mine)]:
                    print(
                        f"[{n:,} items] profiling recsvc ({scenario}) for 2 x "
                        f"{args.profile_seconds:g}s ..."
                    )
                    key = "profile" if scenario == "cached" else f"profile_{scenario}"
                    report[key] = profile(gen, rig, args, args.out, scenario)
            stopping: list[Server | PrivateRedis | ScaleoutRig] = [rig.server, rig.redis]
            if rig.scaleout is not None:
                stopping.insert(0, rig.scaleout)
            if rig.rotation is not None:
                stopping.insert(0, rig.rotation.server)
            if rig.experiment is not None:
                stopping.insert(0, rig.experiment.server)
            if rig.live is not None:
                stopping += [rig.live.server, rig.live.redis]
            for item in stopping:
                item.stop()
                owned.remove(item)
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["total_seconds"] = time.perf_counter() - started
    write_outputs(report, args, final=True)
    print(f"done in {report['total_seconds']:.0f}s: {args.out}", flush=True)
    return 0


def _at_most(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def cpu_per_request(point: dict[str, Any], side: str) -> float | None:
    """The median server CPU µs per request of a point's ``side`` (service or floor)."""
    value = get(point["median"][side], "cpu_us_per_request/server")
    return float(value) if value is not None else None


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def quick_summary(report: dict[str, Any]) -> dict[str, Any]:
    def one(scenario: str) -> dict[str, Any]:
        return next(e for e in report["points"] if e["scenario"] == scenario and e["level"] == 32)

    cached, session = one("cached"), one("session")
    cached_cpu, floor_cpu = cpu_per_request(cached, "service"), cpu_per_request(cached, "floor")
    session_cpu = cpu_per_request(session, "service")
    cached_to_floor = cached_cpu / floor_cpu if cached_cpu and floor_cpu else None
    session_to_cached = session_cpu / cached_cpu if session_cpu and cached_cpu else None
    opened = next((e for e in report["points"] if e["mode"] == "open"), None)
    open_ratio = get(opened["median"]["ratio"], "latency_ms_p99") if opened else None
    return {
        "floor_qps": cached["median"]["floor"]["qps"],
        "recommend_qps": cached["median"]["service"]["qps"],
        "ratio": cached["median"]["ratio"]["qps"],
        "server_p50_ms": get(cached["median"]["service"], "server/handling_p50_ms"),
        "server_p99_ms": get(cached["median"]["service"], "server/handling_p99_ms"),
        "client_p50_ms": get(cached["median"]["service"], "latency_ms/p50"),
        "client_p99_ms": get(cached["median"]["service"], "latency_ms/p99"),
        "floor_p50_ms": get(cached["median"]["floor"], "latency_ms/p50"),
        "floor_p99_ms": get(cached["median"]["floor"], "latency_ms/p99"),
        "session_qps": session["median"]["service"]["qps"],
        "session_floor_qps": session["median"]["floor"]["qps"],
        "session_ratio": session["median"]["ratio"]["qps"],
        "session_server_p50_ms": get(session["median"]["service"], "server/handling_p50_ms"),
        "open_rate": opened["level"] if opened else None,
        "open_client_p99_ms": get(opened["median"], "service/latency_ms/p99") if opened else None,
        "open_floor_p99_ms": get(opened["median"], "floor/latency_ms/p99") if opened else None,
        "open_p99_ratio": open_ratio,
        "cpu_us_per_request": {"cached": cached_cpu, "session": session_cpu, "floor": floor_cpu},
        "cached_cpu_ratio_to_floor": cached_to_floor,
        "session_cpu_ratio_to_cached": session_to_cached,
        "targets": {
            "ratio_min": TARGETS["throughput_ratio_min"],
            "cached_cpu_ratio_to_floor_max": TARGETS["cached_cpu_ratio_to_floor_max"],
            "session_cpu_ratio_to_cached_max": TARGETS["session_cpu_ratio_to_cached_max"],
            "server_p50_ms_max": TARGETS["cached_server_p50_ms_max"],
            "session_server_p50_ms_max": TARGETS["session_server_p50_ms_max"],
            "open_p99_ratio_max": TARGETS["open_loop_p99_ratio_max"],
        },
        "met": {
            "ratio": cached["median"]["ratio"]["qps"] >= TARGETS["throughput_ratio_min"],
            "server_p50_ms": _at_most(
                get(cached["median"]["service"], "server/handling_p50_ms"),
                TARGETS["cached_server_p50_ms_max"],
            ),
            "session_server_p50_ms": _at_most(
                get(session["median"]["service"], "server/handling_p50_ms"),
                TARGETS["session_server_p50_ms_max"],
            ),
            "open_p99_ratio": _at_most(open_ratio, TARGETS["open_loop_p99_ratio_max"]),
            "cached_cpu_ratio_to_floor": _at_most(
                cached_to_floor, TARGETS["cached_cpu_ratio_to_floor_max"]
            ),
            "session_cpu_ratio_to_cached": _at_most(
                session_to_cached, TARGETS["session_cpu_ratio_to_cached_max"]
            ),
        },
        "scenarios": {
            "cached": f"{SCENARIOS['cached']}; concurrency 32",
            "session": f"{SCENARIOS['session']}; concurrency 32",
            "open": "cached, open loop (Poisson) at half recsvc's closed-loop throughput, "
            "the same schedule for the floor",
        },
        "other_load_cores": {
            "service_runs": get(cached["median"]["service"], "other_load_cores"),
            "floor_runs": get(cached["median"]["floor"], "other_load_cores"),
        },
        "model_items": cached["model_items"],
        "processes": report["config"]["processes"],
        "channels": report["config"]["channels"],
        "repeats": report["config"]["repeats"],
        "duration_seconds": report["config"]["duration"],
        "machine": report["machine"],
        "date": report["date"],
        "git": report["git"],
        "uncommitted": report["uncommitted"],
        "command": report["command"],
        "total_seconds": report.get("total_seconds"),
    }


def _relative(text: str) -> str:
    """``text`` with this checkout's paths relative to it (commands as run from its root)."""
    return text.replace(f"{REPO}/", "")


def write_outputs(report: dict[str, Any], args: argparse.Namespace, *, final: bool = False) -> None:
    if args.quick:
        if final:
            summary = quick_summary(report)
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return
    report["targets"] = evaluate_targets(report)
    # bench_live_path.py's breakdown, when it was written beside this report
    report["engine_path"] = bool(report["live"]) and (args.out / "engine-path.md").exists()
    (args.out / "results.json").write_text(_relative(json.dumps(report, indent=2) + "\n"))
    (args.out / "README.md").write_text(_relative(render_markdown(report)))
    if final:
        plots(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
