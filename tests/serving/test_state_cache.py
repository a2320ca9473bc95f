"""The reader's client-side cache (recsvc.store.thinreader, ``cache_entries`` > 0) against a
private Redis: it answers repeated reads without Redis, and never after a write it was
told about (Redis's invalidation push, or this process's own writes), a lost
connection, a flush, its age limit or its size limit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import select
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio

from recsvc.events import EventType, LiveEvent
from recsvc.store import UserState, async_client_from_url, thinreader
from recsvc.store.embedded import PrivateRedis, start_private_redis
from recsvc.store.thinreader import RedisReader

from factories import live_state, redis_reader

pytestmark = pytest.mark.integration

PUSH_WAIT = 5.0
"""Longest wait for Redis's invalidation push (it takes well under a millisecond)."""


@pytest.fixture(scope="module")
def private() -> Iterator[PrivateRedis]:
    """A Redis of this module's own: the tests count its commands and flush it."""
    server = start_private_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sync(private: PrivateRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private.url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


def _reader(url: str, **cache: Any) -> contextlib.AbstractAsyncContextManager[RedisReader]:
    return redis_reader(url, **{"cache_entries": 100, **cache})


def _gets(sync: redis.Redis) -> int:
    """GETs Redis has executed so far."""
    stats = sync.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def _until(condition: Any) -> None:
    deadline = asyncio.get_running_loop().time() + PUSH_WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "no invalidation push came"
        await asyncio.sleep(0.001)


def test_a_repeated_read_is_answered_without_redis(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    sync.set("k", b"v1")
    sync.rpush("l", b"a", b"b")
    commands = [("GET", "k"), ("LRANGE", "l", 0, -1)]

    async def body() -> None:
        async with _reader(private.url) as reader:
            assert await reader.execute(commands) == [b"v1", [b"a", b"b"]]
            before = _gets(sync)
            for _ in range(5):
                assert await reader.execute(commands) == [b"v1", [b"a", b"b"]]
            assert _gets(sync) == before
            assert (reader.cache_hits, reader.cache_misses) == (5, 1)
            # another range of the same list is another command: Redis answers it
            assert await reader.execute([("LRANGE", "l", 0, 0)]) == [[b"a"]]
            assert reader.cache_misses == 2

    asyncio.run(body())


def test_kept_replies_leave_the_garbage_collectors_lists(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    """Tens of thousands of kept keys must not make every full collection walk them
    (30 ms at 50,000 keys when list replies were kept as lists: a tail-latency pause)."""
    sync.rpush("l", b"a", b"b")
    sync.set("k", b"v")

    async def body() -> None:
        async with _reader(private.url) as reader:
            commands = [("LRANGE", "l", 0, -1), ("GET", "k")]
            await reader.execute(commands)
            gc.collect()  # untracks the reply tuple, then the entry around it
            gc.collect()
            kept = reader._cache
            assert kept is not None and len(kept) == 2
            assert not any(gc.is_tracked(entry) for entry in kept.values())
            # and a hit still answers a list, as a miss does
            assert await reader.execute(commands) == [[b"a", b"b"], b"v"]

    asyncio.run(body())


def test_a_write_by_another_client_reaches_the_reader(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    sync.set("k", b"old")

    async def body() -> None:
        async with _reader(private.url) as reader:
            assert await reader.execute([("GET", "k")]) == [b"old"]
            sync.set("k", b"new")  # another replica's write
            await _until(lambda: not _kept(reader, "k"))
            assert await reader.execute([("GET", "k")]) == [b"new"]
            sync.lpush("l", b"x")  # a key read through the reader only after this
            assert await reader.execute([("LRANGE", "l", 0, -1)]) == [[b"x"]]
            sync.lpush("l", b"y")
            await _until(lambda: not _kept(reader, "l"))
            assert await reader.execute([("LRANGE", "l", 0, -1)]) == [[b"y", b"x"]]

    asyncio.run(body())


def _kept(reader: RedisReader, key: str) -> bool:
    """Whether the cache holds ``key`` (through a read that must not reach Redis)."""
    hits = reader.cache_hits
    kept = (
        reader._cached([("GET", key)]) is not None
        or reader._cached([("LRANGE", key, 0, -1)]) is not None
    )
    assert reader.cache_hits == hits
    return kept


def test_a_reply_racing_a_local_write_is_not_kept(private: PrivateRedis, sync: redis.Redis) -> None:
    sync.set("k", b"v")

    async def body() -> None:
        async with _reader(private.url) as reader:
            await reader.execute([("GET", "other")])  # connect first
            call = asyncio.ensure_future(reader.execute([("GET", "k")]))
            await asyncio.sleep(0)  # the read is sent
            reader.invalidate(["k"])  # a write to k finished meanwhile
            assert await call == [b"v"]  # answered ...
            assert not _kept(reader, "k")  # ... but not kept
            # an unrelated key's invalidation does not keep k's next reply out
            call = asyncio.ensure_future(reader.execute([("GET", "k")]))
            await asyncio.sleep(0)
            reader.invalidate(["unrelated"])
            await call
            assert _kept(reader, "k")

    asyncio.run(body())


def test_a_lost_connection_or_a_flush_drops_everything(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    sync.set("k", b"v")

    async def body() -> None:
        async with _reader(private.url) as reader:
            await reader.execute([("GET", "k")])
            assert _kept(reader, "k")
            # Redis drops the connection (and with it what it tracked for it)
            for client in sync.client_list():
                if "t" in client["flags"]:
                    sync.client_kill_filter(_id=client["id"])
            await _until(lambda: not _kept(reader, "k"))
            assert await reader.execute([("GET", "k")]) == [b"v"]  # a new connection
            assert _kept(reader, "k")
            sync.flushall()
            await _until(lambda: not _kept(reader, "k"))
            assert await reader.execute([("GET", "k")]) == [None]

    asyncio.run(body())


def test_entries_age_out_and_the_least_recently_used_go_first(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    for key in "abc":
        sync.set(key, key.encode())

    async def body() -> None:
        async with _reader(private.url, cache_entries=2, cache_seconds=0.2) as reader:
            await reader.execute([("GET", "a")])
            await reader.execute([("GET", "b")])
            await reader.execute([("GET", "a")])  # a is now more recent than b
            await reader.execute([("GET", "c")])  # over the limit: b goes
            assert [_kept(reader, k) for k in "abc"] == [True, False, True]
            await asyncio.sleep(0.3)
            assert not _kept(reader, "a") and not _kept(reader, "c")
            assert await reader.execute([("GET", "a")]) == [b"a"]

    asyncio.run(body())


def test_a_redis_refusing_key_tracking_is_read_without_a_cache(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    # an ACL user allowed everything but CLIENT: HELLO 3 works, CLIENT TRACKING does not
    sync.acl_setuser(
        "limited", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-client"]
    )
    sync.set("k", b"v")
    url = private.url.replace("redis://", "redis://limited:pw@", 1)
    try:

        async def body() -> None:
            async with _reader(url) as reader:
                for _ in range(3):
                    assert await reader.execute([("GET", "k")]) == [b"v"]
                assert reader.cache_hits == 0
                sync.set("k", b"w")
                assert await reader.execute([("GET", "k")]) == [b"w"]

        asyncio.run(body())
    finally:
        sync.acl_deluser("limited")


def test_live_state_reads_its_own_writes_before_any_push(
    private: PrivateRedis, sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pushes ignored: only LiveState's own invalidation can keep the cache right
    monkeypatch.setattr(thinreader._Connection, "_pushed", lambda self, push: None)

    async def body() -> None:
        client = async_client_from_url(private.url, socket_timeout=5.0)
        reader = RedisReader.from_url(private.url, socket_timeout=5.0, cache_entries=100)
        state = live_state(client, reader=reader)
        try:
            assert await state.read_user("v1", "u", "s", 2) == UserState(None, [], [])
            assert await state.read_user("v1", "u", "s", 2) == UserState(None, [], [])
            assert reader.cache_hits == 1
            event = LiveEvent("i1", EventType.VIEW, 1_700_000_000)
            await state.record("u", "s", [event])
            _, history, session, *_ = await state.read_user("v1", "u", "s", 2)
            assert history == [event] and session == [event]
            await state.set_vector("v1", "u", np.ones(2, dtype=np.float32))
            vector, *_ = await state.read_user("v1", "u", "s", 2)
            assert vector is not None and vector.tolist() == [1.0, 1.0]
            await state.forget("u", ["v1"])
            assert await state.read_user("v1", "u", "s", 2) == UserState(None, [], [])
            # the anonymous session key too
            await state.read_user("v1", "", "anon", 2)
            await state.record("", "anon", [event])
            assert (await state.read_user("v1", "", "anon", 2))[2] == [event]
        finally:
            await reader.aclose()
            await client.aclose()

    asyncio.run(body())


def test_a_hit_waits_for_an_invalidation_already_in_the_socket(
    private: PrivateRedis, sync: redis.Redis
) -> None:
    """Another replica wrote, its client heard back, then asks this process: Redis's
    push is in the socket, but the event loop has not read it (both came in one turn).
    The call must not be answered from before the write."""
    sync.set("k", b"old")

    async def body() -> None:
        async with _reader(private.url) as reader:
            assert await reader.execute([("GET", "k")]) == [b"old"]
            assert await reader.execute([("GET", "k")]) == [b"old"]  # kept
            sync.set("k", b"new")  # the loop does not run: the push waits in the socket
            (conn,) = reader._slots
            assert conn is not None and conn._transport is not None
            sock = conn._transport.get_extra_info("socket")
            deadline = time.monotonic() + PUSH_WAIT
            while not select.select([sock.fileno()], [], [], 0)[0]:
                assert time.monotonic() < deadline, "no invalidation push came"
                time.sleep(0.001)
            assert _kept(reader, "k")  # not read yet
            assert await reader.execute([("GET", "k")]) == [b"new"]
            # nothing pending: a hit is answered at once, without Redis
            before = _gets(sync)
            assert await reader.execute([("GET", "k")]) == [b"new"]
            assert _gets(sync) == before

    asyncio.run(body())
