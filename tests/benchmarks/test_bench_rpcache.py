"""benchmarks/redispy_cache_reader.py (redis-py's own client-side cache as the state
reader, measured by bench_levers' ``rpcache-*`` variants) against a private Redis: the
same replies as :class:`RedisReader`, hits without Redis, a write by another client or
by this process seen, and what redis-py 8.1 does not cache (pipelines).

redis-py refuses client-side caching with a Redis older than 7.4 (a compatibility
policy: key tracking and RESP3 pushes exist since Redis 6). Against an older
``redis-server`` these tests lower that gate for themselves, so they still check the
reader's mechanics; the benchmark itself runs a Redis >= 7.4 (see its report).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import redis
from redis.cache import CacheConfig
from redis.connection import CacheProxyConnection

from recsvc.events import EventType, LiveEvent
from recsvc.store import KeyScheme, async_client_from_url, encode_event
from recsvc.store.embedded import PrivateRedis, start_private_redis

from factories import bench_script, live_state, redis_reader

pytestmark = pytest.mark.integration

PUSH_WAIT = 5.0
USERS = 30


@pytest.fixture(scope="module")
def rpcache() -> ModuleType:
    return bench_script("redispy_cache_reader")


@pytest.fixture(scope="module")
def private() -> Iterator[PrivateRedis]:
    server = start_private_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sync(private: PrivateRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private.url)
    client.flushall()
    version = str(client.info("server")["redis_version"])
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 4):
        monkeypatch.setattr(CacheProxyConnection, "MIN_ALLOWED_VERSION", version)
    try:
        yield client
    finally:
        client.close()


def _fill(client: redis.Redis, users: int) -> None:
    rng = np.random.default_rng(5)
    for u in range(users):
        if u % 5:  # every fifth user has no vector (GET answers nil)
            client.set(KeyScheme("p").vector(f"u{u}", "v1"), rng.random(8, "<f4").tobytes())
        events = [
            encode_event(LiveEvent(f"item|{u}|{i}", EventType.VIEW, 1_700_000_000 + i))
            for i in range(u % 4)
        ]
        if events:
            client.lpush(KeyScheme("p").history(f"u{u}"), *events)
            client.lpush(KeyScheme("p").session(f"s{u}"), *events[:2])


def _commands(u: int) -> list[tuple[Any, ...]]:
    return [
        ("GET", KeyScheme("p").vector(f"u{u}", "v1")),
        ("LRANGE", KeyScheme("p").history(f"u{u}"), 0, 4),
        ("LRANGE", KeyScheme("p").session(f"s{u}"), 0, 2),
    ]


def _gets(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.parametrize("mode", ["loop", "thread", "worker"])
def test_same_replies_as_the_thin_reader_and_hits_skip_redis(
    rpcache: ModuleType, private: PrivateRedis, sync: redis.Redis, mode: str
) -> None:
    _fill(sync, USERS)

    async def body() -> None:
        client = async_client_from_url(private.url, socket_timeout=5.0)
        reader = rpcache.RedisPyCacheReader.for_client(client, mode=mode, cache_entries=1000)
        try:
            async with redis_reader(private.url) as thin:
                expected = [await thin.execute(_commands(u)) for u in range(USERS)]
                assert any(e[0] is None for e in expected)
                assert any(e[0] is not None and e[1] and e[2] for e in expected)
                first = [await reader.execute(_commands(u)) for u in range(USERS)]
                assert first == expected
                assert reader.cache_misses == USERS and reader.cache_hits == 0
                gets = _gets(sync)
                again = [await reader.execute(_commands(u)) for u in range(USERS)]
                assert again == expected
                # redis-py does not keep a nil reply: users without a vector read again
                no_vector = sum(e[0] is None for e in expected)
                assert _gets(sync) - gets == no_vector
                assert reader.cache_hits == USERS - no_vector
                # through LiveState, the answers are the thin reader's
                for u in range(USERS):
                    got = await live_state(client, reader=reader).read_user(
                        "v1", f"u{u}", f"s{u}", 8
                    )
                    want = await live_state(client, reader=thin).read_user(
                        "v1", f"u{u}", f"s{u}", 8
                    )
                    assert (got[0] is None) == (want[0] is None)
                    assert got[0] is None or np.array_equal(got[0], want[0])
                    assert got[1:] == want[1:]
        finally:
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())


@pytest.mark.parametrize("mode", ["loop", "thread", "worker"])
def test_a_write_by_another_client_is_seen(
    rpcache: ModuleType, private: PrivateRedis, sync: redis.Redis, mode: str
) -> None:
    _fill(sync, 4)
    commands = _commands(1)

    async def body() -> None:
        client = async_client_from_url(private.url, socket_timeout=5.0)
        reader = rpcache.RedisPyCacheReader.for_client(client, mode=mode, cache_entries=100)
        try:
            before = await reader.execute(commands)
            assert await reader.execute(commands) == before  # kept
            sync.set(commands[0][1], b"\x00" * 32)
            sync.lpush(commands[1][1], b"1|v|1700000100|1|new")
            deadline = time.monotonic() + PUSH_WAIT
            while True:
                now = await reader.execute(commands)
                if now[0] == b"\x00" * 32 and now[1][0] == b"1|v|1700000100|1|new":
                    break
                assert time.monotonic() < deadline, "the write never reached the reader"
                await asyncio.sleep(0.001)
            # and the new values are what it keeps from then on
            assert await reader.execute(commands) == now
        finally:
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())


def test_own_writes_are_read_back_at_once(
    rpcache: ModuleType, private: PrivateRedis, sync: redis.Redis
) -> None:
    async def body() -> None:
        client = async_client_from_url(private.url, socket_timeout=5.0)
        reader = rpcache.RedisPyCacheReader.for_client(client, mode="loop", cache_entries=100)
        state = live_state(client, reader=reader)
        try:
            for i in range(20):
                _, history, session, *_ = await state.read_user("v1", "w", "s", 8)
                assert len(history) == min(i, 5) and len(session) == min(i, 3)
                event = LiveEvent(f"item-{i}", EventType.VIEW, 1_700_000_000 + i)
                await state.record("w", "s", [event])
                _, history, session, *_ = await state.read_user("v1", "w", "s", 8)
                assert history[0].item_id == f"item-{i}" and session[0].item_id == f"item-{i}"
        finally:
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())


def test_redis_py_caches_single_commands_not_pipelines(sync: redis.Redis) -> None:
    sync.set("k", b"v")
    cached = redis.Redis(
        connection_pool=None,
        host=sync.connection_pool.connection_kwargs["host"],
        port=sync.connection_pool.connection_kwargs["port"],
        protocol=3,
        cache_config=CacheConfig(),
    )
    try:
        assert cached.get("k") == b"v"
        gets = _gets(sync)
        assert cached.get("k") == b"v"
        assert _gets(sync) == gets  # a hit
        with cached.pipeline(transaction=False) as pipe:
            pipe.get("k")
            pipe.get("k")
            assert pipe.execute() == [b"v", b"v"]
        assert _gets(sync) == gets + 2  # both went to Redis
    finally:
        cached.close()
