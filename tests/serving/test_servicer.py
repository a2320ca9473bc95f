"""How the servicer ends a call that failed: the status, and the log of a bug."""

import asyncio
import logging
from typing import Any, NoReturn, cast

import grpc
import pytest

from recsvc.config import ServerSettings
from recsvc.errors import FieldViolation, InvalidRequestError
from recsvc.serving.engine import Engine
from recsvc.serving.servicer import RecommenderServicer
from recsvc.v1 import recommender_pb2 as pb


class _Aborted(grpc.aio.AbortError):  # type: ignore[misc]
    pass


class _Context:
    """What the servicer uses of a grpc.aio context: the deadline and abort."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float | None:
        return self.remaining

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self.code = code
        raise _Aborted(details)

    async def abort_with_status(self, status: Any) -> NoReturn:
        self.code = status.code
        raise _Aborted(status.details)


class _Engine:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def recommend(self, _request: Any, _time_left: float | None = None) -> NoReturn:
        self.calls += 1
        raise self.exc


def _recommend(exc: Exception, context: _Context) -> _Engine:
    engine = _Engine(exc)
    servicer = RecommenderServicer(cast(Engine, engine), ServerSettings())
    with pytest.raises(_Aborted):
        asyncio.run(servicer.Recommend(pb.RecommendRequest(user_id="u1", k=5), cast(Any, context)))
    return engine


def test_a_bug_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    context = _Context()
    with caplog.at_level(logging.ERROR, logger="recsvc.serving.servicer"):
        _recommend(ZeroDivisionError("boom"), context)
    assert context.code == grpc.StatusCode.INTERNAL
    assert "bug while serving Recommend" in caplog.text
    assert "ZeroDivisionError" in caplog.text  # the traceback is in the log


def test_a_bad_request_is_invalid_argument_and_not_logged_as_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    context = _Context()
    bad = InvalidRequestError([FieldViolation("k", "must be <= 100")])
    with caplog.at_level(logging.ERROR, logger="recsvc.serving.servicer"):
        _recommend(bad, context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bug while serving" not in caplog.text


def test_a_passed_deadline_ends_the_call_before_the_engine_runs() -> None:
    context = _Context(remaining=0.0)
    engine = _recommend(ZeroDivisionError("never raised"), context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert engine.calls == 0


def test_a_bug_in_another_rpc_is_logged_with_that_rpcs_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # every RPC but Recommend used to log "bug while serving function"
    class _Broken:
        def similar(self, _request: Any) -> NoReturn:
            raise ZeroDivisionError("boom")

    context = _Context()
    servicer = RecommenderServicer(cast(Engine, _Broken()), ServerSettings())
    request = pb.SimilarItemsRequest(item_ids=["a"], k=5)
    with caplog.at_level(logging.ERROR, logger="recsvc.serving.servicer"), pytest.raises(_Aborted):
        asyncio.run(servicer.SimilarItems(request, cast(Any, context)))
    assert context.code == grpc.StatusCode.INTERNAL
    assert "bug while serving SimilarItems" in caplog.text
