"""The Spark engine on a real standalone cluster, as README's "Training beyond one
machine" runs it: a Spark master and one worker (1 core, 1 GiB) started from pyspark's
own installation (``bin/spark-class``) on free loopback ports, and ``recsvc train
--engine spark --spark-master spark://...`` run as the command it is, in a process of its
own. The application must be the master's (an executor on the worker ran it, not local
mode), the artifact must verify and its factors be real numbers.

And one process that already has a local session (the Spark engine's other tests run in
``local[2]``) moves to the cluster when asked: a process runs one SparkContext, and Spark
would hand back the running one on its old master (training/spark.py's
``spark_session`` stops it first).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsvc import artifact as art
from recsvc.training import spark
from recsvc.training.synth import SynthConfig, generate

from server_harness import free_ports, soon

pyspark = pytest.importorskip("pyspark")
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(420)]

APP_NAME = "recsvc-train"
REGISTER_WITHIN = 90.0
"""Seconds for the master to start and the worker to register (two JVMs booting on a
loaded 2-core host take ~15)."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Standalone:
    """A running standalone master and worker; ``env`` is what a driver (and they) run
    with: loopback only, the test's Python on the executors, Spark's files in ``dir``."""

    url: str
    ui: str
    dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """The master's state (its web UI's JSON)."""
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as response:
            state: dict[str, Any] = json.load(response)
        return state

    def apps(self) -> list[dict[str, Any]]:
        """The applications the master knows, running and finished."""
        state = self.state()
        return [*state.get("activeapps", []), *state.get("completedapps", [])]

    def logs(self) -> str:
        """The tails of the master's and the worker's logs and of its executors' stderr."""
        parts = [f"--- {name} log:\n{_tail(self.dir / f'{name}.log')}" for name in self.processes]
        for stderr in sorted((self.dir / "work").glob("app-*/*/stderr")):
            parts.append(f"--- executor {stderr.parent.parent.name}:\n{_tail(stderr, 20)}")
        return "\n".join(parts)

    def start(self, name: str, *args: str) -> None:
        spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
        with (self.dir / f"{name}.log").open("wb") as out:
            self.processes[name] = subprocess.Popen(
                [str(spark_class), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # its own process group: the worker's executors too
            )

    def stop(self) -> None:
        """SIGTERM each process group (SIGKILL after 15 s), worker (and its executors)
        first."""
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 30.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue

    def wait_registered(self, within: float) -> None:
        """Until the master lists an alive worker; fails with the logs' tails."""
        deadline = time.monotonic() + within
        last = "no answer"
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    pytest.fail(f"Spark {name} exited ({process.returncode}):\n{self.logs()}")
            try:
                alive = int(self.state().get("aliveworkers", 0))
                if alive >= 1:
                    return
                last = f"{alive} alive workers"
            except (OSError, ValueError) as exc:  # not listening yet, or half an answer
                last = repr(exc)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no Spark worker registered with {self.url} within {within:g} s "
                    f"({self.ui}/json/: {last}):\n{self.logs()}"
                )
            time.sleep(0.25)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A Spark master and one worker on loopback, stopped afterwards whatever happens."""
    root = tmp_path_factory.mktemp("spark")
    for sub in ("logs", "work", "local"):
        (root / sub).mkdir()
    port = free_ports(4)  # master, its web UI, the worker, its web UI
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_WORKER_DIR": str(root / "work"),
        "SPARK_LOCAL_DIRS": str(root / "local"),
        "PYSPARK_PYTHON": sys.executable,
    }
    cluster = Standalone(
        url=f"spark://127.0.0.1:{port}", ui=f"http://127.0.0.1:{port + 1}", dir=root, env=env
    )
    try:
        cluster.start(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(port + 1),
        )  # fmt: skip
        cluster.start(
            "worker", "org.apache.spark.deploy.worker.Worker", cluster.url,
            "--cores", "1", "--memory", "1g", "--host", "127.0.0.1",
            "--port", str(port + 2), "--webui-port", str(port + 3),
            "--work-dir", str(root / "work"),
        )  # fmt: skip
        cluster.wait_registered(REGISTER_WITHIN)
        yield cluster
    finally:
        cluster.stop()


def _new_app(cluster: Standalone, before: set[str], *, finished: bool) -> dict[str, Any]:
    """The one application started since ``before`` (its ids), once it is (finished or
    running) on the master."""
    found: list[dict[str, Any]] = []

    def listed() -> bool:
        state = cluster.state()
        apps = state["completedapps" if finished else "activeapps"]
        found[:] = [app for app in apps if app["id"] not in before]
        return bool(found)

    try:
        soon(listed, within=30.0)
    except AssertionError:
        pytest.fail(f"no new application on {cluster.url}: {cluster.apps()}\n{cluster.logs()}")
    assert len(found) == 1, found
    return found[0]


def test_recsvc_train_fits_on_the_standalone_master(standalone: Standalone, tmp_path: Path) -> None:
    generate(SynthConfig(n_events=20_000, seed=11), tmp_path / "events.csv.gz", tmp_path / "c.csv")
    before = {app["id"] for app in standalone.apps()}
    command = [
        sys.executable, "-m", "recsvc", "train",
        "--events", str(tmp_path / "events.csv.gz"), "--catalog", str(tmp_path / "c.csv"),
        "--artifacts", str(tmp_path / "artifacts"),
        "--engine", "spark", "--spark-master", standalone.url,
        "--factors", "8", "--iterations", "5", "--random-state", "3",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        command, env=standalone.env, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"recsvc train exited {done.returncode}:\n{output[-4000:]}\n{standalone.logs()}"
    )
    print(f"recsvc train on {standalone.url}: {time.monotonic() - started:.1f} s")
    print(*(ln for ln in output.splitlines() if "INFO recsvc.training.spark" in ln), sep="\n")
    assert f"Spark ALS fit on {standalone.url}:" in output, output[-4000:]

    # the application was the master's, and the worker ran an executor for it
    app = _new_app(standalone, before, finished=True)
    assert app["name"] == APP_NAME, app
    assert app["state"] == "FINISHED", app
    executors = list((standalone.dir / "work" / app["id"]).glob("*/stderr"))
    assert executors, f"no executor of {app['id']} on the worker:\n{standalone.logs()}"

    path = Path(next(ln for ln in done.stdout.splitlines() if ln.startswith("artifact: "))[10:])
    manifest = art.read_manifest(path)
    art.verify(path, manifest)
    assert manifest.config.als.engine == "spark"
    assert manifest.config.als.spark_master == standalone.url
    assert manifest.config.als.factors == 8
    model = art.read_artifact(path)
    items = model.item_factors
    assert items.shape[1] == 8
    assert np.isfinite(items).all()
    assert np.abs(items).max() > 0
    assert np.isfinite(model.user_factors).all()


def test_a_process_with_a_local_session_moves_to_the_cluster(
    standalone: Standalone, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SPARK_LOCAL_IP", "SPARK_LOCAL_DIRS", "PYSPARK_PYTHON"):
        monkeypatch.setenv(name, standalone.env[name])  # read where a JVM or context starts
    before = {app["id"] for app in standalone.apps()}
    try:
        local = spark.spark_session("local[1]", "1g")
        assert local.sparkContext.master == "local[1]"
        remote = spark.spark_session(standalone.url, "1g")
        assert remote.sparkContext.master == standalone.url
        assert remote.sparkContext.pythonExec == sys.executable
        app = _new_app(standalone, before, finished=False)
        assert app["name"] == APP_NAME, app
        assert spark.spark_session(standalone.url, "1g") is remote  # cached again
    finally:
        # leave no session on a cluster about to stop: the next test starts its own
        for key in list(spark._SESSIONS):
            spark._SESSIONS.pop(key).stop()
