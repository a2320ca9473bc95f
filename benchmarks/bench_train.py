"""Benchmark ``recsvc train`` against a bare implicit fit of the same matrix.

Usage::

    .venv/bin/python benchmarks/bench_train.py --sizes 1000000 10000000 --repeats 3 \\
        [--retail ../shared/data/online_retail_ii.csv.gz] \\
        --out benchmarks/results/train [--workdir /tmp/recsvc-bench] \\
        [--factors 64 --iterations 15]

Method
------
For every size a synthetic shop (:func:`training.synth.generate`, fixed seed) is
written once under ``--workdir`` and reused by later runs with the same config; the
generation is not timed. With ``--retail PATH`` the Online Retail II export is a
further dataset, read as it is (``--format online-retail``, no catalogue). On each
dataset two measurements alternate ``--repeats`` times (A B A B ...), so drift and
noise from other work on the machine hit both:

A. **recsvc train**, exactly as a user runs it:
   ``recsvc -q train --events E [--format online-retail] [--catalog C] --artifacts
   <fresh dir> --factors F --iterations I``. Wall time is taken around the process
   (interpreter start and imports included); the step timings the trainer stores in
   the artifact's ``manifest.json`` ("timings") are recorded too.
B. **bare implicit**, this script re-run as a child (``bare`` mode): read the events
   with recsvc's loader (same layout) and build the same CSR with
   :func:`training.interactions.build_interactions` (both timed apart, as "load" and
   "build"), then time only the fit -- ``AlternatingLeastSquares(factors,
   regularization, alpha=1.0, iterations, random_state, use_cg=True)`` on the
   confidences ``1 + alpha * w`` under ``threadpool_limits(1, "blas")``, as
   ``training.fit.fit_als`` does -- and the FAISS index of the same kind recsvc
   chooses for that many items (``IndexFlatIP`` up to ``exact_max_items``, else HNSW
   over the MIPS-to-L2 augmented vectors with recsvc's M / efConstruction).

Each measurement is a fresh process started by a tiny stdlib-only wrapper
(:data:`WRAPPER`) that reads the child's wall time, CPU time and ``ru_maxrss`` with
``os.wait4`` (the kernel's high-water mark of that one process, not a sampled value).
Environment variables ``RECSVC_*`` are removed from the children so both sides use
the default settings plus the flags above. The 1-minute load average before each run
is kept: the machine may be shared, and CPU time is the number contention moves least.

Per dataset the script also records the bytes of the CSR matrix the fit sees
(data + indices + indptr) and of the factor matrices, so peak RSS can be read as a
multiple of "CSR + factors"; the peak RSS of a process that only imports recsvc; and
(unless ``--no-breakdown``) one extra ``steps`` run, not part of the medians:
``recsvc train`` in-process with timers wrapped around the pipeline's steps, covering
those the manifest does not record (imports, catalogue, ranking defaults, model version
hash, artifact write), and the peak RSS after each step.

Reported: medians and every raw value; ratios are ratios of medians.
Results go to ``<out>/results.json`` and ``<out>/README.md``.
"""

# Heavy libraries are imported where they are used, so the measured children load only
# what their side needs and the step breakdown can time recsvc's own imports.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from _env import git_revision, machine, versions

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp
    from numpy.typing import NDArray

    from recsvc.config import IndexSettings

REPO = Path(__file__).resolve().parent.parent
SEED = 7
"""Seed of the synthetic shops (the Makefile's ``data`` target uses 7 too)."""
CHILD_MODES = ("bare", "steps")
LIBRARIES = ("implicit", "faiss-cpu", "numpy", "scipy", "pyarrow", "threadpoolctl")
STEPS_PATCHED = (
    "load_events",
    "erased_users",
    "drop_erased_users",
    "load_catalog",
    "build_interactions",
    "fit_als",
    "ItemIndex.build",
    "_index_recall",
    "visit_arrays",
    "build_neighbor_model",
    "session_revisit_share",
    "_ranking_defaults",
    "fit_user_blend",
    "trending_popularity",
    "_catalog_arrays",
    "new_model_version",
    "write_artifact",
)
"""Names in :mod:`recsvc.training.pipeline` timed by the ``steps`` run, in call order."""
MANIFEST_ORDER = (
    "load",
    "weighting",
    "fit",
    "index",
    "index_recall",
    "visits",
    "neighbors",
    "ranking",
    "blend",
    "neighbors_wait",
    "catalog_version",
    "write",
)
"""The trainer's ``timings`` keys (without ``_seconds``) in pipeline order."""

