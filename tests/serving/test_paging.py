""" "Show more" through two real servers: pages of one sequence never repeat an item,
whichever replica answers each page; a token this service did not issue is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.client import RecommenderClient
from recsvc.serving import continuation
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import clients_of, replicas, violations


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


TOKEN = "paging-token"


def test_a_token_names_the_items_it_was_made_of_and_refuses_anything_else() -> None:
    items = ["sku-1", "caf\u00e9 \u00a0x", "a|b"]
    assert continuation.decode(continuation.encode(items)) == tuple(items)
    assert continuation.decode(continuation.encode([])) == ()
    assert continuation.encode(["i"] * (continuation.MAX_ITEMS + 1)) == ""
    for bad in ("", "c1.!!!", "c2.eJwLAA", "c1." + "A" * 10, "x" * 70_000):
        with pytest.raises(ValueError):
            continuation.decode(bad)


@pytest.fixture()
def clients(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[RecommenderClient]]:
    with (
        replicas(tmp_path, redis_url, redis_prefix, token=TOKEN) as servers,
        clients_of(servers, TOKEN) as clients,
    ):
        yield clients


@pytest.mark.integration
def test_three_pages_never_repeat_an_item_across_replicas(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    plain = a.recommend("g0u01", k=5)
    assert plain.continuation == ""  # only when asked
    first = a.recommend("g0u01", k=5, paged=True)
    assert [i.item_id for i in first.items] == [i.item_id for i in plain.items]
    pages = [first]
    for client in (b, a, b):
        pages.append(client.recommend("g0u01", k=5, continuation=pages[-1].continuation))
    seen = [i.item_id for page in pages for i in page.items]
    assert len(seen) == len(set(seen))  # never an item twice
    assert [len(p.items) for p in pages[:3]] == [5, 5, 5]
    # the last page holds what is left of the 24 items the customer may be shown
    assert 0 < len(pages[3].items) <= 5 and all(page.continuation for page in pages)
    # the client's own exclusions still hold on later pages
    more = a.recommend("g0u01", k=5, continuation=first.continuation, exclude_item_ids=[seen[5]])
    assert seen[5] not in [i.item_id for i in more.items]


@pytest.mark.integration
def test_a_token_not_issued_here_is_refused(clients: list[RecommenderClient]) -> None:
    a, _ = clients
    assert violations(lambda: a.recommend("g0u01", k=5, continuation="c1.not-a-token")) == [
        "continuation"
    ]
    unprefixed = pb.RecommendRequest(k=5, continuation="nonsense")
    assert violations(lambda: a.stub.Recommend(unprefixed)) == ["continuation"]
