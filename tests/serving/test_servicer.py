"""How the servicer ends a call that failed: the status, and the log of a bug."""

import asyncio
import base64
import logging
import urllib.parse
from typing import Any, NoReturn, cast

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from recsvc.config import ServerSettings
from recsvc.errors import FieldViolation, InvalidRequestError
from recsvc.serving.engine import Engine
from recsvc.serving.servicer import (
    ERROR_BUDGET_BYTES,
    MAX_VIOLATIONS_LISTED,
    RecommenderServicer,
    bad_request_status,
)
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


def _listed(status: status_pb2.Status) -> list[tuple[str, str]]:
    (detail,) = status.details
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    return [(v.field, v.description) for v in bad.field_violations]


def _sent_bytes(status: status_pb2.Status) -> int:
    """The trailers' bytes as grpc sends them: grpc-message, grpc-status-details-bin."""
    return len(urllib.parse.quote(status.message, safe=" ")) + len(
        base64.b64encode(status.SerializeToString())
    )


def test_a_few_violations_are_all_listed() -> None:
    violations = [FieldViolation("k", "must be <= 500"), FieldViolation("user_id", "is required")]
    status = bad_request_status(violations)
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert _listed(status) == [("k", "must be <= 500"), ("user_id", "is required")]
    assert status.message == "k: must be <= 500; user_id: is required"


def test_many_violations_list_the_first_and_count_the_rest() -> None:
    violations = [FieldViolation(f"events[{i}].item_id", "is required") for i in range(1000)]
    violations.append(FieldViolation("events[999].user_id", "is required"))
    status = bad_request_status(violations)
    listed = _listed(status)
    assert len(listed) == MAX_VIOLATIONS_LISTED + 1
    assert listed[0] == ("events[0].item_id", "is required")
    assert listed[-1] == ("events", f"... and {1001 - MAX_VIOLATIONS_LISTED} more")
    assert status.message.endswith(f"events[19].item_id: is required; ... and {981} more")
    # violations of several fields are counted under none of them
    mixed = [FieldViolation("k", "bad")] * 30 + [FieldViolation("filters.exclude_item_ids", "x")]
    assert _listed(bad_request_status(mixed))[-1] == ("", "... and 11 more")


@pytest.mark.parametrize("description", ["x" * 2_000, "\u00e9\u4e2d\U0001f600" * 100, "%" * 900])
def test_long_violations_stay_within_the_byte_budget(description: str) -> None:
    violations = [FieldViolation(f"ids[{i}]", description) for i in range(50)]
    status = bad_request_status(violations)
    listed = _listed(status)
    assert 1 <= len(listed) - 1 < MAX_VIOLATIONS_LISTED
    assert listed[-1] == ("ids", f"... and {51 - len(listed)} more")
    assert _sent_bytes(status) <= ERROR_BUDGET_BYTES
    shown = len(listed) - 1
    # one more would not have fitted: given just those, the last is still counted
    assert _listed(bad_request_status(violations[: shown + 1]))[-1] == ("ids", "... and 1 more")


def test_a_single_violation_too_long_for_the_budget_is_counted() -> None:
    status = bad_request_status([FieldViolation("user_id", "\u4e2d" * 5_000)])
    assert _listed(status) == [("user_id", "... and 1 more")]
    assert status.message == "... and 1 more"
