"""The live-state contract: every LiveState implementation and read path against a real
Redis — keys, encoding, bounds, TTLs, ForgetUser, failures.

The integration tests take ``with_state``, which runs them once per read path
(:data:`READ_PATHS`) and backend: the session's single Redis (a private one, or
``REDIS_URL``) and a real Redis Cluster (3 primaries, 3 replicas; see tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
import redis

from recsvc.consent import Consent
from recsvc.errors import ConfigError, DataError, StoreError
from recsvc.events import EventType, LiveEvent
from recsvc.store import (
    ForgetResult,
    KeyScheme,
    LinkRefused,
    LinkResult,
    LiveState,
    RedisLiveState,
    StateLimits,
    UserState,
    async_client_from_url,
    decode_event,
    encode_event,
)
from recsvc.store.reader import open_reader

from factories import both_backends

T = TypeVar("T")

FACTORS = 8
HISTORY_MAX = 5
HISTORY_TTL = 3600
SESSION_MAX = 3
SESSION_TTL = 600
VECTOR_TTL = 7200


def _run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


SHOWN_MAX = 10
SHOWN_TTL = 3000
LIMITS = StateLimits(
    history_max_events=HISTORY_MAX,
    history_ttl_seconds=HISTORY_TTL,
    session_max_events=SESSION_MAX,
    session_ttl_seconds=SESSION_TTL,
    vector_ttl_seconds=VECTOR_TTL,
    shown_ttl_seconds=SHOWN_TTL,
    shown_max_items=SHOWN_MAX,
)
READ_PATHS = ("redis-py", "thin", "thin-cached")
"""The state's Recommend read through a redis-py pipeline, the thin reader, and the thin
reader with its client-side cache."""


@contextlib.asynccontextmanager
async def _state(
    url: str, prefix: str, read_path: str = "redis-py", socket_timeout: float = 5.0
) -> AsyncIterator[LiveState]:
    client = async_client_from_url(url, socket_timeout=socket_timeout)
    reader = open_reader(
        url,
        client,
        "redis-py" if read_path == "redis-py" else "thin",
        socket_timeout=socket_timeout,
        cache_entries=100 if read_path == "thin-cached" else 0,
        cache_seconds=30.0,
    )
    state = RedisLiveState(client, keys=KeyScheme(prefix), limits=LIMITS, reader=reader)
    try:
        yield state
    finally:
        await state.aclose()


WithState = Callable[[Callable[[LiveState], Awaitable[Any]]], Any]


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


@pytest.fixture(params=READ_PATHS)
def with_state(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> WithState:
    """Run ``body(state)`` on a live state of this test's prefix, on one read path."""

    def run(body: Callable[[LiveState], Awaitable[T]]) -> T:
        async def main() -> T:
            async with _state(redis_url, redis_prefix, request.param) as state:
                return await body(state)

        return asyncio.run(main())

    return run


def _events(n: int, start: int = 1_700_000_000, item: str = "sku") -> list[LiveEvent]:
    return [LiveEvent(f"{item}-{i}", EventType.VIEW, start + i) for i in range(n)]


def _vector(seed: int = 0) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.random.default_rng(seed).standard_normal(FACTORS).astype(np.float32)


# --------------------------------------------------------------------------- unit


def test_golden_event_encoding() -> None:
    cases = {
        LiveEvent("sku-42", EventType.PURCHASE, 1_700_000_000, 2.0): b"1|p|1700000000|2|sku-42",
        LiveEvent("a|b|c", EventType.ADD_TO_CART, 5, 0.5): b"1|a|5|0.5|a|b|c",
        LiveEvent("x", EventType.VIEW, 0): b"1|v|0|1|x",
        LiveEvent("x", EventType.CLICK, 1, 1.25): b"1|c|1|1.25|x",
        LiveEvent("caf\u00e9", EventType.IMPRESSION, 1, 0.1): "1|i|1|0.1|caf\u00e9".encode(),
    }
    for event, raw in cases.items():
        assert encode_event(event) == raw
        assert decode_event(raw) == event


