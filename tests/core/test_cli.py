"""The console script as a user runs it: one-line errors, exit codes, end to end."""

import gzip
import json
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recsvc import artifact as art
from recsvc.artifact import write_artifact
from recsvc.cli import main
from recsvc.errors import ArtifactError
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings

RECSVC = [sys.executable, "-m", "recsvc"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECSVC, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def test_bad_row_is_one_line_naming_file_line_and_column(tmp_path: Path) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,yesterday\n")
    result = run("train", "--events", str(events), "--artifacts", str(tmp_path / "a"))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert f"{events}:3: column 'timestamp'" in lines[-1]
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_missing_column_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "e.csv"
    events.write_text("user,item_id,timestamp\nu1,i1,1700000000\n")
    assert main(["-q", "train", "--events", str(events), "--artifacts", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "user_id" in err and "Traceback" not in err
    assert main(["-q", "train", "--events", str(tmp_path / "nope.csv")]) == 3


HEADER = b"user_id,item_id,timestamp\n"
ROWS = b"u1,i1,1700000000\nu2,i2,1700000100\n"
BAD_FILES = {
    "empty.csv": b"",
    "header.csv": HEADER,
    "binary.csv": b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)),
    "utf16.csv": (HEADER + ROWS).decode().encode("utf-16"),
    "latin1-header.csv": b"user_id,item_id,timestamp,pr\xe9f\n" + ROWS,
    "repeated.csv": b"user_id,item_id,timestamp,user_id\nu1,i1,1700000000,u9\n",
    "truncated.csv.gz": gzip.compress(
        HEADER + b"".join(b"u%d,i%d,%d\n" % (n, n % 97, 1_700_000_000 + n) for n in range(5000))
    )[:10_000],
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("skip", [[], ["--skip-bad-rows"]])
def test_a_file_that_cannot_be_events_is_one_line_and_status_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, skip: list[str]
) -> None:
    events, arts = tmp_path / name, tmp_path / "artifacts"
    events.write_bytes(BAD_FILES[name])
    assert main(["-q", "train", "--events", str(events), "--artifacts", str(arts), *skip]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"recsvc train: error: {events}") and err.count("\n") == 1, err
    assert not arts.exists() or not any(arts.iterdir())


def test_a_value_that_is_not_utf8_stops_the_run_or_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events, arts = tmp_path / "e.csv", tmp_path / "artifacts"
    events.write_bytes(HEADER + ROWS + b"u3,caf\xe9,1700000200\nu1,i2,1700000300\n")
    assert main(["-q", "train", "--events", str(events), "--artifacts", str(arts)]) == 3
    err = capsys.readouterr().err
    assert f"{events}:4: column 'item_id': expected UTF-8 text" in err
    assert (
        main(["-q", "train", "--events", str(events), "--artifacts", str(arts), "--skip-bad-rows"])
        == 0
    )
    assert "2 users, 2 items" in capsys.readouterr().out


def test_bad_setting_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["-q", "train", "--events", "x.csv", "--factors", "0", "--artifacts", str(tmp_path)]
    )
    assert code == 2
    assert "als.factors" in capsys.readouterr().err


