"""Rotation through two real servers sharing one Redis: items a shopper was shown again
and again without engaging sink on a placement that rotates; a click brings an item
back; a placement that does not rotate keeps its answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc.client import RecommenderClient
from recsvc.store import KeyScheme
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "rotation-token"


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    placements = {"home": {"rotate_after": 3, "rotation_weight": 0.2}}
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, placements=placements) as s:
        yield s


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def ids(response: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in response.items]


def show(client: RecommenderClient, items: list[str], **who: str) -> None:
    client.record_events([client.event(i, "impression", placement="home", **who) for i in items])


def test_five_rounds_of_impressions_without_a_click_rotate_the_list(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, b = clients
    # a shopper of both groups: every item is relevant to them, some more than others
    b.record_events([b.event(i, "view", user_id="mix") for i in ("g0i01", "g1i01", "g1i02")])
    first = ids(a.recommend("mix", k=10, placement="home"))
    elsewhere = ids(a.recommend("mix", k=10, placement="pdp"))
    rounds = [first]
    for _ in range(5):  # the storefront shows what it got, the shopper clicks nothing
        show(b, rounds[-1], user_id="mix")
        rounds.append(ids(a.recommend("mix", k=10, placement="home")))
    changed = len(set(rounds[-1]) - set(first)) / len(first)
    assert changed >= 0.5, rounds
    assert rounds[1] == first  # shown twice: not yet (rotate_after = 3)
    assert rounds[3] != first
    assert ids(b.recommend("mix", k=10, placement="pdp")) == elsewhere  # no rotation there
    # a click on a rotated-out item starts its count again: it comes back
    top = first[0]
    assert top not in rounds[-1][:3]
    b.record_events([b.event(top, "click", user_id="mix", placement="home")])
    assert a.recommend("mix", k=10, placement="home").items[0].item_id == top
    counts = dict(redis_client.zrange(KeyScheme(redis_prefix).shown("mix"), 0, -1, withscores=True))
    assert top.encode() not in counts and max(counts.values()) >= 3


def test_an_anonymous_session_rotates_too(clients: list[RecommenderClient]) -> None:
    a, b = clients
    session = dict(session_id="visit-r")
    b.record_events([b.event(i, "view", **session) for i in ("g1i01", "g1i02")])
    first = ids(a.recommend(k=5, placement="home", **session))
    for _ in range(3):
        show(b, first, **session)
    after = ids(a.recommend(k=5, placement="home", **session))
    assert not set(after[:3]) & set(first)
