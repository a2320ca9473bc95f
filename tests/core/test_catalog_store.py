"""The live catalogue's records and stored formats, and its Redis store; the rules'
store, on the same record layer."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis

from recsvc.catalog import CatalogItem
from recsvc.rules import Rule, RuleAction
from recsvc.store import KeyScheme, async_client_from_url
from recsvc.store.catalog import CatalogStore
from recsvc.store.rules import RuleStore

from factories import both_backends


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


T = TypeVar("T")

SOFA = CatalogItem(
    "sofa-1",
    category=("home", "living room", "sofas"),
    price=499.0,
    title="Sofa \u00e9l\u00e9gant, 3 places",
    labels={"brand": "Nord", "colour": "grey"},
    numbers={"rating": 4.5},
    available_from=1_700_000_000,
    available_until=1_800_000_000,
    updated_at=1_700_000_123,
)


def test_a_record_round_trips_and_keeps_defaults_out() -> None:
    assert CatalogItem.from_json(SOFA.to_json()) == SOFA
    plain = CatalogItem("x", updated_at=5)
    assert plain.to_json() == '{"at":5,"id":"x","v":1}'
    assert CatalogItem.from_json(plain.to_json()) == plain


@pytest.mark.parametrize(
    "raw", ['{"v":2,"id":"x"}', '{"v":1}', "not json", '{"v":1,"id":"x","n":{"r":"high"}}']
)
def test_other_records_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        CatalogItem.from_json(raw)


def test_shown_follows_stock_withdrawal_and_the_window() -> None:
    assert SOFA.shown(1_750_000_000)
    assert not SOFA.shown(1_600_000_000) and not SOFA.shown(1_800_000_000)
    assert not CatalogItem("x", available=False).shown(0)
    assert not CatalogItem("x", withdrawn=True).shown(0)
    assert SOFA.number("price") == 499.0 and SOFA.number("rating") == 4.5
    assert math.isnan(SOFA.number("weight")) and math.isnan(CatalogItem("x").number("price"))


def _with_store(url: str, prefix: str, body: Callable[[CatalogStore], Awaitable[T]]) -> T:
    async def main() -> T:
        client = async_client_from_url(url, socket_timeout=5.0)
        follower = async_client_from_url(url, socket_timeout=5.0)
        try:
            return await body(CatalogStore(client, KeyScheme(prefix), follower=follower))
        finally:
            await client.aclose()
            await follower.aclose()

    return asyncio.run(main())


@pytest.mark.integration
def test_changes_are_followed_in_order_from_a_snapshot(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    async def body(store: CatalogStore) -> tuple[Any, ...]:
        empty = await store.snapshot()
        first = await store.upsert([SOFA, CatalogItem("lamp", price=20.0)])
        start = await store.snapshot()
        second = await store.withdraw(["lamp"], now=1_700_000_500)
        third = await store.upsert([CatalogItem("lamp", price=25.0, updated_at=9)])
        changes = await store.changes(start.entry_id, block_ms=100)
        none_yet = await store.changes(changes[-1].entry_id, block_ms=50)
        return empty, first, start, second, third, changes, none_yet, await store.snapshot()

    empty, first, start, second, third, changes, none_yet, end = _with_store(
        redis_url, redis_prefix, body
    )
    assert (empty.seq, empty.records) == (0, {})
    assert (first, second, third) == (1, 2, 3)
    assert start.seq == 1 and start.records["sofa-1"] == SOFA
    assert [(c.seq, c.op, [i.item_id for i in c.records]) for c in changes] == [
        (2, "withdraw", ["lamp"]),
        (3, "upsert", ["lamp"]),
    ]
    assert changes[0].records[0].withdrawn and changes[0].records[0].updated_at == 1_700_000_500
    assert none_yet == []
    assert end.seq == 3 and end.records["lamp"] == CatalogItem("lamp", price=25.0, updated_at=9)
    items, log, seq = KeyScheme(redis_prefix).catalog()
    assert redis_client.hlen(items) == 2 and redis_client.xlen(log) == 3
    assert redis_client.get(seq) == b"3"


@pytest.mark.integration
def test_a_follower_blocks_until_a_change_comes(redis_url: str, redis_prefix: str) -> None:
    async def body(store: CatalogStore) -> list[Any]:
        start = await store.snapshot()
        waiting = asyncio.create_task(store.changes(start.entry_id, block_ms=5_000))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await store.upsert([CatalogItem("new-sku", updated_at=1)])
        return await asyncio.wait_for(waiting, timeout=2.0)

    changes = _with_store(redis_url, redis_prefix, body)
    assert [c.records[0].item_id for c in changes] == ["new-sku"]


@pytest.mark.integration
def test_the_rules_share_the_record_layer_set_replace_all_and_delete(
    redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    boost = Rule("b", RuleAction.BOOST, item_ids=("x",), weight=2.0, updated_at=1)
    pin = Rule("p", RuleAction.PIN, item_ids=("y",), position=1, updated_at=1)
    bury = Rule("d", RuleAction.BURY, categories=("c",), weight=0.5, updated_at=2)

    async def body() -> tuple[Any, ...]:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = RuleStore(client, KeyScheme(redis_prefix))
        try:
            first = await store.put([boost, pin])
            replaced = await store.put([bury], replace_all=True)  # b and p go, d comes
            after_replace = (await store.snapshot()).records
            deleted = await store.delete(["d", "d", "unknown"], now=9)
            again = await store.delete(["d"])  # already deleted: nothing written
            return first, replaced, after_replace, deleted, again, await store.snapshot()
        finally:
            await client.aclose()

    first, replaced, after_replace, deleted, again, end = asyncio.run(body())
    assert (first, replaced) == (1, 2)
    assert after_replace["d"] == bury
    assert after_replace["b"].deleted and after_replace["p"].deleted
    assert deleted == (3, 1) and again == (3, 0)
    assert end.seq == 3 and all(r.deleted for r in end.records.values())
    items, log, seq = KeyScheme(redis_prefix).rules()
    assert redis_client.hlen(items) == 3 and redis_client.xlen(log) == 3
    assert redis_client.get(seq) == b"3"
