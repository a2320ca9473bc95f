"""Merchandising rules and the diversity cap, applied to a ranked list.

:class:`LiveRules` is this replica's copy of the shop's rules (:mod:`recsvc.rules`),
followed from the shared store like the live catalogue. For a request it yields the
rules that apply (placement, window) compiled against the served model: an item list
as model positions, a predicate as a mask over the items, from the live catalogue's
categories and attributes (recompiled when the rules, the model or the catalogue's
records change, never per request).

:func:`merchandise` then reshapes the ranking's candidates, in this order:

1. boost and bury multiply the scores of their items (every matching rule, so two
   boosts compound) and the candidates are re-sorted;
2. pins take their items out of the list and hold them for their positions: an
   item list's items that may be shown, from ``position`` on; a predicate's
   best-ranked match, or its most popular one that may be shown;
3. the diversity cap walks the rest best first and drops an item once its category
   holds ``cap`` items (pinned items count, and are never dropped);
4. the pinned items go to their positions (a later pin of the same position takes
   the next free one), the rest fill the gaps, and the list is cut to ``k``.

A rule never brings back an item the filters hide: pins are checked against the
request's ``allowed`` mask, and boosts only reorder candidates that passed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np
from numpy.typing import NDArray

from recsvc.errors import InvalidRequestError
from recsvc.model import Model
from recsvc.ranking import Reason
from recsvc.rules import Rule, RuleAction
from recsvc.store.rules import RuleStore

from .catalog import CatalogView
from .follow import Follower

__all__ = ["CompiledRule", "LiveRules", "Merchandised", "merchandise"]

log = logging.getLogger(__name__)

IntArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

_NO_IDS: Final[tuple[str, ...]] = ()
_POPULAR_PINS: Final = 256
"""A predicate pin's most popular matches kept ready (see CompiledRule.popular_matches)."""


@dataclass(frozen=True)
class CompiledRule:
    """A rule over one model's item positions."""

    rule: Rule
    positions: IntArray | None
    """An item list's known items, in the list's order (None for a predicate)."""
    mask: BoolArray | None
    """A predicate's matching items (None for an item list)."""
    _popular: tuple[IntArray, IntArray] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @cached_property
    def members(self) -> frozenset[int]:
        """An item list's positions as a set (a few hundred at most): membership of a
        few dozen candidates costs microseconds, ``np.isin`` tens of them."""
        return frozenset(self.positions.tolist()) if self.positions is not None else frozenset()

    def popular_matches(self, popular: IntArray) -> IntArray:
        """A predicate's matching items in ``popular`` order, the first
        :data:`_POPULAR_PINS` (what a pin places when no ranked item matches): computed
        once per popular order (live popularity replaces it at most once a second),
        not per request (a pass over every item: ~100 µs at 100k)."""
        cached = self._popular
        if cached is None or cached[0] is not popular:
            assert self.mask is not None
            cached = (popular, popular[self.mask[popular]][:_POPULAR_PINS])
            object.__setattr__(self, "_popular", cached)  # a cache, not state
        return cached[1]

    def hits(self, items: IntArray) -> BoolArray:
        """Which of ``items`` (positions) the rule picks."""
        if self.mask is not None:
            hit: BoolArray = self.mask[items]
            return hit
        members = self.members
        return np.fromiter((p in members for p in items.tolist()), dtype=bool, count=len(items))


def compile_rule(rule: Rule, model: Model, view: CatalogView | None) -> CompiledRule:
    """``rule`` over ``model``'s items; a predicate naming an attribute no item has
    (any more) matches nothing."""
    if rule.item_ids:
        known = [model.item_position[i] for i in rule.item_ids if i in model.item_position]
        return CompiledRule(rule, np.array(known, dtype=np.int32), None)
    mask: BoolArray = np.ones(model.n_items, dtype=bool)
    if rule.categories:
        if view is not None:
            mask &= view.categories(rule.categories)
        else:
            codes = [
                model.category_position[c] for c in rule.categories if c in model.category_position
            ]
            mask &= np.isin(model.artifact.item_category, np.array(codes, dtype=np.int32))
    if rule.attributes:
        if view is None:
            mask[:] = False
        else:
            try:
                mask &= view.matching(rule.attributes, f"rules[{rule.rule_id}].attributes")
            except InvalidRequestError as exc:
                log.warning("rule %r matches nothing now: %s", rule.rule_id, exc)
                mask[:] = False
    return CompiledRule(rule, None, mask)


class LiveRules(Follower[Rule]):
    """This replica's copy of the merchandising rules, followed from ``store``."""

    store: RuleStore

    def __init__(self, store: RuleStore) -> None:
        super().__init__(store)
        self._compiled: tuple[tuple[str, int, int], list[CompiledRule]] | None = None

    def rules(self) -> list[Rule]:
        """Every rule not deleted, by id."""
        return sorted((r for r in self.records.values() if not r.deleted), key=lambda r: r.rule_id)

    def live_count(self, now: float | None = None) -> int:
        """How many rules apply at ``now`` (in some placement)."""
        t = time.time() if now is None else now
        return sum(1 for r in self.records.values() if r.live(t))

    def active(
        self, model: Model, view: CatalogView | None, placement: str, now: float
    ) -> list[CompiledRule]:
        """The rules that apply to an answer for ``placement`` at ``now``, compiled."""
        if not self.records:
            return []
        key = (model.version, self.seq, view.revision if view is not None else -1)
        if self._compiled is None or self._compiled[0] != key:
            self._compiled = (key, [compile_rule(r, model, view) for r in self.rules()])
        return [c for c in self._compiled[1] if c.rule.applies(placement, now)]


