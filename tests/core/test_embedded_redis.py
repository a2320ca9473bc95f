"""The private redis-server used by tests, the demo and ``recsvc serve`` defaults."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc.errors import StoreError
from recsvc.store import embedded as redis_server
from recsvc.store.embedded import PrivateRedis, find_redis_server, start_private_redis


def _client(server: PrivateRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def _nothing_listens_on(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        return False


@pytest.fixture
def server(redis_server_binary: Path) -> Iterator[PrivateRedis]:
    with start_private_redis() as running:
        yield running


@pytest.mark.integration
def test_starts_answers_and_is_ours(server: PrivateRedis) -> None:
    assert server.running
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = _client(server)
    try:
        assert client.ping() is True
        info = client.info("server")
        assert int(info["process_id"]) == server.pid
        # persistence off: nothing is ever written to disk
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
    finally:
        client.close()


@pytest.mark.integration
def test_stop_ends_the_process_frees_the_port_and_removes_the_dir(
    server: PrivateRedis,
) -> None:
    directory, port, pid = server.directory, server.port, server.pid
    assert directory.is_dir()
    server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _nothing_listens_on(port)
    assert not directory.exists()
    server.stop()  # twice is fine


@pytest.mark.integration
def test_two_servers_at_once_are_separate(server: PrivateRedis) -> None:
    with start_private_redis() as second:
        assert second.port != server.port
        assert second.pid != server.pid
        first_client, second_client = _client(server), _client(second)
        try:
            first_client.set("k", b"first")
            assert second_client.get("k") is None
        finally:
            first_client.close()
            second_client.close()


@pytest.mark.integration
def test_a_taken_port_is_retried_with_another(
    redis_server_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, redis_server._free_port()])
        monkeypatch.setattr(redis_server, "_free_port", lambda: next(ports))
        with start_private_redis() as server:
            assert server.port != taken
            client = _client(server)
            try:
                assert client.ping() is True
            finally:
                client.close()


@pytest.mark.integration
def test_a_given_data_dir_is_used_and_kept(redis_server_binary: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    with start_private_redis(data_dir=data_dir) as server:
        client = _client(server)
        try:
            assert Path(client.config_get("dir")["dir"]).resolve() == data_dir.resolve()
        finally:
            client.close()
    assert data_dir.is_dir()


def test_no_binary_anywhere_is_a_clear_store_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_server, "_bundled_redis_server", lambda: None)
    with pytest.raises(StoreError, match="no redis-server found"):
        find_redis_server()
    with pytest.raises(StoreError, match="no redis-server found"):
        start_private_redis()


def _fake_binary(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "redis-server"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_a_server_that_dies_at_start_reports_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_binary(tmp_path, 'echo "FATAL: bad config" >&2; exit 3')
    monkeypatch.setattr(redis_server, "find_redis_server", lambda: fake)
    data_dir = tmp_path / "data"
    with pytest.raises(StoreError, match=r"status 3(.|\n)*FATAL: bad config"):
        start_private_redis(data_dir=data_dir)


def test_a_server_that_never_answers_times_out_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = _fake_binary(tmp_path, "exec sleep 30")
    monkeypatch.setattr(redis_server, "find_redis_server", lambda: fake)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with pytest.raises(StoreError, match="did not answer PING"):
        start_private_redis(startup_timeout=0.3)
    assert list(scratch.iterdir()) == []  # its temporary directory is gone
