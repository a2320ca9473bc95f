"""serving.rules.merchandise: boost, bury, pin and the diversity cap on a ranked list
(no server), and what an answer says about the rules that touched it."""

from __future__ import annotations

from itertools import chain
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from recsvc.ranking import Reason
from recsvc.rules import Rule, RuleAction
from recsvc.serving.rules import (
    NO_RULES,
    ActiveRules,
    CompiledRule,
    LiveRules,
    Merchandised,
    Weighing,
    Weights,
    merchandise,
)
from recsvc.store.records import Change

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
    assert out.items == [0, 1, 2, 3, 4]
    assert out.rule_ids == [()] * 5 and out.applied == ()


def test_a_boost_lifts_its_items_by_their_weight_and_says_so() -> None:
    # item 7 scores 0.3; ×4 = 1.2 puts it first; item 6 (0.4) ×1.5 = 0.6 stays below 4
    out = shape([listed("lift", RuleAction.BOOST, [7], weight=4.0),
                 listed("nudge", RuleAction.BOOST, [6], weight=1.5)])  # fmt: skip
    assert out.items == [7, 0, 1, 2, 3]
    assert out.scores[0] == pytest.approx(1.2)
    assert out.rule_ids[0] == ("lift",)
    assert out.applied == ("lift",)  # "nudge" moved item 6, but not into the answer


def test_boosts_compound_and_bury_sinks() -> None:
    out = shape([listed("b1", RuleAction.BOOST, [4], weight=2.0),
                 matching("b2", RuleAction.BOOST, [4], weight=2.0),
                 listed("down", RuleAction.BURY, [0], weight=0.1)])  # fmt: skip
    # 4: 0.6 × 4 = 2.4 first; 0: 1.0 × 0.1 = 0.1 out of the top 5
    assert out.items == [4, 1, 2, 3, 5]
    assert out.rule_ids[0] == ("b1", "b2")
    assert set(out.applied) == {"b1", "b2", "down"}  # the bury pushed item 0 out


def test_a_list_pin_places_its_items_in_order_from_its_position() -> None:
    out = shape([listed("hero", RuleAction.PIN, [8, 9], position=2)])
    assert out.items == [0, 8, 9, 1, 2]
    assert out.rule_ids[1:3] == [("hero",), ("hero",)]
    assert out.reasons[1] == Reason.CF  # ranked anyway: keeps its reason and score
    assert out.scores[1] == pytest.approx(0.2)


def test_a_list_pin_naming_an_item_twice_places_it_once() -> None:
    # the answer held the item twice, at both places
    out = shape([listed("p", RuleAction.PIN, [8, 8, 11, 9, 11], position=1)])
    assert out.items == [8, 11, 9, 0, 1]
    assert out.rule_ids[:3] == [("p",)] * 3


def test_placing_refuses_what_it_cannot_read() -> None:
    # the compiled placing reads without bounds checks: items, masks and categories
    # shorter than the rules' items are refused before it runs
    items, scores, reasons = ranked()
    popular = np.arange(N, dtype=np.int32)
    pins = ActiveRules([listed("p", RuleAction.PIN, [11], position=1)], N)
    kw: dict[str, Any] = {"popular": popular, "category": None, "cap": 0}
    predicate = ActiveRules([matching("q", RuleAction.PIN, [11], position=1)], N)
    with pytest.raises(IndexError, match="past the 12 items"):
        merchandise(items + 5, scores, reasons, 5, predicate, allowed=None, **kw)
    capped = {"popular": popular, "category": np.zeros(N, np.int32), "cap": 1}
    with pytest.raises(IndexError, match="past the 12 items"):
        merchandise(items + 5, scores, reasons, 5, NO_RULES, allowed=None, **capped)
    with pytest.raises(IndexError, match="allowed mask"):
        merchandise(items, scores, reasons, 5, pins, allowed=np.ones(N - 1, bool), **kw)
    with pytest.raises(IndexError, match="categories"):
        merchandise(
            items, scores, reasons, 5, pins,
            allowed=None, popular=popular, category=np.zeros(N - 1, np.int32), cap=1,
        )  # fmt: skip
    out = merchandise(items, scores, reasons, 5, pins, allowed=np.ones(N, bool), **kw)
    assert out.items == [11, 0, 1, 2, 3]


