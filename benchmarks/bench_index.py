"""Sweep recsvc's FAISS index kinds on trained ALS factors (100k and 1M items).

Usage::

    .venv/bin/python benchmarks/bench_index.py --shops 100k 1m 100k-zipf1 \\
        --out benchmarks/results/index [--workdir /tmp/recsvc-bench/index] \\
        [--queries 1000 --k 20 --passes 3 --batch-rounds 5 --compare-users 300]

Method
------
Per shop (:data:`SHOPS`) a synthetic shop is generated with :mod:`training.synth`
(seed 7) and ALS is fitted once, exactly as the trainer does it
(:func:`training.loading.load_events`, :func:`training.interactions.build_interactions`,
:func:`training.fit.fit_als` with the default :class:`recsvc.config.ALSSettings`, 64
factors). The factors (``.npy``) and the weight matrix (``.npz``) are cached under
``--workdir`` and reused while the synth config and the ALS and weighting settings are
unchanged, so reruns skip generation and fitting. Items of the catalogue without any
event are not in the model at all (``build_interactions`` indexes items that occur);
rows whose factors are all zero would be excluded from the sweep and counted.

Queries: ``--queries`` user vectors sampled without replacement (seed 7) from the
trained user factors, as the trainer's own recall check does.

Variants, all built through recsvc's own :meth:`recsvc.index.ItemIndex.build` (so the
sweep measures what recsvc ships) except implicit's:

- ``exact``: ``IndexFlatIP``.
- ``hnsw``: one HNSW graph by inner product (M 32, efConstruction 200), searched at
  efSearch 32, 64, 128, 256 (plus recsvc's default efSearch if it is not among them).
- ``ivf``: IVF-Flat with an inner-product quantizer, nlist 4·sqrt(n) (recsvc's
  default), searched at nprobe 8, 16, 32, 64 (plus the default nprobe).
- ``implicit FaissALS``: the recommend index that implicit's
  ``FaissAlternatingLeastSquares`` builds (IVF-Flat by inner product, implicit's
  defaults nlist 400 / nprobe 20) around the same cached factors (``iterations=0``,
  so it keeps them; ``approximate_similar_items=False``, so the second, cosine index
  that only ``similar_items`` uses is not built).

For every variant: recall@k against exact (:func:`recsvc.index.measure_recall`: an
item counts as found when its score reaches the exact k-th score); build seconds;
index bytes (``len(faiss.serialize_index)``) and the process RSS growth across the
build (after ``gc`` and ``malloc_trim``; approximate, allocator-dependent); per-query
latency of single queries (one query at a time, ``faiss.omp_set_num_threads(1)``, as
``serving/server.py`` sets it) at k and at k·overfetch (the candidates the ranker
really fetches, 80 for k 20); and batched latency (all queries in one call, all
threads, divided by the number of queries).

Noise: the machine is shared, so measurements alternate. Single queries go in blocks
of :data:`BLOCK` queries; each block is searched by every (variant, k) pair in a
seeded random order, and the whole query set is swept ``--passes`` times.
The headline is the median over passes of each pass's median per-query latency; p99
is over every sample. Batched calls rotate the same way over ``--batch-rounds``.

The "path a user would otherwise write" (on the ``--compare-on`` shop, 100k items by
default), for ``--compare-users`` of the query users:
implicit's ``AlternatingLeastSquares.recommend(u, user_items[u], N=k,
recalculate_user=True)`` (exact top-k over every item, Cholesky fold-in);
``FaissAlternatingLeastSquares.recommend(u, user_items[u], N=k)`` with the stored
user factors (its ``recalculate_user=True`` raises, see the results); and recsvc's
:meth:`recsvc.foldin.FoldIn.user_vector` plus :meth:`ItemIndex.search` on the exact
index and on the index recsvc's default settings build, in blocks of :data:`BLOCK`
users with a seeded random order of the paths per block. implicit's models get
``num_threads=1`` and BLAS is limited to one thread for the whole comparison, so
every path runs on one core as a serving process would. User rows are sliced out of
the CSR before timing (the slice's own cost is reported apart).

Results go to ``<out>/results.json`` (every raw value) and ``<out>/README.md``, plus
``<out>/recall_latency.png`` when matplotlib is importable.
"""

# Heavy libraries are imported where they are used, as in bench_train.py.
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _env import git_revision, machine, versions

if TYPE_CHECKING:
    import numpy as np
    import scipy.sparse as sp
    from numpy.typing import NDArray

    from recsvc.config import IndexSettings
    from recsvc.index import ItemIndex

SEED = 7
"""Seed of the synthetic shops and of the query sample."""
SHOPS: dict[str, dict[str, Any]] = {
    "100k": {"n_events": 3_000_000, "n_items": 100_000, "item_zipf": 0.7},
    "1m": {"n_events": 10_000_000, "n_items": 1_000_000, "item_zipf": 0.7},
    "100k-zipf1": {"n_events": 3_000_000, "n_items": 100_000},
}
"""``SynthConfig`` arguments per shop (seed added). Item popularity Zipf 0.7 rather
than synth's default 1.0: at 1M items and 10M events the default leaves about a
quarter of the catalogue without a single event (so it would not be a 1M-item
index); 0.7 keeps a long tail (top 1% of items draw a quarter of the events) while
most items are seen. ``100k-zipf1`` is the same 100k shop with synth's default
popularity (Zipf 1.0), because index recall turned out to depend on it."""
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
EF_SEARCH = (32, 64, 128, 256)
NPROBE = (8, 16, 32, 64)
EXTRA_EF_SEARCH = (512,)
EXTRA_NPROBE = (128, 256)
"""Beyond the asked-for sweep, to see where recall goes (searches only, no extra build)."""
IMPLICIT_NLIST, IMPLICIT_NPROBE = 400, 20
"""implicit's ``FaissAlternatingLeastSquares`` defaults."""
BLOCK = 25
"""Single queries per variant before the next variant takes over."""
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
"""The target: recall@k >= 0.95 at <= 1/10 of exact's single-query latency."""
LIBRARIES = ("faiss-cpu", "implicit", "numpy", "scipy", "psutil", "matplotlib")


