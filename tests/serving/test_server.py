"""The server on loopback with a real Redis: every RPC, errors, health, metrics."""

from __future__ import annotations

import asyncio
import gc
import time
import urllib.request
import weakref
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

from recsvc import artifact as art
from recsvc.client import RecommenderClient
from recsvc.erasure import read_erasure_list
from recsvc.events import EventType, LiveEvent
from recsvc.store import async_client_from_url
from recsvc.v1 import recommender_pb2 as pb

from factories import live_state, small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    publish_block_model(root)
    return root


@pytest.fixture()
def server(
    shop_root: Path, redis_url: str, redis_prefix: str, tmp_path: Path
) -> Iterator[ServerThread]:
    settings = small_settings(
        None,
        artifact_root=str(shop_root),
        erasure_list=str(tmp_path / "erased.txt"),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={
            "port": 0,
            "metrics_port": 0,
            "auth_token": TOKEN,
            "event_log_dir": str(tmp_path / "eventlog"),
            "reload_poll_seconds": 0.2,
        },
    )
    running = ServerThread(settings)
    yield running
    running.stop()


@pytest.fixture()
def client(server: ServerThread) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.target, timeout=5.0, token=TOKEN) as c:
        yield c


def names(resp: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in resp.items]


def test_known_user_recommend(client: RecommenderClient) -> None:
    resp = client.recommend("g0u01", k=5, repeat_policy=pb.REPEAT_POLICY_EXCLUDE_PURCHASED)
    assert len(resp.items) == 5
    assert all(n.startswith("g0") for n in names(resp))
    assert resp.strategy == pb.STRATEGY_PERSONALIZED
    assert resp.model_version and resp.recommendation_id.startswith(resp.model_version)
    assert not resp.degraded and not resp.fallback


def test_anonymous_without_signal_gets_popular(client: RecommenderClient) -> None:
    resp = client.recommend(k=4)
    assert resp.strategy == pb.STRATEGY_POPULAR and resp.fallback
    assert {i.reason for i in resp.items} == {pb.REASON_POPULAR}


def test_inline_session_shapes_answer_and_unknown_items_are_listed(
    client: RecommenderClient,
) -> None:
    resp = client.recommend(session_items=["g1i03", "g1i04", "nope"], k=5)
    assert resp.strategy == pb.STRATEGY_SESSION
    assert all(n.startswith("g1") for n in names(resp))
    assert list(resp.ignored_item_ids) == ["nope"]


def test_recorded_event_changes_the_next_answer(client: RecommenderClient) -> None:
    before = client.recommend(session_id="s-1", k=5)
    assert before.strategy == pb.STRATEGY_POPULAR
    out = client.record_events(
        [client.event(i, "view", session_id="s-1") for i in ("g1i01", "g1i02", "g1i05")]
    )
    assert out.accepted_count == 3 and not out.ignored_events
    after = client.recommend(session_id="s-1", k=5)
    assert after.strategy == pb.STRATEGY_SESSION
    assert all(n.startswith("g1") for n in names(after))
    assert not {"g1i01", "g1i02", "g1i05"} & set(names(after))  # just seen: not news
    again = client.recommend(session_id="s-1", k=12, repeat_policy=pb.REPEAT_POLICY_ALLOW_REPEATS)
    assert {"g1i01", "g1i02", "g1i05"} <= set(names(again))


def test_user_event_refreshes_their_vector(client: RecommenderClient) -> None:
    user = "g0u05"
    before = client.recommend(user, k=6, repeat_policy=pb.REPEAT_POLICY_EXCLUDE_PURCHASED)
    assert all(n.startswith("g0") for n in names(before))
    bought = {f"g1i{i:02d}" for i in range(6)}
    events = [client.event(i, "purchase", user_id=user) for i in sorted(bought)] * 3
    assert client.record_events(events).accepted_count == 18
    after = client.recommend(user, k=6, repeat_policy=pb.REPEAT_POLICY_EXCLUDE_PURCHASED)
    # the fresh purchases dominate (the training history is years old): the other
    # group's unbought items come first now, and what was just bought is excluded
    assert names(after)[0].startswith("g1")
    assert not bought & set(names(after))