def test_a_pin_brings_in_an_unranked_item_but_never_a_hidden_one() -> None:
    allowed = np.ones(N, bool)
    allowed[10] = False
    out = shape([listed("p", RuleAction.PIN, [10, 11], position=1)], allowed=allowed)
    assert out.items == [11, 0, 1, 2, 3]  # 10 is filtered: 11 takes position 1
    assert out.reasons[0] == Reason.PINNED and out.scores[0] == 0.0


def test_a_predicate_pin_takes_its_best_ranked_match_else_its_most_popular() -> None:
    out = shape([matching("best", RuleAction.PIN, [6, 9], position=1)])
    assert out.items[0] == 6
    out = shape([matching("pop", RuleAction.PIN, [10, 11], position=3)])
    assert out.items == [0, 1, 11, 2, 3]


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
    assert out.items == [600, 601, 602]  # its best ranked match
    odd = np.arange(601, 611, 2, dtype=np.int32)  # ranked: odd items only
    out = merchandise(
        odd, scores, reasons, 3, [pin],
        allowed=allowed, popular=popular, category=None, cap=0,
    )  # fmt: skip
    assert out.items == [600, 601, 603]  # the first allowed match, popular order
    assert pin.popular_matches(popular) is pin.popular_matches(popular)
    assert len(pin.popular_matches(popular)) == 256


def test_an_answer_keeps_its_items_after_the_next_answer_of_its_size() -> None:
    # the pins' pass writes into room kept per size and thread: an answer must not
    # share it with the next one
    first = shape([listed("p", RuleAction.PIN, [9], position=1)])
    kept = (list(first.items), list(first.scores), list(first.reasons), list(first.rule_ids))
    second = shape([listed("q", RuleAction.PIN, [8, 11], position=2)])
    assert second.items == [0, 8, 11, 1, 2]
    assert (first.items, first.scores, first.reasons, first.rule_ids) == kept
    assert kept[0] == [9, 0, 1, 2, 3]


def test_pins_at_the_same_position_take_the_next_free_one() -> None:
    out = shape([listed("a", RuleAction.PIN, [9], position=1),
                 listed("b", RuleAction.PIN, [8], position=1)])  # fmt: skip
    assert out.items == [9, 8, 0, 1, 2]


def test_a_pin_past_the_answer_is_left_out_and_a_short_list_closes_the_gap() -> None:
    out = shape([listed("far", RuleAction.PIN, [9], position=8)])
    assert out.items == [0, 1, 2, 3, 4] and out.applied == ()
    out = shape([listed("far", RuleAction.PIN, [9], position=8)], k=8, n=4)
    assert out.items == [0, 1, 2, 3, 9]


def test_the_cap_holds_and_pinned_items_count_but_stay() -> None:
    category = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 0, -1, -1], np.int32)
    out = shape([], k=6, category=category, cap=2)
    assert out.items == [0, 1, 3, 4, 6, 7]
    # item 9 (category 0) pinned first: category 0 keeps one more ranked item only
    out = shape([listed("p", RuleAction.PIN, [9], position=1)], k=6, category=category, cap=2)
    assert out.items == [9, 0, 3, 4, 6, 7]
    counts = np.bincount(category[out.items])
    assert counts.max() <= 2
    # items without a category are never capped
    none = np.full(N, -1, np.int32)
    assert len(shape([], k=6, category=none, cap=1).items) == 6


# --- the folded boosts and buries against the rules applied one by one ---------------


