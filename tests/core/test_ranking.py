"""The ranking core on a shop whose right answers are known (two disjoint groups)."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from recsvc.config import RepeatPolicy
from recsvc.model import Blend, Model
from recsvc.ranking import Filters, Query, Ranker, Reason, Strategy, training_user_query
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings


@pytest.fixture(scope="module", params=["exact", "normscan"])
def model(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Model:
    # both index kinds: normscan searches under the filters' mask, exact cannot
    settings = small_settings(tmp_path_factory.mktemp("m"), index={"kind": request.param})
    built = build_model(LoadedData(block_shop(), None, (), 0), settings)
    m = Model(built.artifact)
    assert m.artifact.index.kind == request.param
    # two categories: group 0 items "even", group 1 "odd"; every third item out of stock
    a = m.artifact
    a.categories = np.array(["g0", "g1"])
    a.item_category = np.array([0 if i.startswith("g0") else 1 for i in a.item_ids], np.int32)
    a.item_available = np.array([n % 3 != 0 for n in range(len(a.item_ids))])
    return m


def items_of(model: Model, ranked: np.ndarray) -> list[str]:
    return [str(model.artifact.item_ids[i]) for i in ranked]


def user_query(model: Model, user: str, k: int, **kw: object) -> Query:
    return training_user_query(model, model.user_position[user], k, **kw)


def test_known_user_gets_own_group_unbought_items_first(model: Model) -> None:
    ranker = Ranker(model)
    q = user_query(model, "g0u03", 6, repeat_policy=RepeatPolicy.EXCLUDE)
    got = ranker.recommend(q)
    assert got.strategy is Strategy.PERSONALIZED and not got.fallback
    bought = set(items_of(model, q.history_items))
    names = items_of(model, got.items)
    assert len(names) == 6 and len(set(names)) == 6
    assert all(n.startswith("g0") for n in names)
    assert not bought & set(names)
    assert set(got.reasons.tolist()) == {Reason.CF}
    assert (np.diff(got.scores) <= 1e-6).all()


def test_allow_repeats_brings_back_bought_items_as_buy_again(model: Model) -> None:
    got = Ranker(model).recommend(
        user_query(model, "g1u05", 10, repeat_policy=RepeatPolicy.ALLOW, repeat_weight=0.9)
    )
    assert Reason.BUY_AGAIN in got.reasons.tolist()
    assert all(n.startswith("g1") for n in items_of(model, got.items)[:6])


def test_filters_still_return_k_when_k_qualify(model: Model) -> None:
    g1 = np.array([1], np.int32)
    exclude = np.array([model.item_position["g1i00"], model.item_position["g1i01"]], np.int32)
    q = user_query(
        model,
        "g0u01",
        5,
        filters=Filters(exclude_items=exclude, include_categories=g1, in_stock_only=True),
    )
    got = Ranker(model).recommend(q)
    names = items_of(model, got.items)
    assert len(names) == 5
    assert all(n.startswith("g1") for n in names)  # the user's group is filtered out entirely
    assert not {"g1i00", "g1i01"} & set(names)
    assert all(model.artifact.item_available[got.items])


@pytest.mark.parametrize("hidden", [0.02, 0.5, 0.95])
def test_a_live_catalogue_mask_sizes_the_search_and_still_returns_k(
    model: Model, hidden: float
) -> None:
    # the fetch is sized from the share a live catalogue's mask lets through: the
    # answer is the unfiltered one's order with the hidden items left out, k long
    rng = np.random.default_rng(3)
    shown = rng.random(model.n_items) >= hidden
    shown[model.item_position["g0i02"]] = True
    ranker = Ranker(model)
    plain = ranker.recommend(user_query(model, "g0u01", model.n_items))
    expected = [i for i in plain.items.tolist() if shown[i]][:4]
    got = ranker.recommend(user_query(model, "g0u01", 4, filters=Filters(shown=shown)))
    assert got.items.tolist() == expected
    assert Filters(shown=shown).shown_share == pytest.approx(shown.mean())


def test_a_live_catalogues_mask_is_read_never_written(model: Model) -> None:
    # requests share the filters' mask (no copy per request): nothing may change it
    shown = np.ones(model.n_items, dtype=bool)
    shown[::4] = False
    before = shown.copy()
    filters = Filters(shown=shown)
    ranker = Ranker(model)
    query = user_query(model, "g0u01", 5, filters=filters, repeat_policy=RepeatPolicy.ALLOW)
    got = ranker.recommend(query)
    assert shown[got.items].all()
    assert ranker.allowed(query) is shown
    similar = ranker.similar(got.items[:2], 5, filters)
    assert shown[similar.items].all() and not set(similar.items) & set(got.items[:2])
    assert np.array_equal(shown, before)


def test_fewer_qualifying_than_k_returns_those_without_padding(model: Model) -> None:
    only = np.array([1], np.int32)
    avail = int((model.artifact.item_available & (model.artifact.item_category == 1)).sum())
    got = Ranker(model).recommend(
        user_query(model, "g0u01", 50, filters=Filters(include_categories=only, in_stock_only=True))
    )
    assert len(got.items) == avail
    assert (got.items >= 0).all()


def test_anonymous_session_follows_the_session(model: Model) -> None:
    ranker = Ranker(model)
    session = np.array([model.item_position["g1i02"], model.item_position["g1i03"]], np.int32)
    got = ranker.recommend(
        Query(k=5, session_items=session, session_weights=np.array([0.1, 0.1], np.float32))
    )
    assert got.strategy is Strategy.SESSION
    assert all(n.startswith("g1") for n in items_of(model, got.items))
    assert set(got.reasons.tolist()) == {Reason.SESSION}


def test_session_changes_a_known_users_answer(model: Model) -> None:
    ranker = Ranker(model)
    before = ranker.recommend(user_query(model, "g0u02", 5, repeat_policy=RepeatPolicy.EXCLUDE))
    session = np.array([model.item_position[f"g1i{i:02d}"] for i in range(6)], np.int32)
    after = ranker.recommend(
        user_query(
            model,
            "g0u02",
            5,
            repeat_policy=RepeatPolicy.EXCLUDE,
            session_items=session,
            session_weights=np.full(6, 1.0, np.float32),
        )
    )
    assert items_of(model, before.items) != items_of(model, after.items)
    assert any(n.startswith("g1") for n in items_of(model, after.items))


def test_no_signal_falls_back_to_popular_items_passing_filters(model: Model) -> None:
    got = Ranker(model).recommend(Query(k=4, filters=Filters(in_stock_only=True)))
    assert got.strategy is Strategy.POPULAR and got.fallback
    assert set(got.reasons.tolist()) == {Reason.POPULAR}
    assert all(model.artifact.item_available[got.items])
    pop = model.artifact.popularity[got.items]
    assert (np.diff(pop) <= 0).all()


def test_zero_k_is_empty(model: Model) -> None:
    assert len(Ranker(model).recommend(Query(k=0)).items) == 0


def test_similar_items_are_the_same_group_and_never_the_query(model: Model) -> None:
    ranker = Ranker(model)
    query = np.array([model.item_position["g0i01"], model.item_position["g0i02"]], np.int32)
    got = ranker.similar(query, 5)
    names = items_of(model, got.items)
    assert len(names) == 5
    assert all(n.startswith("g0") for n in names)
    assert not {"g0i01", "g0i02"} & set(names)
    assert set(got.reasons.tolist()) == {Reason.SIMILAR}
    assert (np.diff(got.scores) <= 1e-6).all()
    instock = ranker.similar(query, 50, Filters(in_stock_only=True))
    assert all(model.artifact.item_available[instock.items])


def test_buy_again_and_exclusion_use_purchases_not_views(model: Model) -> None:
    viewed = np.array([model.item_position["g0i00"], model.item_position["g0i01"]], np.int32)
    bought = np.array([model.item_position["g0i02"]], np.int32)
    q = Query(
        k=24,
        history_items=np.concatenate([viewed, bought]),
        history_weights=np.array([0.1, 0.1, 1.0], np.float32),
        purchased_items=bought,
        purchased_weights=np.array([1.0], np.float32),
        repeat_weight=0.9,
        repeat_policy=RepeatPolicy.ALLOW,
    )
    got = Ranker(model).recommend(q)
    reasons = dict(zip(items_of(model, got.items), got.reasons.tolist(), strict=True))
    assert reasons["g0i02"] == Reason.BUY_AGAIN
    assert reasons["g0i00"] != Reason.BUY_AGAIN and reasons["g0i01"] != Reason.BUY_AGAIN
    excluded = Ranker(model).recommend(
        Query(**{**q.__dict__, "repeat_policy": RepeatPolicy.EXCLUDE})
    )
    names = set(items_of(model, excluded.items))
    assert "g0i02" not in names and {"g0i00", "g0i01"} <= names


def test_a_session_ranked_by_neighbours_alone_skips_the_fold_in(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold-in is the costliest step of a session request (~150 µs at 100k items);
    with the neighbour model alone it must not run unless CF has to fill the list."""
    # the block shop, each user's purchases a minute apart: one session per user
    table = block_shop()
    minutes = pa.array((np.arange(table.num_rows) * 60 + 1_700_000_000).tolist(), pa.int64())
    table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", minutes)
    settings = small_settings(tmp_path_factory.mktemp("s"))
    model = Model(build_model(LoadedData(table, None, (), 0), settings).artifact)
    assert model.neighbors is not None
    session_only = dataclasses.replace(model.defaults, session=Blend(cf=0.0, neighbors=1.0))
    monkeypatch.setattr(model, "defaults", session_only)
    calls: list[int] = []
    real = model.foldin.user_vector
    monkeypatch.setattr(
        model.foldin, "user_vector", lambda *a, **kw: calls.append(1) or real(*a, **kw)
    )
    items = np.array([model.item_position[i] for i in ("g0i01", "g0i02")], np.int32)
    query = Query(k=3, session_items=items, session_weights=np.ones(2, np.float32))
    got = Ranker(model).recommend(query)
    assert got.strategy is Strategy.SESSION and len(got.items) == 3
    assert calls == []
    assert all(n.startswith("g0") for n in items_of(model, got.items))
    # a list the neighbours cannot fill is filled by CF, which needs the fold-in
    big = Query(k=20, session_items=items, session_weights=np.ones(2, np.float32))
    assert len(Ranker(model).recommend(big).items) == 20
    assert calls


