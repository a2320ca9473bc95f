"""The trainer end to end on small files: artifact, gate, erasure, quality floor."""

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from recsvc import artifact as art
from recsvc.config import RepeatPolicy
from recsvc.errors import DataError, QualityGateError
from recsvc.training import neighbors, pipeline
from recsvc.training.evaluation import evaluate, split_by_cutoff, split_last_basket
from recsvc.training.pipeline import DataSpec, LoadedData, load_data, repeat_share, train
from recsvc.training.publish import publish, rollback
from recsvc.training.synth import SynthConfig, generate

from factories import SHARED_DATA, T0, block_shop, event_table, small_settings


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("shop")
    generate(SynthConfig(n_events=60_000, seed=5), d / "events.csv.gz", d / "catalog.csv")
    return d / "events.csv.gz", d / "catalog.csv"


def test_train_writes_a_complete_artifact(shop: tuple[Path, Path], tmp_path: Path) -> None:
    events, catalog = shop
    settings = small_settings(tmp_path, als={"factors": 16, "iterations": 5})
    result = train(DataSpec((events,), catalog=catalog), settings)
    loaded = art.read_artifact(result.path)
    m = loaded.manifest
    assert m == result.artifact.manifest
    assert m.data.users == len(loaded.user_ids) > 100
    assert m.data.events == 60_000
    assert m.config.als.factors == 16
    assert m.index.kind == "exact" and m.index.recall == 1.0
    assert m.ranking.repeat_policy in {RepeatPolicy.ALLOW, RepeatPolicy.EXCLUDE}
    assert set(m.timings) >= {"load_seconds", "fit_seconds", "index_seconds"}
    assert m.neighbors is not None and m.neighbors.rerank_weights is not None
    # the catalogue reached the artifact: categories and stock flags
    assert len(loaded.categories) > 1
    assert (loaded.item_category >= 0).mean() > 0.99
    assert not loaded.item_available.all()