def one_by_one(
    items: Any,
    scores: Any,
    reasons: Any,
    k: int,
    rules: list[CompiledRule],
    *,
    allowed: Any,
    popular: Any,
    category: Any,
    cap: int,
) -> Merchandised:
    """merchandise as it was before the boosts and buries were folded into
    :class:`Weights`: every rule's hits over the candidates, one rule at a time."""
    touched: dict[int, list[str]] = {}
    applied: dict[str, None] = {}
    pin_rules = [c for c in rules if c.rule.action is RuleAction.PIN]
    weighed = [c for c in rules if c.rule.action is not RuleAction.PIN]
    if weighed:
        scores = scores.astype(np.float32, copy=True)
        before = items[:k]
        for c in weighed:
            hit = c.mask[items] if c.mask is not None else np.isin(items, c.positions)
            if not hit.any():
                continue
            scores[hit] *= np.float32(c.rule.weight)
            for pos in items[hit].tolist():
                touched.setdefault(pos, []).append(c.rule.rule_id)
            if c.rule.action is RuleAction.BURY and hit[: len(before)].any():
                applied.setdefault(c.rule.rule_id)
        order = np.argsort(-scores, kind="stable")
        items, scores, reasons = items[order], scores[order], reasons[order]
    if not pin_rules and not (cap > 0 and category is not None):
        top = items[:k]
        rule_ids = [tuple(touched.get(pos, ())) for pos in top.tolist()]
        for ids in rule_ids:
            for rule_id in ids:
                applied.setdefault(rule_id)
        return Merchandised(
            top.tolist(), scores[:k].tolist(), reasons[:k].tolist(), rule_ids, tuple(applied)
        )
    index = {pos: i for i, pos in enumerate(items.tolist())}
    pins: list[tuple[int, int, str]] = []
    taken: set[int] = set()
    for c in sorted(pin_rules, key=lambda c: (c.rule.position, c.rule.rule_id)):
        slot = c.rule.position - 1
        for pos in pinned_one_by_one(c, items, allowed, popular, taken):
            pins.append((slot, pos, c.rule.rule_id))
            taken.add(pos)
            slot += 1
    rest = [i for i, pos in enumerate(items.tolist()) if pos not in taken]
    if cap > 0 and category is not None:
        counts: dict[int, int] = {}
        for _, pos, _ in pins:
            code = int(category[pos])
            if code >= 0:
                counts[code] = counts.get(code, 0) + 1
        kept = []
        for i in rest:
            code = int(category[items[i]])
            if code >= 0:
                if counts.get(code, 0) >= cap:
                    continue
                counts[code] = counts.get(code, 0) + 1
            kept.append(i)
        rest = kept
    slots: dict[int, tuple[int, str]] = {}
    for wanted, pos, rule_id in pins:
        free = wanted
        while free in slots:
            free += 1
        slots[free] = (pos, rule_id)
    out_items: list[int] = []
    out_scores: list[float] = []
    out_reasons: list[int] = []
    out_rules: list[tuple[str, ...]] = []
    fill = iter(rest)
    n = min(k, len(rest) + len(slots))
    slot = 0
    while len(out_items) < n:
        if slot in slots:
            pos, rule_id = slots.pop(slot)
            at = index.get(pos)
            out_items.append(pos)
            out_scores.append(float(scores[at]) if at is not None else 0.0)
            out_reasons.append(int(reasons[at]) if at is not None else int(Reason.PINNED))
            out_rules.append((*touched.get(pos, ()), rule_id))
        else:
            nxt = next(fill, None)
            if nxt is None:
                slot = min(slots) if slots else slot
                continue
            pos = int(items[nxt])
            out_items.append(pos)
            out_scores.append(float(scores[nxt]))
            out_reasons.append(int(reasons[nxt]))
            out_rules.append(tuple(touched.get(pos, ())))
        slot += 1
    for ids in out_rules:
        for rule_id in ids:
            applied.setdefault(rule_id)
    return Merchandised(
        out_items,
        np.array(out_scores, dtype=np.float32).tolist(),  # float32 values, as served
        out_reasons,
        out_rules,
        tuple(applied),
    )


def pinned_one_by_one(
    c: CompiledRule, ranked: Any, allowed: Any, popular: Any, taken: set[int]
) -> list[int]:
    if c.positions is not None:
        return [
            int(pos)
            for pos in dict.fromkeys(c.positions.tolist())  # an item named twice: once
            if pos not in taken and (allowed is None or allowed[pos])
        ]
    assert c.mask is not None
    for pos in ranked[c.mask[ranked]].tolist():
        if pos not in taken:
            return [int(pos)]
    everything = popular[c.mask[popular]]
    if allowed is not None:
        everything = everything[allowed[everything]]
    return next(([int(p)] for p in everything.tolist() if p not in taken), [])


