"""Bad starts of `recsvc serve`: one clear line, the right exit code, nothing left running."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from server_harness import publish_block_model

pytestmark = pytest.mark.integration


def _private_redis_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("recsvc-redis-")}


def _redis_servers_in(dirs: set[str]) -> list[int]:
    """Pids of redis-server processes working in one of ``dirs``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if Path(cwd).name in dirs:
            found.append(int(pid))
    return found


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "recsvc", "serve", "--metrics-port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_a_port_in_use_is_one_line_and_leaves_nothing_running(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    before = _private_redis_dirs()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = _serve("--artifacts", str(root), "--port", str(port))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"recsvc serve: error: cannot serve on 127.0.0.1:{port}: Address already in use"
    ], result.stderr
    assert "Traceback" not in result.stderr
    # the private redis-server it started is stopped and its directory removed
    left = _private_redis_dirs() - before
    assert left == set() and _redis_servers_in(left) == []


def test_a_mistyped_artifact_root_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "artifcats"
    result = _serve("--artifacts", str(missing), "--port", "0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"recsvc serve: error: artifact root {missing} is not a directory")
    )
    assert "Traceback" not in result.stderr
    assert not missing.exists()