@pytest.mark.parametrize(
    "event",
    [
        LiveEvent("", EventType.VIEW, 1),
        LiveEvent("x", EventType.VIEW, 1, 0.0),
        LiveEvent("x", EventType.VIEW, 1, float("nan")),
        LiveEvent("x", EventType.VIEW, 1, float("inf")),
    ],
)
def test_encode_rejects_bad_events(event: LiveEvent) -> None:
    with pytest.raises(ValueError):
        encode_event(event)


@pytest.mark.parametrize("raw", [b"2|p|1|1|x", b"1|z|1|1|x", b"1|p|x|1|y", b"1|p|1|1|", b"1|p"])
def test_decode_rejects_other_entries(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode_event(raw)


def test_client_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        async_client_from_url("redis://localhost", socket_timeout=0)
    with pytest.raises(ConfigError):
        async_client_from_url("nope://localhost")
    with pytest.raises(ConfigError, match=r"\*\*\*"):
        async_client_from_url("redis://u:secret@localhost?decode_responses=true")


def test_live_state_rejects_bad_limits_and_prefixes() -> None:
    with pytest.raises(ValueError, match="session_max_events"):
        StateLimits(
            history_max_events=1,
            history_ttl_seconds=1,
            session_max_events=0,
            session_ttl_seconds=1,
            vector_ttl_seconds=1,
        )
    with pytest.raises(ValueError):
        KeyScheme("a*b")


# --------------------------------------------------------------------------- Redis


@pytest.mark.integration
def test_vector_round_trip_is_byte_exact(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    vec = _vector()

    async def body(state: LiveState) -> None:
        assert await state.get_vector("v1", "alice", FACTORS) is None
        await state.set_vector("v1", "alice", vec)
        got = await state.get_vector("v1", "alice", FACTORS)
        assert got is not None and got.dtype == np.float32 and got.shape == (FACTORS,)
        assert got.tobytes() == vec.tobytes()
        with pytest.raises(StoreError, match="factors"):
            await state.get_vector("v1", "alice", FACTORS + 1)
        with pytest.raises(DataError):
            await state.set_vector("v1", "alice", np.full(FACTORS, np.nan, np.float32))

    with_state(body)
    key = KeyScheme(redis_prefix).vector("alice", "v1")
    assert redis_client.get(key) == vec.astype("<f4").tobytes()
    assert 0 < redis_client.ttl(key) <= VECTOR_TTL


@pytest.mark.integration
def test_record_then_read_user(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    vec = _vector(1)
    first = [LiveEvent("b", EventType.VIEW, 20), LiveEvent("a", EventType.CLICK, 10)]
    second = [LiveEvent("c|x", EventType.PURCHASE, 30, 2.0)]

    async def body(state: LiveState) -> None:
        assert await state.read_user("v1", "alice", "s1", FACTORS) == UserState(None, [], [])
        await state.set_vector("v1", "alice", vec)
        await state.record("alice", "s1", first)
        await state.record("alice", "s1", second)
        got_vec, history, session, *_ = await state.read_user("v1", "alice", "s1", FACTORS)
        assert got_vec is not None and got_vec.tobytes() == vec.tobytes()
        newest_first = [second[0], first[0], first[1]]
        assert history == newest_first
        assert session == newest_first
        assert await state.get_session("s1", "alice") == newest_first
        # The session is tied to alice: it is not the anonymous session of that id.
        assert await state.get_session("s1") == []
        # No user, no session: nothing to read, no round trip needed.
        assert await state.read_user("v1", "", "", FACTORS) == UserState(None, [], [])

    with_state(body)
    assert redis_client.type(KeyScheme(redis_prefix).history("alice")) == b"list"
    assert redis_client.lindex(KeyScheme(redis_prefix).session("s1", "alice"), 0) == (
        b"1|p|30|2|c|x"
    )
    assert redis_client.zrange(KeyScheme(redis_prefix).user_sessions("alice"), 0, -1) == [b"s1"]


@pytest.mark.integration
def test_a_login_merges_the_anonymous_session_once(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """The anonymous session of a session id is read with the customer's state; merging
    it applies each event once (twice in a row, two at once), ties it to the customer and
    drops the anonymous list, unless an event arrived since it was read."""
    before = [LiveEvent("a", EventType.VIEW, 10), LiveEvent("b", EventType.CLICK, 20)]
    later = LiveEvent("c", EventType.VIEW, 30)
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        await state.record("", "s9", before)
        anonymous = (await state.read_user("v1", "zoe", "s9", FACTORS)).anonymous
        assert anonymous == before[::-1]
        # two replicas at once, then a retry: every event applied once in all
        runs = await asyncio.gather(
            state.merge_session("zoe", "s9", anonymous),
            state.merge_session("zoe", "s9", anonymous),
        )
        assert sorted(i for run in runs for i in run) == [0, 1]
        assert await state.merge_session("zoe", "s9", anonymous) == ()
        _, history, session, anonymous, *_ = await state.read_user("v1", "zoe", "s9", FACTORS)
        assert history == session == before[::-1]
        assert anonymous == [] and await state.get_session("s9") == []
        # an anonymous event after the read keeps the list: the next merge takes it
        await state.record("", "s8", before)
        stale = await state.get_session("s8")
        await state.record("", "s8", [later])
        assert len(await state.merge_session("zoe", "s8", stale)) == 2
        assert await state.get_session("s8") == [later, *before[::-1]]
        fresh = (await state.read_user("v1", "zoe", "s8", FACTORS)).anonymous
        assert await state.merge_session("zoe", "s8", fresh) == (0,)  # only the new one
        assert await state.get_session("s8") == []
        _, history, *_ = await state.read_user("v1", "zoe", "", FACTORS)
        assert history[0] == later and len(history) == HISTORY_MAX

    with_state(body)
    assert redis_client.exists(keys.session("s9")) == 0
    assert set(redis_client.zrange(keys.user_sessions("zoe"), 0, -1)) == {b"s9", b"s8"}


@pytest.mark.integration
def test_a_stored_consent_is_read_with_the_state_and_guards_every_write(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    """SetConsent OFF or SESSION_ONLY deletes the profile in the same transaction as it
    stores the consent; the record script then applies nothing to the customer (a
    RecordEvents that read FULL before the switch cannot bring a profile back)."""
    keys = KeyScheme(redis_prefix)
    events = _events(2)

    async def body(state: LiveState) -> None:
        await state.set_vector("v1", "una", _vector(3))
        await state.record("una", "s1", events)
        assert (await state.read_user("v1", "una", "s1", FACTORS)).consent is Consent.FULL
        previous, deleted = await state.set_consent("una", Consent.OFF, ["v1"])
        assert previous is Consent.FULL
        assert deleted == ForgetResult(1, 2, 1)
        got = await state.read_user("v1", "una", "s1", FACTORS)
        assert got == UserState(None, [], [], consent=Consent.OFF)
        assert await state.record("una", "s1", events, ["late-1", "late-2"]) == ()
        assert await state.customers(["una", "vic", "una"]) == {
            "una": ("una", Consent.OFF),
            "vic": ("vic", Consent.FULL),
        }
        previous, deleted = await state.set_consent("una", Consent.SESSION_ONLY, ["v1"])
        assert previous is Consent.OFF and deleted == ForgetResult(0, 0, 0)
        assert (await state.set_consent("una", Consent.FULL, ["v1"]))[0] is Consent.SESSION_ONLY
        assert await state.record("una", "s1", events[:1], ["again"]) == (0,)

    with_state(body)
    assert redis_client.exists(keys.consent("una")) == 0
    assert redis_client.llen(keys.history("una")) == 1
    # a value this version does not know (a newer replica's) counts as OFF
    redis_client.set(keys.consent("una"), b"later-kind")

    async def unknown(state: LiveState) -> None:
        assert (await state.customers(["una"]))["una"] == ("una", Consent.OFF)

    with_state(unknown)


@pytest.mark.integration
def test_impressions_are_counted_per_shopper_and_engagement_restarts_a_count(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        for _ in range(3):
            await state.count_shown("rae", "", ["a", "b"], [])
        await state.count_shown("rae", "", ["c"], ["b"])
        assert await state.overexposed("rae", "", 3) == ["a"]
        assert sorted(await state.overexposed("rae", "", 1)) == ["a", "c"]
        got = await state.read_user("v1", "rae", "", FACTORS, shown_after=3)
        assert got.overexposed == ["a"]
        assert (await state.read_user("v1", "rae", "", FACTORS)).overexposed == []
        # an anonymous session has its own counts
        await state.count_shown("", "s-r", ["z", "z"], [])
        assert await state.overexposed("", "s-r", 2) == ["z"]
        got = await state.read_user("v1", "", "s-r", FACTORS, shown_after=2)
        assert got.overexposed == ["z"]
        # at most shown_max_items are kept, the least shown go first
        await state.count_shown("rae", "", [f"x{i}" for i in range(SHOWN_MAX + 5)], [])
        assert redis_client.zcard(keys.shown("rae")) == SHOWN_MAX
        assert await state.overexposed("rae", "", 3) == ["a"]
        # ForgetUser takes them with the rest
        await state.forget("rae", ["v1"])
        assert await state.overexposed("rae", "", 1) == []

    with_state(body)
    assert 0 < redis_client.ttl(keys.shown(session_id="s-r")) <= SHOWN_TTL


@pytest.mark.integration
def test_anonymous_session(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    events = _events(2)

    async def body(state: LiveState) -> None:
        await state.record("", "anon-1", events)
        assert await state.get_session("anon-1") == events[::-1]
        assert await state.read_user("v1", "", "anon-1", FACTORS) == UserState(
            None, [], events[::-1]
        )

    with_state(body)
    key = KeyScheme(redis_prefix).session("anon-1")
    assert redis_client.llen(key) == 2
    assert 0 < redis_client.ttl(key) <= SESSION_TTL
    assert not list(redis_client.scan_iter(match=f"{redis_prefix}:{{u:*"))


@pytest.mark.integration
def test_history_and_session_are_bounded(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    events = _events(HISTORY_MAX + 4)

    async def body(state: LiveState) -> None:
        # One big batch, then one at a time: both paths must respect the bounds.
        await state.record("bob", "s", events[:6])
        for event in events[6:]:
            await state.record("bob", "s", [event])
        _, history, session, *_ = await state.read_user("v1", "bob", "s", FACTORS)
        assert history == events[::-1][:HISTORY_MAX]
        assert session == events[::-1][:SESSION_MAX]

    with_state(body)
    assert redis_client.llen(KeyScheme(redis_prefix).history("bob")) == HISTORY_MAX
    assert redis_client.llen(KeyScheme(redis_prefix).session("s", "bob")) == SESSION_MAX


@pytest.mark.integration
def test_ttls_are_set(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    with_state(lambda state: state.record("carol", "s", _events(1)))
    expected = {
        KeyScheme(redis_prefix).history("carol"): HISTORY_TTL,
        KeyScheme(redis_prefix).session("s", "carol"): SESSION_TTL,
        KeyScheme(redis_prefix).user_sessions("carol"): SESSION_TTL,
    }
    for key, ttl in expected.items():
        assert 0 < redis_client.ttl(key) <= ttl, key


@pytest.mark.integration
def test_session_index_prunes_long_expired_ids(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    index = KeyScheme(redis_prefix).user_sessions("dave")
    long_ago = int(time.time()) - 3 * SESSION_TTL
    redis_client.zadd(index, {"old": long_ago, "recent": int(time.time()) - SESSION_TTL})
    with_state(lambda state: state.record("dave", "new", _events(1)))
    assert sorted(redis_client.zrange(index, 0, -1)) == [b"new", b"recent"]


@pytest.mark.integration
def test_forget_deletes_everything_of_the_user(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    async def body(state: LiveState) -> tuple[ForgetResult, ForgetResult]:
        for version in ("v1", "v2", "v3"):
            await state.set_vector(version, "erin", _vector())
        await state.record("erin", "s1", _events(HISTORY_MAX + 2))
        await state.record("erin", "s2", _events(1, item="other"))
        await state.record("erin", "", _events(1, item="history-only"))
        # Other people's state, which must survive.
        await state.set_vector("v1", "frank", _vector())
        await state.record("frank", "s1", _events(2))
        await state.record("", "s1", _events(2))  # an anonymous session with the same id
        await state.record("", "anon", _events(1))
        result = await state.forget("erin", ["v1", "v2", "v2", "v9"])
        again = await state.forget("erin", ["v1"])
        return result, again

    result, again = with_state(body)
    assert result == ForgetResult(
        deleted_vectors=2, deleted_history_events=HISTORY_MAX, deleted_sessions=2
    )
    assert again == ForgetResult(0, 0, 0)
    left = sorted(redis_client.scan_iter(match=f"{redis_prefix}:*{{u:erin}}*"))
    # v3 was not named: it expires with its TTL (the caller names the live versions).
    assert left == [KeyScheme(redis_prefix).vector("erin", "v3").encode()]
    survivors = [
        KeyScheme(redis_prefix).vector("frank", "v1"),
        KeyScheme(redis_prefix).history("frank"),
        KeyScheme(redis_prefix).session("s1", "frank"),
        KeyScheme(redis_prefix).user_sessions("frank"),
        KeyScheme(redis_prefix).session("s1"),
        KeyScheme(redis_prefix).session("anon"),
    ]
    assert redis_client.exists(*survivors) == len(survivors)


@pytest.mark.integration
def test_forget_leaves_nothing_behind(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    async def body(state: LiveState) -> ForgetResult:
        await state.set_vector("v1", "gina", _vector())
        for i in range(5):
            await state.record("gina", f"s{i}", _events(2))
        return await state.forget("gina", ["v1"])

    result = with_state(body)
    assert result == ForgetResult(
        deleted_vectors=1, deleted_history_events=HISTORY_MAX, deleted_sessions=5
    )
    assert not list(redis_client.scan_iter(match="*{u:gina}*"))


@pytest.mark.integration
def test_forget_reads_the_session_index_in_the_same_atomic_step(
    with_state: WithState,
    redis_url: str,
    redis_client: redis.Redis,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tied sessions are found and deleted by the server-side script itself: the
    client never builds their keys (a list it read could be stale by the time it
    deletes: a session tied meanwhile would survive the erasure), and one tied by
    another replica a moment before is gone too."""
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> ForgetResult:
        await state.record("hana", "s0", _events(1))
        # another replica ties a session: the index and the list, as record() does
        redis_client.rpush(keys.session("late", "hana"), encode_event(_events(1)[0]))
        redis_client.zadd(keys.user_sessions("hana"), {"late": int(time.time())})

        def no_client_side_keys(*args: object, **kwargs: object) -> str:
            raise AssertionError("ForgetUser built a session key on the client")

        with monkeypatch.context() as m:
            m.setattr(KeyScheme, "session", no_client_side_keys)
            return await state.forget("hana", [])

    result = with_state(body)
    assert result == ForgetResult(deleted_vectors=0, deleted_history_events=1, deleted_sessions=2)
    assert not list(redis_client.scan_iter(match=f"{redis_prefix}:{{u:hana}}*"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def _every_method(state: LiveState) -> list[Callable[[], Awaitable[object]]]:
    return [
        state.ping,
        lambda: state.get_vector("v1", "u", FACTORS),
        lambda: state.set_vector("v1", "u", _vector()),
        lambda: state.read_user("v1", "u", "s", FACTORS),
        lambda: state.get_session("s"),
        lambda: state.record("u", "s", _events(1)),
        lambda: state.forget("u", ["v1"]),
    ]


@pytest.mark.integration
@pytest.mark.parametrize("server", ["down", "hung"])
def test_unavailable_redis_raises_store_error_quickly(server: str) -> None:
    async def body(port: int) -> None:
        async with _state(f"redis://127.0.0.1:{port}", "p", socket_timeout=0.05) as state:
            for call in _every_method(state):
                started = time.perf_counter()
                with pytest.raises(StoreError) as caught:
                    await call()
                assert time.perf_counter() - started < 1.0
                assert isinstance(caught.value.__cause__, redis.RedisError)

    if server == "down":
        asyncio.run(body(_closed_port()))
    else:
        with _silent_server() as port:
            asyncio.run(body(port))


@pytest.mark.integration
def test_redis_errors_are_translated(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    # A key of the wrong type makes Redis answer with an error (WRONGTYPE).
    redis_client.set(KeyScheme(redis_prefix).history("ivan"), b"not a list")

    async def body(state: LiveState) -> None:
        with pytest.raises(StoreError) as caught:
            await state.read_user("v1", "ivan", "s", FACTORS)
        assert isinstance(caught.value.__cause__, redis.ResponseError)
        with pytest.raises(StoreError):
            await state.record("ivan", "s", _events(1))

    with_state(body)


@pytest.mark.integration
def test_undecodable_entries_are_skipped(
    with_state: WithState, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    good = LiveEvent("x", EventType.VIEW, 1)
    redis_client.lpush(KeyScheme(redis_prefix).history("jo"), encode_event(good), b"2|future")

    async def body(state: LiveState) -> None:
        _, history, *_ = await state.read_user("v1", "jo", "", FACTORS)
        assert history == [good]

    with_state(body)


# --------------------------------------------------------------------------- identity links


@pytest.mark.integration
def test_a_linked_id_reads_and_writes_its_customer(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        await state.set_vector("v1", "cust", _vector(1))
        await state.record("cust", "s1", _events(1, item="own"))
        linked = await state.link("cust", ["dev", "card"], ["v1"])
        assert linked == LinkResult(("dev", "card"), (), 0)
        got = await state.read_user("v1", "dev", "s1", FACTORS)
        assert got.customer == "cust"
        assert got.vector is not None and np.array_equal(got.vector, _vector(1))
        assert [e.item_id for e in got.session] == ["own-0"]
        # a write through the linked id lands on the customer
        assert await state.customers(["card", "cust", "other"]) == {
            "card": ("cust", Consent.FULL),
            "cust": ("cust", Consent.FULL),
            "other": ("other", Consent.FULL),
        }
        assert sorted(await state.links("cust")) == ["card", "dev"]
        # linking again renews; unlinking gives the id back its own (empty) state
        assert (await state.link("cust", ["dev"], ["v1"])).refreshed == ("dev",)
        assert await state.unlink("cust", ["dev", "never"]) == ("dev",)
        alone = await state.read_user("v1", "dev", "", FACTORS)
        assert alone.customer == "" and alone.history == [] and alone.vector is None
        assert await state.links("cust") == ["card"]

    with_state(body)
    assert redis_client.get(keys.linked("card")) == b"cust"
    assert 0 < redis_client.ttl(keys.linked("card")) <= LIMITS.link_ttl_seconds
    assert redis_client.exists(keys.linked("dev")) == 0


@pytest.mark.integration
def test_linking_moves_the_ids_own_state_once(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        await state.record("cust", "", _events(1, item="c"))
        await state.record("dev", "s9", _events(2, start=1_700_000_100, item="d"))
        await state.record("dev", "", _events(1, start=1_700_000_200, item="h"))
        await state.set_vector("v1", "dev", _vector(2))
        await state.set_consent("dev", Consent.SESSION_ONLY, ["v1"])  # deletes dev's profile
        await state.set_consent("dev", Consent.FULL, ["v1"])
        await state.record("dev", "s9", _events(2, start=1_700_000_100, item="d"), ["a", "b"])
        await state.record("dev", "", _events(1, start=1_700_000_200, item="h"), ["c"])
        result = await state.link("cust", ["dev"], ["v1"])
        assert result.linked == ("dev",) and result.moved_events == 3
        got = await state.read_user("v1", "cust", "s9", FACTORS)
        assert [e.item_id for e in got.history] == ["h-0", "d-1", "d-0", "c-0"]
        assert [e.item_id for e in got.session] == ["d-1", "d-0"]

    with_state(body)
    # the id keeps nothing of its own but the link
    assert {k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}:{{u:dev}}:*")} == {
        keys.linked("dev")
    }


@pytest.mark.integration
def test_a_stricter_consent_of_a_linked_id_passes_to_the_customer(
    with_state: WithState, redis_prefix: str
) -> None:
    async def body(state: LiveState) -> None:
        await state.record("cust", "", _events(2))
        await state.set_consent("dev", Consent.OFF, ["v1"])
        await state.link("cust", ["dev"], ["v1"])
        got = await state.read_user("v1", "dev", "", FACTORS)
        assert got.consent is Consent.OFF and got.history == []

    with_state(body)


@pytest.mark.integration
def test_refused_links_write_nothing(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        await state.link("ann", ["dev-a"], [])
        # an id of another customer: refused, and the new id before it is not kept
        with pytest.raises(LinkRefused) as caught:
            await state.link("bob", ["new-1", "dev-a"], [])
        assert caught.value.reason == "taken" and caught.value.index == 1
        # chains: a linked id as the customer, a customer (with ids) as an id
        with pytest.raises(LinkRefused) as caught:
            await state.link("dev-a", ["x"], [])
        assert caught.value.reason == "chain" and caught.value.index is None
        with pytest.raises(LinkRefused) as caught:
            await state.link("bob", ["new-2", "ann"], [])
        assert caught.value.reason == "chain" and caught.value.index == 1
        # too many for one customer
        many = [f"id-{i}" for i in range(LIMITS.link_max_ids)]
        with pytest.raises(LinkRefused) as caught:
            await state.link("ann", many, [])
        assert caught.value.reason == "full"
        assert await state.links("bob") == []
        assert await state.links("ann") == ["dev-a"]

    with_state(body)
    for alias in ("new-1", "new-2", "x", "id-0"):
        assert redis_client.exists(keys.linked(alias)) == 0
    assert redis_client.exists(keys.links("bob"), keys.links("dev-a")) == 0


@pytest.mark.integration
def test_forget_follows_the_links(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    async def body(state: LiveState) -> None:
        await state.record("cust", "s1", _events(2))
        await state.link("cust", ["dev", "card"], ["v1"])
        # a write under the id's own keys (the engine resolves first; one racing the
        # link could land so): erased with the customer too
        await state.record("dev", "s2", _events(1, item="later"))
        result = await state.forget("cust", ["v1"])
        assert sorted(result.linked_ids) == ["card", "dev"]
        assert (result.deleted_history_events, result.deleted_sessions) == (3, 2)
        assert (await state.read_user("v1", "dev", "", FACTORS)).customer == ""

    with_state(body)
    for user in ("cust", "dev", "card"):
        assert list(redis_client.scan_iter(match=f"{redis_prefix}:{{u:{user}}}:*")) == []


@pytest.mark.integration
def test_dismissed_items_are_read_with_the_state_until_they_end(
    with_state: WithState, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def body(state: LiveState) -> None:
        await state.dismiss("una", "", ["a", "b"])
        await state.dismiss("", "anon", ["c"])
        assert sorted((await state.read_user("v1", "una", "s", FACTORS)).dismissed) == ["a", "b"]
        assert (await state.read_user("v1", "", "anon", FACTORS)).dismissed == ["c"]

    with_state(body)
    until = redis_client.zscore(keys.dismissed("una"), "a")
    assert until is not None and abs(until - time.time() - LIMITS.dismiss_seconds) < 5
    # one that ended over an hour ago is not read (nor kept by the next dismissal)
    redis_client.zadd(keys.dismissed("una"), {"old": time.time() - 7200})

    async def later(state: LiveState) -> None:
        assert "old" not in (await state.read_user("v1", "una", "", FACTORS)).dismissed
        await state.dismiss("una", "", ["d"])

    with_state(later)
    assert redis_client.zscore(keys.dismissed("una"), "old") is None
