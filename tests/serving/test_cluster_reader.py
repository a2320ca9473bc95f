"""The thin reader on a Redis Cluster (recsvc.store.clusterreader): each command to the
primary of its key's slot, a call spanning nodes answered in order, the client-side
cache per node answering repeated reads and dropping what another client changed, and
a slot moved to another primary (MOVED, then the slot map re-read) followed without a
stale answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import redis
from redis.crc import key_slot

from recsvc.store import async_client_from_url, client_from_url
from recsvc.store.clusterreader import ClusterReader
from recsvc.store.reader import open_reader

pytestmark = pytest.mark.integration

T = TypeVar("T")
PUSH_WAIT = 5.0


def _run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(body())  # type: ignore[arg-type]


@asynccontextmanager
async def _reader(url: str, cache: int = 100) -> AsyncIterator[ClusterReader]:
    client = async_client_from_url(url, socket_timeout=5.0)
    reader = open_reader(
        url, client, "thin", socket_timeout=5.0, cache_entries=cache, cache_seconds=30.0
    )
    assert isinstance(reader, ClusterReader)
    try:
        yield reader
    finally:
        await reader.aclose()
        await client.aclose()


def _keys_on_two_nodes(sync: Any, prefix: str) -> tuple[str, str]:
    """Two keys whose slots two different primaries serve."""
    first = f"{prefix}:{{a}}:k"
    owner = sync.get_node_from_key(first).name
    for n in range(1000):
        other = f"{prefix}:{{b{n}}}:k"
        if sync.get_node_from_key(other).name != owner:
            return first, other
    raise AssertionError("no second primary")


def test_a_call_spanning_two_primaries_is_answered_in_order(
    redis_cluster_url: str, redis_prefix: str
) -> None:
    sync = client_from_url(redis_cluster_url, socket_timeout=5.0)
    a, b = _keys_on_two_nodes(sync, redis_prefix)
    sync.set(a, b"A")
    sync.rpush(b, b"1", b"2")

    async def body() -> list[Any]:
        async with _reader(redis_cluster_url, cache=0) as reader:
            return await reader.execute([("LRANGE", b, 0, -1), ("GET", a), ("GET", b + "x")])

    try:
        assert _run(body) == [[b"1", b"2"], b"A", None]
    finally:
        sync.delete(a, b)
        sync.close()


def test_the_cache_answers_repeats_and_drops_what_another_client_changed(
    redis_cluster_url: str, redis_prefix: str
) -> None:
    sync = client_from_url(redis_cluster_url, socket_timeout=5.0)
    a, b = _keys_on_two_nodes(sync, redis_prefix)
    sync.set(a, b"v1")
    sync.set(b, b"w1")

    async def body() -> None:
        async with _reader(redis_cluster_url) as reader:
            call = [("GET", a), ("GET", b)]
            assert await reader.execute(call) == [b"v1", b"w1"]
            misses = reader.cache_misses
            assert await reader.execute(call) == [b"v1", b"w1"]
            assert reader.cache_misses == misses  # both nodes' parts from the cache
            assert reader.cache_hits >= 2
            sync.set(b, b"w2")  # another client, on b's node: its push drops the entry
            deadline = time.monotonic() + PUSH_WAIT
            while (await reader.execute(call))[1] != b"w2":
                assert time.monotonic() < deadline, "the invalidation never came"
                await asyncio.sleep(0.01)

    try:
        _run(body)
    finally:
        sync.delete(a, b)
        sync.close()


def _move_slot(sync: Any, key: str) -> str:
    """Migrate ``key``'s slot (and its keys) to another primary, as a resharding
    would: IMPORTING/MIGRATING, MIGRATE, then the new owner told to every primary.
    The new owner's name."""
    slot = key_slot(key.encode())
    source = sync.get_node_from_key(key)
    target = next(n for n in sync.get_primaries() if n.name != source.name)
    nodes = sync.execute_command("CLUSTER NODES", target_nodes=source)
    ids = {where.split("@")[0]: node["node_id"] for where, node in nodes.items()}
    src, dst = ids[source.name], ids[target.name]
    sync.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src, target_nodes=target)
    sync.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst, target_nodes=source)
    keys = sync.execute_command("CLUSTER GETKEYSINSLOT", slot, 100, target_nodes=source)
    if keys:
        sync.execute_command(
            "MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys, target_nodes=source
        )
    for node in sync.get_primaries():
        sync.execute_command("CLUSTER SETSLOT", slot, "NODE", dst, target_nodes=node)
    return str(target.name)


def test_a_slot_moved_to_another_primary_is_followed_without_a_stale_answer(
    redis_cluster_url: str, redis_prefix: str
) -> None:
    sync = client_from_url(redis_cluster_url, socket_timeout=5.0)
    key = f"{redis_prefix}:{{moving}}:k"
    sync.set(key, b"before")

    async def body() -> None:
        async with _reader(redis_cluster_url) as reader:
            assert await reader.execute([("GET", key)]) == [b"before"]  # cached, old owner
            moved_to = await asyncio.to_thread(_move_slot, sync, key)
            # the old owner deleted the key when it migrated: its push dropped the entry
            writer = redis.Redis(
                host=moved_to.rsplit(":", 1)[0], port=int(moved_to.rsplit(":", 1)[1])
            )
            writer.set(key, b"after")
            writer.close()
            deadline = time.monotonic() + PUSH_WAIT
            while await reader.execute([("GET", key)]) != [b"after"]:
                assert time.monotonic() < deadline, "still answering from the old owner"
                await asyncio.sleep(0.01)
            assert reader.refreshes >= 1  # the MOVED made it follow the new map

    try:
        _run(body)
    finally:
        sync.delete(key)
        sync.close()
