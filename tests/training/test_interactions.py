from pathlib import Path

import numpy as np
import pytest

from recsvc.config import WeightingSettings
from recsvc.erasure import read_erasure_list
from recsvc.errors import DataError
from recsvc.training.interactions import (
    build_interactions,
    drop_erased_users,
    key_then_time,
    net_of_returns,
)
from recsvc.training.pipeline import session_revisit_share
from recsvc.training.splits import VISIT_GAP_SECONDS, split_last_basket

from factories import DAY, T0, event_table

NO_DECAY = WeightingSettings(half_life_days=0, popularity_half_life_days=0)


def test_ids_weights_counts_and_guests() -> None:
    table = event_table(
        [
            ("alice", "apple", T0, "purchase", 1, "b1"),
            ("alice", "apple", T0, "purchase", 1, "b1"),  # same basket, second line
            ("alice", "apple", T0 + 10, "purchase", 1, "b2"),
            ("alice", "pear", T0 + 20, "view", 1, "alice@1"),
            ("bob", "pear", T0 + 30, "purchase", 1, "b3"),
            (None, "plum", T0 + 40, "purchase", 1, "g1"),  # guest
        ]
    )
    inter = build_interactions(table, NO_DECAY)
    assert inter.user_ids.tolist() == ["alice", "bob"]
    assert inter.item_ids.tolist() == ["apple", "pear", "plum"]
    w = inter.weights.toarray()
    assert w[0].tolist() == pytest.approx([3.0, 0.1, 0.0])
    assert w[1].tolist() == pytest.approx([0.0, 1.0, 0.0])
    # baskets, not lines: apple in b1 (twice) and b2 counts 2
    assert inter.counts.toarray()[0].tolist() == [2.0, 0.0, 0.0]
    # guests count for popularity only
    assert inter.popularity.tolist() == pytest.approx([3.0, 1.1, 1.0])
    assert inter.stats["guest_events"] == 1
    assert inter.reference_time == T0 + 40


def test_time_decay_uses_newest_event_as_now() -> None:
    day = 86_400
    table = event_table(
        [
            ("a", "x", T0, "purchase", 1, "1"),
            ("a", "y", T0 + 10 * day, "purchase", 1, "2"),
        ]
    )
    inter = build_interactions(table, WeightingSettings(half_life_days=10))
    assert inter.weights.toarray()[0].tolist() == pytest.approx([0.5, 1.0])


def test_buy_again_weights_count_orders_not_units() -> None:
    day = 86_400
    table = event_table(
        [
            ("a", "bulk", T0, "purchase", 200, "1"),  # 200 units: one order
            ("a", "bulk", T0, "purchase", 50, "1"),  # same basket, second line
            ("a", "bulk", T0 + 10 * day, "purchase", 1, "2"),
            ("a", "once", T0 + 10 * day, "purchase", 3, "2"),
            ("a", "seen", T0 + 10 * day, "view", 1, "a@1"),
        ]
    )
    inter = build_interactions(table, WeightingSettings(half_life_days=10))
    # bulk: an order 10 days old (0.5) and one today (1.0); views are not purchases
    assert inter.purchases.toarray()[0].tolist() == pytest.approx([1.5, 1.0, 0.0])
    # the fit's weights still count units: 1 + ln(quantity)
    assert inter.weights.toarray()[0, 1] == pytest.approx(1.0 + np.log(3.0))


def test_only_guests_is_a_data_error() -> None:
    table = event_table([(None, "x", T0, "purchase", 1, "1")])
    with pytest.raises(DataError, match="no event has a user id"):
        build_interactions(table, NO_DECAY)


def test_weightless_events_say_whether_their_types_or_their_age_weigh_0() -> None:
    views = event_table(
        [("a", "x", T0, "impression", 1, "1"), ("b", "y", T0, "impression", 1, "2")]
    )
    with pytest.raises(DataError, match=r"their types \(impression\) have weight 0"):
        build_interactions(views, WeightingSettings())
    # the only event that counts is 100 years older than the newest (an impression):
    # ~200 half-lives take its float32 weight to 0
    old = event_table(
        [("a", "x", T0 - 36_500 * DAY, "purchase", 1, "1"), ("b", "y", T0, "impression", 1, "2")]
    )
    with pytest.raises(DataError, match=r"after the time decay: .* 36,500 days older"):
        build_interactions(old, WeightingSettings())


def test_erased_users_never_reach_the_matrix(tmp_path: Path) -> None:
    path = tmp_path / "erased.txt"
    path.write_text("bob\n\n")
    table = event_table(
        [
            ("alice", "x", T0, "purchase", 1, "1"),
            ("bob", "y", T0, "purchase", 1, "2"),
            (None, "z", T0, "purchase", 1, "3"),
        ]
    )
    kept, removed = drop_erased_users(table, read_erasure_list(path))
    assert removed == 1
    inter = build_interactions(kept, NO_DECAY)
    assert "bob" not in inter.user_ids.tolist()
    assert "y" not in inter.item_ids.tolist()
    assert read_erasure_list(tmp_path / "absent.txt") == frozenset()


def test_rows_sum_and_dtype() -> None:
    table = event_table([("a", "x", T0, "purchase", 2, "1"), ("b", "x", T0, "add_to_cart", 1, "2")])
    inter = build_interactions(table, NO_DECAY)
    assert inter.weights.dtype == np.float32
    assert inter.weights.shape == (2, 1)


