"""The publish gate: the trainer scores its time-split holdout through the served
ranking, and publishing refuses a model that does not beat popularity and buy-again
or falls short of the current model, naming the metric; --force overrides and is
recorded (docs/evaluation.md, "The publish gate")."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

import recsvc.training.publish as publishing
from recsvc import artifact as art
from recsvc.cli import main
from recsvc.config import Settings
from recsvc.errors import QualityGateError
from recsvc.training import pipeline
from recsvc.training.evaluation import HOLDOUT_MIN_USERS, compared_keys
from recsvc.training.fit import Factors
from recsvc.training.pipeline import DataSpec, train
from recsvc.training.publish import PUBLISH_LOG, publish
from recsvc.training.retrain import retrain
from recsvc.training.synth import SynthConfig, generate

from factories import T0, block_shop, event_table, small_settings


def als(factors: int = 16, iterations: int = 5, seed: int = 1) -> dict[str, Any]:
    return {"factors": factors, "iterations": iterations, "random_state": seed, "num_threads": 1}


#: Fast settings for the 30k-event shop: ALS 16 factors, no session model (a train
#: takes ~0.5 s; the gate does not read the session model).
GOOD = {"als": als(), "neighbors": {"enabled": False}}


@dataclass(frozen=True)
class Shop:
    spec: DataSpec
    root: Path
    """G1 published; D, W and G2 trained while G1 was current."""
    good: str
    """G1: the good model, published first."""
    degraded: str
    """D: ALS with its item vectors shuffled among the items, ranked by CF alone."""
    worse: str
    """W: 2 factors, 1 sweep: beats the baselines, far below G1."""
    other_good: str
    """G2: G1's settings with another seed."""
    elsewhere: str
    """E: G1's settings on more data (another holdout)."""
    fresh: Path
    """Another root: A (G1's settings) and B (W's, G1's seed) trained with nothing
    current, on the same holdout."""
    a: str
    b: str


def settings_for(root: Path, **overrides: Any) -> Settings:
    return small_settings(None, artifact_root=str(root), **{**GOOD, **overrides})


def shuffled_fit(real: Any) -> Any:
    def fit(*args: Any, **kwargs: Any) -> Factors:
        factors: Factors = real(*args, **kwargs)
        order = np.random.default_rng(0).permutation(len(factors.item_factors))
        factors.item_factors[:] = factors.item_factors[order]
        return factors

    return fit


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    d = tmp_path_factory.mktemp("gate")
    generate(SynthConfig(n_events=30_000, seed=5), d / "events.csv.gz", d / "catalog.csv")
    spec = DataSpec((d / "events.csv.gz",), catalog=d / "catalog.csv")
    root = d / "artifacts"
    good = train(spec, settings_for(root)).artifact.model_version
    publish(settings_for(root), good)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pipeline, "fit_als", shuffled_fit(pipeline.fit_als))
        degraded = train(
            spec,
            settings_for(
                root,
                als=als(seed=6),
                ranking={"user_blend": {"cf": 1.0}},
            ),
        ).artifact.model_version
    worse = train(spec, settings_for(root, als=als(2, 1, seed=7)))
    other = train(spec, settings_for(root, als=als(seed=2)))
    more = d / "more.parquet"
    pq.write_table(event_table([("x1", "i1", T0, "purchase", 1.0, "x1-1")]), more)
    elsewhere = train(
        replace(spec, events=(*spec.events, more)), settings_for(root, als=als(seed=8))
    )
    fresh = d / "fresh"
    a = train(spec, settings_for(fresh)).artifact.model_version
    b = train(spec, settings_for(fresh, als=als(2, 1)))
    yield Shop(
        spec,
        root,
        good,
        degraded,
        worse.artifact.model_version,
        other.artifact.model_version,
        elsewhere.artifact.model_version,
        fresh,
        a,
        b.artifact.model_version,
    )


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "artifacts"))


def metrics(root: Path, version: str) -> dict[str, float]:
    return art.read_manifest(root / version).metrics


def publish_log(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / PUBLISH_LOG).read_text().splitlines()]


