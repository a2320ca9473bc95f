"""The manifest's schema: round trip, the format-1 upgrade, and what a load refuses."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from recsvc import artifact as art
from recsvc import manifest
from recsvc.config import ALSSettings
from recsvc.errors import ArtifactError
from recsvc.manifest import FEATURES_V1, Manifest, upgrade_v1
from recsvc.model import Model
from recsvc.neighbors import FEATURES
from recsvc.training.pipeline import LoadedData, build_model

from factories import FORMAT1_ANSWERS, answers, block_shop, small_settings
from factories import FORMAT1_ARTIFACT as FORMAT1


def _raw(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    return raw


def _rewrite(path: Path, raw: dict[str, Any], *, sort_keys: bool = True) -> None:
    (path / "manifest.json").write_text(json.dumps(raw, indent=2, sort_keys=sort_keys))


def _format1_weights() -> list[float]:
    with np.load(FORMAT1 / "neighbors.npz", allow_pickle=False) as z:
        return [float(w) for w in z["rerank_weights"]]


@pytest.fixture()
def format2(tmp_path: Path) -> Path:
    """The format-1 fixture read and written again: the same model in format 2."""
    return art.write_artifact(art.read_artifact(FORMAT1), tmp_path / "root")


def test_written_manifest_reads_back_equal(tmp_path: Path) -> None:
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(tmp_path))
    path = art.write_artifact(built.artifact, tmp_path / "root")
    m = art.read_manifest(path)
    assert m == built.artifact.manifest
    assert m.format_version == 2
    assert m.created_at.utcoffset() is not None and m.data.cutoff.utcoffset() is not None
    assert m.config.als.regularization == 0.1  # small_settings'
    text = (path / "manifest.json").read_text()
    assert text == m.to_json()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def _within(old: Any, new: Any) -> bool:
    """Every value of ``old`` is in ``new`` at the same place (dicts may have grown)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(
            k in new and _within(v, new[k]) for k, v in old.items()
        )
    return bool(old == new)


def test_format1_upgrade_keeps_every_value_and_names_the_weights() -> None:
    raw, weights = _raw(FORMAT1), _format1_weights()
    m = upgrade_v1(raw, weights)
    assert m.format_version == 1  # the format it was written in
    assert m.neighbors is not None and m.neighbors.rerank_weights is not None
    assert list(m.neighbors.rerank_weights) == list(FEATURES_V1)
    assert list(m.neighbors.rerank_weights.values()) == weights
    assert m.ranking.user_blend_fit is None
    # everything format 1 had comes out as it went in, byte for byte in JSON; settings
    # added since come with their defaults
    again = m.as_json()
    assert again["bought_together"] is None  # sections added since: absent in format 1
    assert again["peers"] is None
    del again["neighbors"], again["ranking"]["user_blend_fit"], again["bought_together"]
    del again["peers"]
    # a weight added since: 0, the blend as it was
    for blend in ("user_blend", "session_blend"):
        assert again["ranking"][blend].pop("peers") == 0.0
    assert _within(raw["config"], again.pop("config"))
    assert again == {k: v for k, v in raw.items() if k != "config"}
    # a fitted blend's report, present when the trainer fitted one, is kept
    fit = {"recall@20": 0.25, "users": 250, "popularity_half_life_days": 7.0}
    fitted = upgrade_v1({**raw, "ranking": {**raw["ranking"], "user_blend_fit": fit}}, weights)
    assert fitted.ranking.user_blend_fit is not None
    assert fitted.ranking.user_blend_fit.recall_at_20 == 0.25
    # no neighbour model, or one without re-ranking
    assert upgrade_v1(raw, None).neighbors is None
    no_rerank = upgrade_v1(raw, []).neighbors
    assert no_rerank is not None and no_rerank.rerank_weights is None
    with pytest.raises(ValueError, match="holds 3 re-ranker weights"):
        upgrade_v1(raw, [1.0, 2.0, 3.0])


def test_format1_artifact_written_as_format2_serves_the_same(format2: Path) -> None:
    assert _raw(format2)["format_version"] == 2
    with np.load(format2 / "neighbors.npz", allow_pickle=False) as z:
        assert "rerank_weights" not in z.files  # the manifest holds them, by name
    upgraded = art.read_manifest(FORMAT1)
    m = art.read_manifest(format2)
    assert m.model_copy(update={"format_version": 1, "files": upgraded.files}) == upgraded
    expected = json.loads(FORMAT1_ANSWERS.read_text())
    assert answers(Model(art.read_artifact(format2))) == expected


