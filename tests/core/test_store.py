"""The Redis key scheme, the vector byte layout, and UserVectorStore against a real Redis."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from numpy.typing import NDArray
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.crc import key_slot

from recsvc.errors import ConfigError, DataError, StoreError
from recsvc.store import (
    Endpoint,
    KeyScheme,
    UserVectorStore,
    client_from_url,
    decode_vector,
    encode_vector,
)
from recsvc.store.clients import ClusterURL, is_cluster_url, translated_errors

from factories import both_backends

# --------------------------------------------------------------------------- golden


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


def test_key_scheme_is_pinned() -> None:
    # Every key recsvc writes. Changing one of these strings orphans what is already in
    # Redis: migrate, don't edit.
    k = KeyScheme()
    assert k.vector("cust-42", "20240501-a1b2") == "recsvc:{u:cust-42}:vec:20240501-a1b2"
    assert k.history("cust-42") == "recsvc:{u:cust-42}:hist"
    assert k.session("sess-9", "cust-42") == "recsvc:{u:cust-42}:sess:sess-9"
    assert k.user_sessions("cust-42") == "recsvc:{u:cust-42}:sessions"
    assert k.session("sess-9") == "recsvc:{s:sess-9}:items"
    assert k.seen("cust-42") == "recsvc:{u:cust-42}:seen"
    assert k.seen(session_id="sess-9") == "recsvc:{s:sess-9}:seen"
    assert k.consent("cust-42") == "recsvc:{u:cust-42}:consent"
    assert k.linked("app-7") == "recsvc:{u:app-7}:linked"
    assert k.links("cust-42") == "recsvc:{u:cust-42}:links"
    assert k.catalog() == ("recsvc:{cat}:items", "recsvc:{cat}:log", "recsvc:{cat}:seq")
    assert k.rules() == ("recsvc:{rules}:items", "recsvc:{rules}:log", "recsvc:{rules}:seq")
    assert k.trending() == ("recsvc:{trend}:items", "recsvc:{trend}:epoch")
    assert k.cooccurrence("sku-7") == "recsvc:{n:sku-7}:co"
    assert k.cooccurrence_touched() == "recsvc:{n}:touched"
    assert k.cooccurrence("sku-7", "b") == "recsvc:{b:sku-7}:co"
    assert k.vector_pattern("v1") == "recsvc:{u:*}:vec:v1"
    head, tail = k.vector_parts("v1")
    assert head + "cust-42" + tail == k.vector("cust-42", "v1")
    assert KeyScheme("shop1").vector("cust-42", "v1") == "shop1:{u:cust-42}:vec:v1"


def test_a_users_keys_share_one_cluster_slot() -> None:
    k = KeyScheme()
    keys = [
        k.vector("cust-42", "v1"),
        k.vector("cust-42", "v2"),
        k.history("cust-42"),
        k.session("s1", "cust-42"),
        k.user_sessions("cust-42"),
        KeyScheme("other").vector("cust-42", "v1"),
    ]
    assert len({key_slot(key.encode()) for key in keys}) == 1
    # ...and the tag really is per user, not one slot for everything.
    others = {key_slot(k.vector(f"cust-{i}", "v1").encode()) for i in range(50)}
    assert len(others) > 40


def test_vector_byte_layout_is_pinned() -> None:
    raw = encode_vector(np.array([1.0, -2.0, 0.5], np.float32))
    assert raw == bytes.fromhex("0000803f000000c00000003f")


def test_encode_is_little_endian_whatever_the_input_order() -> None:
    big_endian = np.array([1.0, -2.0, 0.5], dtype=">f4")
    assert encode_vector(big_endian) == bytes.fromhex("0000803f000000c00000003f")


def test_decode_round_trips_and_returns_a_writable_float32_copy() -> None:
    vec = np.random.default_rng(7).standard_normal(16).astype(np.float32)
    back = decode_vector(encode_vector(vec), 16)
    assert back.dtype == np.float32
    assert back.shape == (16,)
    np.testing.assert_array_equal(back, vec)
    back[0] = 123.0  # must not raise: callers blend vectors in place
    assert back[0] == 123.0


@pytest.mark.parametrize("length", [0, 11, 13, 16])
def test_decode_rejects_wrong_length(length: int) -> None:
    with pytest.raises(StoreError, match="expected 12"):
        decode_vector(b"\x00" * length, 3)


def test_encode_rejects_a_matrix() -> None:
    with pytest.raises(ValueError, match="1-d"):
        encode_vector(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize(
    ("user_id", "version", "prefix"),
    [
        ("", "v1", "recsvc"),  # anonymous users have no keys
        ("u1", "", "recsvc"),
        ("u1", "2024-05-01T12:00:00", "recsvc"),  # ':' would make patterns ambiguous
        ("u1", "v*", "recsvc"),  # glob metacharacter in SCAN MATCH
        ("u1", "v1", "re{c}svc"),  # braces would move the hash tag into the prefix
        ("u1", "v1", ""),
    ],
)
def test_key_builders_reject_unsafe_parts(user_id: str, version: str, prefix: str) -> None:
    with pytest.raises(ValueError):
        KeyScheme(prefix).vector(user_id, version)


def test_session_keys_reject_an_empty_session_id() -> None:
    with pytest.raises(ValueError):
        KeyScheme().session("")
    with pytest.raises(ValueError):
        KeyScheme().session("", "alice")


# --------------------------------------------------------------------------- client


def test_client_from_url_builds_bounded_pools_for_each_scheme() -> None:
    cases = {
        "redis://127.0.0.1:6390/2": None,
        "rediss://cache.example:6380/0": SSLConnection,
        "unix:///tmp/recsvc-test.sock?db=1": UnixDomainSocketConnection,
    }
    for url, connection_class in cases.items():
        client = client_from_url(url, socket_timeout=0.25, max_connections=8)
        try:
            pool = client.connection_pool
            assert isinstance(pool, redis.BlockingConnectionPool)
            assert pool.max_connections == 8
            assert pool.connection_kwargs["socket_timeout"] == 0.25
            if connection_class is not None:
                assert pool.connection_class is connection_class
        finally:
            client.close()


def test_client_from_url_rejects_bad_urls_without_leaking_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        client_from_url("http://user:s3cret@host:6379/0")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="decode_responses"):
        client_from_url("redis://127.0.0.1:6379/0?decode_responses=True")


@pytest.mark.parametrize(
    ("url", "nodes", "options"),
    [
        ("redis+cluster://10.0.0.1:7000", ((("10.0.0.1", 7000),)), {}),
        (
            "redis+cluster://u:s3cret@a:7000,b:7001,[::1]:7002/0?socket_timeout=2",
            (("a", 7000), ("b", 7001), ("::1", 7002)),
            {"username": "u", "password": "s3cret", "socket_timeout": 2.0},
        ),
        ("rediss+cluster://a:7000", (("a", 7000),), {"ssl": True}),
        ("redis+cluster://a", (("a", 6379),), {}),
    ],
)
def test_a_cluster_url_names_its_nodes_and_their_options(
    url: str, nodes: tuple[tuple[str, int], ...], options: dict[str, object]
) -> None:
    parsed = ClusterURL.parse(url)
    assert parsed.nodes == nodes
    assert parsed.options == options
    assert is_cluster_url(url) and not is_cluster_url("redis://a:7000/0")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://u:s3cret@a:7000/2", "database 0 only"),
        ("redis+cluster://u:s3cret@a:7000,b:port", "not host:port"),
        ("redis+cluster://u:s3cret@a:7000?decode_responses=True", "decode_responses"),
    ],
)
def test_a_bad_cluster_url_is_refused_without_leaking_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ClusterURL.parse(url)
    assert "s3cret" not in str(info.value)


def test_a_cluster_whose_nodes_are_all_down_is_a_store_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens
    with pytest.raises(StoreError, match="Redis Cluster"):
        client_from_url(f"redis+cluster://127.0.0.1:{port}", socket_timeout=0.2)


def test_the_thin_reader_takes_no_cluster_url_as_one_endpoint() -> None:
    with pytest.raises(ConfigError, match="Redis Cluster"):
        Endpoint.from_url("redis+cluster://a:7000")


def test_cluster_errors_and_connection_races_are_store_errors_and_bugs_are_not() -> None:
    with pytest.raises(StoreError, match="reading"), translated_errors("reading"):
        raise redis.exceptions.SlotNotCoveredError("slot 42 is not covered")
    # redis-py's asyncio connection writing on a transport closed under it
    # (redis/redis-py#4287): a connection failure, not a bug of ours
    leaky: dict[str, object] = {"__name__": "redis.asyncio.connection"}
    exec("def write(writer):\n    writer.writelines([b'PING'])", leaky)
    with pytest.raises(StoreError, match="writelines"), translated_errors("writing"):
        leaky["write"](None)  # type: ignore[operator]
    # the same error from our own code stays a bug
    with pytest.raises(AttributeError), translated_errors("writing"):
        None.writelines([b"PING"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://127.0.0.1:6390/2", "127.0.0.1:6390"),
        ("redis://u:pw@h:1/3?socket_timeout=2&client_name=x", "h:1"),
        ("unix:///tmp/r.sock?db=1", "/tmp/r.sock"),
    ],
)
def test_the_thin_readers_endpoint_reads_what_it_honours(url: str, where: str) -> None:
    assert Endpoint.from_url(url).where == where
    e = Endpoint.from_url("redis://u:pw@h:1/3?socket_timeout=2&client_name=x")
    assert (e.username, e.password, e.db, e.socket_timeout, e.client_name) == (
        "u",
        "pw",
        3,
        2.0,
        "x",
    )


@pytest.mark.parametrize(
    "url",
    [
        "rediss://h:6380/0",  # TLS: redis-py reads it
        "redis://h:1/0?protocol=3",
        "redis://h:1/0?ssl_cert_reqs=none",
        "redis://u:s3cret@h:1/0?health_check_interval=5",
    ],
)
def test_the_thin_reader_refuses_loudly_what_it_would_not_honour(url: str) -> None:
    with pytest.raises(ConfigError, match="thin reader") as info:
        Endpoint.from_url(url)
    assert "s3cret" not in str(info.value)


def test_a_redis_that_is_down_raises_store_error() -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = client_from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.2)
    store = UserVectorStore(client)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="Redis GET") as info:
            store.get("v1", "u1", 4)
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        # fails fast: redis-py's default of 10 backed-off retries would take seconds
        assert time.monotonic() - started < 1.0
        with pytest.raises(StoreError):
            store.publish("v1", ["u1"], np.ones((1, 4), np.float32), ttl_seconds=60)
        with pytest.raises(StoreError):
            store.delete_version("v1")
    finally:
        client.close()


def test_a_redis_that_hangs_times_out_as_store_error_without_retrying() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = client_from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        try:
            with pytest.raises(StoreError) as info:
                UserVectorStore(client).get("v1", "u1", 4)
            assert isinstance(info.value.__cause__, redis.TimeoutError)
        finally:
            client.close()
        # A retry would have opened a second connection; count what is queued.
        silent.setblocking(False)
        attempts = 0
        while True:
            try:
                conn, _ = silent.accept()
            except BlockingIOError:
                break
            conn.close()
            attempts += 1
        assert attempts == 1


# --------------------------------------------------------------------------- real Redis


def _factors(n_users: int, n_factors: int, seed: int = 0) -> NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n_users, n_factors)).astype(np.float32)


@pytest.mark.integration
def test_publish_then_read_back_byte_exact(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    users = [f"u{i}" for i in range(2_345)]
    factors = _factors(len(users), 16)
    # batch_size that leaves a partial last batch
    assert store.publish("v1", users, factors, ttl_seconds=600, batch_size=500) == len(users)

    for i in (0, 499, 500, 2_344):
        raw = redis_client.get(KeyScheme(redis_prefix).vector(users[i], "v1"))
        assert raw == encode_vector(factors[i])
        got = store.get("v1", users[i], 16)
        assert got is not None
        np.testing.assert_array_equal(got, factors[i])
    many = store.get_many("v1", users, 16, batch_size=700)
    assert len(many) == len(users)
    assert all(v is not None for v in many)
    np.testing.assert_array_equal(np.stack([v for v in many if v is not None]), factors)


@pytest.mark.integration
def test_a_paced_publish_takes_n_over_rate_and_writes_every_vector(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    # Issue #14, defect 7: a publish into a serving Redis is paced. 600 vectors at
    # 1,000/s in batches of 70 (the last one partial) take at least 0.6 s.
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    users = [f"u{i}" for i in range(600)]
    factors = _factors(len(users), 16, seed=3)
    started = time.monotonic()
    written = store.publish(
        "paced", users, factors, ttl_seconds=600, batch_size=70, rate_per_second=1_000
    )
    paced = time.monotonic() - started
    assert written == len(users)
    assert paced >= len(users) / 1_000
    keys = KeyScheme(redis_prefix)
    raws = [redis_client.get(k) for k in [keys.vector(user, "paced") for user in users]]
    assert raws == [encode_vector(row) for row in factors]

    # rate 0 is unpaced: the same load goes as fast as Redis answers (milliseconds
    # here; the bound is the paced time, so a busy machine does not make it flaky)
    started = time.monotonic()
    assert store.publish("fast", users, factors, ttl_seconds=600, batch_size=70) == 600
    assert time.monotonic() - started < len(users) / 1_000
    raws = [redis_client.get(k) for k in [keys.vector(user, "fast") for user in users]]
    assert raws == [encode_vector(row) for row in factors]


@pytest.mark.integration
def test_publish_reads_memory_mapped_and_float64_factors(
    redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    # What training/publish.py hands over: an np.load(..., mmap_mode="r") matrix.
    factors = _factors(300, 8, seed=5)
    np.save(tmp_path / "f.npy", factors)
    mapped = np.load(tmp_path / "f.npy", allow_pickle=False, mmap_mode="r")
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    users = [f"u{i}" for i in range(300)]
    assert store.publish("v1", users, mapped, ttl_seconds=60, batch_size=128) == 300
    assert store.publish("v2", users, factors.astype(np.float64), ttl_seconds=60) == 300
    for version in ("v1", "v2"):
        got = store.get_many(version, users, 8)
        np.testing.assert_array_equal(np.stack([v for v in got if v is not None]), factors)


@pytest.mark.integration
def test_published_vectors_expire(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    store.publish("v1", ["a", "b"], _factors(2, 4), ttl_seconds=120)
    for user in ("a", "b"):
        ttl = redis_client.ttl(KeyScheme(redis_prefix).vector(user, "v1"))
        assert 0 < ttl <= 120


@pytest.mark.integration
def test_versions_are_isolated(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    v1, v2 = _factors(2, 8, seed=1), _factors(2, 8, seed=2)
    store.publish("v1", ["a", "b"], v1, ttl_seconds=600)
    assert store.get("v2", "a", 8) is None
    store.publish("v2", ["a"], v2[:1], ttl_seconds=600)
    got_v1, got_v2 = store.get("v1", "a", 8), store.get("v2", "a", 8)
    assert got_v1 is not None
    assert got_v2 is not None
    np.testing.assert_array_equal(got_v1, v1[0])
    np.testing.assert_array_equal(got_v2, v2[0])
    assert store.get_many("v2", ["a", "b"], 8)[1] is None


@pytest.mark.integration
def test_unknown_user_is_none(redis_client: redis.Redis, redis_prefix: str) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    store.publish("v1", ["known"], _factors(1, 4), ttl_seconds=600)
    assert store.get("v1", "stranger", 4) is None
    assert store.get_many("v1", ["stranger", "known"], 4)[0] is None
    assert store.get_many("v1", [], 4) == []


@pytest.mark.integration
def test_delete_version_removes_only_that_version(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    neighbour = UserVectorStore(redis_client, prefix=f"{redis_prefix}:other")
    users = [f"u{i}" for i in range(250)]
    store.publish("v1", users, _factors(250, 4, seed=1), ttl_seconds=600)
    store.publish("v2", users[:10], _factors(10, 4, seed=2), ttl_seconds=600)
    neighbour.publish("v1", users[:5], _factors(5, 4, seed=3), ttl_seconds=600)
    history = KeyScheme(redis_prefix).history("u0")
    redis_client.set(history, b"kept")

    assert store.delete_version("v1", batch_size=100) == 250
    assert store.get_many("v1", users, 4) == [None] * 250
    assert all(v is not None for v in store.get_many("v2", users[:10], 4))
    assert all(v is not None for v in neighbour.get_many("v1", users[:5], 4))
    assert redis_client.get(history) == b"kept"
    assert store.delete_version("v1") == 0


@pytest.mark.integration
def test_reading_with_the_wrong_factor_count_names_the_key(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    store.publish("v1", ["a"], _factors(1, 3), ttl_seconds=600)
    with pytest.raises(StoreError, match=r"\{u:a\}:vec:v1.*expected 16"):
        store.get("v1", "a", 4)


def test_publish_validates_before_writing() -> None:
    # No Redis needed: validation happens before the first command.
    client = client_from_url("redis://127.0.0.1:1/0")
    store = UserVectorStore(client)
    try:
        with pytest.raises(ValueError, match="shape"):
            store.publish("v1", ["a", "b"], _factors(3, 4), ttl_seconds=60)
        with pytest.raises(ValueError, match="positive"):
            store.publish("v1", ["a"], _factors(1, 4), ttl_seconds=0)
        with pytest.raises(ValueError, match="non-empty"):
            store.publish("v1", ["a", ""], _factors(2, 4), ttl_seconds=60)
        for rate in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="rate_per_second"):
                store.publish("v1", ["a"], _factors(1, 4), ttl_seconds=60, rate_per_second=rate)
        bad = _factors(2, 4)
        bad[1, 2] = np.nan
        with pytest.raises(DataError, match="NaN"):
            store.publish("v1", ["a", "b"], bad, ttl_seconds=60)
    finally:
        client.close()


def test_a_customers_scan_pattern_escapes_glob_characters() -> None:
    tag, pattern = KeyScheme().user_pattern("a*b?[c]\\d")
    assert tag == "recsvc:{u:a*b?[c]\\d}"
    assert pattern == "recsvc:{u:a\\*b\\?\\[c\\]\\\\d}:*"
    assert KeyScheme().history("a*b?[c]\\d").startswith(tag + ":")