def test_filters_widen_the_first_search_and_no_filter_fetches_2k(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    ranker = Ranker(model, overfetch=4)
    index = model.artifact.index
    fetched: list[int] = []
    search = index.search

    def spy(
        queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        fetched.append(k)
        return search(queries, k, allowed)

    monkeypatch.setattr(index, "search", spy)
    plain = ranker.recommend(user_query(model, "g0u03", 3, repeat_policy=RepeatPolicy.ALLOW))
    assert fetched == [6]  # k + k: headroom for the blend
    fetched.clear()
    in_stock = Filters(in_stock_only=True)
    filtered = ranker.recommend(
        user_query(model, "g0u03", 3, repeat_policy=RepeatPolicy.ALLOW, filters=in_stock)
    )
    assert fetched[0] == 12  # k · overfetch, so the filter still leaves k
    assert len(plain.items) == len(filtered.items) == 3
    assert model.artifact.item_available[filtered.items].all()
    # the same answer as fetching k · overfetch when nothing is filtered
    fetched.clear()
    wide = Ranker(model, overfetch=4)
    monkeypatch.setattr(wide, "_allowed", lambda *a: np.ones(model.n_items, dtype=bool))
    same = wide.recommend(user_query(model, "g0u03", 3, repeat_policy=RepeatPolicy.ALLOW))
    assert fetched == [12]
    assert np.array_equal(same.items, plain.items)


def test_allowed_right_after_recommend_is_the_mask_it_applied(model: Model) -> None:
    filters = Filters(in_stock_only=True, exclude_items=np.array([0, 1], np.int32))
    query = user_query(model, "g0u03", 5, filters=filters, repeat_policy=RepeatPolicy.EXCLUDE)
    fresh = Ranker(model).allowed(query)
    assert fresh is not None and not fresh.all()
    ranker = Ranker(model)
    ranker.recommend(query)
    kept = ranker.allowed(query)
    assert kept is ranker.allowed(query)  # the mask of that answer, not made again
    assert kept is not None and kept.tolist() == fresh.tolist()
    # another query answered since: made again, the same
    ranker.recommend(dataclasses.replace(query, k=6))
    again = ranker.allowed(query)
    assert again is not kept and again is not None and again.tolist() == fresh.tolist()
    other = dataclasses.replace(query, filters=Filters(), repeat_policy=RepeatPolicy.ALLOW)
    assert ranker.allowed(other) is None  # any other query: its own mask


class _Times:
    """ScoreWeights: multiply the scores of some items (positions) by their factor."""

    def __init__(self, n_items: int, factors: dict[int, float]) -> None:
        self.factor = np.ones(n_items, np.float32)
        for item, f in factors.items():
            self.factor[item] = f
        self.calls = 0

    def weigh(self, items: np.ndarray, scores: np.ndarray) -> None:
        self.calls += 1
        scores *= self.factor[items]

    def room(self, basis: int) -> int:
        return basis  # it may lift an item


def test_weights_reorder_the_candidates_before_the_cut(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights multiply the blended scores of every candidate before the best k are
    cut: a boosted item beyond the plain top k climbs in, a buried one sinks out, and
    the search ranks about 3k candidates for it (k + 2k, where plain asks k + k)."""
    ranker = Ranker(model, overfetch=4)
    q = user_query(model, "g0u03", 3, repeat_policy=RepeatPolicy.ALLOW)
    wide = ranker.recommend(dataclasses.replace(q, k=8))
    plain = ranker.recommend(q)
    assert np.array_equal(plain.items, wide.items[:3])
    climber, sinker = int(wide.items[5]), int(plain.items[0])
    lift = float(wide.scores[0] / wide.scores[5]) * 1.5
    weights = _Times(model.n_items, {climber: lift, sinker: 0.01})
    fetched: list[int] = []
    search = model.artifact.index.search

    def spy(
        queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        fetched.append(k)
        return search(queries, k, allowed)

    monkeypatch.setattr(model.artifact.index, "search", spy)
    got = ranker.recommend(dataclasses.replace(q, weights=weights))
    assert fetched == [9]  # k + 2k
    assert weights.calls == 1
    assert int(got.items[0]) == climber
    assert got.scores[0] == pytest.approx(float(wide.scores[5]) * lift, rel=1e-5)
    assert sinker not in got.items.tolist()
    assert got.items.tolist()[1:] == [i for i in wide.items.tolist() if i != sinker][:2]
    assert (np.diff(got.scores) <= 0).all()


class _Lower(_Times):
    """ScoreWeights that only lower named items: the room it asks is one per item."""

    def room(self, basis: int) -> int:
        return min(basis, int((self.factor < 1).sum()))


def test_a_demotion_of_m_items_asks_m_more_candidates_and_ranks_as_a_wide_search(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lowering known items leaves one hole each in the candidates: k + k + m are
    searched (not k + 2k), and the answer is what a wide search gives once they sink."""
    ranker = Ranker(model, overfetch=4)
    q = user_query(model, "g0u03", 4, repeat_policy=RepeatPolicy.ALLOW)
    wide = ranker.recommend(dataclasses.replace(q, k=12))
    demoted = [int(i) for i in wide.items[:2]]
    fetched: list[int] = []
    search = model.artifact.index.search

    def spy(
        queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        fetched.append(k)
        return search(queries, k, allowed)

    monkeypatch.setattr(model.artifact.index, "search", spy)
    lower = _Lower(model.n_items, dict.fromkeys(demoted, 0.001))
    got = ranker.recommend(dataclasses.replace(q, weights=lower))
    assert fetched == [4 + 4 + 2]
    assert got.items.tolist() == [i for i in wide.items.tolist() if i not in demoted][:4]


def test_weights_reorder_a_popular_answer_too(model: Model) -> None:
    """With no signal the answer is the popular list: weights reorder its head."""
    ranker = Ranker(model)
    plain = ranker.recommend(Query(k=3))
    head = ranker.recommend(Query(k=6))
    assert plain.strategy is Strategy.POPULAR and np.array_equal(plain.items, head.items[:3])
    fourth = int(head.items[4])
    weights = _Times(model.n_items, {fourth: 1000.0, int(head.items[0]): 0.001})
    got = ranker.recommend(Query(k=3, weights=weights))
    assert got.items.tolist() == [fourth, *head.items[1:3].tolist()]
    assert got.strategy is Strategy.POPULAR and got.fallback
