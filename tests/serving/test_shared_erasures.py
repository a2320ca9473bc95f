"""Replicas that share no erasure list file honour one erasure: ForgetUser through one
writes the shared list in the store (:mod:`recsvc.store.erasures`), the others follow it
into their own files within a second, refuse the customer's events, and the trainer and
publisher read it beside their file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from recsvc.erasure import Erasure, ErasureList, read_erasure_list
from recsvc.store import KeyScheme, async_client_from_url
from recsvc.store.erasures import ErasureStore, erased_users, read_shared_erasures
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends, small_settings
from server_harness import clients_of, replicas, soon

TOKEN = "s3cret"


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


def test_an_erasure_record_round_trips_and_refuses_what_it_is_not() -> None:
    e = Erasure("caf\u00e9 \u00a0", 1_700_000_000)
    assert Erasure.from_record(json.loads(e.to_json())) == e
    assert e.key == e.user_id
    for bad in ({"v": 2, "id": "u"}, {"v": 1, "id": ""}, {"v": 1, "id": 3}, ["u"]):
        with pytest.raises(ValueError):
            Erasure.from_record(bad)


def test_merging_appends_only_what_is_new_durably(tmp_path: Path) -> None:
    path = tmp_path / "erased.txt"
    erasures = ErasureList(path)
    assert erasures.add("u1")
    assert erasures.merge(["u1", "u2", "u2", "u3"]) == {"u2", "u3"}
    assert erasures.merge(["u3"]) == frozenset()
    assert read_erasure_list(path) == {"u1", "u2", "u3"}
    assert not erasures.refresh()  # its own appends are not news


@pytest.mark.integration
def test_one_erasure_reaches_replicas_that_share_no_erasure_list(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    customer = "g0u01"
    with (
        replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, shared_erasure_list=False) as (
            a,
            b,
        ),
        clients_of([a, b], TOKEN) as (ca, cb),
    ):
        event = cb.event("g0i01", "view", user_id=customer)
        assert cb.record_events([event]).accepted_count == 1
        receipt = ca.forget_user(customer)
        assert receipt.added_to_erasure_list
        b_file = tmp_path / "erased-1.txt"
        soon(lambda: customer in read_erasure_list(b_file))  # B's own file, durably
        answer = cb.record_events([cb.event("g0i02", "view", user_id=customer)])
        assert answer.accepted_count == 0
        assert [i.reason for i in answer.ignored_events] == [pb.IGNORE_REASON_ERASED_USER]
        # the trainer and the publisher, with neither replica's file, read the store
        trainer = small_settings(
            None,
            erasure_list=str(tmp_path / "trainer-erased.txt"),
            redis={"url": redis_url, "prefix": redis_prefix},
        )
        assert customer in erased_users(trainer)
        assert read_shared_erasures(redis_url, KeyScheme(redis_prefix)) == {customer}


@pytest.mark.integration
def test_a_replica_starting_later_merges_the_whole_shared_list(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async def erase() -> None:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        try:
            await ErasureStore(client, KeyScheme(redis_prefix)).add(["g0u02", "g1u03"])
        finally:
            await client.aclose()

    asyncio.run(erase())
    with (
        replicas(
            tmp_path, redis_url, redis_prefix, token=TOKEN, n=1, shared_erasure_list=False
        ) as (a,),
        clients_of([a], TOKEN) as (ca,),
    ):
        soon(lambda: read_erasure_list(tmp_path / "erased-0.txt") == {"g0u02", "g1u03"})
        answer = ca.record_events([ca.event("g0i02", "view", user_id="g1u03")])
        assert answer.accepted_count == 0