F = TypeVar("F", bound=Callable[..., Any])


def main_thread_seconds(timings: dict[str, float]) -> float:
    """The trainer's step clocks that ran one after another: when the session model
    was built on a thread beside the ranking defaults and the blend fit (the manifest
    then has ``neighbors_wait``), its ``neighbors`` time overlaps them and only the
    wait for it counts."""
    total = sum(timings.values())
    if "neighbors_wait" in timings:
        total -= timings.get("neighbors", 0.0)
    return total


# --------------------------------------------------------------------------- measuring


WRAPPER = """\
import json, os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({
        "wall_seconds": time.perf_counter() - start,
        "max_rss_kib": usage.ru_maxrss,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "returncode": child.returncode,
    }, out)
"""
"""The measuring wrapper, run as ``python -I -S -c WRAPPER result.json cmd...``.

On Linux a child's ``ru_maxrss`` starts from the high-water mark of the process it
was forked from (``execve`` carries it over), so measuring straight from this
benchmark would count the benchmark's own memory (it has just generated a shop).
A fresh, stdlib-only interpreter in between keeps that floor at about 10 MB.
"""


@dataclass(frozen=True)
class Measured:
    """One child process: wall seconds, CPU seconds (user + system) and peak RSS."""

    wall_seconds: float
    cpu_seconds: float
    max_rss_bytes: int
    loadavg_before: float
    """1-minute load average just before the run (other work on the machine)."""


