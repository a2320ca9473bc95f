"""Bought together: counting the trained baskets, storing the counts, ranking a cart."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.cobuy import BoughtTogether, CoPurchases, count_co_purchases

from factories import event_table

ITEMS = np.array(["a", "b", "c", "d", "e"])


def _baskets(*baskets: tuple[str, int, list[str]]) -> object:
    rows = []
    for basket, t, items in baskets:
        for item in items:
            rows.append(("u1", item, t, "purchase", 1.0, basket))
    # a view never counts, whatever its basket says
    rows.append(("u1", "e", 0, "view", 1.0, "b1"))
    return event_table(rows)


def test_pairs_are_counted_once_per_basket_and_weak_ones_dropped() -> None:
    table = _baskets(
        ("b1", 1, ["a", "b", "b", "c"]),  # b twice on one basket: once
        ("b2", 2, ["a", "b"]),
        ("b3", 3, ["a", "c", "d"]),
        ("b4", 4, ["d"]),  # one item: pairs nothing
    )
    co = count_co_purchases(table, ITEMS, min_support=2)
    assert co.n_baskets == 3
    assert co.baskets.tolist() == [3.0, 2.0, 2.0, 1.0, 0.0]  # d's single basket uncounted
    dense = co.partners.toarray()
    assert dense[0, 1] == 2 and dense[0, 2] == 2 and dense[1, 0] == 2
    assert dense[0, 3] == 0 and dense[1, 2] == 0  # met once: below min_support
    assert np.all(np.diag(dense) == 0)


def test_the_strongest_partners_are_kept_and_big_baskets_left_out() -> None:
    table = _baskets(
        ("b1", 1, ["a", "b"]),
        ("b2", 2, ["a", "b"]),
        ("b3", 3, ["a", "c"]),
        ("b4", 4, ["a", "c"]),
        ("b5", 5, ["a", "c"]),
        ("big", 6, ["a", "b", "c", "d", "e"]),
    )
    co = count_co_purchases(table, ITEMS, max_partners=1, min_support=2, max_basket=4)
    assert co.n_baskets == 5  # the five-item basket is a bulk order here
    # c is a's strongest partner (3 baskets of a's 5 and c's 3: cosine 0.77 > 0.63)
    assert co.partners[0].indices.tolist() == [2]
    # past max_pairs the oldest baskets go first: only b4, b5 and big fit 4 + 4 + 25
    newest = count_co_purchases(table, ITEMS, min_support=1, max_pairs=33, max_basket=5)
    assert newest.n_baskets == 3
    assert newest.partners.toarray()[0, 1] == 1  # only the big basket pairs a and b


def test_counts_round_trip_and_bad_arrays_are_refused() -> None:
    table = _baskets(("b1", 1, ["a", "b"]), ("b2", 2, ["a", "b"]))
    co = count_co_purchases(table, ITEMS)
    again = CoPurchases.from_arrays(co.to_arrays())
    assert (again.partners != co.partners).nnz == 0
    assert again.baskets.tolist() == co.baskets.tolist() and again.n_baskets == 2
    bad = co.to_arrays()
    bad["indices"] = bad["indices"] + 10
    with pytest.raises(ValueError, match="out of range"):
        CoPurchases.from_arrays(bad)
    short = co.to_arrays()
    short["indptr"] = short["indptr"][:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        CoPurchases.from_arrays(short)


def test_a_cart_ranks_partners_by_summed_cosine_with_live_counts_added() -> None:
    table = _baskets(
        ("b1", 1, ["a", "b"]),
        ("b2", 2, ["a", "b"]),
        ("b3", 3, ["c", "d"]),
        ("b4", 4, ["c", "d"]),
        ("b5", 5, ["a", "d"]),
        ("b6", 6, ["a", "d"]),
    )
    bt = BoughtTogether(count_co_purchases(table, ITEMS))
    items, scores = bt.score(np.array([0], np.int32))  # a: b and d, 2 baskets each
    assert sorted(items.tolist()) == [1, 3]
    # b's 2 baskets are all with a, d's 4 are half with c: b first
    assert items.tolist() == [1, 3] and scores[0] == pytest.approx(2 / np.sqrt(4 * 2))
    cart, cart_scores = bt.score(np.array([0, 2], np.int32))  # a and c: d goes with both
    assert cart.tolist()[0] == 3 and 0 not in cart and 2 not in cart
    assert cart_scores[0] == pytest.approx(2 / np.sqrt(4 * 4) + 2 / np.sqrt(2 * 4))
    # live: e bought with a five times since training
    live, live_scores = bt.score(np.array([0], np.int32), {0: {4: 5.0}})
    assert live.tolist()[0] == 4 and live_scores[0] == pytest.approx(5 / np.sqrt(4 * 1))
