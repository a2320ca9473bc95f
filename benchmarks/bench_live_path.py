"""Where a Recommend's time goes with a live catalogue, rules and a filter: the engine in
process, step by step, cached against live and the layers in between.

Usage::

    .venv/bin/python benchmarks/bench_live_path.py [--items 100000] [--rounds 5]
        [--calls 400] [--flush-mb 64] [--workdir /tmp/recsvc-bench]
        [--out benchmarks/results/live-catalogue]

Two servers of the 100k-item benchmark shop (:func:`_shop.ensure_shop`) are created in
this process with :func:`recsvc.serving.server.create_server`, each on a private Redis
holding the user vectors: one plain, one with the ``live`` scenario's catalogue and
rules (:mod:`_live`), written through the engine as ``UpsertItems`` and ``SetRules``
would (the file read by ``recsvc catalog load``'s own reader, the messages checked by
the servicer's validation). No gRPC: each call is ``await engine.recommend(...)`` on a
request the servicer's validation built, the same 2,000 cached users as
:mod:`bench_serving`, every user asked once before measuring (state cache warm).

Variants, the layers between ``cached`` and ``live`` one at a time (the rule set is
switched through ``Engine.set_rules(..., replace_all=True)`` between variants):

- ``cached``: the plain server, no filter, no placement;
- ``catalogue``: the live server without rules, the same requests (no filter): what
  the catalogue costs by itself (2% of the items unavailable);
- ``+filter``: the price-range filter and placement ``home``, no rules;
- ``+boost/bury``: and the 8 rules that are not pins;
- ``live``: and the 2 pins: the ``live`` scenario of :mod:`bench_serving`.

Each round runs ``--calls`` calls of every variant in turn (the order reversed every
other round); reported: the median per-call time of each variant over all rounds. A
second pass times the steps of the request path (the engine's methods wrapped with a
timer in this process: a few µs of overhead per wrapped call) and gives their mean
per call. A cold pass runs ``cached`` and ``live`` again with the CPU's caches cold:
before each call (untimed) an array of ``--flush-mb`` MiB is written over, as a
server's caches are between two requests while gRPC, asyncio and the load generator
run beside it. The machine is shared: read the differences between variants, not the
absolute figures.

Outputs: ``<out>/engine-path.json`` and ``<out>/engine-path.md``.
"""

# Heavy libraries load where they are used so --help stays fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _live
from _env import git_revision, machine
from _shop import ensure_shop
from bench_serving import POOL_USERS, SEED, _machine_line, pool_users, publish_vectors

VARIANTS = ("cached", "catalogue", "+filter", "+boost/bury", "live")
COLD_VARIANTS = ("cached", "live")

#: (module, owner, attribute, label) of the steps timed in the second pass.
STEPS = (
    ("recsvc.serving.profile", "Profiles", "read", "profile read (vector, history)"),
    ("recsvc.serving.engine", "Engine", "_filters", "filters (live catalogue masks)"),
    ("recsvc.serving.catalog", "CatalogView", "matching", "  of which attribute match"),
    ("recsvc.serving.engine", "Engine", "_rules", "active rules"),
    ("recsvc.ranking", "Ranker", "recommend", "ranking (index search, blend)"),
    ("recsvc.index", "ItemIndex", "search", "  of which index search"),
    ("recsvc.serving.engine", "Engine", "_merchandised", "rules applied (_merchandised)"),
    ("recsvc.ranking", "Ranker", "allowed", "  of which allowed mask (pins)"),
    ("recsvc.serving.engine", None, "merchandise", "  of which merchandise()"),
    ("recsvc.serving.engine", None, "_scored", "answer items (_scored)"),
)


def _wrap(owner: Any, attribute: str, totals: dict[str, list[float]], label: str) -> Any:
    original = getattr(owner, attribute)
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                totals[label][0] += time.perf_counter() - t
                totals[label][1] += 1

        setattr(owner, attribute, timed_async)
    else:

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label][0] += time.perf_counter() - t
                totals[label][1] += 1

        setattr(owner, attribute, timed)
    return original


