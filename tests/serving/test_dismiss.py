"""Negative feedback: an item a shopper turned down (NOT_INTERESTED, RETURN) never comes
back to them for ``dismiss_seconds``, on any replica, and items like it sink."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from recsvc.client import RecommenderClient
from recsvc.serving.rotation import Demotion, Dissimilar, Weighed
from recsvc.store import KeyScheme
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


TOKEN = "dismiss-token"
DISMISS_SECONDS = 600


def test_items_like_a_dismissed_one_sink_and_others_keep_their_score() -> None:
    factors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    scores = np.array([4.0, 3.0, 2.0, 1.0], np.float32)
    Dissimilar(factors, np.array([0], np.int32), cosine=0.8, weight=0.5).weigh(
        np.array([1, 2, 3], np.int32), view := scores[1:].copy()
    )
    assert view.tolist() == [1.5, 2.0, 1.0]  # only item 1 (cosine 0.99) sinks
    empty = np.zeros(0, np.float32)
    Dissimilar(factors, np.array([0], np.int32), 0.8, 0.5).weigh(np.zeros(0, np.int32), empty)


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(
        tmp_path, redis_url, redis_prefix, token=TOKEN,
        server={"dismiss_seconds": DISMISS_SECONDS, "dismiss_similar_cosine": 1.0},
    ) as running:  # fmt: skip
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def ids(response: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in response.items]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["not_interested", "return"])
def test_a_dismissed_item_never_comes_back_on_any_replica(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str, kind: str
) -> None:
    a, b = clients
    keys = KeyScheme(redis_prefix)
    before = ids(b.recommend("g0u04", k=3))
    top = before[0]
    a.record_events([a.event(top, kind, user_id="g0u04")])
    for client in (a, b):
        for k in (3, 6, 20):
            assert top not in ids(client.recommend("g0u04", k=k))
    # for dismiss_seconds from now, no more
    until = redis_client.zscore(keys.dismissed("g0u04"), top)
    assert until is not None and abs(until - (time.time() + DISMISS_SECONDS)) < 5
    # not an interest: nothing of it went into the history
    assert redis_client.llen(keys.history("g0u04")) == 0
    # an anonymous session's dismissal holds for the session, and another does not
    shown = ids(a.recommend(k=3, session_id="v1", session_items=["g1i01"]))
    a.record_events([a.event(shown[0], kind, session_id="v1")])
    assert shown[0] not in ids(b.recommend(k=3, session_id="v1", session_items=["g1i01"]))
    assert shown[0] in ids(b.recommend(k=3, session_id="v2", session_items=["g1i01"]))


@pytest.mark.integration
def test_dismissals_are_exported_erased_and_not_kept_without_consent(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, b = clients
    keys = KeyScheme(redis_prefix)
    a.record_events([a.event("g1i02", "not_interested", user_id="g1u05")])
    assert list(b.export_user("g1u05")["state_store"]["dismissed"]) == ["g1i02"]
    b.forget_user("g1u05")
    assert redis_client.exists(keys.dismissed("g1u05")) == 0
    a.set_consent("g1u06", "off")
    a.record_events([a.event("g1i02", "not_interested", user_id="g1u06")])
    assert redis_client.exists(keys.dismissed("g1u06")) == 0


@pytest.mark.integration
def test_items_like_a_dismissed_one_sink_in_the_answer(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The block shop's factors put a group's items together: with the similar-items
    demotion on, dismissing one item of the customer's group sinks the whole group."""
    with (
        replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, n=1,
                 server={"dismiss_similar_cosine": 0.9, "dismiss_similar_weight": 0.01})
        as servers,
        clients_of(servers, TOKEN) as (client,),
    ):  # fmt: skip
        before = client.recommend("g0u06", k=10)
        top = before.items[0].item_id
        assert top.startswith("g0") and before.items[1].score > 0.9
        client.record_events([client.event(top, "not_interested", user_id="g0u06")])
        after = client.recommend("g0u06", k=10)
        assert top not in ids(after)
        # every other item of its group (cosine 1 in the block shop's factors) sank to a
        # hundredth of its score; the other group's (cosine 0) kept theirs
        was = {i.item_id: i.score for i in before.items}
        sunk = [i for i in after.items if i.item_id.startswith("g0") and i.item_id in was]
        assert len(sunk) >= 3
        for item in sunk:
            assert item.score == pytest.approx(was[item.item_id] * 0.01, abs=2e-3)


def test_a_demotion_sinks_exactly_its_items_and_asks_one_more_candidate_each() -> None:
    demotion = Demotion(np.array([7, 3, 7], np.int32), 0.2)
    scores = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
    demotion.weigh(np.array([3, 4, 7, 8], np.int32), scores)
    assert scores.tolist() == pytest.approx([0.2, 1.0, 0.2, 1.0])
    many = Demotion(np.arange(100, dtype=np.int32), 0.5)  # past the broadcast's size
    wide = np.ones(3, np.float32)
    many.weigh(np.array([5, 150, 99], np.int32), wide)
    assert wide.tolist() == [0.5, 1.0, 0.5]
    assert demotion.room(10) == 3 and demotion.room(2) == 2 and many.room(10) == 10
    factors = np.eye(2, dtype=np.float32)
    alike = Dissimilar(factors, np.array([0], np.int32), 0.8, 0.5)
    assert alike.room(10) == 10 and Weighed(demotion, alike).room(10) == 10