def run_measured(cmd: Sequence[str], log: Path) -> Measured:
    """Run ``cmd`` in a fresh process under :data:`WRAPPER`; time it, read its peak RSS.

    ``os.wait4`` in the wrapper returns the rusage of exactly this child, so
    consecutive measurements do not mix (``RUSAGE_CHILDREN`` would keep the largest
    child seen so far). ``RECSVC_*`` variables are removed so both sides run the
    default settings. Output goes to ``log``; a failure raises with the log's tail.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_")}
    result = log.with_suffix(".rusage.json")
    result.unlink(missing_ok=True)
    load = os.getloadavg()[0]
    wrapped = [sys.executable, "-I", "-S", "-c", WRAPPER, str(result), *cmd]
    with log.open("wb") as out:
        subprocess.run(wrapped, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
    usage = json.loads(result.read_text()) if result.exists() else {"returncode": "none"}
    if usage["returncode"] != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {usage['returncode']}:\n{tail}")
    return Measured(
        wall_seconds=float(usage["wall_seconds"]),
        cpu_seconds=float(usage["cpu_seconds"]),
        max_rss_bytes=int(usage["max_rss_kib"]) * 1024,
        loadavg_before=load,
    )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Shop:
    """A dataset on disk: a generated synthetic shop, or a real export."""

    label: str
    """Column header in the report."""
    note: str
    """What the data is, for the report."""
    events: Path
    catalog: Path | None
    summary: dict[str, Any]
    format: str = "events"
    """``recsvc train --format``."""
    n_events: int | None = None
    """Events asked of the generator (synthetic shops only)."""

    def data_flags(self) -> list[str]:
        return data_flags(self.events, self.format, self.catalog)


def data_flags(events: Path, layout: str, catalog: Path | None) -> list[str]:
    """The data flags of ``recsvc train``; the ``bare`` / ``steps`` children take them too."""
    flags = ["--events", str(events)]
    if layout != "events":
        flags += ["--format", layout]
    if catalog is not None:
        flags += ["--catalog", str(catalog)]
    return flags


def ensure_shop(n_events: int, workdir: Path) -> Shop:
    """Generate the shop for ``n_events`` once; reuse it when its config matches."""
    from recsvc.training.synth import SynthConfig, generate

    config = SynthConfig(n_events=n_events, seed=SEED)
    folder = workdir / f"synth-{n_events}-seed{SEED}"
    events, catalog, stamp = (
        folder / "events.csv.gz",
        folder / "catalog.csv",
        folder / "synth.json",
    )
    wanted = asdict(config)
    label = f"{n_events:,} events"
    note = f"synthetic shop with a catalogue (`training.synth`, seed {SEED})"
    if events.exists() and catalog.exists() and stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("config") == wanted:
            print(f"[{label}] reusing {events}", flush=True)
            return Shop(label, note, events, catalog, saved["summary"], n_events=n_events)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"[{label}] generating {events} ...", flush=True)
    summary = generate(config, events, catalog)
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(summary).items()}
    stamp.write_text(json.dumps({"config": wanted, "summary": info}, indent=2) + "\n")
    return Shop(label, note, events, catalog, info, n_events=n_events)


def retail_shop(path: Path) -> Shop:
    """The UCI Online Retail II export, read by recsvc as it is (no catalogue)."""
    events = path.resolve()
    if not events.is_file():
        raise SystemExit(f"--retail: no file {path}")
    note = (
        f"the UCI export as published (`{path}`), read with `--format online-retail` "
        "(its cleaning: no cancellations, returns or non-product lines; guest lines count "
        "towards popularity only), no catalogue"
    )
    summary = {"bytes": events.stat().st_size}
    return Shop("Online Retail II", note, events, None, summary, format="online-retail")


# --------------------------------------------------------------------------- the two sides


def recsvc_command(shop: Shop, artifacts: Path, factors: int, iterations: int) -> list[str]:
    """The ``recsvc train`` command line a user would type."""
    return [
        str(Path(sys.executable).parent / "recsvc"),
        "-q",
        "train",
        *shop.data_flags(),
        "--artifacts",
        str(artifacts),
        "--factors",
        str(factors),
        "--iterations",
        str(iterations),
    ]


def run_recsvc(shop: Shop, workdir: Path, factors: int, iterations: int) -> dict[str, Any]:
    """One ``recsvc train`` run in a fresh artifact root; returns wall, RSS, timings."""
    artifacts = Path(tempfile.mkdtemp(prefix="artifacts-", dir=workdir))
    try:
        cmd = recsvc_command(shop, artifacts, factors, iterations)
        m = run_measured(cmd, workdir / "recsvc-train.log")
        from recsvc.artifact import read_manifest

        manifest = read_manifest(next(artifacts.glob("*/manifest.json")).parent)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    timings = {k.removesuffix("_seconds"): v for k, v in manifest.timings.items()}
    return {
        **asdict(m),
        "timings": timings,
        "unrecorded_seconds": m.wall_seconds - main_thread_seconds(timings),
        "data": manifest.data.model_dump(
            include={"events", "guest_events", "users", "items", "interactions"}
        ),
        "index_kind": manifest.index.kind,
        "index_recall": manifest.index.recall,
    }


def imports_only(workdir: Path) -> dict[str, Any]:
    """A process that only imports what ``recsvc train`` imports: the fixed RSS floor."""
    m = run_measured(
        [sys.executable, "-c", "import recsvc.cli, recsvc.training.pipeline"],
        workdir / "imports.log",
    )
    return asdict(m)


def child_command(mode: str, shop: Shop, result: Path, factors: int, iterations: int) -> list[str]:
    """This script re-run as a measured child in ``mode``."""
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        mode,
        *shop.data_flags(),
        "--factors",
        str(factors),
        "--iterations",
        str(iterations),
        "--result",
        str(result),
    ]


def run_bare(shop: Shop, workdir: Path, factors: int, iterations: int) -> dict[str, Any]:
    """One bare implicit + FAISS run in a fresh process."""
    result = workdir / "bare.json"
    result.unlink(missing_ok=True)
    m = run_measured(child_command("bare", shop, result, factors, iterations), workdir / "bare.log")
    child = json.loads(result.read_text())
    return {**asdict(m), **child}


def run_steps(shop: Shop, workdir: Path, factors: int, iterations: int) -> dict[str, Any]:
    """The instrumented in-process ``recsvc train`` (step breakdown), one run."""
    result = workdir / "steps.json"
    result.unlink(missing_ok=True)
    m = run_measured(
        child_command("steps", shop, result, factors, iterations), workdir / "steps.log"
    )
    child = json.loads(result.read_text())
    return {**asdict(m), **child}


# --------------------------------------------------------------------------- child: bare


def confidences(weights: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """The matrix implicit is given: ``1 + alpha * w`` (float32), like ``fit_als``."""
    import numpy as np

    cui = weights.astype(np.float32, copy=True)
    cui.data = (1.0 + np.float32(alpha) * cui.data).astype(np.float32, copy=False)
    return cui


def bare_index(item_factors: NDArray[np.float32], settings: IndexSettings) -> str:
    """Build the FAISS index recsvc would choose for these items, with FAISS alone."""
    import faiss
    import numpy as np

    from recsvc.index import choose_kind

    y = np.ascontiguousarray(item_factors, dtype=np.float32)
    n, d = y.shape
    kind = choose_kind(n, settings)
    if kind == "exact":
        flat = faiss.IndexFlatIP(d)
        flat.add(y)
    elif kind == "normscan":
        from recsvc.index import NormScan

        NormScan.build(y)  # an argsort of the norms and FAISS flat indexes, nothing more
    elif kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = settings.hnsw_ef_construction
        hnsw.add(y)
    else:
        raise ValueError(f"bare benchmark does not build {kind!r} indexes")
    return kind


def child_bare(events: Path, layout: str, factors: int, iterations: int) -> dict[str, Any]:
    """Load, build the CSR, then time the bare fit and the index build apart."""
    import numpy as np
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsvc.config import ALSSettings, IndexSettings, WeightingSettings
    from recsvc.training.interactions import build_interactions
    from recsvc.training.loading import load_events

    als = ALSSettings(factors=factors, iterations=iterations)
    t = time.perf_counter()
    table, _ = load_events(events, format=layout)  # type: ignore[arg-type]
    load = time.perf_counter() - t
    table_bytes = int(table.nbytes)

    t = time.perf_counter()
    inter = build_interactions(table, WeightingSettings())
    cui = confidences(inter.weights, als.alpha)
    build = time.perf_counter() - t
    del table, inter  # the bare fit keeps only what it fits on

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(
            factors=als.factors,
            regularization=als.regularization,
            alpha=1.0,
            iterations=als.iterations,
            random_state=als.random_state,
            use_cg=True,
        )
        t = time.perf_counter()
        model.fit(cui, show_progress=False)
        fit = time.perf_counter() - t
    user_factors = np.asarray(model.user_factors)
    item_factors = np.asarray(model.item_factors)

    t = time.perf_counter()
    kind = bare_index(item_factors, IndexSettings())
    index = time.perf_counter() - t
    return {
        "timings": {"load": load, "build": build, "fit": fit, "index": index},
        "index_kind": kind,
        "matrix": {
            "users": int(cui.shape[0]),
            "items": int(cui.shape[1]),
            "nnz": int(cui.nnz),
            "csr_bytes": int(cui.data.nbytes + cui.indices.nbytes + cui.indptr.nbytes),
            "factor_bytes": int(user_factors.nbytes + item_factors.nbytes),
            "table_bytes": table_bytes,
        },
    }


# --------------------------------------------------------------------------- child: steps


@dataclass
class StepClock:
    """Seconds spent in each step, and the process's peak RSS when it returned."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_after: dict[str, int] = field(default_factory=dict)

    def wrap(self, name: str, fn: F) -> F:
        """``fn``, adding its run time to ``seconds[name]``."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
                self.peak_rss_after[name] = _self_peak_rss()

        return wrapper  # type: ignore[return-value]


def _self_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_steps(
    data_flags: list[str], workdir: Path, factors: int, iterations: int
) -> dict[str, Any]:
    """``recsvc train`` in-process with timers on the pipeline's steps."""
    t = time.perf_counter()
    from recsvc.cli import main
    from recsvc.training import pipeline

    imports = time.perf_counter() - t
    rss_after_imports = _self_peak_rss()
    clock = StepClock()
    for name in STEPS_PATCHED:
        owner_name, _, attr = name.rpartition(".")
        owner = getattr(pipeline, owner_name) if owner_name else pipeline
        wrapped = clock.wrap(name, getattr(owner, attr))
        setattr(owner, attr, staticmethod(wrapped) if owner_name else wrapped)
    artifacts = Path(tempfile.mkdtemp(prefix="artifacts-steps-", dir=workdir))
    try:
        t = time.perf_counter()
        code = main(
            [
                *("-q", "train", *data_flags),
                *("--artifacts", str(artifacts), "--factors", str(factors)),
                *("--iterations", str(iterations)),
            ]
        )
        total = time.perf_counter() - t
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    if code != 0:
        raise RuntimeError(f"recsvc train exited {code}")
    return {
        "imports": imports,
        "main": total,
        "steps": clock.seconds,
        "main_unaccounted": total - sum(clock.seconds.values()),
        "peak_rss_after_imports": rss_after_imports,
        "peak_rss_after": clock.peak_rss_after,
    }