async def start(shop: Any, artifact: Any, tmp: Path, name: str) -> tuple[Any, Any]:
    """A private Redis with the user vectors and a server of ``shop`` on it."""
    from recsvc.store.embedded import start_private_redis

    redis = await asyncio.to_thread(start_private_redis)
    try:
        return redis, await _serve(shop, artifact, tmp, name, redis.url)
    except BaseException:
        redis.stop()  # nothing left running when the server cannot start
        raise


async def _serve(shop: Any, artifact: Any, tmp: Path, name: str, url: str) -> Any:
    from recsvc.config import load_settings
    from recsvc.serving.server import create_server

    await asyncio.to_thread(publish_vectors, artifact, url)
    settings = load_settings(
        None,
        artifact_root=shop.artifacts,
        redis={"url": url},
        server={"host": "127.0.0.1", "port": 0, "metrics_port": 0, "event_log_dir": tmp / name},
        erasure_list=tmp / f"{name}-erased.txt",
    )
    return await create_server(settings)


async def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def load_live(
    engine: Any, setup: _live.LiveSetup, path: Path, sync: dict[str, list[float]]
) -> None:
    """The catalogue file ``path`` through the engine as ``recsvc catalog load`` sends it
    (its reader, batches of 1000, the servicer's validation), timing each step into
    ``sync`` (seconds per batch; the follower's per apply)."""
    import json

    from recsvc.catalog import CatalogItem
    from recsvc.config import ServerSettings
    from recsvc.serving import validation
    from recsvc.serving.catalog import LiveCatalog
    from recsvc.training.catalog_sync import catalog_messages, read_catalog_file
    from recsvc.v1 import recommender_pb2 as pb

    limits = ServerSettings()
    t = time.perf_counter()
    batches = list(catalog_messages(read_catalog_file(path)))
    sync.setdefault("client: read the file and build the messages (whole file)", []).append(
        time.perf_counter() - t
    )
    applies: list[float] = []
    original = LiveCatalog.apply

    def timed_apply(self: Any, changes: Any) -> bool:
        t = time.perf_counter()
        try:
            return bool(original(self, changes))
        finally:
            applies.append(time.perf_counter() - t)
            sync.setdefault("follower: changes per read (a count)", []).append(len(changes))

    LiveCatalog.apply = timed_apply  # type: ignore[method-assign]
    try:
        version = engine.catalog.version
        for batch in batches:
            request = pb.UpsertItemsRequest(items=batch)
            t = time.perf_counter()
            items = validation.catalog_items(request, limits)
            t1 = time.perf_counter()
            records = [item.to_json() for item in items]
            t2 = time.perf_counter()
            decoded = [CatalogItem.from_record(r) for r in json.loads(f"[{','.join(records)}]")]
            t3 = time.perf_counter()
            await engine.upsert_items(items)
            t4 = time.perf_counter()
            sync.setdefault("server: validate an UpsertItems of 1000 items", []).append(t1 - t)
            sync.setdefault("server: encode its records (to_json)", []).append(t2 - t1)
            sync.setdefault("server: whole write (encode + Redis script)", []).append(t4 - t3)
            sync.setdefault("follower: decode a change's records", []).append(t3 - t2)
            assert len(decoded) == len(items)
        await wait_for(lambda: engine.catalog.version >= version + len(batches), "the catalogue")
    finally:
        LiveCatalog.apply = original  # type: ignore[method-assign]
    sync.setdefault("follower: apply a read's changes to the view (per read)", []).extend(applies)


@contextmanager
def gc_pauses() -> Iterator[dict[int, list[float]]]:
    """The cyclic collector's pauses meanwhile, by generation (gc.callbacks)."""
    import gc

    pauses: dict[int, list[float]] = {}
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.setdefault(info["generation"], []).append(time.perf_counter() - started.pop())

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


def redis_script_stats(url: str) -> tuple[int, int]:
    """Scripts Redis ran so far and the microseconds it spent in them (INFO commandstats)."""
    from recsvc.store import client_from_url

    client = client_from_url(url, socket_timeout=10.0)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls, usec = 0, 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        if name in stats:
            calls += int(stats[name]["calls"])
            usec += int(stats[name]["usec"])
    return calls, usec


