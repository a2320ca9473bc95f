"""Any valid event table trains or stops with one line saying why (issue #14, defect 9).

Hypothesis draws the shape of a small shop (how many users and items, how events are
laid out in time, how much users rebuy, event types, quantities, baskets, guests, the
index kind) and a seed; NumPy draws the events from them. ``build_model`` must then
either return an artifact that the serving ranker answers from, for a known user and
for strangers, or raise :class:`DataError` whose message is one line.

The fast tier keeps shops small (up to 40 users); the ``slow`` test goes to the
brief's 300 users and 50 items with more examples.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from recsvc.artifact import ModelArtifact, read_artifact, write_artifact
from recsvc.cli import main
from recsvc.config import RepeatPolicy, Settings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Query, Ranker, training_user_query
from recsvc.training import blend
from recsvc.training.loading import Catalog
from recsvc.training.pipeline import LoadedData, build_model

from factories import T0, small_settings

HOUR = 3_600
YEAR = 365 * 86_400
#: ISO 8601's year 1 and the loader's ceiling for Unix seconds (year 5138).
EARLIEST, LATEST = -62_135_596_800, 10**11 - 1

LAYOUTS = ("equal", "distinct", "hourly", "years", "baskets", "extreme")
"""How timestamps are laid out: all one instant; every event its own second; user u's
events at hour u (the fault report's shop); spread over several years; visits of a
few items at one instant, days apart; anywhere the loader accepts (year 1 to 5138)."""
TYPES = ("purchase", "mixed", "browse", "impressions")
"""Purchases only; every event type; no purchase at all; impressions (weight 0) only."""
QUANTITIES = ("one", "units", "fractions", "extreme")


@dataclass(frozen=True)
class Shop:
    """The drawn shape of a shop; :meth:`table` makes its events."""

    users: int
    items: int
    events_per_user: int
    same_count: bool
    """Every user has ``events_per_user`` events (else 1 to that many)."""
    heavy_user: bool
    """User 0 has 250 events more (one long visit in most layouts)."""
    clusters: int
    """Users of cluster c buy items of cluster c only."""
    layout: str
    """One of :data:`LAYOUTS`."""
    types: str
    """One of :data:`TYPES`."""
    quantities: str
    """One of :data:`QUANTITIES`: all 1, whole units, fractions, float32's extremes."""
    rebuy: float
    """The share of a user's events on an item they had before."""
    explicit_baskets: bool
    """Baskets are orders of a day (else the loader's default, one per timestamp)."""
    guests: float
    """The share of events without a user (guests count for popularity only)."""
    index: str
    catalog: bool
    """A catalogue of half the items, some out of stock, plus items never sold."""
    min_blend_users: int
    """Held-out users the blend fit needs (its MIN_USERS, or 2 to fit small shops)."""
    neighbors: str
    """The neighbour model's settings: "small", the shipped "default", or "off"."""
    seed: int

    def table(self) -> pa.Table:
        rng = np.random.default_rng(self.seed)
        per_user = (
            np.full(self.users, self.events_per_user)
            if self.same_count
            else rng.integers(1, self.events_per_user + 1, size=self.users)
        )
        if self.heavy_user:
            per_user[0] += 250
        user = np.repeat(np.arange(self.users), per_user)
        n = len(user)
        # users of cluster c buy items of cluster c (cluster count capped by items)
        clusters = min(self.clusters, self.items)
        cluster_items = np.array_split(np.arange(self.items), clusters)
        item = np.empty(n, dtype=np.int64)
        for u in range(self.users):
            rows = np.flatnonzero(user == u)
            pool = cluster_items[u % clusters]
            picks = rng.choice(pool, size=len(rows))
            # a share of events repeat an item the user had before
            again = rng.random(len(rows)) < self.rebuy
            for j in range(1, len(rows)):
                if again[j]:
                    picks[j] = picks[rng.integers(0, j)]
            item[rows] = picks
        stamps = self._stamps(rng, user, per_user)
        types = self._types(rng, n)
        quantity = self._quantities(rng, n)
        user_ids: list[str | None] = [f"u{u}" for u in user]
        if self.guests:
            for row in np.flatnonzero(rng.random(n) < self.guests):
                user_ids[row] = None
        if self.explicit_baskets:
            # an order id per user and timestamp bucket of a day
            baskets = [f"o{u}-{t // 86_400}" for u, t in zip(user, stamps, strict=True)]
        else:
            baskets = [f"{u}@{t}" for u, t in zip(user_ids, stamps, strict=True)]
        return pa.table(
            {
                "user_id": pa.array(user_ids, pa.string()),
                "item_id": pa.array([f"i{i}" for i in item], pa.string()),
                "timestamp": pa.array(stamps, pa.int64()),
                "event_type": pa.array(types, pa.string()),
                "quantity": pa.array(quantity, pa.float32()),
                "basket_id": pa.array(baskets, pa.string()),
            }
        )

    def catalogue(self) -> Catalog | None:
        if not self.catalog:
            return None
        ids = [f"i{i}" for i in range(0, self.items, 2)] + ["never-sold", "never-sold-2"]
        n = len(ids)
        return Catalog(
            item_id=pa.array(ids, pa.string()),
            category=pa.array([f"c{i % 3}" if i % 4 else None for i in range(n)], pa.string()),
            available=pa.array([i % 3 != 0 for i in range(n)], pa.bool_()),
            title=pa.nulls(n, pa.string()),
        )

    def _stamps(
        self, rng: np.random.Generator, user: np.ndarray, per_user: np.ndarray
    ) -> np.ndarray:
        n = len(user)
        within = np.concatenate([np.arange(k) for k in per_user])  # event's rank in its user
        if self.layout == "equal":
            return np.full(n, T0, dtype=np.int64)
        if self.layout == "distinct":
            return T0 + rng.permutation(n).astype(np.int64)
        if self.layout == "hourly":
            return T0 + user.astype(np.int64) * HOUR + within
        if self.layout == "years":
            return T0 - rng.integers(0, 5 * YEAR, size=n)
        if self.layout == "baskets":
            visit = within // 3
            return T0 + visit * 86_400 * 3 + user.astype(np.int64) * 60
        return rng.integers(EARLIEST, LATEST, size=n)

    def _types(self, rng: np.random.Generator, n: int) -> list[str]:
        if self.types == "purchase":
            return [EventType.PURCHASE.value] * n
        if self.types == "impressions":
            return [EventType.IMPRESSION.value] * n
        kinds = [e.value for e in EventType]
        if self.types == "browse":
            kinds.remove(EventType.PURCHASE.value)
        return [kinds[k] for k in rng.integers(0, len(kinds), size=n)]

    def _quantities(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.quantities == "one":
            return np.ones(n)
        if self.quantities == "units":
            return rng.integers(1, 100, size=n).astype(np.float64)
        if self.quantities == "fractions":
            return rng.uniform(0.001, 3.0, size=n)
        # what the loader lets through: > 0 and at most float32's largest
        return rng.choice([1e-30, 1.0, 3.0e38, float(np.finfo(np.float32).max)], size=n)


def shops(max_users: int, max_items: int, max_events: int) -> st.SearchStrategy[Shop]:
    return st.builds(
        Shop,
        users=st.integers(1, max_users),
        items=st.integers(1, max_items),
        events_per_user=st.integers(1, max_events),
        same_count=st.booleans(),
        heavy_user=st.booleans(),
        clusters=st.integers(1, 3),
        layout=st.sampled_from(LAYOUTS),
        # repeated entries weigh the draw: degenerate cases come up, but not most of the time
        types=st.sampled_from((*TYPES, "purchase", "mixed")),
        quantities=st.sampled_from(QUANTITIES),
        rebuy=st.sampled_from([0.0, 0.3, 1.0]),
        explicit_baskets=st.booleans(),
        guests=st.sampled_from([0.0, 0.0, 0.0, 0.2, 1.0]),
        index=st.sampled_from(["auto", "normscan", "hnsw", "ivf"]),
        catalog=st.booleans(),
        min_blend_users=st.sampled_from([blend.MIN_USERS, 2]),
        neighbors=st.sampled_from(["small", "small", "default", "off"]),
        seed=st.integers(0, 2**32 - 1),
    )


SMALL_NEIGHBORS = {
    "neighbors": 20, "sample_size": 50, "candidates": 20, "rule_candidates": 10,
    "embedding_dim": 4, "rerank_cases": 50,
}  # fmt: skip


def tiny_settings(shop: Shop) -> Settings:
    """A small, fast model: rank 3, two ALS iterations, the shop's neighbour model."""
    neighbors: dict[str, object] = {"parallel_build": False}
    if shop.neighbors == "small":
        neighbors.update(SMALL_NEIGHBORS)
    elif shop.neighbors == "off":
        neighbors["enabled"] = False
    return small_settings(
        als={"factors": 3, "iterations": 2, "regularization": 0.1, "random_state": 1,
             "num_threads": 1},
        index={"kind": shop.index, "recall_queries": 10},
        neighbors=neighbors,
    )  # fmt: skip


K = 10
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def check_shop(shop: Shop) -> None:
    table = shop.table()
    data = LoadedData(table, shop.catalogue(), (), 0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(blend, "MIN_USERS", shop.min_blend_users)
            built = build_model(data, tiny_settings(shop), now=NOW)
    except DataError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        # only a shop too small to fit, or whose users' events all weigh 0, may be refused
        known = table.filter(pc.is_valid(table["user_id"]))
        too_small = (
            len(set(known["user_id"].to_pylist())) < 2 or len(set(table["item_id"].to_pylist())) < 2
        )
        weightless = "weighs 0" in message and (
            # impressions weigh 0; across millennia the time decay takes the rest to 0
            set(known["event_type"].to_pylist()) == {EventType.IMPRESSION.value}
            or shop.layout == "extreme"
        )
        assert too_small or weightless, message
        outcome("refused: too small" if too_small else "refused: weighs 0")
        return
    outcome("trained")
    fit = built.artifact.manifest.ranking.user_blend_fit
    outcome("blend fitted" if fit is not None else "no fit")
    # what `recsvc train` writes and the server reads back
    with tempfile.TemporaryDirectory(prefix="shop-") as root:
        written = read_artifact(write_artifact(built.artifact, Path(root)))
    check_answers(written)


def outcome(what: str) -> None:
    """Counted in ``--hypothesis-show-statistics``, to see what the examples cover."""
    if currently_in_test_context():
        event(what)


def check_answers(artifact: ModelArtifact) -> None:
    model = Model(artifact)
    ranker = Ranker(model)
    n = model.n_items
    known = training_user_query(model, 0, K)
    got = ranker.recommend(known)
    hidden = (
        len(known.purchased_items) if model.defaults.repeat_policy is RepeatPolicy.EXCLUDE else 0
    )
    assert_ranked(got.items, got.scores, n, min(K, n - hidden))
    # a stranger: no history, no session (the popular list)
    got = ranker.recommend(Query(k=K))
    assert_ranked(got.items, got.scores, n, min(K, n))
    # an anonymous visitor who has looked at one item
    session = np.array([n - 1], np.int32)
    got = ranker.recommend(
        Query(k=K, session_items=session, session_weights=np.ones(1, np.float32))
    )
    hidden = 0 if model.defaults.session_repeats else 1
    assert_ranked(got.items, got.scores, n, min(K, n - hidden))


def assert_ranked(items: np.ndarray, scores: np.ndarray, n_items: int, expected: int) -> None:
    assert len(items) == expected, (len(items), expected)
    assert len(set(items.tolist())) == len(items)
    assert ((items >= 0) & (items < n_items)).all()
    assert np.isfinite(scores).all()


#: Examples per property, from the profile (tests/conftest.py): 150 under "ci". Each
#: example here fits, writes and reads a model (~40 ms in the fast tier's shops, up to
#: ~0.3 s at 300 users), so the fast tier takes 2/5 of them (60, ~3 s) and the slow
#: test twice as many (300, ~15 s); HYPOTHESIS_PROFILE=slow multiplies both by 6.7.
EXAMPLES = settings.default.max_examples

#: The fault report's shop (issue #14, defect 9): 300 users in two clusters, each
#: buying 10 items at distinct timestamps, user u's events at hour u. Every user's
#: events lie in the visit of their last basket, so holding those out for the blend
#: fit left nothing to train on.
REPORTED = Shop(
    users=300, items=20, events_per_user=10, same_count=True, heavy_user=False, clusters=2,
    layout="hourly", types="purchase", quantities="one", rebuy=0.0, explicit_baskets=False,
    guests=0.0, index="auto", catalog=False, min_blend_users=blend.MIN_USERS,
    neighbors="default", seed=0,
)  # fmt: skip


@settings(max_examples=EXAMPLES * 2 // 5)
@given(shops(max_users=40, max_items=12, max_events=8))
# what hypothesis found on unchanged code, and the smallest shops, always run
@example(REPORTED)
@example(  # purchases decayed to 0 before the blend's cut: 0/0 in its buy-again signal
    replace(REPORTED, users=2, items=2, events_per_user=2, clusters=1, layout="extreme",
            rebuy=1.0, min_blend_users=2)
)  # fmt: skip
@example(replace(REPORTED, users=1, items=1, events_per_user=1))
@example(replace(REPORTED, users=1, items=5))
@example(replace(REPORTED, users=30, items=1))
def test_a_small_shop_trains_or_says_why(shop: Shop) -> None:
    check_shop(shop)


@pytest.mark.slow
@settings(max_examples=2 * EXAMPLES)
@given(shops(max_users=300, max_items=50, max_events=12))
def test_a_shop_of_up_to_300_users_trains_or_says_why(shop: Shop) -> None:
    check_shop(shop)


def build(shop: Shop) -> ModelArtifact:
    data = LoadedData(shop.table(), shop.catalogue(), (), 0)
    return build_model(data, tiny_settings(shop), now=NOW).artifact


@pytest.mark.parametrize("index", ["auto", "hnsw", "ivf"])
def test_the_reported_shop_trains_with_the_default_blend(index: str) -> None:
    artifact = build(replace(REPORTED, index=index))
    # every user's events lie in the visit of their last basket: no one to fit on
    assert artifact.manifest.ranking.user_blend_fit is None
    check_answers(artifact)


def test_the_blend_is_fitted_when_users_have_history_before_their_last_visit() -> None:
    artifact = build(replace(REPORTED, layout="baskets"))  # visits three days apart
    fit = artifact.manifest.ranking.user_blend_fit
    assert fit is not None and fit.users == 300
    check_answers(artifact)


def test_the_reported_file_trains_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    pacsv.write_csv(REPORTED.table().select(["user_id", "item_id", "timestamp"]), events)
    argv = ["-q", "train", "--events", str(events), "--artifacts", str(tmp_path / "a")]
    assert main([*argv, "--factors", "3", "--iterations", "2"]) == 0, capsys.readouterr().err
    assert "trained" in capsys.readouterr().out
