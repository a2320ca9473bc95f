"""New products' meetings in a real Redis: counted, trimmed, expiring; a replica's
refresh re-reads only the items whose counts changed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import redis

from recsvc.catalog import CatalogItem
from recsvc.model import Model
from recsvc.serving import newitems
from recsvc.serving.catalog import LiveCatalog
from recsvc.serving.newitems import NewItems
from recsvc.store import KeyScheme, async_client_from_url
from recsvc.store.catalog import CatalogStore
from recsvc.store.cooccur import CoOccurrence
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, both_backends, small_settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


def test_meetings_are_counted_trimmed_and_expire(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    keys = KeyScheme(redis_prefix)

    async def main() -> Any:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        try:
            co = CoOccurrence(client, keys, ttl_seconds=600, max_items=2)
            await co.add({"new": {"a": 3.0, "b": 2.0, "c": 1.0}}, now=1000.0)
            await co.add({"new": {"a": 1.0, "b": 1.0}, "other": {"a": 1.0}}, now=2000.0)
            await co.add({"empty": {}}, now=3000.0)
            return (
                await co.read(["new", "other", "nobody"]),
                await co.touched(since=1500.0),
                await co.touched(since=0.0),
            )
        finally:
            await client.aclose()

    met, recent, every = asyncio.run(main())
    # the two most counted are kept; c (met once) was trimmed
    assert met == {"new": [("a", 4.0), ("b", 3.0)], "other": [("a", 1.0)]}
    assert sorted(recent) == ["new", "other"] and sorted(every) == ["new", "other"]
    ttl = redis_client.ttl(keys.cooccurrence("new"))
    assert 0 < ttl <= 600
    assert redis_client.ttl(keys.cooccurrence_touched()) > 0


class CountingReads(CoOccurrence):
    """CoOccurrence that remembers which items each read asked for."""

    reads: list[list[str]]

    async def read(self, items: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
        self.reads.append(sorted(items))
        return await super().read(items)


def test_a_refresh_reads_only_what_changed(redis_url: str, redis_prefix: str) -> None:
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)

    async def main() -> Any:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            await store.upsert([CatalogItem("new-a", title="a"), CatalogItem("new-b", title="b")])
            catalog = LiveCatalog(store)
            await catalog.load()
            co = CountingReads(client, keys)
            co.reads = []
            new = NewItems(catalog, co, None)
            await new.refresh(model)  # the first refresh reads every new item
            first = new.lane
            await new.count(model, {"s1": (["new-b"], ["g0i01", "g0i02"])})
            await new.count(model, {"s2": (["new-a"], ["g0i01", "g1i01"])})
            await new.refresh(model)
            second = new.lane
            await new.refresh(model)  # nothing changed since (but the clock margin)
            return co.reads, first, second, new.lane
        finally:
            await client.aclose()
            await store.aclose()

    reads, first, second, third = asyncio.run(main())
    assert reads[0] == ["new-a", "new-b"]
    assert reads[1] == ["new-a", "new-b"]  # only the items whose counts moved
    assert first is not None and second is not None and third is not None
    assert first.counts()["met"] == 0 and second.counts()["met"] == 2
    b, a = second.position["new-b"], second.position["new-a"]
    assert second.confidence[b] == pytest.approx(2 / (2 + 2))
    assert second.confidence[a] == pytest.approx(2 / (2 + 2))
    g0 = model.artifact.item_factors[[model.item_position["g0i01"], model.item_position["g0i02"]]]
    g0 = g0 / np.linalg.norm(g0, axis=1, keepdims=True)
    direction = g0.mean(axis=0) / np.linalg.norm(g0.mean(axis=0))
    assert float(second.vectors[b] @ direction) > 0.999
    # unchanged inputs give the same place, computed once
    assert np.array_equal(third.vectors, second.vectors)


def test_a_sync_of_many_new_items_is_placed_on_the_loop_over_a_few_refreshes(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # placing read the catalogue view from a thread while the loop changed it (an
    # IndexError under a catalogue sync): it must stay on the loop, in chunks
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    model.artifact.categories = np.array(["g0", "g1"])
    model.artifact.item_category = np.array(
        [0 if i.startswith("g0") else 1 for i in model.artifact.item_ids], np.int32
    )
    keys = KeyScheme(redis_prefix)
    threaded: list[str] = []
    real_to_thread = asyncio.to_thread

    async def to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        threaded.append(getattr(func, "__name__", repr(func)))
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(newitems.asyncio, "to_thread", to_thread)

    async def main() -> Any:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            batch = [CatalogItem(f"new-{i:04d}", category=("g1",)) for i in range(1500)]
            for start in range(0, len(batch), 500):
                await store.upsert(batch[start : start + 500])
            catalog = LiveCatalog(store)
            await catalog.load()
            new = NewItems(catalog, CoOccurrence(client, keys), None)
            placed = []
            for _ in range(20):  # a refresh places at most 1000, within its time budget
                await new.refresh(model)
                assert new.lane is not None
                placed.append(new.lane.counts()["placed"])
                if placed[-1] == len(batch):
                    break
            return placed
        finally:
            await client.aclose()
            await store.aclose()

    placed = asyncio.run(main())
    assert 0 < placed[0] <= 1000 and placed[-1] == 1500
    assert placed == sorted(placed)
    assert threaded == ["TitleIndex"]  # only the title index, which reads no view


def test_titles_loaded_after_start_place_new_items_soon(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a server started on an empty catalogue built an empty title index and kept it
    # for ten minutes: new items were not placed by their titles meanwhile (now: within
    # _TITLE_INDEX_EMPTY_SECONDS, 5 s, made 0 here)
    monkeypatch.setattr(newitems, "_TITLE_INDEX_EMPTY_SECONDS", 0.0)
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)

    async def main() -> Any:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            catalog = LiveCatalog(store)
            await catalog.load()
            new = NewItems(catalog, CoOccurrence(client, keys), None)
            await new.refresh(model)  # nothing in the catalogue yet
            trained = [CatalogItem(f"g1i{i:02d}", title="Retro kitchen clock") for i in range(3)]
            await store.upsert([*trained, CatalogItem("new-clock", title="Red retro clock")])
            assert catalog.apply(await store.changes("0-0", block_ms=100))
            await new.refresh(model)
            return new.lane
        finally:
            await client.aclose()
            await store.aclose()

    lane = asyncio.run(main())
    assert lane is not None and lane.counts()["placed"] == 1
    row = lane.position["new-clock"]
    unit = model.artifact.item_factors[[model.item_position[f"g1i{i:02d}"] for i in range(3)]]
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    direction = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    assert float(lane.vectors[row] @ direction) > 0.999


def test_a_stock_or_price_change_keeps_a_new_items_place(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a catalogue sync rewrites every record: placing them all again took the event loop
    # for seconds; only a changed category, attribute or title places an item again
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)
    placed: list[str] = []
    real = newitems.content_vectors

    def counting(model: Any, view: Any, records: Any, *args: Any) -> Any:
        placed.extend(r.item_id for r in records)
        return real(model, view, records, *args)

    monkeypatch.setattr(newitems, "content_vectors", counting)

    async def main() -> None:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            items = [CatalogItem(f"new-{i}", title="Lamp", price=10.0) for i in range(3)]
            await store.upsert(items)
            catalog = LiveCatalog(store)
            await catalog.load()
            new = NewItems(catalog, CoOccurrence(client, keys), None)
            await new.refresh(model)
            assert sorted(placed) == ["new-0", "new-1", "new-2"]
            placed.clear()
            await store.upsert(
                [CatalogItem("new-0", title="Lamp", price=12.0, available=False),
                 CatalogItem("new-1", title="Desk lamp", price=10.0)]
            )  # fmt: skip
            assert catalog.apply(await store.changes(catalog._entry, block_ms=100))
            await new.refresh(model)
        finally:
            await client.aclose()
            await store.aclose()

    asyncio.run(main())
    assert placed == ["new-1"]  # its title changed; new-0's stock and price did not move it


def test_a_refresh_of_an_unchanged_catalogue_does_no_work(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the lane was rebuilt from a pass over every catalogue record each second, and
    # records without a place were placed again each time: an idle server with a
    # 100k-item catalogue used 11% of a core and held the event loop for 50 ms a second
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)
    placed: list[str] = []
    real = newitems.content_vectors

    def counting(model: Any, view: Any, records: Any, *args: Any) -> Any:
        placed.extend(r.item_id for r in records)
        return real(model, view, records, *args)

    monkeypatch.setattr(newitems, "content_vectors", counting)

    async def main() -> tuple[Any, ...]:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            # one new item its category places, one nothing places
            trained = [CatalogItem(f"g1i{i:02d}", category=("clocks",)) for i in range(3)]
            await store.upsert(
                [*trained, CatalogItem("new-clock", category=("clocks",)), CatalogItem("odd")]
            )
            catalog = LiveCatalog(store)
            await catalog.load()
            new = NewItems(catalog, CoOccurrence(client, keys), None)
            await new.refresh(model)
            first = new.lane
            once = sorted(placed)
            placed.clear()
            await new.refresh(model)
            await new.refresh(model)
            again = new.lane
            await store.upsert([CatalogItem("new-clock", category=("clocks",), price=3.0)])
            assert catalog.apply(await store.changes(catalog._entry, block_ms=100))
            await new.refresh(model)
            return first, once, again, new.lane
        finally:
            await client.aclose()
            await store.aclose()

    first, once, again, moved = asyncio.run(main())
    assert once == ["new-clock", "odd"]
    assert placed == []  # neither placed again, though "odd" has no place
    assert again is first  # nothing changed: the same lane, not a rebuilt one
    assert first.counts()["placed"] == 1
    # a change to a new record's price builds a new lane (with the record), places nothing
    assert moved is not first and moved.records[moved.position["new-clock"]].price == 3.0
    assert moved.counts()["placed"] == 1


def test_a_stock_change_keeps_a_met_new_items_direction(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a row was computed again whenever its record object changed: a catalogue sync
    # rewriting every record recomputed every new item's direction (10k new items held
    # the event loop for a tenth of a second at each refresh), and so did a re-read of
    # its unchanged meetings (each refresh re-reads the last 10 s: replicas' clocks);
    # its place depends only on its meetings' counts and its attribute place
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)
    directed: list[int] = []
    real = NewItems._direction

    def counting(self: NewItems, *args: Any) -> Any:
        directed.append(1)
        return real(self, *args)

    monkeypatch.setattr(NewItems, "_direction", counting)

    async def main() -> tuple[Any, Any]:
        client = async_client_from_url(redis_url, socket_timeout=5.0)
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            items = [CatalogItem(f"new-{i}", title="Lamp", price=10.0) for i in range(3)]
            await store.upsert(items)
            catalog = LiveCatalog(store)
            await catalog.load()
            new = NewItems(catalog, CoOccurrence(client, keys), None)
            await new.count(model, {"s": (["new-0", "new-1"], ["g0i01", "g0i02"])})
            await new.refresh(model)
            assert len(directed) == 3
            directed.clear()
            before = new.lane
            await store.upsert([replace(r, price=11.0, available=False) for r in items])
            assert catalog.apply(await store.changes(catalog._entry, block_ms=100))
            await new.refresh(model)
            return before, new.lane
        finally:
            await client.aclose()
            await store.aclose()

    before, after = asyncio.run(main())
    assert directed == []  # every record changed, no place did
    assert before is not None and after is not None and after is not before
    assert after.records[after.position["new-0"]].price == 11.0  # the lane has the records
    assert np.array_equal(after.vectors, before.vectors)
    assert after.confidence[after.position["new-0"]] == pytest.approx(0.5)


class _CountingPasses(dict[str, CatalogItem]):
    """A catalogue's records that count the passes over all of them."""

    passes = 0

    def values(self) -> Any:
        self.passes += 1
        return super().values()