def compile_seconds(engine: Any) -> float:
    """Compiling every rule against the served model and view: what the first request
    after any catalogue or rules change pays."""
    from recsvc.serving.rules import compile_rule

    model = engine.models.require().model
    view = engine.catalog.view(model)
    t = time.perf_counter()
    for rule in engine.rules.rules():
        compile_rule(rule, model, view)
    return time.perf_counter() - t


def read_rule_file(setup: _live.LiveSetup) -> tuple[list[Any], list[Any]]:
    """The rules file as the server takes it: the 10 rules and the 8 that are not pins."""
    from recsvc.config import ServerSettings
    from recsvc.rulefile import read_rules
    from recsvc.serving import validation
    from recsvc.v1 import recommender_pb2 as pb

    request = pb.SetRulesRequest(rules=read_rules(setup.rules))
    rules = validation.rules(request, ServerSettings())
    return rules, [r for r in rules if r.action.value != "pin"]


async def set_rules(engine: Any, rules: list[Any]) -> None:
    await engine.set_rules(rules, replace_all=True)
    ids = {r.rule_id for r in rules}
    await wait_for(lambda: {r.rule_id for r in engine.rules.rules()} == ids, "the rules")


async def calls(
    engine: Any, inputs: list[Any], n: int, start: int, flush: Any = None
) -> list[float]:
    """``n`` calls, each timed; ``flush``: an array written over before each call (not
    timed), larger than the CPU's caches, so that every call starts with them cold."""
    times = []
    for i in range(n):
        req = inputs[(start + i) % len(inputs)]
        if flush is not None:
            flush += 1.0
        t = time.perf_counter()
        await engine.recommend(req)
        times.append(time.perf_counter() - t)
    return times


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from recsvc.artifact import read_artifact
    from recsvc.config import ServerSettings
    from recsvc.serving import validation
    from recsvc.v1 import recommender_pb2 as pb

    shop = ensure_shop(args.items, args.workdir)
    artifact = read_artifact(shop.version_dir, verify_checksums=False)
    users = pool_users(artifact)
    setup = _live.prepare(shop, artifact, args.workdir / f"live-{args.items}", users)
    user_ids = [str(artifact.user_ids[u]) for u in users]
    limits = ServerSettings()

    def inputs(**fields: Any) -> list[Any]:
        return [
            validation.recommend_input(pb.RecommendRequest(user_id=u, k=10, **fields), limits)
            for u in user_ids
        ]

    plain_inputs = inputs()
    live_inputs = inputs(filters=setup.filters(), placement=_live.PLACEMENT)
    owned: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            plain_redis, plain = await start(shop, artifact, Path(tmp), "plain")
            owned += [plain_redis, plain]
            live_redis, live = await start(shop, artifact, Path(tmp), "live")
            owned += [live_redis, live]
            # as recsvc serve does once it has started (before any catalogue is loaded)
            from recsvc.serving.server import freeze_heap

            freeze_heap()
            sync: dict[str, list[float]] = {}
            await load_live(live.engine, setup, setup.catalogues[0], sync)
            all_rules, no_pins = read_rule_file(setup)
            variants: dict[str, tuple[Any, list[Any], list[Any]]] = {
                "cached": (plain.engine, plain_inputs, []),
                "catalogue": (live.engine, plain_inputs, []),
                "+filter": (live.engine, live_inputs, []),
                "+boost/bury": (live.engine, live_inputs, no_pins),
                "live": (live.engine, live_inputs, all_rules),
            }
            # every user once on both servers: the state cache and LRU warm
            for engine, reqs in ((plain.engine, plain_inputs), (live.engine, live_inputs)):
                await calls(engine, reqs, len(reqs), 0)
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            current: list[Any] | None = None

            async def timed(v: str, start: int, flush: Any = None) -> list[float]:
                """``args.calls`` calls of variant ``v`` (its rules set first, and 50
                calls untimed: the new state in place)."""
                nonlocal current
                engine, reqs, rules = variants[v]
                if engine is live.engine and rules is not current:
                    await set_rules(live.engine, rules)
                    current = rules
                await calls(engine, reqs, 50, start)
                return await calls(engine, reqs, args.calls, start, flush)

            cursor = 0
            for r in range(args.rounds):
                for v in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                    times[v] += await timed(v, cursor)
                cursor += args.calls
                print(f"  round {r + 1}: " + ", ".join(
                    f"{v} {statistics.median(t) * 1e6:.0f}" for v, t in times.items()
                ) + " µs (median so far)", flush=True)  # fmt: skip
            # the same calls with the CPU caches cold: a server between two requests runs
            # gRPC, asyncio and the client beside it, and the live path reads more memory
            cold: dict[str, list[float]] = {v: [] for v in COLD_VARIANTS}
            if args.flush_mb > 0:
                import numpy as np

                flush = np.ones(int(args.flush_mb * 2**20 / 8))
                for r in range(args.rounds):
                    for v in COLD_VARIANTS if r % 2 == 0 else reversed(COLD_VARIANTS):
                        cold[v] += await timed(v, r * args.calls, flush)
            # second pass: the steps, timed
            steps: dict[str, dict[str, list[float]]] = {}
            for v in VARIANTS:
                engine, reqs, rules = variants[v]
                if engine is live.engine and rules is not current:
                    await set_rules(live.engine, rules)
                    current = rules
                await calls(engine, reqs, 50, 0)  # rules compiled before timing
                totals: dict[str, list[float]] = {s[3]: [0.0, 0.0] for s in STEPS}
                originals = []
                for module_name, owner_name, attribute, label in STEPS:
                    module = sys.modules.get(module_name) or __import__(module_name, fromlist=["_"])
                    owner = getattr(module, owner_name) if owner_name else module
                    originals.append((owner, attribute, _wrap(owner, attribute, totals, label)))
                per_call: dict[str, list[float]] = {label: [] for label in totals}
                counts: dict[str, float] = dict.fromkeys(totals, 0.0)
                wall = []
                try:
                    n = args.calls * 2
                    for i in range(n):
                        for label in totals:
                            totals[label] = [0.0, 0.0]
                        wall += await calls(engine, reqs, 1, i)
                        for label, (total, count) in totals.items():
                            per_call[label].append(total)
                            counts[label] += count
                finally:
                    for owner, attribute, original in reversed(originals):
                        setattr(owner, attribute, original)
                steps[v] = {
                    label: [
                        statistics.median(x) * 1e6,
                        statistics.fmean(x) * 1e6,
                        counts[label] / n,
                    ]
                    for label, x in per_call.items()
                }
                steps[v]["whole call (timed pass)"] = [
                    statistics.median(wall) * 1e6,
                    statistics.fmean(wall) * 1e6,
                    1.0,
                ]
            # a resync (every record changes) with the 10 rules live, then their compile
            await set_rules(live.engine, all_rules)
            resync: dict[str, list[float]] = {}
            before = redis_script_stats(live_redis.url)
            with gc_pauses() as pauses:
                await load_live(live.engine, setup, setup.catalogues[1], resync)
            after = redis_script_stats(live_redis.url)
            for generation, seconds in pauses.items():
                resync[f"Python GC: a generation-{generation} collection (pause)"] = seconds
            calls_, usec = after[0] - before[0], after[1] - before[1]
            if calls_:
                # Redis runs one script at a time: every other client waits meanwhile
                resync["Redis: run one change's script (mean)"] = [usec / calls_ / 1e6] * calls_
            resync["server: compile the 10 rules (first request after a change)"] = [
                compile_seconds(live.engine) for _ in range(5)
            ]
            applied = {
                action: live.registry.get_sample_value(
                    "recsvc_rule_applications_total", {"action": action}
                )
                for action in ("boost", "bury", "pin")
            }
        finally:
            # every one stopped, even when stopping an earlier one fails (a server whose
            # background task crashed re-raises it when stopped: its Redis must go too)
            failures: list[BaseException] = []
            for item in reversed(owned):
                try:
                    stop = item.stop()
                    if asyncio.iscoroutine(stop):
                        await stop
                except Exception as exc:  # raised once all are stopped
                    failures.append(exc)
            if failures:
                raise failures[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_live_path.py", *args.argv]),
        "machine": machine(),
        "items": args.items,
        "model_items": len(artifact.item_ids),
        "pool_users": min(POOL_USERS, len(artifact.user_ids)),
        "seed": SEED,
        "rounds": args.rounds,
        "calls": args.calls,
        "live": setup.facts,
        "median_us": {v: statistics.median(t) * 1e6 for v, t in times.items()},
        "mean_us": {v: statistics.fmean(t) * 1e6 for v, t in times.items()},
        "flush_mb": args.flush_mb,
        "cold_median_us": {v: statistics.median(t) * 1e6 for v, t in cold.items() if t},
        "p90_us": {v: statistics.quantiles(t, n=10)[-1] * 1e6 for v, t in times.items()},
        "steps_us_per_call": steps,
        "rule_applications_on_the_live_server": applied,
        "sync_ms": {
            name: {
                "median": statistics.median(v) * (1 if "(a count)" in name else 1e3),
                "max": max(v) * (1 if "(a count)" in name else 1e3),
                "sum": sum(v) * (1 if "(a count)" in name else 1e3),
                "n": len(v),
            }
            for name, v in resync.items()
        },
    }