# --------------------------------------------------------------------------- one dataset


@dataclass
class SizeResult:
    """Everything measured on one dataset (a synthetic shop size, or Online Retail II)."""

    label: str
    shop: dict[str, Any]
    commands: dict[str, str]
    recsvc: list[dict[str, Any]] = field(default_factory=list)
    bare: list[dict[str, Any]] = field(default_factory=list)
    steps: dict[str, Any] | None = None
    imports_only: dict[str, Any] = field(default_factory=dict)


def bench_size(shop: Shop, args: argparse.Namespace) -> SizeResult:
    """Alternate recsvc train and the bare fit ``repeats`` times on ``shop``."""
    workdir: Path = args.workdir
    example = recsvc_command(shop, workdir / "artifacts-XXXX", args.factors, args.iterations)
    bare_cmd = child_command("bare", shop, workdir / "bare.json", args.factors, args.iterations)
    res = SizeResult(
        shop.label,
        {
            "events": str(shop.events),
            "catalog": str(shop.catalog) if shop.catalog else None,
            "format": shop.format,
            "note": shop.note,
            **shop.summary,
        },
        {"recsvc": shlex.join(example), "bare": shlex.join(bare_cmd)},
    )
    res.imports_only = imports_only(workdir)
    for r in range(args.repeats):
        res.recsvc.append(run_recsvc(shop, workdir, args.factors, args.iterations))
        print(f"[{shop.label}] #{r + 1} recsvc {_brief(res.recsvc[-1])}", flush=True)
        res.bare.append(run_bare(shop, workdir, args.factors, args.iterations))
        print(f"[{shop.label}] #{r + 1} bare   {_brief(res.bare[-1])}", flush=True)
    if args.breakdown:
        res.steps = run_steps(shop, workdir, args.factors, args.iterations)
        print(f"[{shop.label}] steps  {_brief(res.steps)}", flush=True)
    _check_same_matrix(res)
    return res


