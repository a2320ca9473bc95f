"""recsvc.client without a server: what it refuses before anything is sent."""

from __future__ import annotations

import grpc
import pytest

from recsvc.client import MAX_REQUEST_BYTES, RecommenderClient
from recsvc.v1 import recommender_pb2 as pb


def _batch(client: RecommenderClient, n: int) -> list[pb.Event]:
    return [client.event(f"item-{i:06d}" + "x" * 200, "view", user_id="u1") for i in range(n)]


def test_a_request_over_the_server_limit_is_refused_before_sending() -> None:
    # nothing listens on port 1: had the client sent it, the call would fail UNAVAILABLE
    with RecommenderClient("127.0.0.1:1", timeout=0.5) as client:
        events = _batch(client, 20_000)
        assert pb.RecordEventsRequest(events=events).ByteSize() > MAX_REQUEST_BYTES

        with pytest.raises(ValueError, match=r"RecordEventsRequest is [\d,]+ bytes.*smaller"):
            client.record_events(events)


def test_a_request_within_the_limit_is_sent() -> None:
    with RecommenderClient("127.0.0.1:1", timeout=0.5) as client:
        events = _batch(client, 1_000)
        with pytest.raises(grpc.RpcError) as caught:
            client.record_events(events)
        assert caught.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }
