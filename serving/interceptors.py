"""Cross-cutting concerns of the gRPC server, as grpc.aio server interceptors.

The order is part of the contract; :func:`server_interceptors` builds exactly this
list, and ``grpc.aio.server(interceptors=[...])`` runs the first one outermost::

    MetricsInterceptor           counts and times every call, the ones refused by the
     │                           three below included (grpc_server_* metrics)
     └─ RequestParsingInterceptor
         │                       request bytes that do not parse: INVALID_ARGUMENT,
         │                       counted, one log line per minute (every service)
         └─ AuthInterceptor      refuses calls without the right bearer token, before
             │                   they take a concurrency slot or reveal the load
             │                   (left out when no token is set: it would pass all)
             └─ ConcurrencyLimitInterceptor
                 │               refuses calls above the limit at once, no queueing
                 │               (RESOURCE_EXHAUSTED); maintains recsvc_inflight_requests
                 └─ servicer

How: grpc.aio calls ``intercept_service`` once per call, before the request is read,
and never shows it the call's outcome. So each interceptor returns a handler of its own
whose behaviour wraps the servicer's (the status is read from the context once the
behaviour returns or raises), and a refusal is a handler whose behaviour aborts. A
refused call therefore still passes the interceptors above it, which is what lets
MetricsInterceptor count it.

grpc parses a request with the handler's ``request_deserializer`` before any behaviour
runs, and a parse error there would end the call UNKNOWN with a traceback logged per
call. RequestParsingInterceptor gives each handler a deserializer that never raises (it
returns a marker) and a behaviour that aborts INVALID_ARGUMENT on the marker; the
interceptors above copy the handler's deserializer, so the one grpc calls is that one.

Scope: only unary-unary handlers are measured and limited (every ``recsvc.v1`` RPC is
unary); streaming handlers pass through those two unchanged. The health and reflection services
are never asked for a token and never count against the concurrency limit: an
orchestrator probing a saturated replica must get an answer, not RESOURCE_EXHAUSTED.
Unknown methods are left to gRPC (UNIMPLEMENTED) and are not counted, so a client
cannot create series by calling made-up method names.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection, Iterable
from time import perf_counter
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from recsvc.config import ServerSettings
from recsvc.errors import ConfigError

from .metrics import UNPARSEABLE_REASONS, ServingMetrics

__all__ = [
    "RECOMMENDER_SERVICE",
    "UNPROTECTED_SERVICES",
    "WRITE_METHODS",
    "AuthInterceptor",
    "ConcurrencyLimitInterceptor",
    "MetricsInterceptor",
    "RequestParsingInterceptor",
    "server_interceptors",
]

_LOG = logging.getLogger(__name__)

# grpc ships no type hints; these aliases say what the Any stands for.
Handler = Any
"""A ``grpc.RpcMethodHandler``."""
CallDetails = Any
"""A ``grpc.HandlerCallDetails``: ``.method`` (``/package.Service/Method``) and
``.invocation_metadata``."""
Continuation = Callable[[CallDetails], Awaitable[Handler | None]]

RECOMMENDER_SERVICE: Final = "recsvc.v1.RecommenderService"

WRITE_METHODS: Final[frozenset[str]] = frozenset(
    f"/{RECOMMENDER_SERVICE}/{method}"
    for method in (
        "RecordEvents",
        "ForgetUser",
        "SetConsent",
        "ExportUser",
        "LinkIds",
        "UnlinkIds",
        "UpsertItems",
        "WithdrawItems",
        "SetRules",
        "DeleteRules",
        "SetExperiments",
    )
)
"""The RPCs that change state, and ExportUser (a customer's data): the ones the token
protects unless ``auth_all_rpcs``."""

UNPROTECTED_SERVICES: Final[frozenset[str]] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
)
"""Services never behind the token nor the concurrency limit."""

_CODE_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


def server_interceptors(settings: ServerSettings, metrics: ServingMetrics) -> list[Any]:
    """The interceptors of the recsvc server, in the order documented above.

    Without an auth token AuthInterceptor would pass every call through unchanged, so
    it is left out: each interceptor costs a few coroutines on every call.
    """
    chain: list[Any] = [MetricsInterceptor(metrics), RequestParsingInterceptor(metrics)]
    if settings.auth_token is not None:
        chain.append(
            AuthInterceptor(settings.auth_token, WRITE_METHODS, all_methods=settings.auth_all_rpcs)
        )
    chain.append(ConcurrencyLimitInterceptor(settings.max_concurrency, metrics))
    return chain


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Maintains ``grpc_server_started_total``, ``grpc_server_handled_total`` (by final
    status code) and ``grpc_server_handling_seconds`` for every unary-unary call."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        # one entry per method that has a handler, so bounded by the server's methods
        self._by_method: dict[str, _MethodMetrics] = {}
        self._wrapped = _WrappedHandlers()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: CallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        method = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            name = _method_of(handler_call_details)
            observed = self._by_method.get(name)
            if observed is None:
                observed = self._by_method[name] = _MethodMetrics(self._metrics, name)
            wrapped = _replace_behavior(handler, observed.wrap(handler.unary_unary))
            self._wrapped.put(method, handler, wrapped)
        return wrapped


class RequestParsingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Ends a call whose request bytes do not parse with INVALID_ARGUMENT.

    Every handler that has a ``request_deserializer`` gets one that never raises: a
    parse error becomes an :class:`_Unparseable` marker, counted in
    ``recsvc_unparseable_requests_total{rpc, reason}`` and logged as one warning line at
    most every ``log_interval_seconds`` (with the number of such requests since the
    last line), and the handler's behaviour aborts INVALID_ARGUMENT when it receives the
    marker. The details name the expected message, never the exception: a client learns
    nothing of the server's libraries. Covers all four handler kinds (the health and
    reflection services stream), the behaviours async or, for unary calls, sync.
    """

    def __init__(
        self,
        metrics: ServingMetrics,
        *,
        log_interval_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counter = metrics.unparseable_requests
        self._log = _RateLimitedLog(log_interval_seconds, clock)
        self._wrapped = _WrappedHandlers()

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: CallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # raw bytes in (or a refusal that never reads them)
        method = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            wrapped = self._guard(handler, _method_of(handler_call_details))
            self._wrapped.put(method, handler, wrapped)
        return wrapped

    def _guard(self, handler: Handler, method: str) -> Handler:
        streaming = (bool(handler.request_streaming), bool(handler.response_streaming))
        behavior = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[streaming]
        if not (
            inspect.iscoroutinefunction(behavior)
            or inspect.isasyncgenfunction(behavior)
            or streaming == (False, False)
        ):
            return handler  # a sync streaming behaviour: left as grpc runs it
        rpc = method.rpartition("/")[2]
        deserialize = handler.request_deserializer
        message = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
        details = (
            f"the request is not a valid {message.full_name} message"
            if message is not None
            else "the request's bytes do not parse"
        )
        counters = {
            reason: self._counter.labels(rpc=rpc, reason=reason) for reason in UNPARSEABLE_REASONS
        }

        def safe_deserialize(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError:
                reason, error = "decode_error", "DecodeError"
            except Exception as exc:  # any parser failure is the request's, not ours
                reason, error = "other", type(exc).__name__
            counters[reason].inc()
            self._log.warning(
                "unparseable request to %s (%s, %d bytes): answered INVALID_ARGUMENT",
                method,
                error,
                len(data),
            )
            return _UNPARSEABLE

        factory, guarded = _parse_checked(streaming, behavior, details)
        return factory(
            guarded,
            request_deserializer=safe_deserialize,
            response_serializer=handler.response_serializer,
        )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Requires ``authorization: Bearer <token>`` metadata on protected methods.

    No or malformed credentials → UNAUTHENTICATED; a token that does not match →
    PERMISSION_DENIED. The token is compared in constant time and never appears in a
    log line or an error's details.

    Args:
        token: the expected token; None switches authentication off.
        protected_methods: full method names, ``/package.Service/Method``.
        all_methods: protect every method (health and reflection excepted).
    """

    def __init__(
        self, token: str | None, protected_methods: Collection[str], all_methods: bool = False
    ) -> None:
        if token is not None and not token.strip():
            raise ConfigError("the auth token must not be empty; leave it unset to turn auth off")
        malformed = sorted(m for m in protected_methods if not _is_full_method_name(m))
        if malformed:
            # A short name like "RecordEvents" would silently protect nothing.
            raise ConfigError(f"protected methods must read /package.Service/Method: {malformed}")
        self._expected = None if token is None else token.encode("utf-8")
        self._protected = frozenset(protected_methods)
        self._all_methods = all_methods

    def protects(self, method: str) -> bool:
        """Whether calls of ``method`` (``/package.Service/Method``) need the token."""
        if self._expected is None or _service_of(method) in UNPROTECTED_SERVICES:
            return False
        return self._all_methods or method in self._protected

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: CallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if self._expected is None:  # authentication off: nothing to check
            return handler
        method = _method_of(handler_call_details)
        if not self.protects(method):
            return handler
        refusal = self._refusal(handler_call_details.invocation_metadata)
        if refusal is None:
            return handler
        code, details = refusal
        _LOG.debug("refused %s: %s", method, code.name)
        return _refusing_handler(handler, code, details)

    def _refusal(
        self, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        presented = next((v for k, v in metadata or () if k == "authorization"), None)
        if presented is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer' metadata"
        if isinstance(presented, bytes):
            presented = presented.decode("utf-8", "replace")
        scheme, _, credentials = presented.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            return grpc.StatusCode.UNAUTHENTICATED, "authorization metadata is not a bearer token"
        assert self._expected is not None  # protects() is False without a token
        if not hmac.compare_digest(credentials.encode("utf-8"), self._expected):
            return grpc.StatusCode.PERMISSION_DENIED, "invalid bearer token"
        return None


class ConcurrencyLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses a unary call with RESOURCE_EXHAUSTED when ``limit`` calls are already in
    flight; nothing is queued, so a client can retry another replica at once.

    ``recsvc_inflight_requests`` counts the admitted calls in flight.
    """

    def __init__(self, limit: int, metrics: ServingMetrics) -> None:
        if limit < 1:
            raise ConfigError(f"the concurrency limit must be at least 1, got {limit}")
        self._limit = limit
        self._gauge = metrics.inflight_requests
        self._inflight = 0
        # grpc.aio runs sync handlers on a thread pool, so admission must be atomic
        # across threads, not just between coroutines.
        self._lock = threading.Lock()
        self._details = f"server busy: {limit} calls in flight; retry with backoff"
        self._wrapped = _WrappedHandlers()

    @property
    def inflight(self) -> int:
        """Calls admitted and not yet finished."""
        return self._inflight

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: CallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        method = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            if _service_of(_method_of(handler_call_details)) in UNPROTECTED_SERVICES:
                wrapped = handler
            else:
                wrapped = _replace_behavior(handler, self._wrap(handler.unary_unary))
            self._wrapped.put(method, handler, wrapped)
        return wrapped

    def _admit(self) -> bool:
        with self._lock:
            if self._inflight >= self._limit:
                return False
            self._inflight += 1
        self._gauge.inc()
        return True

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1
        self._gauge.dec()

    def _wrap(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        busy = grpc.StatusCode.RESOURCE_EXHAUSTED
        if inspect.iscoroutinefunction(behavior):

            async def limited(request: Any, context: Any) -> Any:
                if self._admit():
                    try:
                        return await behavior(request, context)
                    finally:
                        self._release()
                await context.abort(busy, self._details)  # raises grpc.aio.AbortError

            return limited

        def limited_sync(request: Any, context: Any) -> Any:
            if self._admit():
                try:
                    return behavior(request, context)
                finally:
                    self._release()
            context.abort(busy, self._details)  # raises

        return limited_sync


class _Unparseable:
    """What a guarded deserializer returns for bytes that do not parse."""

    __slots__ = ()


_UNPARSEABLE: Final = _Unparseable()
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _parse_checked(
    streaming: tuple[bool, bool], behavior: Callable[..., Any], details: str
) -> tuple[Callable[..., Handler], Callable[..., Any]]:
    """The handler factory of ``streaming``'s kind, and ``behavior`` aborting with
    INVALID_ARGUMENT (``details``) where a request is the unparseable marker."""
    if streaming == (False, False):
        if inspect.iscoroutinefunction(behavior):

            async def unary(request: Any, context: Any) -> Any:
                if request is _UNPARSEABLE:
                    await context.abort(_INVALID, details)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler, unary

        def unary_sync(request: Any, context: Any) -> Any:
            if request is _UNPARSEABLE:
                context.abort(_INVALID, details)
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler, unary_sync

    async def checked(requests: AsyncIterable[Any], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            if request is _UNPARSEABLE:
                await context.abort(_INVALID, details)
            yield request

    request_streaming, _ = streaming
    factory = {
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[streaming]

    async def first(request: Any, context: Any) -> Any:
        if request_streaming:
            return checked(request, context)
        if request is _UNPARSEABLE:
            await context.abort(_INVALID, details)
        return request

    if inspect.isasyncgenfunction(behavior):

        async def responses(request: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behavior(await first(request, context), context):
                yield response

        return factory, responses

    async def answer(request: Any, context: Any) -> Any:
        return await behavior(await first(request, context), context)

    return factory, answer


class _RateLimitedLog:
    """At most one warning line per ``interval`` seconds; a line says how many it stood
    for since the last one. A client sending garbage in a loop must not fill the log."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self._interval = interval
        self._clock = clock
        self._next = float("-inf")
        self._suppressed = 0
        self._lock = threading.Lock()  # sync handlers' deserializers run on threads

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            suppressed, self._suppressed = self._suppressed, 0
            self._next = now + self._interval
        if suppressed:
            message += "; %d more like it since the last such line"
            args = (*args, suppressed)
        else:
            message += " (further ones: at most one line per %gs)"
            args = (*args, self._interval)
        _LOG.warning(message, *args)


class _MethodMetrics:
    """The grpc_server_* children of one method, looked up once, not on every call."""

    def __init__(self, metrics: ServingMetrics, method: str) -> None:
        service, name = _service_of(method), method.rpartition("/")[2]
        labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": name}
        self._started = metrics.grpc_started.labels(**labels)
        self._seconds = metrics.grpc_handling_seconds.labels(**labels)
        self._handled_family = metrics.grpc_handled
        self._labels = labels
        self._handled: dict[grpc.StatusCode, Any] = {}

    def _finish(self, code: grpc.StatusCode, start: float) -> None:
        self._seconds.observe(perf_counter() - start)
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled.setdefault(
                code, self._handled_family.labels(**self._labels, grpc_code=code.name)
            )
        handled.inc()

    def wrap(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behavior):

            async def observed(request: Any, context: Any) -> Any:
                self._started.inc()
                start = perf_counter()
                try:
                    response = await behavior(request, context)
                except BaseException as exc:
                    self._finish(_code_after_error(context.code(), exc, context), start)
                    _release_frames(exc)
                    del request  # this frame stays in the traceback too
                    raise
                self._finish(_as_status_code(context.code()) or grpc.StatusCode.OK, start)
                return response

            return observed

        def observed_sync(request: Any, context: Any) -> Any:
            # grpc.aio hands sync handlers a context without code(): record it ourselves.
            recorder = _StatusRecorder(context)
            self._started.inc()
            start = perf_counter()
            try:
                response = behavior(request, recorder)
            except BaseException as exc:
                self._finish(_code_after_error(recorder.code(), exc, context), start)
                _release_frames(exc)
                del request
                raise
            self._finish(_as_status_code(recorder.code()) or grpc.StatusCode.OK, start)
            return response

        return observed_sync


class _WrappedHandlers:
    """The handler an interceptor built around each method's handler, built once.

    grpc.aio asks the interceptors for a handler on every call; building a new one
    each time (closures, ``RpcMethodHandler``, ``iscoroutinefunction``) costs
    microseconds per call. The servicer hands out the same handler object for a
    method on every call, so the wrapper is kept with the handler it wraps and
    rebuilt only if that handler changes. Bounded by the server's methods (unknown
    methods have no handler and never get here).
    """

    __slots__ = ("_by_method",)

    def __init__(self) -> None:
        self._by_method: dict[Any, tuple[Handler, Handler]] = {}

    def get(self, method: Any, handler: Handler) -> Handler | None:
        hit = self._by_method.get(method)
        if hit is not None and hit[0] is handler:
            return hit[1]
        return None

    def put(self, method: Any, handler: Handler, wrapped: Handler) -> None:
        self._by_method[method] = (handler, wrapped)


class _StatusRecorder:
    """A sync servicer context that remembers the status code set or aborted with."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: grpc.StatusCode | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code
        self._context.set_code(code)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._context.abort(code, details)

    def abort_with_status(self, status: Any) -> None:
        self._code = status.code
        self._context.abort_with_status(status)


def _release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames ``exc``, and the errors it chains, came
    through: the request, what the handler made of it, the handler's own error.

    grpc.aio keeps the AbortError of an aborted call on the call's state, and its
    traceback reaches the call's frames, which reach the context and so the state
    again: a reference cycle that kept the request and all the handler built from it
    until the cycle collector ran. Refused 4 MiB requests held ~8 MiB each that way
    (166 MiB after 20 in a row); the frames are done with once the call has failed, and
    only the executing one (the caller's) is left as it is."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _code_after_error(code: Any, exc: BaseException, context: Any) -> grpc.StatusCode:
    """The status a call ends with when its behaviour raised ``exc``."""
    status = _as_status_code(code)
    if status is not None:  # abort(), or set_code() before raising: that code is sent
        return status
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc sends for an unexpected exception


def _as_status_code(code: Any) -> grpc.StatusCode | None:
    # Some grpcio releases return the code's number from context.code(), not the enum.
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    return _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)


def _replace_behavior(handler: Handler, behavior: Callable[..., Any]) -> Handler:
    return grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refusing_handler(handler: Handler, code: grpc.StatusCode, details: str) -> Handler:
    """A handler of ``handler``'s kind that ends the call with ``code`` at once.

    The request is left unparsed: a refused call costs no deserialization."""

    async def refuse(request_or_iterator: Any, context: Any) -> None:
        await context.abort(code, details)

    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return factory(refuse)


def _method_of(handler_call_details: CallDetails) -> str:
    method = handler_call_details.method
    return method.decode("ascii") if isinstance(method, bytes) else str(method)


def _service_of(method: str) -> str:
    """``/package.Service/Method`` → ``package.Service``."""
    return method.lstrip("/").partition("/")[0]


def _is_full_method_name(method: str) -> bool:
    service, _, name = method.removeprefix("/").partition("/")
    return method.startswith("/") and bool(service) and bool(name) and "/" not in name
