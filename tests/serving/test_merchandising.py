"""serving.rules.merchandise: boost, bury, pin and the diversity cap on a ranked list
(pure NumPy, no server), and what an answer says about the rules that touched it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsvc.ranking import Reason
from recsvc.rules import Rule, RuleAction
from recsvc.serving.rules import CompiledRule, Merchandised, merchandise

N = 12


def ranked(n: int = 10) -> tuple[Any, Any, Any]:
    """Items 0..n-1 ranked in that order, scores 1.0, 0.9, ... (all CF)."""
    items = np.arange(n, dtype=np.int32)
    scores = np.linspace(1.0, 0.1, n).astype(np.float32)
    return items, scores, np.full(n, int(Reason.CF), np.int8)


def listed(rule_id: str, action: RuleAction, items: list[int], **kw: Any) -> CompiledRule:
    rule = Rule(rule_id, action, item_ids=tuple(f"i{i}" for i in items), **kw)
    return CompiledRule(rule, np.array(items, np.int32), None)


def matching(rule_id: str, action: RuleAction, items: list[int], **kw: Any) -> CompiledRule:
    rule = Rule(rule_id, action, categories=("c",), **kw)
    mask = np.zeros(N, bool)
    mask[items] = True
    return CompiledRule(rule, None, mask)


def shape(
    rules: list[CompiledRule],
    k: int = 5,
    *,
    allowed: Any = None,
    category: Any = None,
    cap: int = 0,
    n: int = 10,
) -> Merchandised:
    items, scores, reasons = ranked(n)
    popular = np.array([11, 10, *range(10)], np.int32)  # 11 and 10 were never ranked
    return merchandise(
        items, scores, reasons, k, rules,
        allowed=allowed, popular=popular, category=category, cap=cap,
    )  # fmt: skip


def test_no_rules_keeps_the_ranking_cut_to_k() -> None:
    out = shape([])
    assert out.items.tolist() == [0, 1, 2, 3, 4]
    assert out.rule_ids == [()] * 5 and out.applied == ()


def test_a_boost_lifts_its_items_by_their_weight_and_says_so() -> None:
    # item 7 scores 0.3; ×4 = 1.2 puts it first; item 6 (0.4) ×1.5 = 0.6 stays below 4
    out = shape([listed("lift", RuleAction.BOOST, [7], weight=4.0),
                 listed("nudge", RuleAction.BOOST, [6], weight=1.5)])  # fmt: skip
    assert out.items.tolist() == [7, 0, 1, 2, 3]
    assert out.scores[0] == pytest.approx(1.2)
    assert out.rule_ids[0] == ("lift",)
    assert out.applied == ("lift",)  # "nudge" moved item 6, but not into the answer


def test_boosts_compound_and_bury_sinks() -> None:
    out = shape([listed("b1", RuleAction.BOOST, [4], weight=2.0),
                 matching("b2", RuleAction.BOOST, [4], weight=2.0),
                 listed("down", RuleAction.BURY, [0], weight=0.1)])  # fmt: skip
    # 4: 0.6 × 4 = 2.4 first; 0: 1.0 × 0.1 = 0.1 out of the top 5
    assert out.items.tolist() == [4, 1, 2, 3, 5]
    assert out.rule_ids[0] == ("b1", "b2")
    assert set(out.applied) == {"b1", "b2", "down"}  # the bury pushed item 0 out


def test_a_list_pin_places_its_items_in_order_from_its_position() -> None:
    out = shape([listed("hero", RuleAction.PIN, [8, 9], position=2)])
    assert out.items.tolist() == [0, 8, 9, 1, 2]
    assert out.rule_ids[1:3] == [("hero",), ("hero",)]
    assert out.reasons[1] == Reason.CF  # ranked anyway: keeps its reason and score
    assert out.scores[1] == pytest.approx(0.2)


def test_a_pin_brings_in_an_unranked_item_but_never_a_hidden_one() -> None:
    allowed = np.ones(N, bool)
    allowed[10] = False
    out = shape([listed("p", RuleAction.PIN, [10, 11], position=1)], allowed=allowed)
    assert out.items.tolist() == [11, 0, 1, 2, 3]  # 10 is filtered: 11 takes position 1
    assert out.reasons[0] == Reason.PINNED and out.scores[0] == 0.0


def test_a_predicate_pin_takes_its_best_ranked_match_else_its_most_popular() -> None:
    out = shape([matching("best", RuleAction.PIN, [6, 9], position=1)])
    assert out.items.tolist()[0] == 6
    out = shape([matching("pop", RuleAction.PIN, [10, 11], position=3)])
    assert out.items.tolist() == [0, 1, 11, 2, 3]


def test_a_predicate_pin_past_its_first_popular_matches_still_finds_one() -> None:
    # a predicate's first 256 popular matches are kept per popular order; when every
    # one is hidden the pin looks through the rest, as it did before the cache
    n = 1000
    rule = Rule("deep", RuleAction.PIN, categories=("c",), position=1)
    mask = np.zeros(n, bool)
    mask[::2] = True  # the even items
    pin = CompiledRule(rule, None, mask)
    popular = np.arange(n, dtype=np.int32)
    allowed = np.ones(n, bool)
    allowed[:600] = False  # the first 300 matches are hidden
    items, scores, reasons = ranked(5)
    out = merchandise(
        items + 600, scores, reasons, 3, [pin],
        allowed=allowed, popular=popular, category=None, cap=0,
    )  # fmt: skip
    assert out.items.tolist() == [600, 601, 602]  # its best ranked match
    odd = np.arange(601, 611, 2, dtype=np.int32)  # ranked: odd items only
    out = merchandise(
        odd, scores, reasons, 3, [pin],
        allowed=allowed, popular=popular, category=None, cap=0,
    )  # fmt: skip
    assert out.items.tolist() == [600, 601, 603]  # the first allowed match, popular order
    assert pin.popular_matches(popular) is pin.popular_matches(popular)
    assert len(pin.popular_matches(popular)) == 256


def test_pins_at_the_same_position_take_the_next_free_one() -> None:
    out = shape([listed("a", RuleAction.PIN, [9], position=1),
                 listed("b", RuleAction.PIN, [8], position=1)])  # fmt: skip
    assert out.items.tolist() == [9, 8, 0, 1, 2]


def test_a_pin_past_the_answer_is_left_out_and_a_short_list_closes_the_gap() -> None:
    out = shape([listed("far", RuleAction.PIN, [9], position=8)])
    assert out.items.tolist() == [0, 1, 2, 3, 4] and out.applied == ()
    out = shape([listed("far", RuleAction.PIN, [9], position=8)], k=8, n=4)
    assert out.items.tolist() == [0, 1, 2, 3, 9]


def test_the_cap_holds_and_pinned_items_count_but_stay() -> None:
    category = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 0, -1, -1], np.int32)
    out = shape([], k=6, category=category, cap=2)
    assert out.items.tolist() == [0, 1, 3, 4, 6, 7]
    # item 9 (category 0) pinned first: category 0 keeps one more ranked item only
    out = shape([listed("p", RuleAction.PIN, [9], position=1)], k=6, category=category, cap=2)
    assert out.items.tolist() == [9, 0, 3, 4, 6, 7]
    counts = np.bincount(category[out.items])
    assert counts.max() <= 2
    # items without a category are never capped
    none = np.full(N, -1, np.int32)
    assert len(shape([], k=6, category=none, cap=1).items) == 6
