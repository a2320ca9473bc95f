"""The Spark engine writes the same artifact: the same small shop trained with implicit
and with Spark MLlib (local mode; the weighting and aggregations in Spark SQL), both
artifacts served by one server (published in turn), and their served recall@20 on a
time-split holdout within 5% of each other."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsvc import artifact as art
from recsvc.client import RecommenderClient
from recsvc.training.loading import load_events
from recsvc.training.pipeline import DataSpec, train
from recsvc.training.splits import split_by_cutoff
from recsvc.training.synth import SynthConfig, generate

from factories import small_settings
from server_harness import ServerThread, soon

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]

ALS = {"factors": 16, "iterations": 10, "random_state": 3, "num_threads": 1}


def _served_recall(target: str, truth: dict[str, set[str]], k: int = 20) -> float:
    hits = total = 0
    with RecommenderClient(target, timeout=10.0) as client:
        for user, bought in sorted(truth.items()):
            got = {i.item_id for i in client.recommend(user, k=k).items}
            hits += len(got & bought)
            total += len(bought)
    return hits / total


def test_both_engines_write_artifacts_one_server_serves_alike(
    tmp_path: Path, redis_url: str
) -> None:
    generate(SynthConfig(n_events=40_000, seed=11), tmp_path / "events.csv.gz", tmp_path / "c.csv")
    table, _ = load_events(tmp_path / "events.csv.gz")
    ts = table["timestamp"]
    cut = int(pc.min(ts).as_py()) + int(0.85 * (pc.max(ts).as_py() - pc.min(ts).as_py()))
    split = split_by_cutoff(table, datetime.fromtimestamp(cut, UTC))
    pq.write_table(split.train, tmp_path / "train.parquet")
    spec = DataSpec((tmp_path / "train.parquet",), catalog=tmp_path / "c.csv")
    root = tmp_path / "artifacts"
    versions = {}
    for engine in ("implicit", "spark"):
        settings = small_settings(
            None,
            artifact_root=str(root),
            als={**ALS, "engine": engine, "spark_master": "local[2]"},
        )
        built = train(spec, settings).artifact
        path = root / built.model_version
        manifest = art.read_manifest(path)
        art.verify(path, manifest)  # the same checks: checksums, shapes on read
        assert manifest.config.als.engine == engine
        art.read_artifact(path)
        versions[engine] = built.model_version
    implicit = art.read_artifact(root / versions["implicit"])
    spark = art.read_artifact(root / versions["spark"])
    assert implicit.item_factors.shape == spark.item_factors.shape
    assert abs(implicit.item_factors - spark.item_factors).max() > 1e-3  # two fits
    # one weighting, one aggregation: Spark SQL's matrices are the driver's
    assert spark.user_ids.tolist() == implicit.user_ids.tolist()
    assert spark.item_ids.tolist() == implicit.item_ids.tolist()
    for name in ("user_items", "user_purchases"):
        a, b = getattr(spark, name), getattr(implicit, name)
        assert ((a != 0) != (b != 0)).nnz == 0, name
        assert abs(a - b).max() <= 1e-5 * abs(b).max(), name
    assert "spark_weights_seconds" in spark.manifest.timings

    art.publish_version(root, versions["implicit"])
    server = ServerThread(
        small_settings(
            None,
            artifact_root=str(root),
            redis={"url": redis_url},
            server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "log")},
        )
    )
    try:
        recall = {"implicit": _served_recall(server.target, split.truth)}
        art.publish_version(root, versions["spark"])
        server.call(server.running.reload())

        def spark_served() -> bool:
            with RecommenderClient(server.target) as c:
                return c.model_info().model_version == versions["spark"]

        soon(spark_served, within=30.0)
        recall["spark"] = _served_recall(server.target, split.truth)
    finally:
        server.stop()
    print(recall)
    assert recall["implicit"] > 0.05
    assert abs(recall["spark"] - recall["implicit"]) <= 0.05 * recall["implicit"], recall