def _brief(run: dict[str, Any]) -> str:
    parts = [f"wall {run['wall_seconds']:.1f}s", f"rss {run['max_rss_bytes'] / 2**20:.0f} MiB"]
    parts += [f"{k} {v:.1f}s" for k, v in run.get("timings", {}).items()]
    return ", ".join(parts)


def _check_same_matrix(res: SizeResult) -> None:
    """Both sides must have fitted the same matrix and built the same index kind."""
    a, b = res.recsvc[0], res.bare[0]
    ours = (a["data"]["users"], a["data"]["items"], a["data"]["interactions"], a["index_kind"])
    theirs = (b["matrix"]["users"], b["matrix"]["items"], b["matrix"]["nnz"], b["index_kind"])
    if ours != theirs:
        raise RuntimeError(f"recsvc and bare fitted different problems: {ours} vs {theirs}")


def _medians(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Median of each of ``keys`` and of each step in ``timings`` over ``runs``."""
    out: dict[str, Any] = {k: median([r[k] for r in runs]) for k in keys}
    out["timings"] = {k: median([r["timings"][k] for r in runs]) for k in runs[0]["timings"]}
    return out


def summarise(res: SizeResult) -> dict[str, Any]:
    """Medians of every recorded number, and the ratios (of medians)."""
    keys = ("wall_seconds", "cpu_seconds", "max_rss_bytes", "loadavg_before")
    rec = _medians(res.recsvc, (*keys, "unrecorded_seconds"))
    bare = _medians(res.bare, keys)
    rt, bt = rec["timings"], bare["timings"]
    bare_work = bt["fit"] + bt["index"]
    bare["load_build_fit_index_seconds"] = bt["load"] + bt["build"] + bare_work
    matrix = res.bare[0]["matrix"]
    base_bytes = matrix["csr_bytes"] + matrix["factor_bytes"]
    return {
        "recsvc": rec,
        "bare": bare,
        "matrix": matrix,
        "data": res.recsvc[0]["data"],
        "index_kind": res.bare[0]["index_kind"],
        "index_recall": res.recsvc[0]["index_recall"],
        "imports_only": res.imports_only,
        "ratios": {
            "recsvc_wall_over_bare_load_build_fit_index": rec["wall_seconds"]
            / bare["load_build_fit_index_seconds"],
            "recsvc_wall_minus_load_over_bare_fit_index": (rec["wall_seconds"] - rt["load"])
            / bare_work,
            "recsvc_wall_over_bare_wall": rec["wall_seconds"] / bare["wall_seconds"],
            "recsvc_fit_index_over_bare_fit_index": (rt["fit"] + rt["index"]) / bare_work,
            "recsvc_cpu_over_bare_cpu": rec["cpu_seconds"] / bare["cpu_seconds"],
            "recsvc_rss_over_csr_factors": rec["max_rss_bytes"] / base_bytes,
            "bare_rss_over_csr_factors": bare["max_rss_bytes"] / base_bytes,
        },
    }


# --------------------------------------------------------------------------- report


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _s(x: float) -> str:
    return f"{x:,.1f} s"


def _x(x: float) -> str:
    return f"{x:.2f}"


def _n(x: float) -> str:
    return f"{int(x):,}"


Row = tuple[str, str, Callable[[float], str]]
"""Table row: label, dotted path into a dataset's ``median`` summary, formatter."""

MAIN_ROWS: tuple[Row, ...] = (
    ("events kept by the loader", "data/events", _n),
    ("of which guest events (popularity only)", "data/guest_events", _n),
    ("users", "matrix/users", _n),
    ("items", "matrix/items", _n),
    ("interactions (CSR nnz)", "matrix/nnz", _n),
    ("index recall@k (recsvc manifest)", "index_recall", _x),
    ("1-min load average before the recsvc runs", "recsvc/loadavg_before", _x),
    ("1-min load average before the bare runs", "bare/loadavg_before", _x),
    ("**recsvc train wall**", "recsvc/wall_seconds", _s),
    ("bare load (read events)", "bare/timings/load", _s),
    ("bare build (CSR + confidences)", "bare/timings/build", _s),
    ("bare fit", "bare/timings/fit", _s),
    ("bare index", "bare/timings/index", _s),
    ("bare load + build + fit + index", "bare/load_build_fit_index_seconds", _s),
    ("bare process wall", "bare/wall_seconds", _s),
    ("recsvc CPU time (user + system)", "recsvc/cpu_seconds", _s),
    ("bare CPU time (user + system)", "bare/cpu_seconds", _s),
    (
        "**ratio** recsvc wall / bare (load + build + fit + index)",
        "ratios/recsvc_wall_over_bare_load_build_fit_index",
        _x,
    ),
    (
        "**ratio** recsvc (wall - load) / bare (fit + index)",
        "ratios/recsvc_wall_minus_load_over_bare_fit_index",
        _x,
    ),
    (
        "ratio recsvc (fit + index) / bare (fit + index)",
        "ratios/recsvc_fit_index_over_bare_fit_index",
        _x,
    ),
    ("ratio recsvc process wall / bare process wall", "ratios/recsvc_wall_over_bare_wall", _x),
    ("ratio recsvc CPU / bare CPU", "ratios/recsvc_cpu_over_bare_cpu", _x),
    ("CSR bytes (data + indices + indptr)", "matrix/csr_bytes", _mib),
    ("factor bytes (users + items)", "matrix/factor_bytes", _mib),
    ("loaded event table (arrow)", "matrix/table_bytes", _mib),
    ("**recsvc peak RSS**", "recsvc/max_rss_bytes", _mib),
    ("bare peak RSS", "bare/max_rss_bytes", _mib),
    ("peak RSS of a process that only imports recsvc", "imports_only/max_rss_bytes", _mib),
    ("**ratio** recsvc RSS / (CSR + factors)", "ratios/recsvc_rss_over_csr_factors", _x),
    ("ratio bare RSS / (CSR + factors)", "ratios/bare_rss_over_csr_factors", _x),
)


def _get(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("/"):
        tree = tree[key]
    return tree


def _table(sizes: list[dict[str, Any]], rows: Sequence[Row], root: str = "median") -> list[str]:
    """Markdown table, one column per dataset; ``-`` where a value is missing."""
    lines = [
        "| | " + " | ".join(s["dataset"] for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for label, path, fmt in rows:
        cells = []
        for s in sizes:
            try:
                cells.append(fmt(_get(s, f"{root}/{path}")))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _step_rows(sizes: list[dict[str, Any]]) -> tuple[list[Row], list[Row]]:
    """Rows of the manifest-timings table and of the instrumented-run table."""
    recorded = sizes[0]["median"]["recsvc"]["timings"]
    order = [k for k in MANIFEST_ORDER if k in recorded] + sorted(
        set(recorded) - set(MANIFEST_ORDER)
    )
    manifest: list[Row] = [(f"`{k}_seconds`", f"recsvc/timings/{k}", _s) for k in order]
    manifest.append(
        ("not in the manifest (wall - main-thread steps)", "recsvc/unrecorded_seconds", _s)
    )
    steps: list[Row] = [("imports (recsvc.cli, recsvc.training.pipeline)", "imports", _s)]
    steps += [(f"`{name}`", f"steps/{name}", _s) for name in STEPS_PATCHED]
    steps += [
        ("rest of `main` (settings, artifact object, ...)", "main_unaccounted", _s),
        ("process wall", "wall_seconds", _s),
        ("process CPU time (user + system)", "cpu_seconds", _s),
        ("1-min load average before the run", "loadavg_before", _x),
        ("process peak RSS", "max_rss_bytes", _mib),
        ("peak RSS after imports", "peak_rss_after_imports", _mib),
    ]
    steps += [(f"peak RSS after `{n}`", f"peak_rss_after/{n}", _mib) for n in STEPS_PATCHED]
    return manifest, steps


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable results page."""
    sizes = report["sizes"]
    m, c, v = report["machine"], report["config"], report["versions"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    runs = ", ".join(f"{len(s['recsvc_runs'])}" for s in sizes)
    kinds = ", ".join(f"{s['median']['index_kind']}" for s in sizes)
    data = "; ".join(f"**{s['dataset']}**: {s['shop']['note']}" for s in sizes)
    manifest_rows, step_rows = _step_rows(sizes)
    lines = [
        "# `recsvc train` vs a bare implicit fit",
        "",
        f"Run {report['date']} (repo at {report['git']}, uncommitted changes possible). "
        "Reproduce from the repo root with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; "
        f"load average at start {load} (a shared machine: expect noise). Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + ".",
        "",
        f"ALS: {c['factors']} factors, {c['iterations']} iterations, regularization "
        f"{c['regularization']}, alpha {c['alpha']} (inside the confidences; implicit's "
        "alpha = 1), CG solver, BLAS limited to 1 thread, implicit threads = cores. "
        f"Index kinds: {kinds}. Medians of {runs} alternating runs per dataset; every raw "
        "value is in `results.json`. Ratios are ratios of medians.",
        "",
        f"Data (one column each): {data}.",
        "",
        "## Time and memory (medians)",
        "",
        *_table(sizes, MAIN_ROWS),
        "",
        "## Where `recsvc train` spends its time (manifest `timings`, medians)",
        "",
        *_table(sizes, manifest_rows),
    ]
    if any(s.get("steps") for s in sizes):
        lines += [
            "",
            "## Step breakdown (one instrumented in-process `recsvc train` per dataset)",
            "",
            *_table(sizes, step_rows, root="steps"),
        ]
    lines += METHOD_NOTES
    return "\n".join(lines) + "\n"


METHOD_NOTES = [
    "",
    "## Method",
    "",
    "- `recsvc train` runs as a user runs it (`recsvc -q train --events [--format "
    "online-retail] [--catalog] --artifacts <fresh dir> --factors --iterations`; the "
    "synthetic shops have a catalogue, Online Retail II is read as published with no "
    "catalogue); its wall time includes interpreter "
    "start and imports. The manifest's `timings` are the trainer's own step clocks; "
    "`write_seconds` is added after the manifest is written, so it never appears there "
    "(see the step breakdown instead). With more than one core the session model "
    "(`neighbors_seconds`) is built on a thread beside `ranking` and `blend`, and the "
    "main thread then waits `neighbors_wait_seconds` for it: the unrecorded row "
    "subtracts the main thread's steps only.",
    "- The bare side is `benchmarks/bench_train.py bare ...` in a fresh process: "
    "`training.loading.load_events` with the same layout (load), "
    "`training.interactions.build_interactions` and "
    "`1 + alpha * w` (build), then `AlternatingLeastSquares(...).fit` under "
    "`threadpool_limits(1, 'blas')` (fit) and the FAISS index of the kind recsvc picks for "
    "that many items, built with FAISS directly (index). It drops the event table before "
    "the fit, and does not read the catalogue, measure index recall, compute ranking "
    "defaults or write anything.",
    "- Each run is started by a small stdlib-only Python wrapper that times it and reads "
    "its `ru_maxrss` and CPU time with `os.wait4` (a child inherits the RSS high-water "
    "mark of the process it was forked from, so the wrapper keeps that floor near 10 MB). "
    "Runs alternate recsvc, bare, recsvc, bare, ...; the synthetic files are generated "
    "once (untimed) and, like the Online Retail II file, are in the page cache for every "
    "run. The machine is shared: "
    "compare CPU times and the load averages when wall times disagree.",
    "- The step breakdown is one extra in-process `recsvc train` with timers wrapped around "
    "`recsvc.training.pipeline` functions; it is not one of the timed repeats.",
    "",
]


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from recsvc.config import ALSSettings

    p = argparse.ArgumentParser(
        description="Time recsvc train against a bare implicit fit of the same matrix."
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[1_000_000, 10_000_000],
        help="synthetic shop sizes in events (none: only --retail)",
    )
    p.add_argument(
        "--retail",
        type=Path,
        metavar="PATH",
        help="also benchmark on the Online Retail II export at PATH, read with "
        "--format online-retail (e.g. ../shared/data/online_retail_ii.csv.gz)",
    )
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per dataset")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/train"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench"))
    p.add_argument("--factors", type=int, default=ALSSettings().factors)
    p.add_argument("--iterations", type=int, default=ALSSettings().iterations)
    p.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the extra instrumented run per dataset",
    )
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not args.sizes and args.retail is None:
        p.error("nothing to run: give --sizes or --retail")
    return args


def parse_child_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_train.py " + argv[0])
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--format", default="events", choices=("events", "online-retail"))
    p.add_argument("--catalog", type=Path)
    p.add_argument("--factors", type=int, required=True)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--result", type=Path, required=True)
    return p.parse_args(argv[1:])


def run_child(argv: Sequence[str]) -> int:
    """Entry of the measured children (``bare`` / ``steps``): result JSON to --result."""
    a = parse_child_args(argv)
    if argv[0] == "bare":
        out = child_bare(a.events, a.format, a.factors, a.iterations)
    else:
        flags = data_flags(a.events, a.format, a.catalog)
        out = child_steps(flags, a.result.parent, a.factors, a.iterations)
    a.result.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CHILD_MODES:
        return run_child(argv)
    from recsvc.config import ALSSettings, IndexSettings

    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    als = ALSSettings(factors=args.factors, iterations=args.iterations)
    report: dict[str, Any] = {
        "benchmark": "recsvc train vs bare implicit",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_train.py", *argv]),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        "config": {
            **als.model_dump(),
            "repeats": args.repeats,
            "synth_seed": SEED,
            "retail": str(args.retail) if args.retail else None,
        },
        "index_settings": IndexSettings().model_dump(),
        "sizes": [],
    }
    retail = [retail_shop(args.retail)] if args.retail else []
    shops = (ensure_shop(n, args.workdir) for n in args.sizes)  # generated when reached
    for shop in itertools.chain(shops, retail):
        res = bench_size(shop, args)
        report["sizes"].append(
            {
                "dataset": res.label,
                "n_events": shop.n_events,
                "shop": res.shop,
                "commands": res.commands,
                "median": summarise(res),
                "recsvc_runs": res.recsvc,
                "bare_runs": res.bare,
                "steps": res.steps,
            }
        )
        write_outputs(report, args.out)  # partial results survive a later failure
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    write_outputs(report, args.out)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    return 0


def write_outputs(report: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(render_markdown(report))


if __name__ == "__main__":
    sys.exit(main())
