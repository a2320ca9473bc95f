"""New products through two real servers sharing one Redis: an item the model was not
trained on is answered for by SimilarItems from its attributes, listed by SimilarItems
of the items shoppers put it with, and by Recommend once it sells; a withdrawn one is
never returned."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from recsvc.client import RecommenderClient
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas, soon


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "new-items-token"
WITHIN = 4.0
"""Seconds for a change to reach an answer: the new items are refreshed every second,
live popularity read every second."""


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN) as running:
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def ids(response: pb.RecommendResponse | pb.SimilarItemsResponse) -> list[str]:
    return [i.item_id for i in response.items]


def _similar(c: RecommenderClient, item_ids: list[str], k: int = 12) -> list[str]:
    try:
        return ids(c.similar(item_ids, k=k))
    except grpc.RpcError as err:
        assert err.code() is grpc.StatusCode.NOT_FOUND
        return []


def test_a_new_item_is_answered_for_from_its_attributes(clients: list[RecommenderClient]) -> None:
    a, b = clients
    assert _similar(b, ["new-lamp"]) == []  # unknown: NOT_FOUND, as before
    a.upsert_items([a.item("new-lamp", category_path=["g1"], title="Lamp")])
    soon(lambda: _similar(b, ["new-lamp"]) != [], within=WITHIN)
    answer = b.similar(["new-lamp"], k=6)
    assert all(i.startswith("g1i") for i in ids(answer))  # its category's items
    assert list(answer.ignored_item_ids) == []
    # an attribute guess alone never enters a trained item's similar list
    assert "new-lamp" not in ids(b.similar(["g1i03"], k=24))


def test_a_new_item_shoppers_put_with_trained_items_joins_their_similar_lists(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    # its category says g1, but shoppers view it beside g0 items
    a.upsert_items([a.item("new-mug", category_path=["g1"])])
    soon(lambda: _similar(b, ["new-mug"]) != [], within=WITHIN)
    assert ids(b.similar(["new-mug"], k=3))[0].startswith("g1i")
    assert "new-mug" not in _similar(b, ["g0i03"])
    events = []
    for s in range(10):
        for item in ("g0i03", "g0i04", "new-mug"):
            events.append(a.event(item, "view", session_id=f"s{s}"))
    a.record_events(events)

    def listed() -> bool:
        return "new-mug" in _similar(b, ["g0i03"])

    soon(listed, within=WITHIN)
    answer = b.similar(["g0i03"], k=12)
    at = ids(answer).index("new-mug")
    assert answer.items[at].reason == pb.REASON_SIMILAR
    # placed among g0 (where shoppers put it), ahead of every g1 item
    assert not any(i.startswith("g1i") for i in ids(answer)[:at])
    assert ids(b.similar(["new-mug"], k=3))[0].startswith("g0i")


def test_new_items_take_at_most_two_of_every_ten_places_of_a_similar_list(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    launched = [f"new-{i}" for i in range(5)]
    a.upsert_items([a.item(i, category_path=["g0"]) for i in launched])
    a.record_events(
        [a.event(i, "view", session_id=f"s-{i}-{n}") for i in launched for n in range(10)]
        + [a.event("g0i03", "view", session_id=f"s-{i}-{n}") for i in launched for n in range(10)]
    )

    def new_in(answer: list[str]) -> int:
        return sum(i.startswith("new-") for i in answer)

    # all five score below g0i03's eleven group mates and above the other group: in a
    # list of 20, four places of the nine left go to them, no more
    soon(lambda: new_in(_similar(b, ["g0i03"], k=20)) == 4, within=WITHIN)
    answer = _similar(b, ["g0i03"], k=20)
    assert len(answer) == 20 and not any(i.startswith("g1") for i in answer[:15])
    assert new_in(_similar(b, ["new-0"], k=20)) <= 4  # a new item's own list too


def test_a_new_item_that_sells_reaches_the_popular_lists(clients: list[RecommenderClient]) -> None:
    a, b = clients
    a.upsert_items([a.item("new-kettle", category_path=["g1"], price=30.0)])
    assert "new-kettle" not in ids(b.recommend("", k=5))
    a.record_events(
        [a.event("new-kettle", "purchase", user_id=f"g1u{u:02d}", quantity=1) for u in range(30)]
    )

    def popular() -> bool:
        return "new-kettle" in ids(b.recommend("", k=5))

    soon(popular, within=WITHIN)
    answer = b.recommend("", k=5)
    assert answer.items[ids(answer).index("new-kettle")].reason == pb.REASON_POPULAR
    # category-popular, and filters apply to new items as to trained ones
    assert "new-kettle" in ids(b.recommend("", k=5, include_categories=["g1"]))
    assert "new-kettle" not in ids(b.recommend("", k=5, include_categories=["g0"]))
    cheap = b.attribute_range("price", high=20.0)
    assert "new-kettle" not in ids(b.recommend("", k=5, attributes=[cheap]))
    assert "new-kettle" not in ids(b.recommend("", k=5, exclude_item_ids=["new-kettle"]))

    # withdrawn: gone from every answer of every server, and no longer a product
    a.withdraw_items(["new-kettle"])

    def gone() -> bool:
        return all("new-kettle" not in ids(c.recommend("", k=30)) for c in clients)

    soon(gone, within=WITHIN)
    assert all(_similar(c, ["new-kettle"]) == [] for c in clients)
