"""Following a shared collection: a large change leaves the heap frozen again, so the
cyclic collector's full passes do not walk a synced catalogue."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from recsvc.catalog import CatalogItem
from recsvc.serving.follow import Follower, set_heap_frozen
from recsvc.serving.server import freeze_heap
from recsvc.store.records import Change


@pytest.fixture()
def frozen_heap() -> Iterator[None]:
    freeze_heap()  # as `recsvc serve` does once started
    try:
        yield
    finally:
        gc.unfreeze()
        set_heap_frozen(False)


def _change(seq: int, n: int) -> Change[CatalogItem]:
    records = tuple(CatalogItem(f"i{seq}-{i}") for i in range(n))
    return Change(seq=seq, entry_id=f"{seq}-0", op="upsert", records=records)


def test_a_large_change_is_moved_out_of_the_collectors_reach(frozen_heap: None) -> None:
    follower: Follower[CatalogItem] = Follower(None)  # type: ignore[arg-type]
    before = gc.get_freeze_count()
    assert follower.apply([_change(1, 10)])
    assert gc.get_freeze_count() == before  # a small change: left to the collector
    assert follower.apply([_change(2, 2000)])
    assert gc.get_freeze_count() >= before + 2000
    assert len(follower.records) == 2010 and follower.version == 2


def test_a_large_change_does_not_count_the_frozen_objects(
    frozen_heap: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # counting them walks every frozen object: ~20 ms with a synced 100k-item
    # catalogue, asked at every large change (a hundred times per 100k-item sync)
    def counted() -> int:
        raise AssertionError("the frozen objects were counted")

    monkeypatch.setattr(gc, "get_freeze_count", counted)
    follower: Follower[CatalogItem] = Follower(None)  # type: ignore[arg-type]
    assert follower.apply([_change(1, 2000)])
    monkeypatch.undo()
    assert gc.get_freeze_count() >= 2000  # frozen all the same


def test_a_process_that_never_froze_is_left_alone() -> None:
    gc.unfreeze()
    set_heap_frozen(False)
    follower: Follower[CatalogItem] = Follower(None)  # type: ignore[arg-type]
    assert follower.apply([_change(1, 2000)])
    assert gc.get_freeze_count() == 0