# --------------------------------------------------------------------------- helpers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def settle() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS deltas mean something."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: deltas are rougher
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def faiss_blas_threshold() -> int:
    import faiss

    return int(faiss.cvar.distance_compute_blas_threshold)


def set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


# --------------------------------------------------------------------------- data


@dataclass
class Trained:
    """A shop's cached ALS fit."""

    name: str
    item_factors: NDArray[np.float32]
    """``(n_items, factors)``; only items with at least one event."""
    user_factors: NDArray[np.float32]
    """``(n_users, factors)``."""
    weights: sp.csr_matrix
    """``(n_users, n_items)`` float32 summed decayed event weights (before confidence)."""
    info: dict[str, Any]


def ensure_trained(name: str, workdir: Path) -> Trained:
    """Generate shop ``name`` and fit ALS once; reuse both while their configs match."""
    import numpy as np
    import scipy.sparse as sp

    from recsvc.config import ALSSettings, WeightingSettings
    from recsvc.training.synth import SynthConfig, generate

    config = SynthConfig(**SHOPS[name], seed=SEED)
    als, weighting = ALSSettings(), WeightingSettings()
    wanted = {
        "synth": asdict(config),
        "als": als.model_dump(mode="json"),
        "weighting": weighting.model_dump(mode="json"),
    }
    folder = workdir / f"shop-{name}-seed{SEED}"
    stamp = folder / "trained.json"
    files = {
        "items": folder / "item_factors.npy",
        "users": folder / "user_factors.npy",
        "weights": folder / "weights.npz",
    }
    if stamp.exists() and all(p.exists() for p in files.values()):
        saved = json.loads(stamp.read_text())
        if saved.get("config") == wanted:
            print(f"[{name}] reusing the cached fit in {folder}", flush=True)
            return Trained(
                name,
                np.load(files["items"], allow_pickle=False),
                np.load(files["users"], allow_pickle=False),
                sp.csr_matrix(sp.load_npz(files["weights"])),
                {**saved["info"], "cached": True},
            )
    folder.mkdir(parents=True, exist_ok=True)
    events, catalog = folder / "events.csv.gz", folder / "catalog.csv"
    print(f"[{name}] generating {events} ...", flush=True)
    summary = generate(config, events, catalog)
    info: dict[str, Any] = {
        "synth_seconds": summary.seconds,
        "catalogue_items": summary.n_items,
        "events": summary.n_events,
    }
    trained = _fit(name, events, als, weighting, info)
    np.save(files["items"], trained.item_factors, allow_pickle=False)
    np.save(files["users"], trained.user_factors, allow_pickle=False)
    sp.save_npz(files["weights"], trained.weights)
    stamp.write_text(json.dumps({"config": wanted, "info": trained.info}, indent=2) + "\n")
    trained.info["cached"] = False
    return trained


def _fit(name: str, events: Path, als: Any, weighting: Any, info: dict[str, Any]) -> Trained:
    """The trainer's own steps: load, weigh, fit (timed)."""
    from recsvc.training.fit import fit_als
    from recsvc.training.interactions import build_interactions
    from recsvc.training.loading import load_events

    print(f"[{name}] fitting ALS ({als.factors} factors) ...", flush=True)
    t = time.perf_counter()
    table, _ = load_events(events)
    inter = build_interactions(table, weighting)
    info["load_and_weigh_seconds"] = time.perf_counter() - t
    del table
    fitted = fit_als(inter.weights, als)
    info["fit_seconds"] = fitted.seconds
    info["model_items"] = inter.n_items
    info["users"] = inter.n_users
    info["interactions"] = int(inter.weights.nnz)
    print(f"[{name}] fit in {fitted.seconds:.1f}s", flush=True)
    return Trained(name, fitted.item_factors, fitted.user_factors, inter.weights, info)