@pytest.mark.slow  # ~10 s: trains several models
def test_session_model_beside_the_blend_fit_changes_nothing(
    shop: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with two cores the session model is built on a thread beside the blend fit
    events, catalog = shop
    settings = small_settings(tmp_path, als={"factors": 16, "iterations": 5})
    data = load_data(DataSpec((events,), catalog=catalog), settings)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(pipeline, "cores", lambda: 2)
    monkeypatch.setattr(neighbors, "cores", lambda: 2)
    two = pipeline.build_model(data, settings, now=now).artifact
    # one step at a time: on one core, or when the settings say so
    serial = small_settings(
        tmp_path, als={"factors": 16, "iterations": 5}, neighbors={"parallel_build": False}
    )
    one = pipeline.build_model(data, serial, now=now).artifact
    assert "neighbors_wait_seconds" in two.manifest.timings
    assert "neighbors_wait_seconds" not in one.manifest.timings
    assert two.manifest.ranking == one.manifest.ranking
    assert two.manifest.ranking.user_blend_fit is not None
    assert two.manifest.neighbors == one.manifest.neighbors
    assert two.neighbors is not None and one.neighbors is not None
    assert two.neighbors.keys() == one.neighbors.keys()
    for name, array in two.neighbors.items():
        assert np.array_equal(array, one.neighbors[name]), name
    assert np.array_equal(two.popularity, one.popularity)
    monkeypatch.setattr(pipeline, "cores", lambda: 1)
    monkeypatch.setattr(neighbors, "cores", lambda: 1)
    alone = pipeline.build_model(data, settings, now=now).artifact
    assert "neighbors_wait_seconds" not in alone.manifest.timings


def test_a_failing_session_model_fails_the_build_on_either_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an error on the session model's thread reaches the caller, as it does without it
    data = LoadedData(block_shop(), None, (), 0)

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("session model failed")

    monkeypatch.setattr(pipeline, "build_neighbor_model", broken)
    for n in (2, 1):
        monkeypatch.setattr(pipeline, "cores", lambda n=n: n)
        with pytest.raises(ValueError, match="session model failed"):
            pipeline.build_model(data, small_settings(tmp_path))


def test_publish_refuses_an_index_below_the_recall_floor(
    shop: tuple[Path, Path], tmp_path: Path
) -> None:
    events, _ = shop
    poor = {"kind": "ivf", "ivf_nlist": 60, "ivf_nprobe": 1, "recall_floor": 0.95}
    settings = small_settings(tmp_path, als={"factors": 16, "iterations": 3}, index=poor)
    result = train(DataSpec((events,)), settings)
    recall = result.artifact.manifest.index.recall
    assert recall < 0.95
    with pytest.raises(QualityGateError, match="below the floor"):
        publish(settings, result.artifact.model_version)
    assert art.current_version(settings.artifact_root) is None


@pytest.mark.slow  # ~10 s: trains several models
def test_publish_then_rollback_without_redis(shop: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = shop
    settings = small_settings(tmp_path, als={"factors": 8, "iterations": 2})
    first = train(DataSpec((events,)), settings).artifact.model_version
    second = train(
        DataSpec((events,)), small_settings(tmp_path, als={"factors": 8, "iterations": 3})
    )
    assert publish(settings, first).vectors_written == 0
    assert publish(settings).version == second.artifact.model_version  # newest by default
    assert rollback(settings).version == first
    assert art.current_version(settings.artifact_root) == first


def test_erased_users_never_reach_the_fit(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    with events.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(6):
            for i in range(4):
                w.writerow([f"u{u}", f"i{(u + i) % 5}", 1_700_000_000 + u * 100 + i])
        w.writerow(["gone", "only-gone-bought-this", 1_700_000_999])
    settings = small_settings(tmp_path)
    settings.erasure_path.parent.mkdir(parents=True, exist_ok=True)
    settings.erasure_path.write_text("gone\n")
    result = train(DataSpec((events,)), settings)
    assert "gone" not in result.artifact.user_ids.tolist()
    assert "only-gone-bought-this" not in result.artifact.item_ids.tolist()
    assert result.artifact.manifest.data.erased_events == 1


def test_too_little_data_is_a_clear_error(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\n")
    with pytest.raises(DataError, match="too little data"):
        train(DataSpec((events,)), small_settings(tmp_path))


def test_repeat_share_measures_rebuying() -> None:
    rows = [
        ("a", "x", T0, "purchase", 1, "1"),
        ("a", "x", T0 + 100, "purchase", 1, "2"),
        ("b", "y", T0, "purchase", 1, "3"),
        ("b", "z", T0 + 100, "purchase", 1, "4"),
    ]
    assert repeat_share(event_table(rows), 0.5) == pytest.approx(0.5)


def test_quality_floor_on_a_synthetic_shop(shop: tuple[Path, Path], tmp_path: Path) -> None:
    """A regression in weighting, fitting or ranking fails here.

    Measured when written (seeded, single-threaded fit, so reproducible): recall@20
    served 0.532, als 0.513, blend 0.345, popularity 0.253 over 550 test users.
    The absolute floor sits ~15% under served so a library upgrade's numerical
    drift does not trip it; the comparisons are the product's promise.
    """
    events, catalog = shop
    settings = small_settings(
        tmp_path, als={"factors": 32, "iterations": 10, "regularization": 0.05}
    )
    data = load_data(DataSpec((events,), catalog=catalog), settings)
    report = evaluate(data, split_last_basket(data.table), settings, dataset="synthetic")
    m = report.metrics
    assert report.users > 500
    assert m["served"]["recall@20"] >= 0.45
    assert m["served"]["recall@20"] > 1.5 * m["popularity"]["recall@20"]
    assert m["served"]["recall@20"] >= m["als"]["recall@20"]
    assert m["served"]["recall@20"] > m["blend"]["recall@20"]
    json.dumps(report.to_json())  # the report is JSON as written by --report
    assert np.isfinite(list(m["served"].values())).all()


SHARED = SHARED_DATA


@pytest.mark.slow
def test_online_retail_served_and_als_beat_popularity(tmp_path: Path) -> None:
    """The documented protocol on the real file (docs/evaluation.md)."""
    path = SHARED / "online_retail_ii.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared datasets are not beside this checkout")
    settings = small_settings(tmp_path, als={"factors": 64, "iterations": 15})
    data = load_data(DataSpec((path,), format="online-retail"), settings)
    split = split_by_cutoff(data.table, datetime(2011, 9, 1, tzinfo=UTC))
    m = evaluate(data, split, settings, dataset="online-retail-ii").metrics
    assert m["als"]["recall@20"] > 2 * m["popularity"]["recall@20"]
    assert m["served"]["recall@20"] > 3 * m["popularity"]["recall@20"]
    assert m["served"]["recall@20"] >= 0.17  # 0.19 measured with the defaults
