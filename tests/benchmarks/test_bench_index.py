"""benchmarks/bench_index.py builds every index of its sweep (a smoke test on a tiny
trained-like shop: the sweep itself runs for minutes, so a broken variant would
otherwise show only in `make bench-index`)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.config import IndexSettings

from factories import bench_script


@pytest.fixture(scope="module")
def bench_index() -> ModuleType:
    return bench_script("bench_index")


def test_every_variant_builds_and_the_exact_ones_agree(bench_index: ModuleType) -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, factors = 300, 4_000, 64
    items = (rng.standard_normal((n_items, factors)) * rng.lognormal(0, 1, (n_items, 1))).astype(
        np.float32
    )
    users = rng.standard_normal((n_users, factors)).astype(np.float32)
    weights = sp.random(n_users, n_items, density=0.01, format="csr", dtype=np.float32, rng=1)
    trained = bench_index.Trained("tiny", items, users, weights, {})
    variants, _ = bench_index.build_variants(items, trained, IndexSettings())
    kinds = {v.family for v in variants}
    assert {"exact", "hnsw", "ivf", "norm-scan", "implicit-faiss"} <= kinds
    exact = next(v for v in variants if v.family == "exact")
    scan = next(v for v in variants if v.family == "norm-scan")
    assert scan.params == {"scan": "compiled, stops at the first row below the k-th best"}
    queries = users[:20]
    _, truth = exact.build.index.search(queries, 20)
    _, found = scan.build.index.search(queries, 20)
    assert np.array_equal(truth, found)
