from pathlib import Path

import pytest

from recsvc.config import Settings, example_toml, load_settings
from recsvc.errors import ConfigError

from factories import REPO

ROOT = REPO


def test_example_config_documents_exactly_the_defaults() -> None:
    text = (ROOT / "config.example.toml").read_text()
    assert text == example_toml(), "regenerate: python -m recsvc.config > config.example.toml"
    example = load_settings(ROOT / "config.example.toml")
    assert example.model_dump() == Settings().model_dump()
    for section in ("[weighting]", "[als]", "[index]", "[ranking]", "[redis]", "[server]"):
        assert section in text
    assert "# Confidence scale: C_ui = 1 + alpha * weight_ui" in text


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'artifact_root = "/from/file"\n[als]\nfactors = 32\niterations = 3\nalpha = 2.0\n'
    )
    monkeypatch.setenv("RECSVC_ALS__ITERATIONS", "7")
    monkeypatch.setenv("RECSVC_ALS__ALPHA", "4.0")
    s = load_settings(cfg, als={"alpha": 9.0, "factors": None})
    assert s.artifact_root == Path("/from/file")
    assert s.als.factors == 32  # file (flag left unset)
    assert s.als.iterations == 7  # environment over file
    assert s.als.alpha == 9.0  # flag over environment


def test_invalid_values_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"als\.factors"):
        load_settings(None, als={"factors": 0})
    cfg = tmp_path / "c.toml"
    cfg.write_text("[als]\nfactorz = 3\n")
    with pytest.raises(ConfigError, match="factorz"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    cfg.write_text("[als\n")
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings(cfg)


def test_settings_are_frozen_and_erasure_path_defaults_under_artifacts() -> None:
    s = load_settings(None, artifact_root="/x")
    assert s.erasure_path == Path("/x/erased_users.txt")
    with pytest.raises(Exception, match="frozen"):
        s.artifact_root = Path("/y")  # type: ignore[misc]


def test_old_names_of_the_visit_settings_still_load(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[neighbors]\nsession_gap_minutes = 45.0\nmax_session_length = 50\n")
    s = load_settings(cfg)
    assert (s.neighbors.visit_gap_minutes, s.neighbors.max_visit_length) == (45.0, 50)
    assert s.neighbors.params().neighbors == 200  # the hyperparameters, declared once
    with pytest.raises(ConfigError, match=r"neighbors\.neighbors"):
        load_settings(None, neighbors={"neighbors": 0})
