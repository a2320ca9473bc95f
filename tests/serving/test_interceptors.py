"""serving.interceptors on a real grpc.aio server on loopback; metrics scraped over HTTP."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from recsvc.config import ServerSettings
from recsvc.errors import ConfigError
from recsvc.serving.interceptors import (
    WRITE_METHODS,
    AuthInterceptor,
    ConcurrencyLimitInterceptor,
    MetricsInterceptor,
    RequestParsingInterceptor,
    server_interceptors,
)
from recsvc.serving.metrics import ServingMetrics, start_metrics_http_server
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

SERVICE = "recsvc.v1.RecommenderService"
TOKEN = "s3cret-t0ken"
TIMEOUT = 5.0


class _Servicer(pb_grpc.RecommenderServiceServicer):
    """GetModelInfo answers (optionally held until ``release``); SimilarItems aborts with
    INVALID_ARGUMENT when item_ids is empty; Recommend fails unexpectedly."""

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.release = asyncio.Event()
        self.running = 0

    async def GetModelInfo(  # noqa: N802 - the rpc's name, as gRPC dispatches it
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        self.running += 1
        try:
            if self.hold:
                await self.release.wait()
            return pb.GetModelInfoResponse(model_version="m-1")
        finally:
            self.running -= 1

    async def SimilarItems(  # noqa: N802
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        if not request.item_ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "item_ids: required")
        return pb.SimilarItemsResponse(model_version="m-1")

    async def Recommend(  # noqa: N802
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        raise RuntimeError("a bug")

    async def ForgetUser(  # noqa: N802
        self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetUserResponse:
        return pb.ForgetUserResponse(added_to_erasure_list=True)


@dataclass
class _Running:
    stub: Any  # RecommenderServiceStub (generated code has no type hints)
    health: Any  # HealthStub
    channel: grpc.aio.Channel
    metrics_port: int


@asynccontextmanager
async def _serve(
    interceptors: Sequence[Any], servicer: _Servicer, registry: CollectorRegistry
) -> AsyncIterator[_Running]:
    """The servicer, a health service and a sync test method behind ``interceptors``."""
    server = grpc.aio.server(interceptors=list(interceptors))
    pb_grpc.add_RecommenderServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Sync", {"Echo": _sync_echo_handler()}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    http, metrics_port = start_metrics_http_server(registry, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield _Running(
                stub=pb_grpc.RecommenderServiceStub(channel),  # type: ignore[no-untyped-call]
                health=health_pb2_grpc.HealthStub(channel),
                channel=channel,
                metrics_port=metrics_port,
            )
    finally:
        await server.stop(None)
        http.shutdown()


def _sync_echo_handler() -> Any:
    """A plain-function handler: grpc.aio runs it on a thread with a sync context."""

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"bad":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "bad")
        return request

    return grpc.unary_unary_rpc_method_handler(echo)


async def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode("utf-8"))

    body = await asyncio.to_thread(fetch)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _grpc_labels(method: str, service: str = SERVICE, **extra: str) -> frozenset[tuple[str, str]]:
    labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method, **extra}
    return frozenset(labels.items())


async def _code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


async def _until(condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- MetricsInterceptor -----------------------------------------------------------------


@pytest.mark.integration
def test_metrics_count_ok_aborted_and_failed_calls_by_final_code() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        async with _serve([MetricsInterceptor(metrics)], _Servicer(), registry) as s:
            for _ in range(3):
                info = await s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
                assert info.model_version == "m-1"
            aborted = s.stub.SimilarItems(pb.SimilarItemsRequest(), timeout=TIMEOUT)
            assert await _code_of(aborted) == grpc.StatusCode.INVALID_ARGUMENT
            failed = s.stub.Recommend(pb.RecommendRequest(), timeout=TIMEOUT)
            assert await _code_of(failed) == grpc.StatusCode.UNKNOWN
            missing = s.channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=TIMEOUT)
            assert await _code_of(missing) == grpc.StatusCode.UNIMPLEMENTED

            samples = await _scrape(s.metrics_port)

        def value(name: str, method: str, **extra: str) -> float | None:
            return samples.get((name, _grpc_labels(method, **extra)))

        assert value("grpc_server_started_total", "GetModelInfo") == 3.0
        assert value("grpc_server_handled_total", "GetModelInfo", grpc_code="OK") == 3.0
        assert value("grpc_server_handling_seconds_count", "GetModelInfo") == 3.0
        seconds = value("grpc_server_handling_seconds_sum", "GetModelInfo")
        assert seconds is not None
        assert 0.0 < seconds < 3 * TIMEOUT
        infinite = value("grpc_server_handling_seconds_bucket", "GetModelInfo", le="+Inf")
        assert infinite == 3.0
        assert value("grpc_server_started_total", "SimilarItems") == 1.0
        assert (
            value("grpc_server_handled_total", "SimilarItems", grpc_code="INVALID_ARGUMENT") == 1.0
        )
        assert value("grpc_server_handled_total", "SimilarItems", grpc_code="OK") is None
        assert value("grpc_server_handling_seconds_count", "SimilarItems") == 1.0
        assert value("grpc_server_handled_total", "Recommend", grpc_code="UNKNOWN") == 1.0
        # a made-up method name never becomes a label value
        assert not any(("grpc_method", "NoSuchMethod") in labels for _, labels in samples)

    asyncio.run(scenario())


@pytest.mark.integration
def test_metrics_record_deadline_exceeded_when_the_client_gives_up() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        servicer = _Servicer(hold=True)
        async with _serve([MetricsInterceptor(metrics)], servicer, registry) as s:
            call = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=0.2)
            assert await _code_of(call) == grpc.StatusCode.DEADLINE_EXCEEDED
            key = (
                "grpc_server_handled_total",
                _grpc_labels("GetModelInfo", grpc_code="DEADLINE_EXCEEDED"),
            )
            samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
            for _ in range(50):  # the server side learns of the deadline on its own time
                samples = await _scrape(s.metrics_port)
                if key in samples:
                    break
                await asyncio.sleep(0.05)
            assert samples.get(key) == 1.0
            assert servicer.running == 0  # the handler was cancelled, not left behind

    asyncio.run(scenario())


@pytest.mark.integration
def test_metrics_and_limit_wrap_sync_handlers_too() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        limiter = ConcurrencyLimitInterceptor(1, metrics)
        interceptors = [MetricsInterceptor(metrics), limiter]
        async with _serve(interceptors, _Servicer(), registry) as s:
            echo = s.channel.unary_unary("/test.Sync/Echo")
            assert await echo(b"hi", timeout=TIMEOUT) == b"hi"
            assert await _code_of(echo(b"bad", timeout=TIMEOUT)) == (
                grpc.StatusCode.FAILED_PRECONDITION
            )
            samples = await _scrape(s.metrics_port)

        def handled(code: str) -> float | None:
            labels = _grpc_labels("Echo", service="test.Sync", grpc_code=code)
            return samples.get(("grpc_server_handled_total", labels))

        assert handled("OK") == 1.0
        assert handled("FAILED_PRECONDITION") == 1.0
        assert limiter.inflight == 0
        assert samples[("recsvc_inflight_requests", frozenset())] == 0.0

    asyncio.run(scenario())


# --- AuthInterceptor ----------------------------------------------------------------------


@pytest.mark.integration
def test_auth_protects_write_methods_and_counts_refusals(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        interceptors = [MetricsInterceptor(metrics), AuthInterceptor(TOKEN, WRITE_METHODS)]
        async with _serve(interceptors, _Servicer(), registry) as s:
            request = pb.ForgetUserRequest(user_id="u1")

            def forget(metadata: Sequence[tuple[str, str]] | None) -> Any:
                return s.stub.ForgetUser(request, metadata=metadata, timeout=TIMEOUT)

            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await forget(None)
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await forget([("authorization", "Bearer not-the-token")])
            assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not-the-token" not in (wrong.value.details() or "")
            assert TOKEN not in (wrong.value.details() or "")
            not_bearer = forget([("authorization", f"Basic {TOKEN}")])
            assert await _code_of(not_bearer) == grpc.StatusCode.UNAUTHENTICATED
            ok = await forget([("authorization", f"Bearer {TOKEN}")])
            assert ok.added_to_erasure_list
            # a reading RPC is not protected unless all_methods
            info = await s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
            assert info.model_version == "m-1"

            samples = await _scrape(s.metrics_port)

        def handled(code: str) -> float | None:
            labels = _grpc_labels("ForgetUser", grpc_code=code)
            return samples.get(("grpc_server_handled_total", labels))

        assert handled("UNAUTHENTICATED") == 2.0
        assert handled("PERMISSION_DENIED") == 1.0
        assert handled("OK") == 1.0

    asyncio.run(scenario())
    assert TOKEN not in caplog.text
    assert "not-the-token" not in caplog.text


@pytest.mark.integration
def test_auth_all_methods_protects_everything_but_health() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        auth = AuthInterceptor(TOKEN, WRITE_METHODS, all_methods=True)
        async with _serve([auth], _Servicer(), registry) as s:
            info = s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
            assert await _code_of(info) == grpc.StatusCode.UNAUTHENTICATED
            authorized = await s.stub.GetModelInfo(
                pb.GetModelInfoRequest(),
                metadata=[("authorization", f"Bearer {TOKEN}")],
                timeout=TIMEOUT,
            )
            assert authorized.model_version == "m-1"
            checked = await s.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())


def test_auth_never_protects_health_or_reflection_and_is_off_without_token() -> None:
    auth = AuthInterceptor(TOKEN, {"/recsvc.v1.RecommenderService/ForgetUser"}, all_methods=True)
    assert auth.protects("/recsvc.v1.RecommenderService/GetModelInfo")
    assert not auth.protects("/grpc.health.v1.Health/Check")
    assert not auth.protects("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not auth.protects("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    off = AuthInterceptor(None, WRITE_METHODS)
    assert not off.protects("/recsvc.v1.RecommenderService/ForgetUser")


@pytest.mark.parametrize(
    ("token", "methods"),
    [("", WRITE_METHODS), ("   ", WRITE_METHODS), (TOKEN, {"ForgetUser"}), (TOKEN, {"/a/b/c"})],
)
def test_auth_rejects_settings_that_would_fail_open(token: str, methods: set[str]) -> None:
    with pytest.raises(ConfigError):
        AuthInterceptor(token, methods)


# --- ConcurrencyLimitInterceptor ----------------------------------------------------------


@pytest.mark.integration
def test_concurrency_limit_refuses_the_extra_calls_at_once() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        limiter = ConcurrencyLimitInterceptor(2, metrics)
        servicer = _Servicer(hold=True)
        async with _serve([MetricsInterceptor(metrics), limiter], servicer, registry) as s:
            calls = [
                asyncio.ensure_future(
                    _code_of(s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT))
                )
                for _ in range(5)
            ]
            # the refused calls end while the admitted ones are still held
            await _until(lambda: sum(c.done() for c in calls) == 3 and servicer.running == 2)
            finished = [c for c in calls if c.done()]
            assert [c.result() for c in finished] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
            assert servicer.running == 2
            assert limiter.inflight == 2
            while_held = await _scrape(s.metrics_port)
            # health answers even at the limit
            checked = await s.health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert checked.status == health_pb2.HealthCheckResponse.SERVING

            servicer.release.set()
            codes = await asyncio.gather(*calls)
            assert sorted(c.name for c in codes) == ["OK"] * 2 + ["RESOURCE_EXHAUSTED"] * 3
            # the slots are free again
            again = await s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
            assert again.model_version == "m-1"
            after = await _scrape(s.metrics_port)

        assert while_held[("recsvc_inflight_requests", frozenset())] == 2.0
        assert after[("recsvc_inflight_requests", frozenset())] == 0.0
        assert limiter.inflight == 0

        def handled(code: str) -> float:
            return after[
                ("grpc_server_handled_total", _grpc_labels("GetModelInfo", grpc_code=code))
            ]

        assert handled("RESOURCE_EXHAUSTED") == 3.0
        assert handled("OK") == 3.0

    asyncio.run(scenario())


def test_concurrency_limit_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        ConcurrencyLimitInterceptor(0, ServingMetrics(CollectorRegistry()))


# --- the chain as the server builds it ----------------------------------------------------


@pytest.mark.integration
def test_server_chain_counts_unauthenticated_calls_without_taking_a_slot() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        settings = ServerSettings(max_concurrency=1, auth_token=TOKEN)
        chain = server_interceptors(settings, metrics)
        assert [type(i) for i in chain] == [
            MetricsInterceptor,
            RequestParsingInterceptor,
            AuthInterceptor,
            ConcurrencyLimitInterceptor,
        ]
        servicer = _Servicer(hold=True)
        async with _serve(chain, servicer, registry) as s:
            held = asyncio.ensure_future(
                _code_of(s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT))
            )
            await _until(lambda: servicer.running == 1)
            # the only slot is taken, yet a caller without the token learns only that
            unauthenticated = s.stub.ForgetUser(pb.ForgetUserRequest(user_id="u"))
            assert await _code_of(unauthenticated) == grpc.StatusCode.UNAUTHENTICATED
            busy = s.stub.ForgetUser(
                pb.ForgetUserRequest(user_id="u"),
                metadata=[("authorization", f"Bearer {TOKEN}")],
                timeout=TIMEOUT,
            )
            assert await _code_of(busy) == grpc.StatusCode.RESOURCE_EXHAUSTED
            servicer.release.set()
            assert await held == grpc.StatusCode.OK
            samples = await _scrape(s.metrics_port)

        def handled(code: str) -> float | None:
            labels = _grpc_labels("ForgetUser", grpc_code=code)
            return samples.get(("grpc_server_handled_total", labels))

        assert handled("UNAUTHENTICATED") == 1.0
        assert handled("RESOURCE_EXHAUSTED") == 1.0

    asyncio.run(scenario())


def test_server_chain_leaves_out_auth_without_a_token() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    chain = server_interceptors(ServerSettings(), metrics)
    assert [type(i) for i in chain] == [
        MetricsInterceptor,
        RequestParsingInterceptor,
        ConcurrencyLimitInterceptor,
    ]


def test_wrapped_handlers_are_built_once_per_method_handler() -> None:
    """grpc.aio asks on every call; the wrapper is reused while the handler is the same."""

    async def behaviour(request: Any, context: Any) -> str:
        return "ok"

    class _Details:
        method = f"/{SERVICE}/GetModelInfo"
        invocation_metadata = ()

    async def scenario() -> None:
        metrics = ServingMetrics(CollectorRegistry())
        handler = grpc.unary_unary_rpc_method_handler(behaviour)
        other = grpc.unary_unary_rpc_method_handler(behaviour)
        for interceptor in (MetricsInterceptor(metrics), ConcurrencyLimitInterceptor(4, metrics)):
            served = [handler]

            async def continuation(details: Any, served: list[Any] = served) -> Any:
                return served[0]

            first = await interceptor.intercept_service(continuation, _Details())
            again = await interceptor.intercept_service(continuation, _Details())
            assert first is again and first is not handler
            served[0] = other  # a new handler for the method (re-registered): rewrapped
            third = await interceptor.intercept_service(continuation, _Details())
            assert third is not first
            assert await third.unary_unary(None, _FakeContext()) == "ok"

    asyncio.run(scenario())


class _FakeContext:
    def code(self) -> None:
        return None

    def time_remaining(self) -> None:
        return None


# --- request bytes that do not parse ------------------------------------------------------


@pytest.mark.integration
def test_unparseable_request_bytes_are_invalid_argument_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #14, defect 5: grpc parses the request before any handler runs, and a parse
    error ended the call UNKNOWN, with the exception's class in the details, a 7-line
    traceback per call and no count in grpc_server_handled_total."""
    caplog.set_level(logging.INFO)
    garbage = b"\xff\xff\xff\xff"  # a field tag whose varint never ends: corrupt

    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        chain = server_interceptors(ServerSettings(), metrics)
        async with _serve(chain, _Servicer(), registry) as s:
            for method in ("Recommend", "GetModelInfo", "ForgetUser"):
                raw = s.channel.unary_unary(f"/{SERVICE}/{method}")
                for _ in range(5):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await raw(garbage, timeout=TIMEOUT)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "DecodeError" not in (err.value.details() or "")
            # the health service too, its unary and its streaming method
            check = s.channel.unary_unary("/grpc.health.v1.Health/Check")
            assert await _code_of(check(garbage, timeout=TIMEOUT)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            watch = s.channel.unary_stream("/grpc.health.v1.Health/Watch")(garbage, timeout=TIMEOUT)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in watch:
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # a valid request still parses and is answered
            info = await s.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
            assert info.model_version == "m-1"
            samples = await _scrape(s.metrics_port)

        for method in ("Recommend", "GetModelInfo", "ForgetUser"):
            labels = _grpc_labels(method, grpc_code="INVALID_ARGUMENT")
            assert samples[("grpc_server_handled_total", labels)] == 5.0
            unknown = _grpc_labels(method, grpc_code="UNKNOWN")
            assert samples.get(("grpc_server_handled_total", unknown)) is None
            unparseable = frozenset({("rpc", method), ("reason", "decode_error")})
            assert samples[("recsvc_unparseable_requests_total", unparseable)] == 5.0
        check_labels = frozenset({("rpc", "Check"), ("reason", "decode_error")})
        assert samples[("recsvc_unparseable_requests_total", check_labels)] == 1.0

    asyncio.run(scenario())
    # 17 unparseable calls within a second: one warning line, no traceback
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].exc_info is None
    assert "Recommend" in warnings[0].getMessage()


@pytest.mark.integration
def test_unparseable_requests_are_logged_once_per_interval_with_the_count_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="recsvc.serving.interceptors")
    now = [1000.0]

    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = ServingMetrics(registry)
        parsing = RequestParsingInterceptor(metrics, log_interval_seconds=60, clock=lambda: now[0])
        async with _serve([MetricsInterceptor(metrics), parsing], _Servicer(), registry) as s:
            raw = s.channel.unary_unary(f"/{SERVICE}/SimilarItems")
            for step in (0.0, 1.0, 1.0, 59.0, 0.5):  # lines at 1000 and 1061
                now[0] += step
                assert await _code_of(raw(b"\x0a\x05ab", timeout=TIMEOUT)) == (
                    grpc.StatusCode.INVALID_ARGUMENT  # a string field cut short
                )

    asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "SimilarItems" in lines[0] and "at most one line per 60s" in lines[0]
    assert lines[1].endswith("; 2 more like it since the last such line")
