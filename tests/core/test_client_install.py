"""The client-only install, as a storefront gets it: ``pip install recsvc``, no extras.

Once for the module: the tree's files (what a clean clone holds, plus uncommitted
edits; never build leftovers or .venv) are copied aside and built into a wheel, and
the wheel is installed into a fresh virtualenv created without pip (the dev
environment's pip installs into it, so its site-packages holds only what the install
brought). Then, in that virtualenv, with the working directory outside the tree: the
client imports, ``recsvc --help`` lists every subcommand, the client subcommands and
``docs/examples/storefront.py`` talk to a real server, the role subcommands name the extra
to install, and ``mypy --strict`` accepts a storefront script.

The install downloads grpcio and protobuf (pip's cache is reused). Where the package
index cannot be reached the tests skip locally and fail under ``CI=true``, as the
Redis tests do (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from packaging.metadata import Metadata

from recsvc.store import client_from_url

from factories import REPO, small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.slow

SUBCOMMANDS = (
    "synth", "train", "evaluate", "tune", "publish", "push", "compact", "retrain", "gc", "catalog",
    "experiment",
    "serve", "batch",  # recsvc.serving.commands
    "models", "recommend", "similar", "events", "forget", "consent", "link", "export-user", "info",
    "rules",  # recsvc.cli
)  # fmt: skip
CLIENT_SIZE_LIMIT = 50 * 10**6
"""Bytes the client install may add to site-packages (measured: 23 MB, nearly all of
it grpcio and protobuf); past this, something heavy has crept into the base install."""
UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|ConnectTimeout|ReadTimeout|from versions: none"
)
"""What pip prints when the package index is out of reach, not when a requirement is
wrong."""


@dataclass(frozen=True)
class ClientInstall:
    wheel: Path
    build_log: str
    venv: Path
    site_packages: Path
    install_seconds: float
    workdir: Path
    """An empty directory to run in, so nothing imports from the source tree."""

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
        return subprocess.run(
            args,
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def _copy_tree(dest: Path) -> None:
    """The files git knows of (tracked, or new and not ignored), as they are on disk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a deletion not yet committed is absent
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture(scope="module")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> ClientInstall:
    root = tmp_path_factory.mktemp("client-install")
    source, dist, venv, workdir = (root / n for n in ("src", "dist", "venv", "work"))
    workdir.mkdir()
    _copy_tree(source)
    pip = [sys.executable, "-m", "pip"]
    # -v: the build backend's warnings are printed only when pip is verbose
    built = subprocess.run(
        [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("recsvc-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    start = time.monotonic()
    installed = subprocess.run(
        [*pip, "--python", python, "install", "--timeout", "30", "--retries", "2", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - start
    if installed.returncode != 0:
        output = installed.stdout + installed.stderr
        if UNREACHABLE.search(output):
            _unavailable(f"cannot install grpcio and protobuf from the package index: {output}")
        pytest.fail(f"pip install of the wheel failed:\n{output}", pytrace=False)
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return ClientInstall(
        wheel, built.stdout + built.stderr, venv, Path(site_packages), seconds, workdir
    )


# --- the wheel ------------------------------------------------------------------------


def test_the_wheel_builds_without_warnings(client_install: ClientInstall) -> None:
    # setuptools' warnings are classes (SetuptoolsDeprecationWarning, ...); its
    # "warning: ... byte-compiling is disabled" notes under PYTHONDONTWRITEBYTECODE are not
    assert re.findall(r"\b[A-Z]\w*Warning\b.*", client_install.build_log) == []


def test_the_wheel_ships_the_types_and_nothing_outside_recsvc(
    client_install: ClientInstall,
) -> None:
    with zipfile.ZipFile(client_install.wheel) as wheel:
        names = set(wheel.namelist())
        (info,) = {n.split("/")[0] for n in names if ".dist-info/" in n}
        metadata = Metadata.from_email(wheel.read(f"{info}/METADATA"), validate=True)
        top_level = wheel.read(f"{info}/top_level.txt").decode().split()

    assert {"recsvc/py.typed", "recsvc/v1/recommender_pb2.pyi"} <= names
    assert {
        "recsvc/serving/monitoring/alerts.yml",
        "recsvc/serving/monitoring/dashboard.json",
    } <= names
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"recsvc"}
    assert top_level == ["recsvc"]  # no top-level training/ or serving/
    assert str(metadata.license_expression) == "Apache-2.0"
    base = {str(r.name) for r in metadata.requires_dist or [] if r.marker is None}
    assert base == {"grpcio", "protobuf"}
    assert {"serve", "train", "all", "embedded-redis", "dev"} <= set(metadata.provides_extra or [])


# --- the install ----------------------------------------------------------------------

_DISTRIBUTIONS = """
import json, re
from importlib.metadata import distribution, distributions
def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
installed = sorted(norm(d.metadata["Name"]) for d in distributions())
wanted, todo = set(), ["recsvc"]
while todo:  # what recsvc needs without extras, and what that needs (markers aside)
    name = todo.pop()
    if name in wanted:
        continue
    wanted.add(name)
    for req in distribution(name).requires or []:
        if "extra ==" not in req:
            todo.append(norm(re.match(r"[A-Za-z0-9._-]+", req).group()))
print(json.dumps({"installed": installed, "wanted": sorted(wanted)}))
"""


def test_the_install_is_grpcio_and_protobuf_and_what_they_need(
    client_install: ClientInstall,
) -> None:
    done = client_install.run(client_install.bin("python"), "-c", _DISTRIBUTIONS)
    assert done.returncode == 0, done.stderr
    found: dict[str, list[str]] = json.loads(done.stdout)

    assert {"recsvc", "grpcio", "protobuf"} <= set(found["installed"])
    assert set(found["installed"]) <= set(found["wanted"])
    size = _size(client_install.site_packages)
    print(
        f"client install: {len(found['installed'])} distributions, {size / 1e6:.1f} MB in "
        f"site-packages, pip install took {client_install.install_seconds:.1f} s"
    )
    assert size < CLIENT_SIZE_LIMIT
    assert not {"training", "serving"} & {p.name for p in client_install.site_packages.iterdir()}


def test_the_client_imports_from_the_install(client_install: ClientInstall) -> None:
    done = client_install.run(
        client_install.bin("python"),
        "-c",
        "import recsvc, recsvc.client, recsvc.errors, recsvc.events; print(recsvc.__file__)",
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(client_install.site_packages)


def test_help_lists_every_subcommand(client_install: ClientInstall) -> None:
    done = client_install.run(client_install.bin("recsvc"), "--help")
    listed = re.findall(r"^    ([\w-]+) ", done.stdout, re.MULTILINE)
    assert sorted(listed) == sorted(SUBCOMMANDS), done.stdout
    assert sorted(listed) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["train", "--events", "events.csv"], "train"),
        (["synth", "--events", "events.csv"], "train"),
        (["publish"], "train"),
        (["catalog", "load", "items.csv"], "train"),
        (["serve"], "serve"),
        (["models"], "serve"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else v,
)
def test_a_role_command_names_the_extra_to_install(
    client_install: ClientInstall, command: list[str], extra: str
) -> None:
    done = client_install.run(client_install.bin("recsvc"), *command)

    assert done.returncode == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # one line, no traceback
    assert re.fullmatch(
        rf"recsvc {command[0]}( load)?: error: needs [\w.]+, which this install lacks: "
        rf"pip install 'recsvc\[{extra}\]'",
        line,
    ), line


# --- against a server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("client-install-artifacts")
    publish_block_model(root)
    prefix = f"test-{uuid4().hex[:8]}"
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(root / "erased.txt"),
        redis={"url": redis_url, "prefix": prefix},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(root / "eventlog")},
    )
    running = ServerThread(settings)
    try:
        yield running
    finally:
        running.stop()
        client = client_from_url(redis_url, socket_timeout=5.0)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.unlink(*keys)
        finally:
            client.close()


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.mark.integration
def test_the_client_commands_and_the_example_talk_to_a_server(
    client_install: ClientInstall, server: ServerThread
) -> None:
    recsvc, target = client_install.bin("recsvc"), server.target

    info = _json(client_install.run(recsvc, "info", "--target", target, "--json"))
    assert info["item_count"] == "24" and info["model_version"]
    answer = _json(
        client_install.run(
            recsvc, "recommend", "--target", target, "--user", "g0u01", "--k", "5", "--json"
        )
    )
    assert answer["strategy"] == "personalized"
    assert answer["items"] and all(i["item_id"].startswith("g0") for i in answer["items"])

    example = str(REPO / "docs" / "examples" / "storefront.py")
    done = client_install.run(
        client_install.bin("python"), example, "--target", target, "--user", "g1u02", "--k", "3"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"model {info['model_version']}"
    assert [line.split()[1][:2] for line in lines[1:4]] == ["g1"] * 3
    assert lines[4] == "impressions recorded: 3"


# --- types ------------------------------------------------------------------------------

_WRONG = """\
from recsvc.client import RecommenderClient


def item_count(client: RecommenderClient) -> str:
    return client.model_info().item_count
"""


def test_a_storefront_script_type_checks_under_mypy_strict(client_install: ClientInstall) -> None:
    """mypy (of the dev environment) resolves imports in the client install only; a
    wrong type is caught, so the client's types are really seen, not Any."""
    work = client_install.workdir
    shutil.copy(REPO / "docs" / "examples" / "storefront.py", work / "storefront.py")
    (work / "wrong.py").write_text(_WRONG)
    done = client_install.run(
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--python-executable",
        client_install.bin("python"),
        "--cache-dir",
        str(work / ".mypy_cache"),
        "--no-error-summary",
        "storefront.py",
        "wrong.py",
    )
    assert done.stdout.splitlines() == [
        'wrong.py:5: error: Incompatible return value type (got "int", expected "str")  '
        "[return-value]"
    ], done.stdout + done.stderr
