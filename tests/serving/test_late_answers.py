"""An answer ready after the call's deadline is dropped quietly, never a traceback.

The defect this pins: a call whose deadline passed while it was served logged grpc's
``ExecuteBatchError`` traceback (the client had gone, so sending the answer failed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from recsvc.client import RecommenderClient

from factories import small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.integration


@pytest.fixture()
def server(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[ServerThread]:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    settings = small_settings(
        None,
        artifact_root=str(root),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={"port": 0, "metrics_port": None, "event_log_dir": str(tmp_path / "log")},
    )
    running = ServerThread(settings)
    yield running
    running.stop()


def test_an_answer_after_the_deadline_logs_no_traceback(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    engine = server.running.engine
    record = engine.record_events

    async def slow(events: Any) -> Any:
        answer = await record(events)
        # work that holds the event loop past the deadline (a long ranking on a loaded
        # host): grpc cannot cancel the handler before it returns its answer
        time.sleep(0.3)
        return answer

    engine.record_events = slow  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG), RecommenderClient(server.target, timeout=0.1) as c:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as late:
                c.record_events([c.event("g0i01", "view", user_id="g0u01")])
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.4)  # the late handler finishes before the next call comes
        engine.record_events = record  # type: ignore[method-assign]
        c.recommend("g0u01", k=3, timeout=5.0)  # the server lives on
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    handled = server.running.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "recsvc.v1.RecommenderService",
            "grpc_method": "RecordEvents",
            "grpc_code": "DEADLINE_EXCEEDED",
        },
    )
    assert handled == 3