def test_the_new_items_follow_the_catalogue_without_a_pass_over_it(
    redis_url: str, redis_prefix: str
) -> None:
    """The records the model does not know are read in one pass once per model (and
    after a reload), then kept up to date from the records that changed: a sync of a
    large catalogue had every refresh, once a second, pass over every record."""
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    model = Model(built.artifact)
    keys = KeyScheme(redis_prefix)
    known = str(model.artifact.item_ids[0])

    async def main() -> Any:
        store = CatalogStore.open(redis_url, keys, socket_timeout=5.0)
        try:
            await store.upsert([CatalogItem("new-a"), CatalogItem("new-b"), CatalogItem(known)])
            catalog = LiveCatalog(store)
            await catalog.load()
            catalog.records = counted = _CountingPasses(catalog.records)
            new = NewItems(catalog, CoOccurrence(store._client, keys), None)
            seen = [[r.item_id for r in new.candidates(model)]]

            async def changed(*writes: Any) -> None:
                for op, records in writes:
                    await (store.upsert(records) if op == "upsert" else store.withdraw(records))
                assert catalog.apply(await store.changes(catalog._entry, block_ms=100))

            await changed(("upsert", [CatalogItem("new-c"), CatalogItem(known, price=2.0)]),
                          ("withdraw", ["new-a"]))  # fmt: skip
            seen.append([r.item_id for r in new.candidates(model)])
            await changed(("upsert", [CatalogItem("new-a", title="back")]))
            seen.append([r.item_id for r in new.candidates(model)])
            passes = counted.passes
            await catalog.load()  # a reload: one pass again, over the new records
            seen.append([r.item_id for r in new.candidates(model)])
            return seen, passes
        finally:
            await store.aclose()

    seen, passes = asyncio.run(main())
    assert seen == [
        ["new-a", "new-b"],
        ["new-b", "new-c"],
        ["new-a", "new-b", "new-c"],
        ["new-a", "new-b", "new-c"],
    ]
    assert passes == 1  # the first candidates only