@dataclass(frozen=True)
class Merchandised:
    """A list after the rules and the cap: parallel arrays, at most ``k`` long."""

    items: IntArray
    scores: NDArray[np.float32]
    reasons: NDArray[np.int8]
    rule_ids: list[tuple[str, ...]]
    """Per item, the rules that moved or placed it."""
    applied: tuple[str, ...]
    """Every rule that touched the answer, by id."""


def merchandise(
    items: IntArray,
    scores: NDArray[np.float32],
    reasons: NDArray[np.int8],
    k: int,
    rules: Sequence[CompiledRule],
    *,
    allowed: BoolArray | None,
    popular: IntArray,
    category: IntArray | None,
    cap: int,
) -> Merchandised:
    """``items`` (ranked best first, every one allowed) reshaped by ``rules`` and the
    diversity ``cap`` (0: none; ``category``: each item's category code, -1 = none),
    cut to ``k`` (see the module docstring). ``allowed``: what may be shown (None:
    everything), for items a pin brings in; ``popular``: every item, most popular
    first, where a predicate pin looks when no ranked item matches."""
    touched: dict[int, list[str]] = {}  # item position -> rule ids
    applied: dict[str, None] = {}
    pin_rules = [c for c in rules if c.rule.action is RuleAction.PIN]

    # 1. boost and bury
    weighed = [c for c in rules if c.rule.action is not RuleAction.PIN]
    if weighed:
        scores = scores.astype(np.float32, copy=True)
        before = items[:k]
        for c in weighed:
            hit = c.hits(items)
            if not hit.any():
                continue
            scores[hit] *= np.float32(c.rule.weight)
            for pos in items[hit].tolist():
                touched.setdefault(pos, []).append(c.rule.rule_id)
            if c.rule.action is RuleAction.BURY and hit[: len(before)].any():
                applied.setdefault(c.rule.rule_id)  # it pushed an item down or out
        order = np.argsort(-scores, kind="stable")
        items, scores, reasons = items[order], scores[order], reasons[order]
    if not pin_rules and not (cap > 0 and category is not None):
        top = items[:k]
        rule_ids = [tuple(touched.get(pos, _NO_IDS)) for pos in top.tolist()]
        for ids in rule_ids:
            for rule_id in ids:
                applied.setdefault(rule_id)
        return Merchandised(top, scores[:k], reasons[:k], rule_ids, tuple(applied))

    # 2. pins
    index = {pos: i for i, pos in enumerate(items.tolist())}
    pins: list[tuple[int, int, str]] = []  # (slot, item, rule id)
    taken: set[int] = set()
    for c in sorted(pin_rules, key=lambda c: (c.rule.position, c.rule.rule_id)):
        slot = c.rule.position - 1
        for pos in _pinned(c, items, allowed, popular, taken):
            pins.append((slot, pos, c.rule.rule_id))
            taken.add(pos)
            slot += 1

    # 3. the cap, over what the pins left
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

    # 4. assemble
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
            if nxt is None:  # pins further down than the list is long: close the gap
                slot = min(slots) if slots else slot
                continue
            pos = int(items[nxt])
            out_items.append(pos)
            out_scores.append(float(scores[nxt]))
            out_reasons.append(int(reasons[nxt]))
            out_rules.append(tuple(touched.get(pos, _NO_IDS)))
        slot += 1
    for ids in out_rules:
        for rule_id in ids:
            applied.setdefault(rule_id)
    return Merchandised(
        np.array(out_items, dtype=np.int32),
        np.array(out_scores, dtype=np.float32),
        np.array(out_reasons, dtype=np.int8),
        out_rules,
        tuple(applied),
    )


def _pinned(
    c: CompiledRule,
    ranked: IntArray,
    allowed: BoolArray | None,
    popular: IntArray,
    taken: set[int],
) -> list[int]:
    """The items pin ``c`` places, in order."""
    if c.positions is not None:
        return [
            int(pos)
            for pos in c.positions.tolist()
            if pos not in taken and (allowed is None or allowed[pos])
        ]
    assert c.mask is not None
    for pos in ranked[c.mask[ranked]].tolist():
        if pos not in taken:
            return [int(pos)]
    head = c.popular_matches(popular)
    candidates = head if allowed is None else head[allowed[head]]
    for pos in candidates.tolist():
        if pos not in taken:
            return [int(pos)]
    if len(head) < _POPULAR_PINS:  # that was every match
        return []
    # every one of the first few hundred is hidden or taken: look through them all
    everything = popular[c.mask[popular]]
    if allowed is not None:
        everything = everything[allowed[everything]]
    return next(([int(p)] for p in everything.tolist() if p not in taken), [])