def render(report: dict[str, Any]) -> str:
    med = report["median_us"]
    base = med["cached"]
    lines = [
        "# Engine path: cached vs live, step by step (in process)",
        "",
        f"Run {report['date']} (repo at {report['git']}) on {_machine_line(report['machine'])}. "
        "Reproduce from the repo root with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"{report['model_items']:,} model items; {report['rounds']} rounds of "
        f"{report['calls']} calls per variant, alternating; `await engine.recommend(...)` "
        "timed in process (no gRPC, no interceptors: what the server's handling histogram "
        "times, less the interceptors). See the module docstring of "
        "`benchmarks/bench_live_path.py` for the variants.",
        "",
        "| variant | median µs / call | × cached | + µs over the previous | mean µs | p90 µs |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    previous = None
    for v in VARIANTS:
        step = f"{med[v] - previous:+,.0f}" if previous is not None else ""
        lines.append(
            f"| {v} | {med[v]:,.0f} | {med[v] / base:.2f}× | {step} | "
            f"{report['mean_us'][v]:,.0f} | {report['p90_us'][v]:,.0f} |"
        )
        previous = med[v]
    cold = report.get("cold_median_us") or {}
    if cold:
        lines += [
            "",
            f"With the CPU caches cold (a {report['flush_mb']:g} MiB array written over "
            "before each call, untimed), the same calls, alternating:",
            "",
            "| variant | median µs / call, caches cold | × cached | warm (above) |",
            "|---|---:|---:|---:|",
        ]
        for v, us in cold.items():
            lines.append(f"| {v} | {us:,.0f} | {us / cold['cached']:.2f}× | {med[v]:,.0f} |")
    steps = report["steps_us_per_call"]
    labels = list(next(iter(steps.values())))
    lines += [
        "",
        "## Steps (µs per call, median over the calls, mean in brackets; timed pass, a few "
        "µs of timer overhead per step)",
        "",
        "| step | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---:|" * len(VARIANTS),
    ]
    for label in labels:
        cells = []
        for v in VARIANTS:
            us, mean, per_call = steps[v][label]
            cells.append(
                f"{us:,.0f} ({mean:,.0f})" + (f" {per_call:.1f}×" if per_call > 1.05 else "")
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(×: calls of the step per request, when more than one.)",
        "",
        "## A catalogue sync's work, step by step (in process, nothing else running)",
        "",
        f"A resync of all {report['live']['catalogue_items']:,} items (`catalogue-b.csv` over "
        "`catalogue-a.csv`: every record changes) with the 10 rules live, through the "
        "engine as `UpsertItems` calls of 1000 items (validation, then the write). The "
        "server's steps run on its event loop: while one runs, no request is answered. "
        "The follower reads the change stream (up to 100 changes a read) and applies what "
        "it read in one go; its decode is timed here on the same records, decoded as "
        "`RecordLog.changes` decodes them. Milliseconds unless said.",
        "",
        "| step | median | max | sum over the sync | times |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in report["sync_ms"].items():
        lines.append(
            f"| {name} | {row['median']:,.1f} | {row['max']:,.1f} | {row['sum']:,.0f} | "
            f"{row['n']} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=400)
    p.add_argument(
        "--flush-mb",
        type=float,
        default=64.0,
        help="MiB written over before each call of the cold-cache pass (0: no such pass)",
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/live-catalogue"))
    args = p.parse_args(argv)
    args.argv = argv
    report = asyncio.run(run(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-path.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "engine-path.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
