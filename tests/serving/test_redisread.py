"""recsvc.store.thinreader.RedisReader against a real Redis: the same replies as redis-py,
in order under pipelining, and redis-py's errors when Redis is down, hung or killed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio

from recsvc.errors import ConfigError, StoreError
from recsvc.events import EventType, LiveEvent
from recsvc.store import KeyScheme, LiveState, async_client_from_url, encode_event
from recsvc.store.embedded import find_redis_server, start_private_redis
from recsvc.store.reader import PipelineReader, open_reader
from recsvc.store.thinreader import RedisReader

from factories import live_state
from factories import redis_reader as _reader

pytestmark = pytest.mark.integration

FACTORS = 8


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """Accepts connections, never answers (a hung Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def _fill(client: redis.Redis, prefix: str, users: int) -> None:
    rng = np.random.default_rng(3)
    for u in range(users):
        user = f"user-{u}"
        client.set(
            KeyScheme(prefix).vector(user, "v1"),
            rng.standard_normal(FACTORS).astype("<f4").tobytes(),
        )
        events = [
            encode_event(LiveEvent(f"item|{u}|{i}", EventType.VIEW, 1_700_000_000 + i))
            for i in range(u % 7)
        ]
        if events:
            client.lpush(KeyScheme(prefix).history(user), *events)


def _commands(prefix: str, u: int) -> list[tuple[Any, ...]]:
    user = f"user-{u}"
    return [
        ("GET", KeyScheme(prefix).vector(user, "v1")),
        ("LRANGE", KeyScheme(prefix).history(user), 0, 99),
        ("LRANGE", KeyScheme(prefix).session(f"s{u}"), 0, 9),
    ]


def test_replies_equal_redis_py_and_stay_in_order_when_pipelined(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    users = 60
    _fill(redis_client, redis_prefix, users)
    # what redis-py reads, one user at a time
    expected = []
    for u in range(users):
        with redis_client.pipeline(transaction=False) as pipe:
            for command in _commands(redis_prefix, u):
                pipe.execute_command(*command)
            expected.append(pipe.execute())
    assert any(e[0] is not None and e[1] for e in expected)

    async def body() -> list[list[Any]]:
        async with _reader(redis_url, connections=2) as reader:
            # many calls in flight at once, in a shuffled order, several rounds
            order = [u for u in range(users) for _ in range(5)]
            random.Random(1).shuffle(order)
            got = await asyncio.gather(*(reader.execute(_commands(redis_prefix, u)) for u in order))
            by_user: dict[int, list[Any]] = {}
            for u, replies in zip(order, got, strict=True):
                assert by_user.setdefault(u, replies) == replies
            return [by_user[u] for u in range(users)]

    assert asyncio.run(body()) == expected


def test_a_cancelled_call_does_not_shift_the_replies(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    _fill(redis_client, redis_prefix, 4)

    async def body() -> None:
        async with _reader(redis_url) as reader:
            first = asyncio.ensure_future(reader.execute(_commands(redis_prefix, 1)))
            second = asyncio.ensure_future(reader.execute(_commands(redis_prefix, 2)))
            await asyncio.sleep(0)  # both queued
            first.cancel()
            assert (await second)[0] == redis_client.get(
                KeyScheme(redis_prefix).vector("user-2", "v1")
            )
            third = await reader.execute(_commands(redis_prefix, 3))
            assert third[0] == redis_client.get(KeyScheme(redis_prefix).vector("user-3", "v1"))

    asyncio.run(body())


def test_error_reply_raises_response_error_for_that_call_only(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    _fill(redis_client, redis_prefix, 2)
    redis_client.set(KeyScheme(redis_prefix).history("user-0"), b"not a list")

    async def body() -> None:
        async with _reader(redis_url) as reader:
            bad = reader.execute(_commands(redis_prefix, 0))
            good = reader.execute(_commands(redis_prefix, 1))
            results = await asyncio.gather(bad, good, return_exceptions=True)
            assert isinstance(results[0], redis.ResponseError)
            assert "WRONGTYPE" in str(results[0])
            assert isinstance(results[1], list) and results[1][0] is not None

    asyncio.run(body())


@pytest.mark.parametrize("server", ["down", "hung"])
def test_unavailable_redis_raises_redis_errors_quickly(server: str) -> None:
    async def body(port: int) -> None:
        async with _reader(f"redis://127.0.0.1:{port}", timeout=0.05) as reader:
            for _ in range(3):
                started = time.perf_counter()
                with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
                    await reader.execute([("GET", "k")])
                assert time.perf_counter() - started < 1.0

    if server == "down":
        asyncio.run(body(_closed_port()))
    else:
        with _silent_server() as port:
            asyncio.run(body(port))


def test_killed_server_fails_calls_then_recovers_when_it_returns(tmp_path: Path) -> None:
    server = start_private_redis()
    port, url = server.port, server.url
    sync = redis.Redis.from_url(url)
    sync.set("k", b"before")
    sync.close()

    async def body() -> None:
        async with _reader(url, timeout=0.5) as reader:
            assert await reader.execute([("GET", "k")]) == [b"before"]
            server.stop()
            for _ in range(3):
                with pytest.raises(redis.ConnectionError):
                    await reader.execute([("GET", "k")])
            # a new Redis on the same port: the next call connects again
            proc = subprocess.Popen(
                [str(find_redis_server()), "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 10
                while True:
                    try:
                        redis.Redis(port=port).set("k", b"after")
                        break
                    except redis.ConnectionError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
                assert await reader.execute([("GET", "k")]) == [b"after"]
            finally:
                proc.terminate()
                proc.wait(10)

    try:
        asyncio.run(body())
    finally:
        server.stop()


def test_connection_closed_by_redis_is_retried_once(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:k"
    redis_client.set(key, b"v")

    async def body() -> None:
        async with _reader(redis_url) as reader:
            assert await reader.execute([("GET", key), ("CLIENT", "ID")]) is not None
            (_, client_id) = await reader.execute([("GET", key), ("CLIENT", "ID")])
            redis_client.execute_command("CLIENT", "KILL", "ID", client_id)  # type: ignore[no-untyped-call]
            # the kill may or may not have been seen yet: either way the call succeeds
            assert (await reader.execute([("GET", key)])) == [b"v"]

    asyncio.run(body())


def test_auth_and_db_from_the_url(redis_url: str, redis_client: redis.Redis) -> None:
    # db 3 on the session's Redis, through the URL
    base = redis_url.rstrip("/").rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    url = f"{base}/3"
    other = redis.Redis.from_url(url)
    try:
        other.set("recsvc-test-db3", b"three")

        async def body() -> None:
            async with _reader(url) as reader:
                assert await reader.execute([("GET", "recsvc-test-db3")]) == [b"three"]

        asyncio.run(body())
    finally:
        other.delete("recsvc-test-db3")
        other.close()


def test_wrong_password_is_an_authentication_error(
    redis_url: str, redis_client: redis.Redis
) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]

    async def body() -> None:
        async with _reader(f"redis://:nope@{host_port}/0") as reader:
            with pytest.raises(redis.RedisError) as caught:
                await reader.execute([("GET", "k")])
            assert isinstance(caught.value, redis.AuthenticationError | redis.ConnectionError)

    asyncio.run(body())


def test_unix_socket_url_reads_like_redis_py(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [str(find_redis_server()), "--port", "0", "--unixsocket", str(sock),
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        url = f"unix://{sock}?db=2"
        sync = redis.Redis.from_url(url)
        try:
            sync.rpush("l", b"a", b"b")
            sync.set("k", b"v")

            async def body() -> list[Any]:
                async with _reader(url) as reader:
                    return await reader.execute([("GET", "k"), ("LRANGE", "l", 0, -1)])

            assert asyncio.run(body()) == [b"v", [b"a", b"b"]]
        finally:
            sync.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_unix_socket_and_tls_urls() -> None:
    reader = RedisReader.from_url("unix:///tmp/nowhere.sock?db=2", socket_timeout=0.05)
    assert reader.where == "/tmp/nowhere.sock"
    url = "rediss://localhost:6380/0"
    tls = async_client_from_url(url)
    options = {"socket_timeout": 0.05, "cache_entries": 0, "cache_seconds": 1.0}
    # auto: TLS stays on redis-py, said in the log; thin: refused at start-up, loudly
    assert isinstance(open_reader(url, tls, "auto", **options), PipelineReader)
    with pytest.raises(ConfigError, match="thin reader"):
        open_reader(url, tls, "thin", **options)


def test_live_state_reads_the_same_through_the_reader(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    _fill(redis_client, redis_prefix, 8)
    redis_client.lpush(
        KeyScheme(redis_prefix).session("s5"),
        encode_event(LiveEvent("x", EventType.ADD_TO_CART, 5)),
    )

    def state(client: redis.asyncio.Redis, reader: RedisReader | None) -> LiveState:
        return live_state(client, redis_prefix, reader)

    async def body() -> None:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        reader = RedisReader.from_url(redis_url, socket_timeout=5.0)
        try:
            plain, fast = state(client, None), state(client, reader)
            for u in range(8):
                for session in ("", f"s{u}"):
                    a = await plain.read_user("v1", f"user-{u}", session, FACTORS)
                    b = await fast.read_user("v1", f"user-{u}", session, FACTORS)
                    assert (a[0] is None) == (b[0] is None)
                    if a[0] is not None:
                        assert b[0] is not None and a[0].tobytes() == b[0].tobytes()
                    assert a[1:] == b[1:]
            b = await fast.read_user("v1", "", "s5", FACTORS)
            assert b[2] == [LiveEvent("x", EventType.ADD_TO_CART, 5)]
        finally:
            assert reader is not None
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())


def test_live_state_translates_reader_errors() -> None:
    async def body() -> None:
        url = f"redis://127.0.0.1:{_closed_port()}"
        client = async_client_from_url(url, socket_timeout=0.05)
        reader = RedisReader.from_url(url, socket_timeout=0.05)
        state = live_state(client, reader=reader)
        try:
            with pytest.raises(StoreError) as caught:
                await state.read_user("v1", "u", "s", FACTORS)
            assert isinstance(caught.value.__cause__, redis.ConnectionError)
        finally:
            assert reader is not None
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())
