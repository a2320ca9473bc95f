"""serving.server.run: several processes on one port (SO_REUSEPORT), the event loop choice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsvc.errors import ConfigError
from recsvc.serving.server import run_event_loop
from recsvc.store.embedded import PrivateRedis, start_private_redis
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

from factories import REPO
from server_harness import free_ports, publish_block_model


async def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_run_event_loop_picks_the_loop() -> None:
    assert run_event_loop(_loop_name(), "asyncio").startswith("asyncio")
    pytest.importorskip("uvloop")
    assert run_event_loop(_loop_name(), "uvloop").startswith("uvloop")
    assert run_event_loop(_loop_name(), "auto").startswith("uvloop")


def test_run_event_loop_rejects_unknown_names() -> None:
    coro = _loop_name()
    with pytest.raises(ConfigError):
        run_event_loop(coro, "trio")
    coro.close()


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and 'grpc_method="GetModelInfo"' in line
    )


@pytest.fixture()
def private_redis() -> Iterator[PrivateRedis]:
    with start_private_redis() as server:
        yield server


@pytest.mark.integration
def test_two_processes_share_the_port_and_stop_together(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    root = tmp_path / "artifacts"
    version = publish_block_model(root)
    port, metrics = free_ports(1), free_ports(2)  # /metrics on metrics and metrics + 1
    while port in (metrics, metrics + 1):
        metrics = free_ports(2)
    script = (
        "import sys\n"
        "from recsvc.config import load_settings\n"
        "from recsvc.serving.server import run\n"
        f"settings = load_settings(None, artifact_root={str(root)!r},"
        f" redis={{'url': {private_redis.url!r}}},"
        f" server={{'host': '127.0.0.1', 'port': {port}, 'metrics_port': {metrics},"
        f" 'event_log_dir': {str(tmp_path / 'log')!r}}})\n"
        "sys.exit(run(settings, processes=2))\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("recsvc serving on") < 2:
            assert parent.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        # one connection stays with one process: many channels, each its own connection
        channels = [
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(16)
        ]
        try:
            for channel in channels:
                info = pb_grpc.RecommenderServiceStub(channel).GetModelInfo(
                    pb.GetModelInfoRequest(), timeout=10
                )
                assert info.model_version == version
        finally:
            for channel in channels:
                channel.close()
        handled = [
            _metric(f"http://127.0.0.1:{metrics + i}/metrics", "grpc_server_handled_total")
            for i in range(2)
        ]
        assert sum(handled) == 16
        assert all(h > 0 for h in handled), handled  # the kernel spread the connections
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.integration
def test_when_one_process_dies_the_others_stop(tmp_path: Path, private_redis: PrivateRedis) -> None:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    port = 0  # run() picks one and holds it while its processes start
    script = (
        "import sys\n"
        "from recsvc.config import load_settings\n"
        "from recsvc.serving.server import run\n"
        f"settings = load_settings(None, artifact_root={str(root)!r},"
        f" redis={{'url': {private_redis.url!r}}},"
        f" server={{'host': '127.0.0.1', 'port': {port}, 'metrics_port': None,"
        f" 'event_log_dir': {str(tmp_path / 'log')!r}}})\n"
        "sys.exit(run(settings, processes=2))\n"
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )
    try:
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("recsvc serving on") < 2:
            assert parent.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        children = [
            int(pid)
            for task in Path(f"/proc/{parent.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        assert parent.wait(30) != 0
        assert not Path(f"/proc/{children[1]}").exists() or _is_zombie(children[1])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