WEIGHTS = (1.1, 1.15, 1.3, 1.5, 2.0, 3.7, 0.3, 0.5, 0.7, 0.93)
"""Weights whose products round differently than the scores multiplied one at a time."""


def random_rules(rng: np.random.Generator, n: int, count: int) -> list[CompiledRule]:
    """``count`` rules over ``n`` items: boosts, buries and pins, by item list (a few
    items, duplicates and all) or by mask (dense or sparse)."""
    rules = []
    for r in range(count):
        # an index, not the members: NumPy would hand back plain strings, never a member
        action = list(RuleAction)[rng.choice(3, p=[0.5, 0.3, 0.2])]
        kw: dict[str, Any] = {}
        if action is RuleAction.PIN:
            kw["position"] = int(rng.integers(1, 8))
        else:
            weights = [w for w in WEIGHTS if (w > 1) == (action is RuleAction.BOOST)]
            kw["weight"] = float(rng.choice(weights))
        rule_id = f"r{r:02d}"
        if rng.random() < 0.5:
            chosen = rng.integers(0, n, int(rng.integers(1, 25))).astype(np.int32)
            rule = Rule(rule_id, action, item_ids=tuple(f"i{i}" for i in chosen), **kw)
            rules.append(CompiledRule(rule, chosen, None))
        else:
            mask = rng.random(n) < rng.choice([0.02, 0.2, 0.6])
            rules.append(CompiledRule(Rule(rule_id, action, categories=("c",), **kw), None, mask))
    return rules


def same(a: Merchandised, b: Merchandised) -> None:
    assert a.items == b.items
    # plain Python numbers (what the answer is built from), the scores float32 values
    assert all(type(x) is int for x in (*a.items, *a.reasons))
    assert all(type(x) is float and x == np.float32(x) for x in a.scores)
    assert a.scores == b.scores  # to the bit: both are float32 values
    assert a.reasons == b.reasons
    assert a.rule_ids == b.rule_ids
    assert a.applied == b.applied


def test_the_folded_rules_answer_as_the_rules_applied_one_by_one() -> None:
    rng = np.random.default_rng(15)
    n = 300
    rounded = 0  # answers where the weights' product would have scored differently
    wide = 0  # answers placed with more groups than the buries' bit pattern holds (63)
    for case in range(400):
        rules = random_rules(rng, n, int(rng.integers(0, 12)))
        m = int(rng.integers(0, 70))  # none ranked: only the pins
        items = rng.choice(n, m, replace=False).astype(np.int32)
        scores = np.sort(rng.random(m).astype(np.float32))[::-1].copy()
        if case % 4 == 0:
            scores = np.round(scores, 1)  # ties: the stable sort keeps the ranking's order
        reasons = rng.integers(0, 4, m).astype(np.int8)
        allowed = rng.random(n) < 0.8
        allowed[items] = True  # every ranked item may be shown
        popular = rng.permutation(n).astype(np.int32)
        category = rng.integers(-1, 6, n).astype(np.int32)
        cap = int(rng.choice([0, 0, 1, 2, 3]))
        k = int(rng.integers(1, 16))
        kw: dict[str, Any] = {"popular": popular, "category": category, "cap": cap}
        want = one_by_one(items, scores, reasons, k, rules, allowed=allowed, **kw)
        # the engine's way: prepared once for the model's items, the mask asked for
        active = ActiveRules(rules, n)

        same(
            merchandise(items, scores, reasons, k, active, allowed=lambda a=allowed: a, **kw), want
        )
        same(merchandise(items, scores, reasons, k, active, allowed=allowed, **kw), want)
        # a plain list, prepared per call
        same(merchandise(items, scores, reasons, k, rules, allowed=allowed, **kw), want)
        weights = active.weights
        if weights is not None:
            # the engine's way for Recommend: the ranking weighs its candidates and
            # ranks them by the weighted score, merchandise places pins and the cap
            weighing = Weighing(weights)
            weighed_scores = scores.copy()
            weighing.weigh(items, weighed_scores)
            order = np.argsort(-weighed_scores, kind="stable")
            got = merchandise(
                items[order], weighed_scores[order], reasons[order], k, active,
                allowed=allowed, weighed=weighing, **kw,
            )  # fmt: skip
            wide += len(weights.factors) > 63 and bool(active.pins or cap)
            assert got.items == want.items
            assert got.scores == want.scores
            assert got.reasons == want.reasons
            assert got.rule_ids == want.rule_ids
            # a bury counts when an item it picked scored, before the weights, at least
            # the answer's last ranked score (it pushed that item down or out)
            last = weighed_scores[order][k - 1] if m >= k else -np.inf
            buries = {
                c.rule.rule_id for c in active.weighed
                if c.rule.action is RuleAction.BURY
                and any(
                    (c.mask[i] if c.mask is not None else i in c.positions.tolist())
                    for i in items[scores >= last].tolist()
                )
            }  # fmt: skip
            touched = set(chain.from_iterable(got.rule_ids))
            assert set(got.applied) == touched | buries
            groups = weights.group[items]
            product = scores * np.prod(weights.factors[groups], axis=1, dtype=np.float32)
            one_at_a_time = scores.copy()
            weights.apply(items, one_at_a_time)
            rounded += product.tobytes() != one_at_a_time.tobytes()
    assert rounded > 20  # the bit-for-bit comparison above has something to catch
    assert wide > 0  # and the buries are named both ways