def test_the_trainer_records_its_holdout_metrics(shop: Shop) -> None:
    good = metrics(shop.root, shop.good)
    rankings = ("holdout", "popularity", "buy_again")
    scores = {f"{who}_{m}_at_20" for who in rankings for m in ("recall", "ndcg")}
    assert set(good) == {"index_recall_at_20", "holdout_users", *scores}
    assert good["index_recall_at_20"] == 1.0
    assert good["holdout_users"] >= HOLDOUT_MIN_USERS
    assert all(0.0 <= v <= 1.0 for k, v in good.items() if k != "holdout_users")
    assert good["holdout_recall_at_20"] > good["popularity_recall_at_20"]
    assert good["holdout_ndcg_at_20"] > good["buy_again_ndcg_at_20"]
    assert "holdout_seconds" in art.read_manifest(shop.root / shop.good).timings
    # trained while G1 was current: both scored on the same customers, G1 as it ranked
    # them when it was trained (the holdout is the same data's)
    other = metrics(shop.root, shop.other_good)
    keys = compared_keys(shop.good)
    assert other[keys["users"]] == other["holdout_users"] == good["holdout_users"]
    assert other[keys["recall"]] == other["holdout_recall_at_20"]
    assert other[keys["current_recall"]] == pytest.approx(good["holdout_recall_at_20"])
    assert other[keys["current_ndcg"]] == pytest.approx(good["holdout_ndcg_at_20"])
    # the baselines do not depend on the model
    for name in ("popularity_recall_at_20", "buy_again_ndcg_at_20"):
        assert other[name] == good[name]


def test_the_gate_refuses_a_degraded_model_naming_the_metric(shop: Shop, tmp_path: Path) -> None:
    root = copy_of(shop.root, tmp_path)
    m = metrics(root, shop.degraded)
    assert m["holdout_recall_at_20"] < m["popularity_recall_at_20"]  # really degraded
    named = (
        f"holdout_recall_at_20 {m['holdout_recall_at_20']:.4f} does not beat "
        f"popularity_recall_at_20 {m['popularity_recall_at_20']:.4f}"
    )
    with pytest.raises(QualityGateError, match=re.escape(named)) as refused:
        publish(settings_for(root), shop.degraded)
    assert "holdout_ndcg_at_20" in str(refused.value) and "--force" in str(refused.value)
    assert art.current_version(root) == shop.good
    last = publish_log(root)[-1]
    assert last["version"] == shop.degraded and last["current"] == shop.good
    assert last["outcome"] == "refused" and named in last["refusal"]


def test_the_gate_accepts_a_good_model(shop: Shop, tmp_path: Path) -> None:
    root = copy_of(shop.root, tmp_path)
    result = publish(settings_for(root), shop.other_good)
    assert result.version == shop.other_good and result.previous == shop.good
    assert result.forced is None and result.notes == ()
    assert art.current_version(root) == shop.other_good
    last = publish_log(root)[-1]
    assert last["outcome"] == "published" and last["refusal"] is None and last["notes"] == []