def confidences(weights: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """What implicit is given (``1 + alpha · w``), as ``training.fit.fit_als`` does."""
    from recsvc.weighting import confidence

    cui = weights.astype("float32", copy=True)
    cui.data = confidence(cui.data, alpha)
    return cui


def data_stats(tr: Trained) -> dict[str, Any]:
    import numpy as np

    norms = np.linalg.norm(tr.item_factors, axis=1)
    users = np.linalg.norm(tr.user_factors, axis=1)
    return {
        **tr.info,
        "model_items": int(tr.item_factors.shape[0]),
        "users": int(tr.user_factors.shape[0]),
        "interactions": int(tr.weights.nnz),
        "catalogue_items_without_events": int(
            tr.info.get("catalogue_items", tr.item_factors.shape[0]) - tr.item_factors.shape[0]
        ),
        "zero_factor_items": int((norms == 0).sum()),
        "item_norm": {
            "median": float(np.median(norms)),
            "p99": float(np.percentile(norms, 99)),
            "max": float(norms.max()),
        },
        "user_norm_median": float(np.median(users)),
        "factors": int(tr.item_factors.shape[1]),
    }


# --------------------------------------------------------------------------- variants


@dataclass
class Build:
    """One built index (several variants may share it, searched with other params)."""

    name: str
    index: ItemIndex | NormOrderedScan
    seconds: float
    index_bytes: int
    rss_delta_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Variant:
    """One searchable configuration and everything measured for it."""

    name: str
    family: str
    params: dict[str, Any]
    build: Build
    apply: Callable[[], None]
    recall: float = math.nan
    single_us: list[list[float]] = field(default_factory=list)
    """Per pass, every single-query latency (µs) at k."""
    single_fetch_us: list[list[float]] = field(default_factory=list)
    """Per pass, every single-query latency (µs) at k · overfetch."""
    batched_us: list[float] = field(default_factory=list)
    """Per round, µs per query of one batched call."""


def _measure_build(name: str, make: Callable[[], Any], **extra: Any) -> Build:
    import faiss

    settle()
    before = rss_bytes()
    t = time.perf_counter()
    index = make()
    seconds = time.perf_counter() - t
    settle()
    delta = rss_bytes() - before
    if isinstance(index, NormOrderedScan):
        size = index.nbytes
    else:
        size = len(faiss.serialize_index(index.index))
    print(f"    built {name} in {seconds:.1f}s ({size / 2**20:,.0f} MiB)", flush=True)
    return Build(name, index, seconds, size, delta, dict(extra))


def build_variants(
    y: NDArray[np.float32], tr: Trained, defaults: IndexSettings
) -> tuple[list[Variant], Any]:
    """Every index of the sweep; also returns implicit's ``FaissModel`` (for the comparison)."""
    import faiss

    from recsvc.config import IndexSettings
    from recsvc.index import ItemIndex

    set_faiss_threads(os.cpu_count() or 1)  # builds use every core, as the trainer does
    variants: list[Variant] = []
    exact = _measure_build("exact", lambda: ItemIndex.build(y, IndexSettings(kind="exact")))
    variants.append(Variant("exact", "exact", {}, exact, lambda: None, recall=1.0))

    ivf_settings = IndexSettings(kind="ivf")
    ivf = _measure_build("ivf", lambda: ItemIndex.build(y, ivf_settings))
    ivf_index = faiss.extract_index_ivf(ivf.index.index)
    ivf.extra["nlist"] = int(ivf_index.nlist)
    # 1 = equal lists; an IP quantizer sends most items to a few long-norm centroids
    ivf.extra["imbalance_factor"] = float(ivf_index.invlists.imbalance_factor())
    for nprobe in sorted({*NPROBE, *EXTRA_NPROBE, defaults.ivf_nprobe}):
        variants.append(
            Variant(
                f"ivf nprobe {nprobe}",
                "ivf",
                {"nlist": int(ivf_index.nlist), "nprobe": nprobe},
                ivf,
                _setter(ivf_index, "nprobe", nprobe),
            )
        )

    hnsw_settings = IndexSettings(
        kind="hnsw", hnsw_m=HNSW_M, hnsw_ef_construction=HNSW_EF_CONSTRUCTION
    )
    hnsw = _measure_build("hnsw", lambda: ItemIndex.build(y, hnsw_settings))
    graph = hnsw.index.index.hnsw
    hnsw.extra.update(hnsw_degrees(hnsw.index.index))
    for ef in sorted({*EF_SEARCH, *EXTRA_EF_SEARCH, defaults.hnsw_ef_search}):
        variants.append(
            Variant(
                f"hnsw efSearch {ef}",
                "hnsw",
                {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef},
                hnsw,
                _setter(graph, "efSearch", ef),
            )
        )

    faiss_model, implicit_build = build_implicit_faiss(tr)
    variants.append(
        Variant(
            "implicit FaissALS",
            "implicit-faiss",
            {"nlist": IMPLICIT_NLIST, "nprobe": IMPLICIT_NPROBE},
            implicit_build,
            lambda: None,
        )
    )
    scan = _measure_build("norm-ordered scan", lambda: NormOrderedScan(y))
    variants.append(
        Variant(
            "norm-ordered exact scan (recsvc normscan)",
            "norm-scan",
            {"scan": "compiled, stops at the first row below the k-th best"},
            scan,
            lambda: None,
        )
    )
    return variants, faiss_model


class NormOrderedScan:
    """recsvc's ``normscan`` index (:class:`recsvc.index.NormScan`), with the
    ``kind`` / ``nbytes`` surface the sweep reports. It began here as a prototype."""

    kind = "norm-scan"

    def __init__(self, item_factors: NDArray[np.float32]) -> None:
        from recsvc.index import NormScan

        self.scan = NormScan.build(item_factors)

    @property
    def ntotal(self) -> int:
        return self.scan.ntotal

    @property
    def nbytes(self) -> int:
        return self.scan.nbytes

    def search(
        self, queries: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return self.scan.search(queries, max(1, min(k, self.ntotal)))


def hnsw_degrees(index: Any) -> dict[str, Any]:
    """Out-degrees of the HNSW base layer: how connected the graph FAISS built is."""
    import faiss
    import numpy as np

    graph = index.hnsw
    neighbors = faiss.vector_to_array(graph.neighbors)
    offsets = faiss.vector_to_array(graph.offsets).astype(np.int64)[:-1]  # n + 1 bounds
    width = int(graph.nb_neighbors(0))
    degrees = []
    for start in range(0, int(index.ntotal), 100_000):  # chunks bound the temporaries
        slots = offsets[start : start + 100_000, None] + np.arange(width)
        degrees.append((neighbors[slots] >= 0).sum(axis=1))
    deg = np.concatenate(degrees)
    return {
        "level0_slots": width,
        "level0_out_degree_median": float(np.median(deg)),
        "level0_out_degree_mean": float(deg.mean()),
        "level0_out_degree_le_2_share": float((deg <= 2).mean()),
    }


def _setter(obj: Any, attr: str, value: int) -> Callable[[], None]:
    def apply() -> None:
        setattr(obj, attr, value)

    return apply


def build_implicit_faiss(tr: Trained) -> tuple[Any, Build]:
    """implicit's ``FaissAlternatingLeastSquares`` around the cached factors."""
    from implicit.approximate_als import FaissAlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsvc.config import ALSSettings
    from recsvc.index import ItemIndex

    als = ALSSettings()
    cui = confidences(tr.weights, als.alpha)
    # implicit warns about a multi-threaded BLAS when the model is created; no ALS
    # iteration runs here, and the index training below should use every core.
    with threadpool_limits(limits=1, user_api="blas"):
        model = FaissAlternatingLeastSquares(
            factors=als.factors,
            regularization=als.regularization,
            alpha=1.0,  # the confidences already hold 1 + alpha·w, as in fit_als
            iterations=0,  # keep the factors set below: no refit
            random_state=als.random_state,
            num_threads=1,
            use_gpu=False,
            approximate_similar_items=False,
            nlist=IMPLICIT_NLIST,
            nprobe=IMPLICIT_NPROBE,
        )
    model.model.user_factors = tr.user_factors
    model.model.item_factors = tr.item_factors

    def make() -> ItemIndex:
        model.fit(cui, show_progress=False)
        return ItemIndex(model.recommend_index, "ivf", 0.0)

    # fit(iterations=0) also transposes the CSR; timed apart so it can be subtracted
    t = time.perf_counter()
    cui.T.tocsr()
    transpose = time.perf_counter() - t
    return model, _measure_build("implicit FaissALS", make, csr_transpose_seconds=transpose)


# --------------------------------------------------------------------------- measuring


def measure_recalls(
    variants: list[Variant], y: NDArray[np.float32], queries: NDArray[np.float32], k: int
) -> None:
    from recsvc.index import measure_recall

    set_faiss_threads(os.cpu_count() or 1)
    for v in variants:
        if v.family == "exact":
            continue
        v.apply()
        v.recall = measure_recall(v.build.index, y, queries, k)
        print(f"    recall@{k} {v.name}: {v.recall:.4f}", flush=True)


def measure_single(
    variants: list[Variant], queries: NDArray[np.float32], k: int, fetch: int, passes: int
) -> None:
    """Single-query latency at ``k`` and at ``fetch``, interleaved in blocks.

    Every (variant, k) pair is an arm; each block of :data:`BLOCK` queries is run by
    every arm in a fresh seeded random order, so noise from other work and cache
    warmth left by the previous arm (often the same queries on the same graph) fall
    on every arm alike.
    """
    import numpy as np

    set_faiss_threads(1)
    n = len(queries)
    rows = [queries[i : i + 1].copy() for i in range(n)]
    arms = [(v, kk) for v in variants for kk in (k, fetch)]
    for v in variants:  # warm-up: page in the index, settle the allocator
        v.apply()
        for q in rows[:BLOCK]:
            v.build.index.search(q, fetch)
    rng = np.random.default_rng(SEED)
    clock = time.perf_counter_ns
    for p in range(passes):
        samples: dict[tuple[str, int], list[float]] = {(v.name, kk): [] for v, kk in arms}
        for start in range(0, n, BLOCK):
            for a in rng.permutation(len(arms)):
                v, kk = arms[a]
                v.apply()
                search = v.build.index.search
                out = samples[(v.name, kk)]
                for q in rows[start : start + BLOCK]:
                    t = clock()
                    search(q, kk)
                    out.append((clock() - t) / 1e3)
        for v in variants:
            v.single_us.append(samples[(v.name, k)])
            v.single_fetch_us.append(samples[(v.name, fetch)])
        brief = ", ".join(f"{v.name} {median(samples[(v.name, k)]):,.0f}" for v in variants)
        print(f"    single pass {p + 1}/{passes} (µs): {brief}", flush=True)


def measure_batched(
    variants: list[Variant], queries: NDArray[np.float32], k: int, rounds: int
) -> None:
    """One call with every query, all threads; rotating order over ``rounds``."""
    set_faiss_threads(os.cpu_count() or 1)
    for v in variants:  # warm-up
        v.apply()
        v.build.index.search(queries[:100], k)
    for r in range(rounds):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.apply()
            t = time.perf_counter()
            v.build.index.search(queries, k)
            v.batched_us.append((time.perf_counter() - t) / len(queries) * 1e6)
    set_faiss_threads(1)


def summarise_variant(v: Variant, exact_single_us: float | None) -> dict[str, Any]:
    single = median([median(p) for p in v.single_us])
    pooled = [x for p in v.single_us for x in p]
    out = {
        "name": v.name,
        "family": v.family,
        "params": v.params,
        "recall": v.recall,
        "single_us_median": single,
        "single_us_pass_medians": [median(p) for p in v.single_us],
        "single_us_p90": percentile(pooled, 90),
        "single_us_p99": percentile(pooled, 99),
        "single_fetch_us_median": median([median(p) for p in v.single_fetch_us]),
        "batched_us_per_query_median": median(v.batched_us),
        "batched_us_per_query_rounds": v.batched_us,
        "build": v.build.name,
        "build_seconds": v.build.seconds,
        "index_bytes": v.build.index_bytes,
        "rss_delta_bytes": v.build.rss_delta_bytes,
        "build_extra": v.build.extra,
    }
    if exact_single_us:
        out["speedup_vs_exact"] = exact_single_us / single
    return out


def default_variant_name(n_items: int) -> str:
    """The sweep row that recsvc's default ``IndexSettings()`` builds for ``n_items``."""
    from recsvc.config import IndexSettings
    from recsvc.index import choose_kind

    defaults = IndexSettings()
    return {
        "exact": "exact",
        "hnsw": f"hnsw efSearch {defaults.hnsw_ef_search}",
        "ivf": f"ivf nprobe {defaults.ivf_nprobe}",
        "normscan": "norm-ordered exact scan (recsvc normscan)",
    }[choose_kind(n_items, defaults)]


RECSVC_FAMILIES = ("hnsw", "ivf", "norm-scan")
"""Variants recsvc itself can be set to (``[index] kind``); implicit's is a comparison."""


def evaluate_target(rows: list[dict[str, Any]], n_items: int) -> dict[str, Any]:
    """Which approximate settings meet recall >= 0.95 at <= exact / 10 (single query)."""
    from recsvc.config import IndexSettings
    from recsvc.index import choose_kind

    exact = next(r for r in rows if r["family"] == "exact")
    budget = exact["single_us_median"] / TARGET_SPEEDUP
    approx = [r for r in rows if r["family"] != "exact"]
    for r in approx:
        r["meets_target"] = bool(r["recall"] >= TARGET_RECALL and r["single_us_median"] <= budget)
    meeting = sorted(
        (r for r in approx if r["meets_target"] and r["family"] in RECSVC_FAMILIES),
        key=lambda r: r["single_us_median"],
    )
    defaults = IndexSettings()
    kind = choose_kind(n_items, defaults)
    default_name = default_variant_name(n_items)
    same_build = (defaults.hnsw_m, defaults.hnsw_ef_construction) == (
        HNSW_M,
        HNSW_EF_CONSTRUCTION,
    )
    default_row = next((r for r in rows if r["name"] == default_name), None)
    if kind == "hnsw" and not same_build:
        default_row = None  # the defaults build another graph than the sweep's
    fix = None
    if default_row is not None and not default_row.get("meets_target", kind == "exact"):
        same_family = [r for r in meeting if r["family"] == kind]
        fix = (same_family or meeting or [None])[0]
    scan = next((r for r in rows if r["family"] == "norm-scan"), None)
    return {
        "prototype": None
        if scan is None
        else {
            "name": scan["name"],
            "recall": scan["recall"],
            "single_us": scan["single_us_median"],
            "meets": scan["meets_target"],
        },
        "exact_single_us": exact["single_us_median"],
        "budget_single_us": budget,
        "met": bool(meeting),
        "cheapest": meeting[0]["name"] if meeting else None,
        "meeting": [r["name"] for r in meeting],
        "default_kind": kind,
        "default_variant": default_name if default_row is not None else None,
        "default_meets": None if default_row is None else default_row.get("meets_target"),
        "suggested_change": fix["name"] if fix else None,
    }


# --------------------------------------------------------------------------- implicit paths


def compare_paths(
    tr: Trained,
    variants: list[Variant],
    faiss_model: Any,
    user_ids: NDArray[np.int64],
    k: int,
    passes: int,
) -> dict[str, Any]:
    """implicit's recommend paths vs recsvc fold-in + index search, one user at a time."""
    import numpy as np
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsvc.config import ALSSettings
    from recsvc.foldin import FoldIn

    als = ALSSettings()
    y = tr.item_factors
    cui = confidences(tr.weights, als.alpha)
    with threadpool_limits(limits=1, user_api="blas"):  # its BLAS check, as above
        model = AlternatingLeastSquares(
            factors=als.factors,
            regularization=als.regularization,
            alpha=1.0,
            iterations=als.iterations,
            random_state=als.random_state,
            num_threads=1,
        )
    model.user_factors, model.item_factors = tr.user_factors, y
    fold = FoldIn(y, als.regularization, als.alpha)
    by_name = {v.name: v for v in variants}
    exact_v = by_name["exact"]
    default_v = by_name[default_variant_name(len(y))]
    scan_v = next(v for v in variants if v.family == "norm-scan")
    t = time.perf_counter()
    rows = [cui[int(u)] for u in user_ids]  # what `user_items[userid]` costs, timed once
    slice_us = (time.perf_counter() - t) / len(user_ids) * 1e6
    history = [(tr.weights[int(u)].indices, tr.weights[int(u)].data) for u in user_ids]

    out: dict[str, Any] = {"users": len(user_ids), "k": k, "csr_row_slice_us": slice_us}
    try:
        faiss_model.recommend(int(user_ids[0]), rows[0], N=k, recalculate_user=True)
        out["faiss_als_recalculate_user"] = "worked"
    except NotImplementedError as exc:  # implicit 0.7.x: hasattr(model, "+_user_factor")
        out["faiss_als_recalculate_user"] = f"NotImplementedError: {exc}"

    def implicit_exact(i: int) -> None:
        model.recommend(int(user_ids[i]), rows[i], N=k, recalculate_user=True)

    def implicit_faiss(i: int) -> None:
        faiss_model.recommend(int(user_ids[i]), rows[i], N=k)

    def recsvc_path(v: Variant) -> Callable[[int], None]:
        index = v.build.index

        def run(i: int) -> None:
            items, weights = history[i]
            index.search(fold.user_vector(items, weights)[None, :], k)

        return run

    def foldin_only(i: int) -> None:
        fold.user_vector(*history[i])

    paths: list[tuple[str, Callable[[int], None], Callable[[], None]]] = [
        ("implicit ALS recommend(recalculate_user=True)", implicit_exact, lambda: None),
        ("implicit FaissALS recommend (stored user factors)", implicit_faiss, lambda: None),
        ("recsvc FoldIn + exact", recsvc_path(exact_v), exact_v.apply),
        (f"recsvc FoldIn + default ({default_v.name})", recsvc_path(default_v), default_v.apply),
        (f"recsvc FoldIn + {scan_v.name}", recsvc_path(scan_v), scan_v.apply),
        ("recsvc FoldIn alone", foldin_only, lambda: None),
    ]
    samples: dict[str, list[list[float]]] = {name: [] for name, _, _ in paths}
    rng = np.random.default_rng(SEED)
    set_faiss_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        for _, run, apply in paths:  # warm-up (implicit computes YᵀY on first use)
            apply()
            for i in range(min(5, len(user_ids))):
                run(i)
        for _ in range(passes):
            per: dict[str, list[float]] = {name: [] for name, _, _ in paths}
            for start in range(0, len(user_ids), BLOCK):  # blocks, as in the sweep
                for a in rng.permutation(len(paths)):
                    name, run, apply = paths[a]
                    apply()
                    for i in range(start, min(start + BLOCK, len(user_ids))):
                        t0 = time.perf_counter_ns()
                        run(i)
                        per[name].append((time.perf_counter_ns() - t0) / 1e3)
            for name, values in per.items():
                samples[name].append(values)
        quality = _path_quality(model, faiss_model, fold, y, tr, rows, history, user_ids, k)
        vectors = quality.pop("_foldin_vectors")
        default_v.apply()
        quality["recsvc_default_recall"] = _recall_of(
            y, vectors, lambda q: default_v.build.index.search(q, k)[1], k
        )
        quality["scan_recall"] = _recall_of(
            y, vectors, lambda q: scan_v.build.index.search(q, k)[1], k
        )
    out["scan_variant"] = scan_v.name
    out["latency_us"] = {
        name: {
            "median": median([median(s) for s in runs]),
            "pass_medians": [median(s) for s in runs],
            "p99": percentile([x for s in runs for x in s], 99),
        }
        for name, runs in samples.items()
    }
    out["default_variant"] = default_v.name
    out.update(quality)
    return out


def _path_quality(
    model: Any,
    faiss_model: Any,
    fold: Any,
    y: NDArray[np.float32],
    tr: Trained,
    rows: list[Any],
    history: list[Any],
    user_ids: NDArray[np.int64],
    k: int,
) -> dict[str, Any]:
    """Recall of each path's top k (untimed), and fold-in vs implicit's recalculation."""
    import numpy as np

    ours = np.stack([fold.user_vector(*h) for h in history]).astype(np.float32)
    theirs = np.stack(
        [
            np.asarray(model.recalculate_user(int(u), rows[i])).ravel()
            for i, u in enumerate(user_ids)
        ]
    ).astype(np.float32)
    rel = np.linalg.norm(ours - theirs, axis=1) / np.maximum(np.linalg.norm(theirs, axis=1), 1e-12)
    implicit_ids = np.stack(
        [
            model.recommend(int(u), rows[i], N=k, recalculate_user=True,
                            filter_already_liked_items=False)[0]
            for i, u in enumerate(user_ids)
        ]
    )  # fmt: skip
    stored = tr.user_factors[user_ids]
    faiss_ids = np.stack(
        [
            faiss_model.recommend(int(u), rows[i], N=k, filter_already_liked_items=False)[0]
            for i, u in enumerate(user_ids)
        ]
    )
    return {
        "foldin_vs_implicit_recalculate_rel_diff_max": float(rel.max()),
        "foldin_vs_implicit_recalculate_rel_diff_median": float(np.median(rel)),
        "implicit_exact_recall": _recall_of(y, theirs, lambda q: implicit_ids, k),
        "implicit_faiss_recall": _recall_of(y, stored, lambda q: faiss_ids, k),
        "_foldin_vectors": ours,
    }


def _recall_of(
    y: NDArray[np.float32],
    queries: NDArray[np.float32],
    search: Callable[[NDArray[np.float32]], NDArray[np.int64]],
    k: int,
) -> float:
    """measure_recall's definition (found if its score reaches the exact k-th score),
    with the found items' scores recomputed rather than taken from the searcher."""
    import numpy as np

    from recsvc.index import exact_search

    truth = exact_search(y, queries, k)
    kth = np.einsum("qd,qd->q", queries, y[truth[:, -1]])
    kth = kth - 1e-5 * np.maximum(np.abs(kth), 1.0)
    found = np.asarray(search(queries))
    hits = 0
    for row in range(len(queries)):
        ids = found[row][found[row] >= 0][:k]
        hits += min(k, int((y[ids] @ queries[row] >= kth[row]).sum()))
    return hits / (k * len(queries))


# --------------------------------------------------------------------------- one shop


def bench_shop(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from recsvc.config import IndexSettings, RankingSettings

    started = time.perf_counter()
    tr = ensure_trained(name, args.workdir)
    stats = data_stats(tr)
    y = tr.item_factors
    if stats["zero_factor_items"]:  # no signal to rank by: leave them out of the sweep
        y = np.ascontiguousarray(y[np.linalg.norm(y, axis=1) > 0])
    rng = np.random.default_rng(SEED)
    user_ids = rng.choice(len(tr.user_factors), size=args.queries, replace=False)
    queries = np.ascontiguousarray(tr.user_factors[user_ids])
    fetch = args.k * RankingSettings().overfetch
    print(f"[{name}] {len(y):,} items, {len(queries):,} queries; building", flush=True)
    loads = {"before_builds": os.getloadavg()[0]}
    variants, faiss_model = build_variants(y, tr, IndexSettings())
    measure_recalls(variants, y, queries, args.k)
    loads["before_single"] = os.getloadavg()[0]
    measure_single(variants, queries, args.k, fetch, args.passes)
    loads["before_batched"] = os.getloadavg()[0]
    measure_batched(variants, queries, args.k, args.batch_rounds)
    exact_us = median([median(p) for p in variants[0].single_us])
    rows = [summarise_variant(v, exact_us) for v in variants]
    result: dict[str, Any] = {
        "shop": name,
        "synth": {**SHOPS[name], "seed": SEED},
        "data": stats,
        "indexed_items": len(y),
        "queries": len(queries),
        "k": args.k,
        "fetch": fetch,
        "variants": rows,
        "target": evaluate_target(rows, len(y)),
        "loadavg": loads,
    }
    if name in args.compare_on and not stats["zero_factor_items"]:
        print(f"[{name}] implicit paths vs recsvc, {args.compare_users} users", flush=True)
        loads["before_compare"] = os.getloadavg()[0]
        result["compare"] = compare_paths(
            tr, variants, faiss_model, user_ids[: args.compare_users], args.k, args.passes
        )
    result["seconds"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- report


def _us(x: float) -> str:
    return f"{x:,.0f} µs" if x >= 10 else f"{x:,.1f} µs"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _variant_table(shop: dict[str, Any]) -> list[str]:
    lines = [
        f"| variant | recall@{shop['k']} | single query (median) | single p99 | exact / "
        f"variant | single at k={shop['fetch']} | batched, per query | build | index size "
        "| RSS growth | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in shop["variants"]:
        mark = "" if r["family"] == "exact" else ("met" if r.get("meets_target") else "no")
        lines.append(
            f"| {r['name']} | {r['recall']:.4f} | {_us(r['single_us_median'])} | "
            f"{_us(r['single_us_p99'])} | {r.get('speedup_vs_exact', 1.0):.1f}x | "
            f"{_us(r['single_fetch_us_median'])} | {_us(r['batched_us_per_query_median'])} | "
            f"{r['build_seconds']:,.1f} s | {_mib(r['index_bytes'])} | "
            f"{_mib(r['rss_delta_bytes'])} | {mark} |"
        )
    return lines


def _data_line(shop: dict[str, Any]) -> str:
    d = shop["data"]
    fit = (
        f"ALS fit {d['fit_seconds']:.0f} s (cached from an earlier run)"
        if d.get("cached")
        else f"ALS fit {d['fit_seconds']:.0f} s"
    )
    n = d["item_norm"]
    zipf = shop["synth"].get("item_zipf", 1.0)
    return (
        f"{d['events']:,} events, item popularity Zipf {zipf}, catalogue "
        f"{d['catalogue_items']:,} items of which "
        f"{d['catalogue_items_without_events']:,} have no event (not in the model); "
        f"{d['model_items']:,} items in the model, {d['zero_factor_items']:,} with zero "
        f"factors; **{shop['indexed_items']:,} items indexed**; {d['users']:,} users, "
        f"{d['interactions']:,} user-item pairs; {fit}. Item factor norms: median "
        f"{n['median']:.3f}, p99 {n['p99']:.3f}, max {n['max']:.3f}."
    )


def _target_lines(shop: dict[str, Any]) -> list[str]:
    t = shop["target"]
    hnsw = next(r for r in shop["variants"] if r["family"] == "hnsw")["build_extra"]
    verdict = (
        f"**met** by {', '.join(t['meeting'])}" if t["met"] else "**not met** by any recsvc setting"
    )
    lines = [
        f"Target (recall@{shop['k']} >= {TARGET_RECALL} at <= 1/{TARGET_SPEEDUP:.0f} of exact's "
        f"single-query latency, i.e. <= {_us(t['budget_single_us'])}): {verdict}.",
    ]
    if t["cheapest"]:
        lines.append(f"Cheapest (lowest single-query latency) meeting it: **{t['cheapest']}**.")
    if t["default_variant"]:
        ok = "meets" if t["default_meets"] else "does **not** meet"
        lines.append(
            f"recsvc's defaults (`IndexSettings()`) pick `{t['default_kind']}` here, which is "
            f"the row **{t['default_variant']}**: it {ok} the target."
        )
    if t["suggested_change"]:
        lines.append(f"Setting to change: use **{t['suggested_change']}**.")
    elif t["default_meets"] is False:
        lines.append("No swept recsvc setting meets it.")
    proto = t.get("prototype")
    if proto:
        lines.append(
            f"The norm-ordered exact scan (recsvc's `normscan`, exact by construction) "
            f"{'meets' if proto['meets'] else 'does not meet'} it: recall "
            f"{proto['recall']:.4f} at {_us(proto['single_us'])}."
        )
    ivf = next(r for r in shop["variants"] if r["family"] == "ivf")["build_extra"]
    return [
        " ".join(lines),
        "",
        f"Diagnostics: HNSW base layer median out-degree {hnsw['level0_out_degree_median']:.0f} "
        f"of {hnsw['level0_slots']} slots (mean {hnsw['level0_out_degree_mean']:.1f}; "
        f"{hnsw['level0_out_degree_le_2_share']:.0%} of the items have at most 2 links). "
        f"IVF: {ivf['nlist']:,} lists, imbalance factor {ivf['imbalance_factor']:.1f} "
        "(1 = equal list sizes).",
    ]


def _compare_lines(shop: dict[str, Any]) -> list[str]:
    c = shop.get("compare")
    if not c:
        return []
    recall = {
        "implicit ALS recommend(recalculate_user=True)": c["implicit_exact_recall"],
        "implicit FaissALS recommend (stored user factors)": c["implicit_faiss_recall"],
        "recsvc FoldIn + exact": 1.0,
        f"recsvc FoldIn + default ({c['default_variant']})": c["recsvc_default_recall"],
        f"recsvc FoldIn + {c['scan_variant']}": c["scan_recall"],
    }
    lines = [
        "",
        f"### The path a user would otherwise write ({shop['shop']}, {c['users']} users, "
        f"k = {c['k']}, one thread)",
        "",
        "| path | per call (median) | p99 | recall@k vs exact |",
        "|---|---:|---:|---:|",
    ]
    for name, lat in c["latency_us"].items():
        r = recall.get(name)
        lines.append(
            f"| {name} | {_us(lat['median'])} | {_us(lat['p99'])} | "
            f"{'-' if r is None else f'{r:.4f}'} |"
        )
    lines += [
        "",
        f"- `FaissAlternatingLeastSquares.recommend(..., recalculate_user=True)`: "
        f"{c['faiss_als_recalculate_user']}.",
        f"- recsvc's fold-in and implicit's `recalculate_user` solve the same system: "
        f"relative difference of the vectors median "
        f"{c['foldin_vs_implicit_recalculate_rel_diff_median']:.1e}, max "
        f"{c['foldin_vs_implicit_recalculate_rel_diff_max']:.1e}.",
        f"- Slicing `user_items[userid]` out of the CSR (done before timing): "
        f"{_us(c['csr_row_slice_us'])} per call.",
        "- implicit's recall is measured with `filter_already_liked_items=False` (its timed "
        "calls filter, as a user's would); FaissALS queries the stored user factors (the "
        "timed calls too), the others the folded-in vector.",
    ]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    end = m.get("loadavg_at_end")
    lines = [
        "# Index sweep on trained ALS factors",
        "",
        f"Run {report['date']} (repo at {report['git']}, uncommitted changes possible), "
        f"{report.get('seconds', 0) / 60:.1f} min. Reproduce from the repo root with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; load "
        f"average at start {load}"
        + (f", at end {', '.join(f'{x:.2f}' for x in end)}" if end else "")
        + " (shared with another benchmark: expect noise). Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + ".",
        "",
        f"Factors: {report['config']['factors']} ALS factors fitted by "
        "`training.fit.fit_als` with default settings on synthetic shops (seed "
        f"{SEED}). Queries: "
        f"{report['config']['queries']} user vectors sampled from the trained user factors "
        f"(seed {SEED}). Latencies are the median over {report['config']['passes']} passes of "
        "each pass's median; single queries alternate between variants in blocks of "
        f"{BLOCK} queries, in a random order per block; batched = one call with all queries, all "
        f"threads, over {report['config']['batch_rounds']} rotating rounds. Every raw value "
        "is in `results.json`. efSearch 512 and nprobe 128 / 256 are extra points beyond "
        "the planned sweep (same builds, searched further).",
    ]
    for shop in report["shops"]:
        lines += [
            "",
            f"## {shop['shop']} catalogue",
            "",
            _data_line(shop),
            "",
            *_variant_table(shop),
            "",
            *_target_lines(shop),
            *_compare_lines(shop),
        ]
    if report.get("plot"):
        lines += ["", f"![recall vs single-query latency]({report['plot']})"]
    else:
        lines += ["", f"No plot: {report.get('plot_skipped', 'matplotlib is not installed')}."]
    lines += METHOD_NOTES
    return "\n".join(lines) + "\n"


METHOD_NOTES = [
    "",
    "## Method",
    "",
    "- Indexes are built with `recsvc.index.ItemIndex.build` (exact; IVF with nlist "
    "4·sqrt(n) and an inner-product quantizer; HNSW by inner product, M 32, efConstruction "
    "200), all threads; the efSearch / nprobe rows share one build. implicit FaissALS is "
    "`FaissAlternatingLeastSquares(iterations=0, approximate_similar_items=False)` fitted "
    "on the same confidences with the cached factors set beforehand; its build time "
    "includes a CSR transpose implicit does in `fit` (timed apart in `results.json`, "
    "`build_extra.csr_transpose_seconds`).",
    "- Recall@k is `recsvc.index.measure_recall` (an item counts when its score reaches the "
    "exact k-th score, so ties do not count as misses).",
    "- Single query: `ItemIndex.search` on one row with `faiss.omp_set_num_threads(1)`, as "
    "the server runs it, at k and at k·overfetch (the ranker fetches k·4 candidates; HNSW "
    "then searches with max(efSearch, k·4)). 'exact / variant' is exact's median divided "
    "by the variant's.",
    "- Batched: faiss's flat search switches to BLAS only from "
    "`faiss.cvar.distance_compute_blas_threshold` queries on (see `config` in "
    "`results.json`), so a 1,000-query batch runs the same SIMD scan as single queries, "
    "split over the threads; with the other benchmark holding the cores, batching gains "
    "little here.",
    "- Index size is `len(faiss.serialize_index(...))`; RSS growth is the process RSS after "
    "the build minus before it (after `gc.collect()` and `malloc_trim(0)`), so it also "
    "moves with allocator reuse: read it as approximate.",
    "- The implicit comparison runs with BLAS limited to one thread and implicit's "
    "`num_threads=1`; paths alternate in blocks of users, in a random order per block.",
    "",
]


def plot(report: dict[str, Any], path: Path) -> bool:
    """Recall vs single-query latency, one panel per shop; False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter
    except ImportError:
        return False
    shops = report["shops"]
    fig, axes = plt.subplots(1, len(shops), figsize=(6 * len(shops), 4.5), squeeze=False)
    for ax, shop in zip(axes[0], shops, strict=True):
        families: dict[str, list[dict[str, Any]]] = {}
        for r in shop["variants"]:
            families.setdefault(r["family"], []).append(r)
        for family, rows in families.items():
            xs = [r["single_us_median"] for r in rows]
            ys = [r["recall"] for r in rows]
            ax.plot(xs, ys, marker="o", label=family)
            for r in rows:
                label = r["params"].get("efSearch", r["params"].get("nprobe", ""))
                ax.annotate(str(label), (r["single_us_median"], r["recall"]), fontsize=7)
        t = shop["target"]
        ax.axvline(t["budget_single_us"], color="grey", ls="--", lw=0.8, label="exact / 10")
        ax.axhline(TARGET_RECALL, color="grey", ls=":", lw=0.8, label=f"recall {TARGET_RECALL}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("single-query latency, median (µs, log)")
        ax.set_ylabel(f"recall@{shop['k']} vs exact")
        ax.set_title(f"{shop['shop']} catalogue ({shop['indexed_items']:,} items)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(report: dict[str, Any], out: Path) -> None:
    if plot(report, out / "recall_latency.png"):
        report["plot"] = "recall_latency.png"
    else:
        report["plot"] = None
        report["plot_skipped"] = "matplotlib is not installed in the venv"
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(render_markdown(report))


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sweep FAISS index settings on trained ALS factors.")
    p.add_argument("--shops", nargs="+", choices=list(SHOPS), default=list(SHOPS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/index"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/recsvc-bench/index"))
    p.add_argument("--queries", type=int, default=1000, help="sampled user vectors")
    p.add_argument("--k", type=int, default=20, help="recall@k and the k searched")
    p.add_argument("--passes", type=int, default=3, help="passes over the single queries")
    p.add_argument("--batch-rounds", type=int, default=5, help="rounds of batched calls")
    p.add_argument(
        "--compare-on", nargs="*", default=["100k"], help="shops for the implicit comparison"
    )
    p.add_argument("--compare-users", type=int, default=300)
    args = p.parse_args(argv)
    if min(args.queries, args.k, args.passes, args.batch_rounds, args.compare_users) < 1:
        p.error("counts must be >= 1")
    args.compare_users = min(args.compare_users, args.queries)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from recsvc.config import ALSSettings

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "index sweep on trained ALS factors",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_revision(),
        "command": shlex.join([".venv/bin/python", "benchmarks/bench_index.py", *argv]),
        "machine": machine(),
        "versions": versions(LIBRARIES),
        "config": {
            "factors": ALSSettings().factors,
            "queries": args.queries,
            "k": args.k,
            "passes": args.passes,
            "batch_rounds": args.batch_rounds,
            "block": BLOCK,
            "target_recall": TARGET_RECALL,
            "target_speedup": TARGET_SPEEDUP,
            "shops": {name: SHOPS[name] for name in args.shops},
            "faiss_blas_threshold": faiss_blas_threshold(),
        },
        "shops": [],
    }
    for name in args.shops:
        report["shops"].append(bench_shop(name, args))
        report["seconds"] = time.perf_counter() - started
        write_outputs(report, args.out)  # partial results survive a later failure
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - started
    write_outputs(report, args.out)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
