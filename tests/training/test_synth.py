"""training.synth: exact, reproducible, structured synthetic shops, written atomically."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from recsvc.errors import ConfigError
from recsvc.training import synth
from recsvc.training.synth import SynthConfig, SynthSummary, SynthTruth, generate, ground_truth

IntArray = npt.NDArray[np.int64]

# Small blocks, so that every test runs the multi-block path the big files take.
SMALL_BLOCK = 4_000
CONFIG = SynthConfig(n_events=40_000, seed=11)


@dataclass(frozen=True)
class Shop:
    """A generated shop read back: one entry per events row, ids as indices."""

    summary: SynthSummary
    truth: SynthTruth
    user: IntArray
    item: IntArray
    timestamp: IntArray
    event_type: npt.NDArray[np.str_]
    quantity: IntArray
    basket: npt.NDArray[np.str_]
    catalog: pa.Table


def _index(column: pa.ChunkedArray) -> IntArray:
    """``u000123`` -> 123."""
    numbers = pc.cast(pc.utf8_slice_codeunits(column, 1), pa.int64())
    return np.asarray(numbers.to_numpy(), dtype=np.int64)


def _read_events(path: Path) -> pa.Table:
    strings = {"user_id": pa.string(), "item_id": pa.string(), "basket_id": pa.string()}
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=strings))


def _read_shop(summary: SynthSummary, truth: SynthTruth) -> Shop:
    events = _read_events(summary.events_path)
    catalog = pacsv.read_csv(
        summary.catalog_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"item_id": pa.string(), "category": pa.string(), "price": pa.string()}
        ),
    )
    return Shop(
        summary=summary,
        truth=truth,
        user=_index(events["user_id"]),
        item=_index(events["item_id"]),
        timestamp=events["timestamp"].to_numpy(),
        event_type=np.asarray(events["event_type"].to_pylist()),
        quantity=events["quantity"].to_numpy(),
        basket=np.asarray(events["basket_id"].to_pylist()),
        catalog=catalog,
    )


def _make(config: SynthConfig, path: Path) -> tuple[SynthSummary, SynthTruth]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synth, "BLOCK_EVENTS", SMALL_BLOCK)
        return generate(config, path), ground_truth(config)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return _read_shop(*_make(CONFIG, tmp_path_factory.mktemp("shop") / "events.csv"))


def _purchase_shares(shop: Shop) -> tuple[float, float]:
    """(share of purchases that are the user's staples, share that re-buy an item the user
    bought in an earlier basket)."""
    bought = shop.event_type == "purchase"
    user, item, basket = shop.user[bought], shop.item[bought], shop.basket[bought]
    staple = (shop.truth.user_staples[user] == item[:, None]).any(axis=1)
    first_basket: dict[tuple[int, int], str] = {}
    rebuys = 0
    for key, b in zip(zip(user.tolist(), item.tolist(), strict=True), basket, strict=True):
        rebuys += first_basket.setdefault(key, b) != b
    return float(staple.mean()), rebuys / len(user)


def test_public_api_is_pinned() -> None:
    assert sorted(synth.__all__) == [
        "BLOCK_EVENTS",
        "MAX_EVENTS",
        "MIN_EVENTS",
        "SynthConfig",
        "SynthSummary",
        "SynthTruth",
        "default_catalog_path",
        "generate",
        "ground_truth",
    ]


@pytest.mark.parametrize(
    ("n_events", "extra"),
    [(1_000, {}), (12_345, {"n_users": 7, "n_items": 50}), (23_456, {"n_users": 23_456})],
)
def test_writes_exactly_n_events_rows(tmp_path: Path, n_events: int, extra: Any) -> None:
    config = SynthConfig(n_events=n_events, **extra)
    summary, truth = _make(config, tmp_path / "e.csv")
    lines = summary.events_path.read_text().splitlines()
    assert len(lines) == n_events + 1
    assert summary.n_events == n_events
    assert summary.n_views + summary.n_add_to_cart + summary.n_purchases == n_events
    assert int(truth.user_event_counts.sum()) == n_events
    assert (truth.user_event_counts >= 1).all()
    assert len(truth.user_event_counts) == summary.n_users


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = SynthConfig(n_events=5_000, seed=3)
    a = generate(config, tmp_path / "a.csv.gz")
    b = generate(config, tmp_path / "b.csv.gz")
    c = generate(SynthConfig(n_events=5_000, seed=4), tmp_path / "c.csv.gz")
    assert a.events_path.read_bytes() == b.events_path.read_bytes()
    assert a.catalog_path.read_bytes() == b.catalog_path.read_bytes()
    assert a.events_path.read_bytes() != c.events_path.read_bytes()
    assert a.catalog_path.read_bytes() != c.catalog_path.read_bytes()


def test_gzip_holds_the_same_csv_as_plain(tmp_path: Path) -> None:
    config = SynthConfig(n_events=3_000, seed=5)
    plain = generate(config, tmp_path / "p.csv")
    packed = generate(config, tmp_path / "z.csv.gz", progress=True)
    assert packed.events_path.read_bytes()[:2] == b"\x1f\x8b"
    assert packed.catalog_path == tmp_path / "z.catalog.csv.gz"
    assert gzip.decompress(packed.events_path.read_bytes()) == plain.events_path.read_bytes()
    assert gzip.decompress(packed.catalog_path.read_bytes()) == plain.catalog_path.read_bytes()


def test_event_file_format(shop: Shop) -> None:
    head = shop.summary.events_path.read_text().splitlines()[:2]
    assert head[0] == "user_id,item_id,timestamp,event_type,quantity,basket_id"
    assert re.fullmatch(r"u\d{3},i\d{3},\d{10},view,1,", head[1]), head[1]  # 800 users/items
    assert set(shop.event_type) == {"view", "add_to_cart", "purchase"}
    assert (shop.event_type == "view").mean() > 0.6
    end = CONFIG.end_timestamp
    assert shop.timestamp.min() >= end - 365 * 86_400
    assert shop.timestamp.max() < end
    assert (shop.quantity >= 1).all()
    assert (shop.quantity[shop.event_type == "view"] == 1).all()
    assert 0.5 < (shop.quantity == 1).mean() < 1.0
    purchase = shop.event_type == "purchase"
    assert (shop.basket[~purchase] == "").all()
    assert all(re.fullmatch(r"b\d{5}", b) for b in shop.basket[purchase])


def test_rows_grouped_by_user_in_time_order(shop: Shop) -> None:
    assert (np.diff(shop.user) >= 0).all()
    same_user = np.diff(shop.user) == 0
    assert (np.diff(shop.timestamp)[same_user] >= 0).all()
    assert np.array_equal(np.bincount(shop.user), shop.truth.user_event_counts)


def test_one_basket_per_purchasing_session(shop: Shop) -> None:
    purchase = shop.event_type == "purchase"
    baskets, first = np.unique(shop.basket[purchase], return_index=True)
    assert len(baskets) == shop.summary.n_baskets
    assert 0 < shop.summary.n_baskets < shop.summary.n_sessions
    # A basket is one user's checkout: a single user and a single timestamp.
    lookup = {b: i for i, b in enumerate(baskets)}
    index = np.array([lookup[b] for b in shop.basket[purchase]])
    assert (shop.user[purchase] == shop.user[purchase][first][index]).all()
    assert (shop.timestamp[purchase] == shop.timestamp[purchase][first][index]).all()


def test_item_popularity_is_long_tailed(shop: Shop) -> None:
    n_items = shop.summary.n_items
    bought = np.bincount(shop.item[shop.event_type == "purchase"], minlength=n_items)
    top_tenth = np.sort(bought)[::-1][: n_items // 10].sum() / bought.sum()
    assert top_tenth > 0.4  # uniform popularity would give about 0.1


@pytest.mark.parametrize("repeat_rate", [0.0, 0.5])
def test_staple_purchases_follow_repeat_rate(tmp_path: Path, repeat_rate: float) -> None:
    config = SynthConfig(n_events=40_000, seed=2, repeat_rate=repeat_rate)
    shop = _read_shop(*_make(config, tmp_path / "e.csv"))
    staples, rebuys = _purchase_shares(shop)
    # Non-staple purchases hit a staple by chance now and then (same tastes), ~0.1 here.
    assert repeat_rate <= staples <= repeat_rate + 0.15
    if repeat_rate > 0:
        assert rebuys > 0.1  # a staple's first purchase is not yet a re-buy
    else:
        assert rebuys < 0.1


def test_purchases_concentrate_on_favourite_categories(shop: Shop) -> None:
    truth = shop.truth
    bought = shop.event_type == "purchase"
    user, category = shop.user[bought], truth.item_category[shop.item[bought]]
    favourite = (truth.user_categories[user] == category[:, None]).any(axis=1).mean()
    # What category popularity alone would give: the favourites' share of all purchases.
    share = np.bincount(truth.item_category, weights=truth.item_popularity)
    by_chance = share[truth.user_categories[user]].sum(axis=1).mean()
    assert favourite > 0.85
    assert favourite > by_chance + 0.3
    assert (truth.user_categories[user, 0] == category).mean() > 0.5


def test_user_tastes_are_sparse_and_distinct(shop: Shop) -> None:
    truth = shop.truth
    assert truth.user_categories.shape == (shop.summary.n_users, 3)
    assert np.allclose(truth.user_category_weights.sum(axis=1), 1.0)
    assert (np.diff(truth.user_category_weights, axis=1) <= 0).all()
    ordered = np.sort(truth.user_categories, axis=1)
    assert (np.diff(ordered, axis=1) > 0).all()


def test_catalogue_matches_items(shop: Shop) -> None:
    catalog, truth = shop.catalog, shop.truth
    assert catalog.column_names == ["item_id", "category", "available", "title", "price"]
    assert catalog.num_rows == shop.summary.n_items == len(truth.item_category)
    ids = _index(catalog["item_id"])
    assert np.array_equal(ids, np.arange(catalog.num_rows))
    assert set(np.unique(shop.item)) <= set(ids.tolist())
    assert np.array_equal(_index(catalog["category"]), truth.item_category)
    assert catalog["category"][0].as_py() == f"c{truth.item_category[0]:02d}"
    assert np.array_equal(catalog["available"].to_numpy(), truth.item_available)
    assert 0.01 < 1 - truth.item_available.mean() < 0.1
    assert catalog["title"][5].as_py() == f"Item 5 (category {truth.item_category[5]})"
    assert all(re.fullmatch(r"\d+\.\d\d", p) for p in catalog["price"].to_pylist())
    assert min(float(p) for p in catalog["price"].to_pylist()) > 0


def test_default_sizes_follow_n_events(tmp_path: Path) -> None:
    summary = generate(SynthConfig(n_events=20_000), tmp_path / "e.csv")
    assert (summary.n_users, summary.n_items, summary.n_categories) == (400, 400, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_events": 999},
        {"n_events": 50_000_001},
        {"n_events": 2_000, "n_users": 2_001},
        {"n_events": 2_000, "n_items": 5},
        {"n_events": 2_000, "n_items": 20, "n_categories": 21},
        {"repeat_rate": 1.5},
        {"cart_rate": float("nan")},
        {"seed": -1},
        {"n_events": 2_000.0},
        {"n_events": True},
        {"taste_concentration": 0.0},
    ],
)
def test_bad_config_raises_config_error(kwargs: Any) -> None:
    with pytest.raises(ConfigError, match="synth: "):
        SynthConfig(**kwargs)


def test_numpy_numbers_are_accepted_as_plain_ones() -> None:
    # Sizes computed with numpy arrive as numpy scalars; the config holds plain numbers.
    config = SynthConfig(n_events=np.int64(2_000), repeat_rate=np.float32(0.25))  # type: ignore[arg-type]
    assert type(config.n_events) is int
    assert type(config.repeat_rate) is float


def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        generate(SynthConfig(n_events=1_000), tmp_path / "nope" / "e.csv")
    assert list(tmp_path.iterdir()) == []


def test_success_leaves_only_the_two_files(tmp_path: Path) -> None:
    summary = generate(SynthConfig(n_events=1_000), tmp_path / "e.csv.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.catalog.csv.gz", "e.csv.gz"]
    assert summary.catalog_path == tmp_path / "e.catalog.csv.gz"


def test_failure_midway_leaves_nothing_and_keeps_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, catalog = tmp_path / "e.csv", tmp_path / "e.catalog.csv"
    events.write_text("old events\n")
    catalog.write_text("old catalogue\n")
    real = synth._block_table
    calls = 0

    def fail_on_third_block(*args: Any, **kwargs: Any) -> pa.Table:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "BLOCK_EVENTS", 1_000)
    monkeypatch.setattr(synth, "_block_table", fail_on_third_block)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(SynthConfig(n_events=10_000), events)
    assert calls == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.catalog.csv", "e.csv"]
    assert events.read_text() == "old events\n"
    assert catalog.read_text() == "old catalogue\n"


def test_block_size_changes_streams_not_structure(tmp_path: Path) -> None:
    """Blocks are part of the definition of the output, but never of its validity."""
    config = SynthConfig(n_events=8_000, seed=1)
    small, _ = _make(config, tmp_path / "small.csv")
    whole = generate(config, tmp_path / "whole.csv")
    assert small.events_path.read_bytes() != whole.events_path.read_bytes()
    assert small.catalog_path.read_bytes() == whole.catalog_path.read_bytes()
    for summary in (small, whole):
        baskets = set(_read_events(summary.events_path)["basket_id"].to_pylist()) - {""}
        assert len(baskets) == summary.n_baskets