def test_similar_items(client: RecommenderClient) -> None:
    resp = client.similar(["g0i01", "unknown"], k=4)
    assert len(resp.items) == 4
    assert all(n.startswith("g0") and n != "g0i01" for n in names(resp))
    assert list(resp.ignored_item_ids) == ["unknown"]
    assert {i.reason for i in resp.items} == {pb.REASON_SIMILAR}
    with pytest.raises(grpc.RpcError) as err:
        client.similar(["unknown"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_model_info(client: RecommenderClient, shop_root: Path) -> None:
    info = client.model_info()
    assert info.model_version == (shop_root / "CURRENT").read_text().strip()
    assert info.item_count == 24 and info.user_count == 60 and info.factors == 2
    assert info.index_type == "exact" and info.index_recall_at_k == 1.0
    assert info.trained_at.seconds > 0 and info.loaded_at.seconds >= info.trained_at.seconds
    m = art.read_manifest(shop_root / info.model_version)
    assert info.trained_at.ToDatetime(tzinfo=UTC) == m.created_at
    assert info.data_cutoff.ToSeconds() == m.data.cutoff_unix
    assert dict(info.metrics) == m.metrics == {"index_recall_at_20": 1.0}
    assert info.index_recall_k == m.index.recall_k == 20
    assert info.format_version == m.format_version == 2
    assert info.default_repeat_policy == pb.REPEAT_POLICY_EXCLUDE_PURCHASED  # no one re-buys


def test_non_personalized_keeps_nothing_about_the_shopper(
    client: RecommenderClient, redis_client: redis.Redis, redis_prefix: str
) -> None:
    events = [client.event("g1i01", "view", user_id="g0u02", session_id="np")]
    events[0].non_personalized = True
    assert client.record_events(events).accepted_count == 1
    resp = client.recommend("g0u02", session_id="np", k=5, non_personalized=True)
    assert resp.strategy == pb.STRATEGY_POPULAR
    # The view still counts toward the shop's trending items, an aggregate with
    # no id in it; nothing is stored under the shopper or the session.
    keys = sorted(k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}:*"))
    assert keys == [f"{redis_prefix}:{{trend}}:epoch", f"{redis_prefix}:{{trend}}:items"]
    assert redis_client.zrange(f"{redis_prefix}:{{trend}}:items", 0, -1) == [b"g1i01"]
    dump = b"".join(redis_client.dump(k) or b"" for k in keys)
    assert b"g0u02" not in dump


def test_forget_user_leaves_no_key(
    client: RecommenderClient, redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    user = "g1u07"
    client.record_events([client.event("g1i02", "view", user_id=user, session_id="fs")])
    client.recommend(user, session_id="fs", k=3)
    assert list(redis_client.scan_iter(match=f"{redis_prefix}:{{u:{user}}}*"))
    out = client.forget_user(user)
    assert out.added_to_erasure_list
    assert out.deleted_vector_count >= 1 and out.deleted_history_event_count == 1
    assert out.deleted_session_count == 1
    assert list(redis_client.scan_iter(match=f"*{user}*")) == []
    assert user in read_erasure_list(tmp_path / "erased.txt")
    # erased users' events are ignored from now on, and their profile is not used
    again = client.record_events([client.event("g1i02", "view", user_id=user)])
    assert [e.reason for e in again.ignored_events] == [pb.IGNORE_REASON_ERASED_USER]
    assert not client.forget_user(user).added_to_erasure_list


def bad_request(call: object) -> tuple[grpc.StatusCode, list[str]]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as err:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        fields = []
        if status is not None:
            for detail in status.details:
                br = error_details_pb2.BadRequest()
                if detail.Unpack(br):
                    fields += [v.field for v in br.field_violations]
        return err.code(), fields
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": -1}, "k"),
        ({"k": 501}, "k"),
        ({"user_id": "u" * 300}, "user_id"),
        ({"session_items": ["a"] * 101}, "session_events"),
        ({"session_items": [""]}, "session_events[0].item_id"),
        ({"placement": "Home Page!"}, "placement"),
    ],
)
def test_bad_recommend_is_invalid_argument_naming_the_field(
    client: RecommenderClient, kwargs: dict[str, object], field: str
) -> None:
    code, fields = bad_request(lambda: client.recommend(**kwargs))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in fields


def test_bad_enum_timestamp_and_batch(client: RecommenderClient) -> None:
    req = pb.RecommendRequest(repeat_policy=7)  # type: ignore[arg-type]
    code, fields = bad_request(lambda: client.stub.Recommend(req, timeout=5))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["repeat_policy"])
    ev = client.event("g0i01", "view", user_id="x")
    ev.event_time.seconds = 4_102_444_800  # 2100: in the future
    bad_type = pb.Event(item_id="g0i01", user_id="x")
    code, fields = bad_request(lambda: client.record_events([ev, bad_type]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == ["events[0].event_time", "events[1].event_type"]
    code, fields = bad_request(lambda: client.forget_user(""))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["user_id"])


def test_auth_refusals(server: ServerThread) -> None:
    with RecommenderClient(server.target, timeout=5.0) as anonymous:
        with pytest.raises(grpc.RpcError) as err:
            anonymous.forget_user("x")
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert TOKEN not in (err.value.details() or "")
        assert anonymous.recommend(k=1).items  # reads need no token by default
    with RecommenderClient(server.target, timeout=5.0, token="wrong") as wrong:
        with pytest.raises(grpc.RpcError) as err:
            wrong.record_events([wrong.event("g0i01")])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recsvc.v1.RecommenderService"):
            got = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert got.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        # v1 has v1alpha's message layout (tests/serving/test_reflection.py)
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        for call in (refl.ServerReflectionInfo, v1):
            answer = next(iter(call(iter([req]), timeout=5)))
            services = {s.name for s in answer.list_services_response.service}
            assert services == {
                "recsvc.v1.RecommenderService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            }


def test_metrics_scrape(server: ServerThread, client: RecommenderClient) -> None:
    client.recommend("g0u01", k=3, placement="home")
    with pytest.raises(grpc.RpcError):
        client.recommend(k=-1)
    port = server.running.metrics_port

    def scrape() -> tuple[dict[str, Any], dict[tuple[str, str], float]]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        families = {f.name: f for f in text_string_to_metric_families(text.decode())}
        handled = {
            (s.labels["grpc_method"], s.labels["grpc_code"]): s.value
            for s in families["grpc_server_handled"].samples
            if s.name == "grpc_server_handled_total"
        }
        return families, handled

    # an aborted call's status reaches the client a moment before the metrics
    # interceptor, which runs when the handler unwinds, has counted it
    deadline = time.monotonic() + 5
    families, handled = scrape()
    while handled[("Recommend", "INVALID_ARGUMENT")] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        families, handled = scrape()
    assert handled[("Recommend", "OK")] >= 1
    assert handled[("Recommend", "INVALID_ARGUMENT")] >= 1
    assert "grpc_server_handling_seconds" in families
    recs = [s for s in families["recsvc_recommendations"].samples if s.name.endswith("_total")]
    assert any(s.labels["placement"] == "home" and s.value >= 1 for s in recs)
    info = [s for s in families["recsvc_model_info"].samples]
    assert len(info) == 1 and info[0].value == 1
    trained = families["recsvc_model_trained_timestamp_seconds"].samples[0].value
    assert trained == client.model_info().trained_at.ToDatetime().replace(tzinfo=UTC).timestamp()


def test_erasure_by_another_replica_takes_effect_here(
    client: RecommenderClient, server: ServerThread, tmp_path: Path
) -> None:
    user = "g0u09"
    assert client.recommend(user, k=3).strategy == pb.STRATEGY_PERSONALIZED
    with (tmp_path / "erased.txt").open("a") as fh:  # what ForgetUser on a replica writes
        fh.write(user + "\n")
    deadline = time.monotonic() + 5
    while client.recommend(user, k=3).strategy == pb.STRATEGY_PERSONALIZED:
        assert time.monotonic() < deadline, "erasure not picked up"
        time.sleep(0.1)
    ignored = client.record_events([client.event("g0i01", user_id=user)]).ignored_events
    assert [e.reason for e in ignored] == [pb.IGNORE_REASON_ERASED_USER]


def test_an_event_recorded_through_another_replica_shows_in_the_next_answer(
    client: RecommenderClient, redis_url: str, redis_prefix: str, server: ServerThread
) -> None:
    # this replica has read the (empty) session: its client-side cache holds it
    for _ in range(3):
        assert client.recommend(session_id="s-9", k=5).strategy == pb.STRATEGY_POPULAR
    port = server.running.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    hits = {
        s.labels["result"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "recsvc_state_cache_lookups"
        for s in f.samples
    }
    assert hits["hit"] >= 2 and hits["miss"] >= 1

    async def other_replica_records() -> None:
        other = async_client_from_url(redis_url, socket_timeout=5.0)
        state = live_state(other, redis_prefix)
        now = int(time.time())
        events = [LiveEvent(i, EventType.VIEW, now) for i in ("g1i01", "g1i02", "g1i05")]
        await state.record("", "s-9", events)
        await other.aclose()

    asyncio.run(other_replica_records())
    # no waiting: Redis pushed the invalidation before it answered that write
    after = client.recommend(session_id="s-9", k=5)
    assert after.strategy == pb.STRATEGY_SESSION
    assert all(n.startswith("g1") for n in names(after))


def test_a_model_reloaded_away_is_freed_without_the_cycle_collector(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    # `recsvc serve` freezes the heap after start-up (serving.server.freeze_heap): the
    # first model is then out of the cycle collector's reach, so it must go by
    # reference counting alone once a new one is served
    root = tmp_path / "artifacts"
    first = publish_block_model(root, seed=0)
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(tmp_path / "erased.txt"),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "eventlog")},
    )
    running = ServerThread(settings)
    try:
        with RecommenderClient(running.target, timeout=5.0) as c:
            c.recommend("g0u01", k=5)
            c.recommend("", k=5, session_items=["g0i01", "g0i02"])
            old = running.running.models.current
            assert old is not None and old.version == first
            refs = [weakref.ref(old), weakref.ref(old.model), weakref.ref(old.ranker)]
            del old
            publish_block_model(root, seed=1)
            assert running.call(running.running.reload()).value == "success"
            assert c.recommend("g0u01", k=5).model_version != first
        gc.disable()
        try:
            assert [r() for r in refs] == [None, None, None]
        finally:
            gc.enable()
    finally:
        running.stop()


def test_a_large_invalid_batch_is_invalid_argument_not_resource_exhausted(
    client: RecommenderClient,
) -> None:
    """Issue #14, defect 6: 1,000 events with 300-character user ids made a 49,947-byte
    BadRequest, over the client's limit on trailing metadata, so the stock client saw
    RESOURCE_EXHAUSTED, which the docs say to retry."""
    events = [client.event(f"g0i{i % 12:02d}", user_id="u" * 300) for i in range(1000)]
    try:
        client.record_events(events)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    else:
        raise AssertionError("the batch was accepted")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert status is not None
    assert len(status.SerializeToString()) + len(details.encode()) <= 8 * 1024
    (detail,) = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    violations = [(v.field, v.description) for v in bad.field_violations]
    listed = violations[:-1]
    assert listed[:2] == [
        ("events[0].user_id", "is longer than 256 bytes"),
        ("events[1].user_id", "is longer than 256 bytes"),
    ]
    assert violations[-1] == ("events", f"... and {1000 - len(listed)} more")
    assert details.endswith(f"; ... and {1000 - len(listed)} more")
    assert details.startswith("events[0].user_id: is longer than 256 bytes; events[1].user_id")


def test_a_refused_request_is_freed_at_once_not_by_the_cycle_collector(
    client: RecommenderClient,
) -> None:
    """grpc.aio keeps an aborted call's AbortError on the call's state, and its traceback
    reaches the call's frames: a reference cycle. A refused request (4 MiB parsed, and
    all the handler built from it) waited there for the cycle collector, which the
    fuzzer saw as RSS climbing ~25 MiB per ten refused 4 MiB requests."""
    requests = (pb.RecommendRequest, pb.SimilarItemsRequest, pb.RecordEventsRequest,
                pb.ForgetUserRequest)  # fmt: skip
    gc.collect()
    gc.disable()  # as if it had not run yet: only reference counting frees
    try:
        for _ in range(3):
            for call in (
                lambda: client.recommend(k=-1),
                lambda: client.similar(["x" * 300]),
                lambda: client.record_events([client.event("")]),
                lambda: client.forget_user(""),
            ):
                assert bad_request(call)[0] == grpc.StatusCode.INVALID_ARGUMENT
        time.sleep(0.2)  # the server's thread finishes each call after the client's
        alive = Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, requests))
    finally:
        gc.enable()
    assert alive == Counter()