@pytest.mark.slow  # ~10 s: trains several models
def test_synth_train_publish_models_evaluate_rollback(tmp_path: Path) -> None:
    events, arts = tmp_path / "events.csv.gz", tmp_path / "artifacts"
    assert (
        run("synth", "--events", str(events), "--n-events", "20000", "--seed", "3").returncode == 0
    )
    catalog = tmp_path / "catalog.csv"
    assert catalog.exists()
    common = ["--artifacts", str(arts), "--factors", "8", "--iterations", "3"]
    first = run("train", "--events", str(events), "--catalog", str(catalog), *common, "--publish")
    assert first.returncode == 0, first.stderr
    assert "published" in first.stdout
    # 6% below the first on its 73 held-out customers, which the publish gate refuses
    # (tests/training/test_gate.py): --force publishes it
    second = run("train", "--events", str(events), *common, "--alpha", "5", "--publish", "--force")
    assert second.returncode == 0, second.stderr
    versions = sorted(p.name for p in arts.iterdir() if p.is_dir())
    assert len(versions) == 2
    listing = run("models", "--artifacts", str(arts))
    assert listing.stdout.count("*") == 1
    back = run("publish", "--rollback", "--artifacts", str(arts))
    assert back.returncode == 0, back.stderr
    assert (arts / "CURRENT").read_text().strip() == versions[0]
    report = tmp_path / "report.json"
    ev = run(
        "evaluate",
        "--events",
        str(events),
        "--holdout",
        "last-basket",
        "--factors",
        "8",
        "--iterations",
        "3",
        "--no-strong-baselines",  # their rows are tested in tests/training/test_baselines.py
        "--report",
        str(report),
    )
    assert ev.returncode == 0, ev.stderr
    data = json.loads(report.read_text())
    assert set(data["metrics"]) == {"popularity", "buy_again", "blend", "item_knn", "als", "served"}
    assert {"recall@20", "ndcg@20", "map@20", "coverage@20", "recall@10"} <= set(
        data["metrics"]["served"]
    )
    assert data["protocol"] == "last basket per user"


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact root holding two trained versions (what `recsvc models` lists)."""
    root = tmp_path_factory.mktemp("artifacts")
    data = LoadedData(block_shop(), None, (), 0)
    for day in (1, 2):
        now = datetime(2030, 1, day, tzinfo=UTC)
        write_artifact(build_model(data, small_settings(), now=now).artifact, root)
    return root


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["models", "--artifacts"], 141),  # 128 + SIGPIPE, as the shell reports
        # argparse ignores errors writing its own help and version: status 0
        (["--help"], 0),
        (["--version"], 0),
        (["train", "--help"], 0),
    ],
)
def test_a_reader_that_closes_the_pipe_early_ends_the_run_quietly(
    args: list[str], status: int, two_versions: Path
) -> None:
    if args[-1] == "--artifacts":
        args = [*args, str(two_versions)]
    # the reader is gone before recsvc writes a byte: every write fails
    proc = subprocess.Popen([*RECSVC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == status, err
    assert err == ""


def test_recsvc_models_piped_into_head(two_versions: Path) -> None:
    command = f"{shlex.join(RECSVC)} models --artifacts {shlex.quote(str(two_versions))}"
    result = subprocess.run(
        ["sh", "-c", f"{command} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("\n") == 1 and "users=" in result.stdout


def test_help_lists_every_subcommand() -> None:
    out = run("--help").stdout
    for cmd in ("synth", "train", "evaluate", "publish", "models"):
        assert cmd in out


def test_config_is_read_before_and_after_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the README's `recsvc train --config tuned.toml ...` was refused by argparse
    config = tmp_path / "bad.toml"
    config.write_text("[als]\nfactors = 0\n")
    for argv in (
        ["-q", "--config", str(config), "train", "--events", "x.csv"],
        ["-q", "train", "--config", str(config), "--events", "x.csv"],
    ):
        assert main(argv) == 2
        assert "als.factors" in capsys.readouterr().err


def test_holdout_selects_the_last_basket_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-q", "evaluate", "--cutoff", "2020-01-01", "--holdout", "last-basket"])
    assert code == 2
    assert "--protocol last-basket needs --events" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == "recsvc 0.1.0"


def test_publishing_a_renamed_version_directory_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "artifacts"
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings())
    version = art.write_artifact(built.artifact, root).name
    art.publish_version(root, version)
    shutil.copytree(root / version, root / "my-copy")
    code = main(["-q", "publish", "--version", "my-copy", "--artifacts", str(root)])
    assert code == ArtifactError.exit_code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "my-copy" in err and version in err
    assert (root / "CURRENT").read_text().strip() == version