def test_weights_hold_each_items_rules_in_rule_order() -> None:
    rng = np.random.default_rng(7)
    n = 500
    for _ in range(30):
        rules = [
            c for c in random_rules(rng, n, int(rng.integers(1, 14)))
            if c.rule.action is not RuleAction.PIN
        ]  # fmt: skip
        weights = Weights(rules, n)
        for item in range(n):
            picked = [
                c for c in rules
                if (c.mask[item] if c.mask is not None else item in c.positions.tolist())
            ]  # fmt: skip
            g = int(weights.group[item])
            assert weights.rule_ids[g] == tuple(c.rule.rule_id for c in picked)
            row = weights.factors[g]
            assert row[: len(picked)].tolist() == [np.float32(c.rule.weight) for c in picked]
            assert (row[len(picked) :] == 1).all()
        assert len(weights.rule_ids) == len(set(weights.rule_ids))  # no group twice, none empty
        assert len(weights.rule_ids) == len(np.unique(weights.group))
        assert weights.group.dtype.itemsize == (1 if len(weights.rule_ids) <= 256 else 2)


def test_the_mask_is_not_computed_when_the_pins_find_their_items_ranked() -> None:
    asked: list[int] = []

    def allowed() -> Any:
        asked.append(1)
        return np.ones(N, bool)

    items, scores, reasons = ranked()
    popular = np.arange(N, dtype=np.int32)
    kw: dict[str, Any] = {"popular": popular, "category": None, "cap": 0}
    rules = [listed("p", RuleAction.PIN, [4], position=1),
             matching("q", RuleAction.PIN, [6, 11], position=2)]  # fmt: skip
    out = merchandise(items, scores, reasons, 5, rules, allowed=allowed, **kw)
    assert out.items == [4, 6, 0, 1, 2] and asked == []
    rules = [listed("p", RuleAction.PIN, [11, 3, 10], position=1)]  # 11, 10 not ranked
    out = merchandise(items, scores, reasons, 5, rules, allowed=allowed, **kw)
    assert out.items == [11, 3, 10, 0, 1] and asked == [1]  # once