def test_weights_in_another_order_on_disk_score_the_same(format2: Path) -> None:
    raw = _raw(format2)
    weights = raw["neighbors"]["rerank_weights"]
    raw["neighbors"]["rerank_weights"] = {f: weights[f] for f in reversed(FEATURES)}
    _rewrite(format2, raw, sort_keys=False)
    assert next(iter(_raw(format2)["neighbors"]["rerank_weights"])) == FEATURES[-1]
    expected = json.loads(FORMAT1_ANSWERS.read_text())
    assert answers(Model(art.read_artifact(format2))) == expected


@pytest.mark.parametrize("version", [99, 0, None, "2", True])
def test_unknown_format_is_refused(format2: Path, version: object) -> None:
    raw = _raw(format2)
    raw["format_version"] = version
    _rewrite(format2, raw)
    with pytest.raises(ArtifactError, match=rf"{format2}/manifest\.json: artifact format"):
        art.read_artifact(format2)


@pytest.mark.parametrize(
    ("section", "field"),
    [(None, "model_version"), (None, "files"), ("data", "cutoff_unix"), ("index", "recall")],
)
def test_missing_field_is_refused_naming_artifact_and_field(
    format2: Path, section: str | None, field: str
) -> None:
    raw = _raw(format2)
    del (raw[section] if section else raw)[field]
    _rewrite(format2, raw)
    where = f"{section}.{field}" if section else field
    with pytest.raises(ArtifactError, match=rf"{format2}/manifest\.json: {where}: Field required"):
        art.read_manifest(format2)


def test_missing_field_of_format1_is_refused(tmp_path: Path) -> None:
    path = Path(shutil.copytree(FORMAT1, tmp_path / FORMAT1.name))
    raw = _raw(path)
    del raw["ranking"]["user_blend"]
    _rewrite(path, raw)
    with pytest.raises(ArtifactError, match=r"manifest\.json: ranking\.user_blend: Field required"):
        art.read_manifest(path)


@pytest.mark.parametrize("section", [None, "data", "ranking", "neighbors"])
def test_unknown_field_is_refused(format2: Path, section: str | None) -> None:
    raw = _raw(format2)
    (raw[section] if section else raw)["surprise"] = 1
    _rewrite(format2, raw)
    where = f"{section}.surprise" if section else "surprise"
    with pytest.raises(ArtifactError, match=rf"{format2}/manifest\.json: {where}: Extra inputs"):
        art.read_manifest(format2)


def test_rerank_feature_names_must_match_the_code(format2: Path) -> None:
    raw = _raw(format2)
    weights = raw["neighbors"]["rerank_weights"]
    weights["knn_renamed"] = weights.pop("knn")
    _rewrite(format2, raw)
    with pytest.raises(ArtifactError) as exc:
        art.read_artifact(format2)
    message = str(exc.value)
    assert str(format2) in message and "neighbors.rerank_weights" in message
    assert "missing feature(s) knn" in message and "unknown feature(s) knn_renamed" in message
    del weights["knn_renamed"]
    _rewrite(format2, raw)
    with pytest.raises(ArtifactError, match=r"missing feature\(s\) knn"):
        art.read_artifact(format2)


def test_config_fields_newer_than_the_artifact_take_their_defaults_not_the_environment(
    format2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # settings gain fields; an artifact written before one existed still loads, with
    # the field's default, whatever RECSVC_* the reading process runs with
    raw = _raw(format2)
    del raw["config"]["als"]["alpha"], raw["config"]["server"]
    _rewrite(format2, raw)
    monkeypatch.setenv("RECSVC_ALS__ALPHA", "3.5")
    m = art.read_manifest(format2)
    assert m.config.als.alpha == ALSSettings().alpha == 10.0
    assert isinstance(m, Manifest)


def test_every_field_says_what_it_means() -> None:
    sections = [
        obj
        for obj in vars(manifest).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == manifest.__name__
    ]
    assert Manifest in sections and len(sections) >= 9
    for section in sections:
        if section is manifest.TrainedSettings:
            continue  # recsvc.config documents the settings (config.example.toml)
        for name, info in section.model_fields.items():
            assert info.description, f"{section.__name__}.{name}"


def test_no_secret_reaches_the_artifact(tmp_path: Path) -> None:
    # artifacts are copied between hosts: the auth token and a Redis password stay out
    settings = small_settings(
        None,
        redis={"url": "redis://app:hunter2@redis.internal:6379/0"},
        server={"auth_token": "s3cret-token"},
    )
    built = build_model(LoadedData(block_shop(), None, (), 0), settings)
    path = art.write_artifact(built.artifact, tmp_path)
    text = (path / "manifest.json").read_text()
    assert "hunter2" not in text and "s3cret-token" not in text
    config = art.read_manifest(path).config
    assert config.redis.url == "redis://app:***@redis.internal:6379/0"
    assert config.server.auth_token is None