def test_split_last_basket_holds_out_each_returning_users_last_basket_and_its_visit() -> None:
    gap = VISIT_GAP_SECONDS
    table = event_table(
        [
            ("ann", "a", T0, "purchase", 1, "b1"),
            ("ann", "b", T0 + 10 * DAY - 1, "view", 1, "ann@1"),  # just before the visit
            ("ann", "c", T0 + 10 * DAY + gap - 60, "purchase", 1, "b2"),  # same visit
            ("ann", "d", T0 + 10 * DAY + gap, "purchase", 1, "b3"),  # the last basket
            ("ann", "e", T0 + 10 * DAY + gap, "purchase", 1, "b3"),
            ("bob", "a", T0, "purchase", 1, "b4"),  # one basket: trains, no test
            ("bob", "b", T0 + DAY, "view", 1, "bob@1"),
            (None, "a", T0 + 20 * DAY, "purchase", 1, "g1"),  # guest: trains
            ("cat", "x", T0, "view", 1, "cat@1"),  # views only
        ]
    )
    split = split_last_basket(table)
    assert split.truth == {"ann": {"d", "e"}}
    kept = list(
        zip(split.train["user_id"].to_pylist(), split.train["item_id"].to_pylist(), strict=True)
    )
    # ann's view just over 30 minutes before the last basket is not part of its visit
    assert kept == [
        ("ann", "a"),
        ("ann", "b"),
        ("bob", "a"),
        ("bob", "b"),
        (None, "a"),
        ("cat", "x"),
    ]


def test_split_last_basket_without_returning_users_holds_out_nothing() -> None:
    table = event_table([("ann", "a", T0, "purchase", 1, "b1"), (None, "b", T0, "view", 1, "g")])
    split = split_last_basket(table)
    assert split.truth == {}
    assert split.train.num_rows == 2
    with pytest.raises(DataError):
        split_last_basket(event_table([("ann", "a", T0, "view", 1, "v")]))


def test_session_revisit_share_counts_repeat_clicks_within_sessions() -> None:
    # sessions [0, 1, 0] and [2, 2, 3, 1]: of the 5 later clicks, 2 revisit
    indptr = np.array([0, 3, 7], dtype=np.int64)
    items = np.array([0, 1, 0, 2, 2, 3, 1], dtype=np.int32)
    assert session_revisit_share(indptr, items) == pytest.approx(2 / 5)
    assert session_revisit_share(np.array([0, 1]), np.array([4], dtype=np.int32)) == 0.0


@pytest.mark.parametrize(
    ("n_keys", "low", "high"),
    [(50, 0, 40), (3, -(10**6), 10**6), (10**6, 0, 10**13), (1, 5, 6)],
)
def test_key_then_time_orders_as_lexsort(n_keys: int, low: int, high: int) -> None:
    # ties on both columns included; 10**6 keys over a 10**13 span overflow int64 and
    # take lexsort itself
    rng = np.random.default_rng(3)
    key = rng.integers(0, n_keys, 5000).astype(np.int64)
    stamps = rng.integers(low, high, 5000).astype(np.int64)
    stamps[::7] = stamps[0]
    assert np.array_equal(key_then_time(key, stamps), np.lexsort((stamps, key)))
    in_order = np.sort(stamps)  # a file in time order
    assert np.array_equal(key_then_time(key, in_order), np.lexsort((in_order, key)))
    assert len(key_then_time(key[:0], stamps[:0])) == 0


# --------------------------------------------------------------------------- returns


def test_returns_take_back_the_latest_purchases_of_the_pair() -> None:
    table = event_table(
        [
            ("ann", "mug", 100, "purchase", 1.0, "o1"),
            ("ann", "mug", 200, "purchase", 2.0, "o2"),
            ("ann", "tea", 150, "purchase", 1.0, "o1"),
            ("bob", "mug", 120, "purchase", 3.0, "o3"),
            ("ann", "mug", 300, "return", 1.0, "r1"),  # one of the two of o2
            ("bob", "mug", 400, "return", 5.0, "r2"),  # more than bought: all of it
            ("bob", "tea", 410, "not_interested", 1.0, ""),
            (None, "tea", 420, "return", 1.0, ""),  # a guest's: nothing to take back
        ]
    )
    net, cancelled = net_of_returns(table)
    assert cancelled == 4
    rows = list(
        zip(
            net["user_id"].to_pylist(),
            net["item_id"].to_pylist(),
            net["timestamp"].to_pylist(),
            net["quantity"].to_pylist(),
            strict=True,
        )
    )
    assert rows == [
        ("ann", "mug", 100, 1.0),
        ("ann", "mug", 200, 1.0),
        ("ann", "tea", 150, 1.0),
    ]
    assert net.schema == table.schema


def test_a_whole_return_leaves_no_signal_for_the_pair() -> None:
    rows = [("ann", "mug", 100, "purchase", 2.0, "o1"), ("ann", "tea", 100, "purchase", 1.0, "o1")]
    bought = event_table(rows)
    returned = event_table([*rows, ("ann", "mug", 300, "return", 2.0, "r1")])
    assert net_of_returns(bought) == (bought, 0)  # nothing to do: the same table
    inter = build_interactions(net_of_returns(returned)[0], WeightingSettings())
    assert list(inter.item_ids) == ["tea"]
    assert inter.weights.nnz == 1 and inter.purchases.nnz == 1