def test_live_rules_fold_each_active_set_once_and_again_after_a_change() -> None:
    n = 40
    ids = [f"i{i}" for i in range(n)]
    model: Any = SimpleNamespace(
        version="v1",
        n_items=n,
        item_position={x: i for i, x in enumerate(ids)},
        category_position={"c0": 0, "c1": 1},
        artifact=SimpleNamespace(item_category=np.arange(n, dtype=np.int32) % 2),
    )
    live = LiveRules(cast(Any, None))
    seq = 0

    def write(*rules: Rule) -> None:
        nonlocal seq
        seq += 1
        assert live.apply([Change(seq, f"{seq}-0", "set", rules)])

    assert live.active(model, None, "home", 0.0) is NO_RULES
    write(
        Rule("lift", RuleAction.BOOST, categories=("c1",), weight=2.0),
        Rule("home", RuleAction.BURY, item_ids=("i3",), weight=0.5, placements=("home",)),
        Rule("brief", RuleAction.BOOST, item_ids=("i4",), weight=3.0, ends_at=100.0),
    )
    home = live.active(model, None, "home", 0.0)
    assert [c.rule.rule_id for c in home] == ["brief", "home", "lift"]
    assert live.active(model, None, "home", 50.0) is home  # the same set: folded once
    weights = home.weights
    assert weights is not None and home.weights is weights
    assert weights.rule_ids[int(weights.group[3])] == ("home", "lift")
    pdp = live.active(model, None, "pdp", 0.0)
    assert [c.rule.rule_id for c in pdp] == ["brief", "lift"]
    later = live.active(model, None, "home", 100.0)  # "brief" ended
    assert [c.rule.rule_id for c in later] == ["home", "lift"]
    assert later.weights is not None and later.weights.rule_ids[int(later.weights.group[4])] == ()
    assert live.active(model, None, "home", 0.0) is home
    # a change of the rules: compiled and folded again
    write(Rule("lift", RuleAction.BOOST, categories=("c0",), weight=2.0))
    again = live.active(model, None, "home", 0.0)
    assert again is not home and again.weights is not None
    assert again.weights.rule_ids[int(again.weights.group[3])] == ("home",)
    assert again.weights.rule_ids[int(again.weights.group[2])] == ("lift",)
    # so does another model; and each keeps its own (an experiment's variants alternate)
    v2 = SimpleNamespace(**{**vars(model), "version": "v2"})
    other = live.active(v2, None, "home", 0.0)
    assert other is not again and [c.rule.rule_id for c in other] == ["brief", "home", "lift"]
    assert live.active(model, None, "home", 0.0) is again
    assert live.active(v2, None, "home", 0.0) is other
    # a window's start: what was kept holds until then, and not after (nor before)
    write(Rule("soon", RuleAction.BOOST, item_ids=("i5",), weight=2.0, starts_at=10.0))

    def applying(now: float) -> list[str]:
        return [c.rule.rule_id for c in live.active(model, None, "pdp", now)]

    assert applying(9.5) == applying(9.999) == ["brief", "lift"]
    assert applying(10.0) == ["brief", "lift", "soon"]
    assert applying(9.0) == ["brief", "lift"]  # the clock went back
    assert applying(100.0) == ["lift", "soon"]
    # at most 16 sets are kept
    write(*(Rule(f"p{i}", RuleAction.PIN, item_ids=("i1",), position=1, placements=(f"s{i}",))
            for i in range(20)))  # fmt: skip
    first = live.active(model, None, "s0", 0.0)
    for i in range(1, 20):
        live.active(model, None, f"s{i}", 0.0)
    assert len(live._models["v1"].active) == 16
    assert live.active(model, None, "s0", 0.0) is not first
    assert live.active(model, None, "s19", 0.0) is live.active(model, None, "s19", 0.0)


def test_weighing_refuses_items_past_the_rules_items() -> None:
    # the compiled pass reads without bounds checks: an item the rules were not
    # compiled for must fail as the NumPy version does, not read past the groups
    rng = np.random.default_rng(8)
    rules = [c for c in random_rules(rng, 50, 8) if c.rule.action is not RuleAction.PIN]
    weights = Weights(rules, 50)
    weighing = Weighing(weights)
    with pytest.raises(IndexError):
        weighing.weigh(np.array([3, 7, 50], dtype=np.int32), np.ones(3, dtype=np.float32))
    items = np.array([3, 7, 49], dtype=np.int32)  # in range: weighed as the rules say
    scores = np.ones(3, dtype=np.float32)
    want = scores.copy()
    weights.apply(items, want)
    weighing.weigh(items, scores)
    assert scores.tobytes() == want.tobytes()


