"""New products in process: where their attributes place them, how they merge into an
answer (pins stay, the cap holds), which filters let them through, their prior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsvc.catalog import AttributeFilter, CatalogItem
from recsvc.model import Model
from recsvc.ranking import Reason
from recsvc.serving import newitems
from recsvc.serving.calls import FilterSpec, ScoredItem
from recsvc.serving.catalog import CatalogView
from recsvc.serving.newitems import NewItemLane, TitleIndex, content_vectors, merge_new
from recsvc.serving.popularity import LivePopularity
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    built = build_model(LoadedData(block_shop(), None, (), 0), small_settings(None))
    m = Model(built.artifact)
    m.artifact.categories = np.array(["g0", "g1"])
    m.artifact.item_category = np.array(
        [0 if i.startswith("g0") else 1 for i in m.artifact.item_ids], np.int32
    )
    return m


def _unit(model: Model) -> np.ndarray:
    y = model.artifact.item_factors
    return (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_attributes_place_a_new_item_among_its_category_brand_and_title_peers(
    model: Model,
) -> None:
    unit = _unit(model)
    g0, g1 = unit[:12].mean(axis=0), unit[12:].mean(axis=0)
    assert model.artifact.item_ids[0].startswith("g0") and model.artifact.item_ids[12].startswith(
        "g1"
    )
    records = [
        CatalogItem(
            f"g1i{i:02d}",
            category=("home", "g1"),
            labels={"brand": "acme" if i < 3 else "zed"},
            title=f"Copper kettle {i}" if i < 2 else "Plain jug",
        )
        for i in range(12)
    ]
    view = CatalogView(model, records, NOW)
    titles = TitleIndex(model, records)
    new = [
        CatalogItem("by-category", category=("g0",)),
        CatalogItem("by-live-path", category=("home", "g1")),
        CatalogItem("by-title", title="A copper kettle"),
        CatalogItem("by-brand", category=("g1",), labels={"brand": "acme"}),
        CatalogItem("nothing-known", category=("garden",), title="zz"),
    ]
    placed = content_vectors(model, view, new, unit, titles)
    assert _cosine(placed[0], g0) > 0.99 and _cosine(placed[0], g1) < 0.2
    assert _cosine(placed[1], g1) > 0.99
    # the title's rare words name g1i00 and g1i01: their mean
    assert _cosine(placed[2], unit[12:14].mean(axis=0)) > 0.999
    # the brand narrows g1 to its three acme items
    assert _cosine(placed[3], unit[12:15].mean(axis=0)) > 0.999
    assert placed[4] is None
    # words in over 5% of the titles say nothing ("plain", "jug": 10 of 12)
    assert "jug" not in titles.items and "copper" in titles.items


def test_a_title_index_rebuilt_splits_only_titles_it_has_not_seen(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a rebuild split every title again (100k titles: ~0.3 s in a thread holding the
    # GIL, every ten minutes and after each catalogue change); titles rarely change
    records = [CatalogItem(f"g1i{i:02d}", title=f"Copper kettle {i % 3}") for i in range(12)]
    first = TitleIndex(model, records)
    split: list[str] = []
    real = newitems.title_words

    def counting(title: str) -> set[str]:
        split.append(title)
        return real(title)

    monkeypatch.setattr(newitems, "title_words", counting)
    changed = [*records[:11], CatalogItem("g1i11", title="Steel kettle")]
    again = TitleIndex(model, changed, first.words)
    assert split == ["Steel kettle"]  # the others' words were known
    fresh = TitleIndex(model, changed)
    assert again.signature == fresh.signature
    assert again.items.keys() == fresh.items.keys()
    assert all(np.array_equal(again.items[w], fresh.items[w]) for w in fresh.items)
    assert "steel" in again.items and set(again.words) == {r.title for r in changed}


def _lane(records: list[CatalogItem], prior: list[float], met: list[float]) -> NewItemLane:
    m = len(records)
    vectors = np.tile(np.array([[1.0, 0.0]], np.float32), (m, 1))
    confidence = np.array(met, np.float32)
    placed = np.ones(m, bool)
    return NewItemLane(
        "v1", tuple(records), vectors, placed, confidence, np.array(prior, np.float32),
        {r.item_id: i for i, r in enumerate(records)},
        tuple(r.category[-1] if r.category else "" for r in records),
    )  # fmt: skip


def test_filters_withdrawal_and_windows_apply_to_new_items() -> None:
    records = [
        CatalogItem("a", category=("home", "kitchen"), price=10.0, labels={"brand": "acme"}),
        CatalogItem("b", category=("garden",), price=50.0),
        CatalogItem("gone", withdrawn=True),
        CatalogItem("out", available=False),
        CatalogItem("later", available_from=int(NOW) + 60),
    ]
    lane = _lane(records, [1.0] * 5, [0.5] * 5)
    spec = FilterSpec

    def shown(f: FilterSpec) -> list[str]:
        return [r.item_id for i, r in enumerate(records) if lane.passes(i, f, NOW)]

    assert shown(spec()) == ["a", "b"]
    assert shown(spec(include_categories=("home",))) == ["a"]
    assert shown(spec(exclude_categories=("kitchen",))) == ["b"]
    assert shown(spec(exclude_item_ids=("a",))) == ["b"]
    assert shown(spec(attributes=(AttributeFilter("price", low=20.0),))) == ["b"]
    assert shown(spec(attributes=(AttributeFilter("brand", values=("acme",)),))) == ["a"]
    assert shown(spec(attributes=(AttributeFilter("rating", low=1.0),))) == []
    assert [s.item_id for s in lane.popular(spec(), NOW, 10, 0.5)] == ["a", "b"]
    assert lane.popular(spec(), NOW, 1, 0.5) == [ScoredItem("a", 0.5, Reason.POPULAR)]


def test_only_what_shoppers_vouch_for_enters_a_trained_items_similar_list() -> None:
    records = [CatalogItem("met"), CatalogItem("guessed")]
    lane = _lane(records, [0.0, 0.0], [0.8, 0.0])
    near = lane.similar(np.array([1.0, 0.0], np.float32), FilterSpec(), NOW, 5, set())
    assert near == [ScoredItem("met", pytest.approx(0.8), Reason.SIMILAR)]
    assert lane.similar(np.array([1.0, 0.0], np.float32), FilterSpec(), NOW, 5, {"met"}) == []
    assert lane.counts() == {"known": 2, "placed": 2, "met": 1, "selling": 0}


def _items(*pairs: tuple[str, float, Reason]) -> list[ScoredItem]:
    return [ScoredItem(i, s, r) for i, s, r in pairs]


def test_merge_keeps_pins_in_place_and_the_cap() -> None:
    answer = _items(
        ("p", 0.1, Reason.PINNED), ("x", 0.9, Reason.CF), ("y", 0.5, Reason.CF),
        ("z", 0.4, Reason.CF),
    )  # fmt: skip
    new = _items(("n1", 0.7, Reason.POPULAR), ("n2", 0.45, Reason.POPULAR))
    items, origin = merge_new(answer, new, 4)
    assert [i.item_id for i in items] == ["p", "x", "n1", "y"]
    assert origin == [0, 1, -1, 2]
    # a cap of 1 per category: n1 shares x's, so n2 takes its place
    category = {"p": "c0", "x": "c1", "y": "c2", "z": "c3", "n1": "c1", "n2": "c4"}
    items, _ = merge_new(answer, new, 4, category=category, cap=1)
    assert [i.item_id for i in items] == ["p", "x", "y", "n2"]
    # nothing new: the answer as it was
    assert merge_new(answer, [], 3) == (answer[:3], [0, 1, 2])


def test_a_new_items_prior_is_on_the_blended_scale() -> None:
    class Head:
        """Live popularity's head without a store."""

    live = LivePopularity(Head(), weight=1.0)  # type: ignore[arg-type]
    live.head = (("new", 2.0), ("g0i01", 4.0), ("junk", 100.0))
    live.new_ids = frozenset({"new"})

    class Known:
        def __init__(self) -> None:
            self.item_position = {"g0i01": 0}

    prior = live.new_prior(["new", "other"], Known())  # type: ignore[arg-type]
    # live / top, the top being the best-selling item the shop sells (an id nobody
    # sells does not set the scale): its missing trained part taken to be its live one
    assert prior == [pytest.approx(0.5), 0.0]
    assert not math.isnan(prior[0])