def test_force_publishes_the_degraded_model_and_records_it(
    shop: Shop, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_of(shop.root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="recsvc.training.publish"):
        result = publish(settings_for(root), shop.degraded, force=True)
    assert art.current_version(root) == shop.degraded
    assert result.forced is not None and "does not beat popularity_recall_at_20" in result.forced
    assert "despite the publish gate" in caplog.text
    last = publish_log(root)[-1]
    assert last["outcome"] == "forced" and last["refusal"] == result.forced
    assert last["version"] == shop.degraded and last["current"] == shop.good
    assert oct((root / PUBLISH_LOG).stat().st_mode & 0o777) == "0o600"


def test_a_model_worse_than_the_current_beyond_the_tolerance_is_refused(
    shop: Shop, tmp_path: Path
) -> None:
    root = copy_of(shop.root, tmp_path)
    m = metrics(root, shop.worse)
    keys = compared_keys(shop.good)
    # it beats both baselines: only the comparison refuses it
    for measure in ("recall", "ndcg"):
        for baseline in ("popularity", "buy_again"):
            assert m[f"holdout_{measure}_at_20"] > m[f"{baseline}_{measure}_at_20"]
    assert m[keys["recall"]] < 0.95 * m[keys["current_recall"]]
    named = (
        f"{keys['recall']} {m[keys['recall']]:.4f} is worse than the current model "
        f"{shop.good}'s {keys['current_recall']} {m[keys['current_recall']]:.4f} by more "
        "than evaluation.publish_tolerance 0.05"
    )
    with pytest.raises(QualityGateError, match=re.escape(named)):
        publish(settings_for(root), shop.worse)
    assert art.current_version(root) == shop.good
    # within a tolerance wide enough, the same comparison lets it through
    loose = settings_for(root, evaluation={"publish_tolerance": 0.6})
    assert publish(loose, shop.worse).forced is None
    assert art.current_version(root) == shop.worse


def test_a_model_compared_with_another_than_the_current_is_refused(
    shop: Shop, tmp_path: Path
) -> None:
    # E was compared with G1, on other data than D's; once D is current (forced),
    # nothing compares E with it
    root = copy_of(shop.root, tmp_path)
    publish(settings_for(root), shop.degraded, force=True)
    named = (
        f"not compared with the current model {shop.degraded}: this one was trained when "
        f"{shop.good} was current"
    )
    with pytest.raises(QualityGateError, match=re.escape(named)):
        publish(settings_for(root), shop.elsewhere)
    assert publish(settings_for(root), shop.elsewhere, force=True).forced is not None
    # G2, trained on D's data, is compared with it by their own holdout metrics
    publish(settings_for(root), shop.degraded, force=True)
    assert publish(settings_for(root), shop.other_good).forced is None


def test_models_of_the_same_holdout_are_compared_by_their_own_metrics(
    shop: Shop, tmp_path: Path
) -> None:
    # A and B were trained with nothing current, on the same data and holdout settings
    root = copy_of(shop.fresh, tmp_path)
    a, b = metrics(root, shop.a), metrics(root, shop.b)
    assert not any(k.startswith("compared_") for k in [*a, *b])
    assert publish(settings_for(root), shop.a).forced is None
    named = (
        f"holdout_recall_at_20 {b['holdout_recall_at_20']:.4f} is worse than the current "
        f"model {shop.a}'s holdout_recall_at_20 {a['holdout_recall_at_20']:.4f}"
    )
    with pytest.raises(QualityGateError, match=re.escape(named)):
        publish(settings_for(root), shop.b)
    # the other way round B is no regression
    publish(settings_for(root), shop.b, force=True)
    assert publish(settings_for(root), shop.a).forced is None


def test_a_model_too_small_to_judge_passes_with_a_warning_on_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = tmp_path / "block.parquet"
    pq.write_table(block_shop(users_per_group=20), events)  # 40 customers
    settings = small_settings(tmp_path)
    version = train(DataSpec((events,)), settings).artifact.model_version
    users = metrics(settings.artifact_root, version)["holdout_users"]
    assert users < HOLDOUT_MIN_USERS
    with caplog.at_level(logging.WARNING, logger="recsvc.training.publish"):
        result = publish(settings, version)
    assert result.forced is None and len(result.notes) == 1
    assert f"fewer than {HOLDOUT_MIN_USERS}" in result.notes[0] and "not judged" in result.notes[0]
    assert result.notes[0] in caplog.text
    last = publish_log(settings.artifact_root)[-1]
    assert last["outcome"] == "published" and last["notes"] == list(result.notes)


def test_the_command_line_refuses_then_forces(
    shop: Shop, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(shop.root, tmp_path)
    common = ["--artifacts", str(root)]
    assert main(["-q", "publish", *common, "--version", shop.degraded]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not beat popularity_recall_at_20" in err
    assert main(["-q", "publish", *common, "--version", shop.degraded, "--force"]) == 0
    out = capsys.readouterr().out
    assert f"published {shop.degraded}" in out and "forced past the publish gate" in out
    assert publish_log(root)[-1]["outcome"] == "forced"
    # --force overrides a publish: not a rollback, not a train that publishes nothing,
    # not every run of the scheduler
    assert main(["-q", "publish", *common, "--rollback", "--force"]) == 2
    events = str(shop.spec.events[0])
    assert main(["-q", "train", "--events", events, *common, "--force"]) == 2
    assert main(["-q", "retrain", "--events", events, *common, "--force", "--every", "60"]) == 2


def test_retrain_force_publishes_past_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base.parquet"
    pq.write_table(block_shop(), base)
    settings = small_settings(tmp_path)

    def refuse(path: Path, settings: Settings) -> tuple[str, ...]:
        raise QualityGateError(f"{path.name}: refused by the gate")

    monkeypatch.setattr(publishing, "_check_gate", refuse)
    with pytest.raises(QualityGateError):
        retrain(DataSpec((base,)), settings, [])
    assert art.current_version(settings.artifact_root) is None
    # another seed: a version named like the refused one (same second, same factors)
    # would not be written
    settings = small_settings(tmp_path, als={**als(2, 15, seed=2), "regularization": 0.1})
    report = retrain(DataSpec((base,)), settings, [], force=True)
    assert art.current_version(settings.artifact_root) == report.version
    assert report.forced == f"{report.version}: refused by the gate"
    outcomes = [e["outcome"] for e in publish_log(settings.artifact_root)]
    assert outcomes == ["refused", "forced"]


@pytest.mark.integration
def test_a_refused_model_loads_no_vector(
    shop: Shop, tmp_path: Path, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    root = copy_of(shop.root, tmp_path)
    settings = settings_for(root, redis={"url": redis_url, "prefix": redis_prefix})
    with pytest.raises(QualityGateError):
        publish(settings, shop.degraded)
    assert not list(redis_client.scan_iter(f"{redis_prefix}:*", count=1000))
    assert publish(settings, shop.other_good).vectors_written > 0