def test_active_rules_tally_the_applied_rules_by_action() -> None:
    rules = ActiveRules(
        [listed("b", RuleAction.BOOST, [1], weight=2.0),
         listed("d", RuleAction.BURY, [2], weight=0.5),
         listed("e", RuleAction.BURY, [3], weight=0.5),
         listed("p", RuleAction.PIN, [4], position=1)],
        N,
    )  # fmt: skip
    assert dict(rules.tally(("d", "p", "e"))) == {"bury": 2, "pin": 1}
    assert rules.tally(("d", "p", "e")) is rules.tally(("d", "p", "e"))  # kept
    assert dict(rules.tally(("b",))) == {"boost": 1}


def test_the_buries_an_answer_names_are_its_own_when_answers_share_the_rules() -> None:
    """Answers of one rule set share its kept patterns of buried groups: each still
    names exactly the buries of the groups its candidates reached the threshold in."""
    rng = np.random.default_rng(16)
    n = 300
    checked = 0
    for _ in range(20):
        active = ActiveRules(random_rules(rng, n, 10), n)
        weights = active.weights
        if weights is None:
            continue
        for _ in range(50):
            items = rng.choice(n, int(rng.integers(1, 60)), replace=False).astype(np.int32)
            scores = rng.random(len(items)).astype(np.float32)
            weighing = Weighing(weights)
            weighing.weigh(items, scores.copy())
            threshold = float(rng.random())
            groups = weights.group[items[scores >= threshold]]
            assert weighing.buried(threshold) == weights.buried(groups.tolist())
            checked += 1
    assert checked > 500


def test_a_short_answer_names_no_bury_that_picked_none_of_its_candidates() -> None:
    """Fewer candidates than k: every candidate is in the answer (its last score is
    -inf), but a bury whose items none of them is did not touch it."""
    rules = [matching("sink", RuleAction.BURY, [11], weight=0.5),
             matching("lift", RuleAction.BOOST, [1], weight=2.0)]  # fmt: skip
    active = ActiveRules(rules, N)
    assert active.weights is not None
    weighing = Weighing(active.weights)
    items, scores, reasons = ranked(3)
    weighing.weigh(items, scores)
    out = merchandise(
        items, scores, reasons, 5, active,
        allowed=None, popular=np.arange(N, dtype=np.int32), category=None, cap=0,
        weighed=weighing,
    )  # fmt: skip
    assert out.items == [0, 1, 2] and out.applied == ("lift",)
    weighing.weigh(np.array([11], np.int32), np.array([0.05], np.float32))  # now it has one
    assert weighing.buried(-np.inf) == ["sink"]


@pytest.mark.parametrize("group_type", [np.uint16, np.int32])
def test_the_answer_is_the_same_whatever_type_holds_the_groups(group_type: type) -> None:
    # Weights.group takes the smallest type that holds the groups' numbers (uint8 for a
    # few dozen groups, then uint16, then int32): the pins' pass reads each item's
    # group in any of them for the answer's rule ids
    rng = np.random.default_rng(8)
    n = 300
    for _ in range(40):
        rules = random_rules(rng, n, 10)
        items = rng.choice(n, 40, replace=False).astype(np.int32)
        scores = np.sort(rng.random(40).astype(np.float32))[::-1].copy()
        reasons = np.zeros(40, np.int8)
        kw: dict[str, Any] = {
            "allowed": None, "popular": rng.permutation(n).astype(np.int32),
            "category": rng.integers(-1, 6, n).astype(np.int32), "cap": 2,
        }  # fmt: skip
        want = merchandise(items, scores, reasons, 12, ActiveRules(rules, n), **kw)
        wide = ActiveRules(rules, n)
        if wide.weights is not None:
            assert wide.weights.group.dtype == np.uint8
            wide.weights.group = wide.weights.group.astype(group_type)
        same(merchandise(items, scores, reasons, 12, wide, **kw), want)
