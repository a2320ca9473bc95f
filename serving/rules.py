"""Merchandising rules and the diversity cap, applied to a ranked list.

:class:`LiveRules` is this replica's copy of the shop's rules (:mod:`recsvc.rules`),
followed from the shared store like the live catalogue. For a request it yields the
rules that apply (placement, window) compiled against the served model: an item list
as model positions, a predicate as a mask over the items, from the live catalogue's
categories and attributes (recompiled when the rules, the model or the catalogue's
records change, never per request). Each set of rules that apply together is an
:class:`ActiveRules`, whose boosts and buries are folded once into :class:`Weights`:
every item's group (the rules that pick it), so that an answer looks its candidates'
weights up in one gather instead of testing every rule against them.

:func:`merchandise` then reshapes the ranking's candidates, in this order:

1. boost and bury multiply the scores of their items (every matching rule, so two
   boosts compound) and the candidates are re-sorted (for Recommend the ranking does
   this itself, as it scores its candidates: :class:`Weighing`);
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

import bisect
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any, Final, NamedTuple, overload

import numpy as np
from numpy.typing import NDArray

from recsvc.errors import InvalidRequestError
from recsvc.jit import kernel
from recsvc.model import Model
from recsvc.ranking import Reason
from recsvc.rules import Rule, RuleAction
from recsvc.store.rules import RuleStore

from .catalog import CatalogView
from .follow import Follower

__all__ = [
    "NO_RULES",
    "ActiveRules",
    "CompiledRule",
    "LiveRules",
    "Merchandised",
    "Shown",
    "Weighing",
    "Weights",
    "merchandise",
    "warm_up",
]

log = logging.getLogger(__name__)

IntArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]
Shown = Callable[[], BoolArray | None]
"""What may be shown (None: everything), computed when asked (see merchandise)."""

_NO_IDS: Final[tuple[str, ...]] = ()
_PINNED: Final = int(Reason.PINNED)
_POPULAR_PINS: Final = 256
"""A predicate pin's most popular matches kept ready (see CompiledRule.popular_matches)."""
_NO_MASK: Final = np.zeros(0, dtype=bool)
_NO_ORDER: Final = np.zeros(0, dtype=np.int64)
_NO_CATEGORY: Final = np.zeros(0, dtype=np.int32)
_NO_ITEMS: Final = np.zeros(0, dtype=np.int32)
_ANY_ITEM: Final = np.iinfo(np.int64).max
_ACTIVE_SETS: Final = 16
"""Subsets of the rules (placements, windows) kept prepared (see LiveRules.active)."""
_TALLIES: Final = 1024
"""Combinations of applied rules whose counts by action an ActiveRules keeps, and rule-id
codes whose ids it keeps (see ActiveRules.tally, ActiveRules.rule_ids)."""
_ROOM_SIZES: Final = 64
"""Answer sizes a thread keeps room for (see _Placed.room; they are k's: a few)."""
_PLACEMENTS: Final = 64
"""Placements whose active rules are kept (see LiveRules.active)."""


@kernel()
def _weigh(
    items: np.ndarray,
    scores: np.ndarray,
    group: np.ndarray,
    factors: np.ndarray,
    burying: np.ndarray,
    best: np.ndarray,
) -> bool:  # pragma: no cover (compiled; tests run it through Weighing.weigh)
    """Multiply ``scores`` (of ``items``, in place) by their group's ``factors``, one
    at a time in rule order (float32 rounding after each, as :meth:`Weights.multiply`:
    a factor of 1 changes nothing); per group a bury picks (``burying``), the best
    score before the weights goes to ``best`` (kept if higher). False, and nothing
    done, when an item is past ``group``."""
    n_items = len(group)
    for i in range(len(items)):
        if items[i] < 0 or items[i] >= n_items:
            return False
    depth = factors.shape[1]
    for i in range(len(items)):
        g = group[items[i]]
        s = scores[i]
        if burying[g] and s > best[g]:
            best[g] = s
        for d in range(depth):
            s = s * factors[g, d]
        scores[i] = s
    return True


_MASK_UNKNOWN: Final = 0
"""The allowed mask is not computed yet: :func:`_place` returns -1 when it needs it."""
_MASK_ALL: Final = 1
"""Every item may be shown."""
_MASK_GIVEN: Final = 2
"""The mask says which items may be shown."""


@kernel()
def _find(values: np.ndarray, n: int, value: int) -> int:  # pragma: no cover (compiled)
    """Where ``value`` is among the first ``n`` of ``values`` (-1: not there)."""
    for j in range(n):
        if values[j] == value:
            return j
    return -1


@kernel()
def _category(
    codes: np.ndarray, counts: np.ndarray, n: int, code: int
) -> tuple[int, int]:  # pragma: no cover (compiled)
    """Where category ``code`` is counted among the first ``n`` of ``codes`` (added,
    with a count of 0, when it is not yet), and how many are counted then."""
    c = 0
    while c < n and codes[c] != code:
        c += 1
    if c == n:
        codes[c], counts[c] = code, 0
        n += 1
    return c, n


@kernel()
def _place(
    items: np.ndarray,
    scores: np.ndarray,
    reasons: np.ndarray,
    order: np.ndarray,
    k: int,
    n_items: int,
    slot: np.ndarray,
    pred: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    listed: np.ndarray,
    preds: np.ndarray,
    heads: np.ndarray,
    head_lo: np.ndarray,
    head_hi: np.ndarray,
    popular: np.ndarray,
    mask: np.ndarray,
    state: int,
    codes: np.ndarray,
    cap: int,
    group: np.ndarray,
    grouped: bool,
    best: np.ndarray,
    out_items: np.ndarray,
    out_scores: np.ndarray,
    out_reasons: np.ndarray,
    out_code: np.ndarray,
) -> tuple[int, int]:  # pragma: no cover (compiled; tests run it through merchandise)
    """Steps 2-4 of :func:`merchandise` over the ranked ``items`` (best first in
    ``order``, or as they are when it is empty): the pins of :class:`_Pins` (``slot``,
    ``pred``, ``lo``/``hi``, ``listed``, ``preds``, and each predicate's first popular
    matches ``heads[head_lo:head_hi]``), the cap (``cap`` > 0, each item's category in
    ``codes``) and the answer, cut to ``k``: its items, scores and reasons, and each
    one's rules as a code (:meth:`ActiveRules.rule_ids`): for a ranked item, its group
    of boosts and buries (``group``, per item, if ``grouped``; else 0) times the pins
    plus one, plus the pin that placed it plus one (0: none); for a pinned item that
    was not ranked, minus its pin plus one. Returns its length, -1 when a pin needs the
    allowed mask (``state`` :data:`_MASK_UNKNOWN`), -2 (nothing done) when an item is not
    one of the ``n_items`` (what it reads ranked items in); and the buries' pattern:
    bit g set when group g's ``best`` score before the weights (:class:`Weighing`)
    reached the answer's last ranked score (``scores[k - 1]``; with fewer than ``k``
    items, when the group saw any candidate), -1 with more than 63 groups (0: no
    ``best``). Reads without bounds checks: the caller checks the rest."""
    n = len(items)
    for i in range(n):
        if items[i] < 0 or items[i] >= n_items:
            return -2, 0
    bits = 0
    if len(best) > 63:
        bits = -1
    elif len(best):
        last = scores[k - 1] if n >= k else -np.inf
        for g in range(len(best)):
            if (best[g] >= last) if last > -np.inf else (best[g] > -np.inf):
                bits |= 1 << g
    identity = len(order) == 0
    most = len(listed) + len(slot)
    pin_slot = np.empty(most, np.int64)
    pin_item = np.empty(most, np.int64)
    pin_rule = np.empty(most, np.int64)
    pin_at = np.empty(most, np.int64)  # each pinned item's index among items (-1: none)
    taken = 0
    # 2. pins, in order: an item list's items that may be shown, from its position; a
    # predicate's best-ranked match, else its most popular one that may be shown
    for p in range(len(slot)):
        at = slot[p]
        if pred[p] < 0:
            for j in range(lo[p], hi[p]):
                pos = listed[j]
                if _find(pin_item, taken, pos) >= 0:
                    continue  # an earlier pin's (or this one's, named twice)
                ranked = _find(items, n, pos)
                if ranked < 0:  # a ranked item may be shown
                    if state == _MASK_UNKNOWN:
                        return -1, bits
                    if state == _MASK_GIVEN and not mask[pos]:
                        continue
                pin_slot[taken], pin_item[taken], pin_rule[taken] = at, pos, p
                pin_at[taken] = ranked
                taken += 1
                at += 1
            continue
        row = pred[p]
        found = -1
        ranked = -1  # a popular match is never ranked: the ranked ones come first
        for t in range(n):
            i = t if identity else order[t]
            pos = items[i]
            if preds[row, pos] and _find(pin_item, taken, pos) < 0:
                found, ranked = pos, i
                break
        if found < 0:
            if state == _MASK_UNKNOWN:
                return -1, bits
            for j in range(head_lo[p], head_hi[p]):
                pos = heads[j]
                if (state == _MASK_ALL or mask[pos]) and _find(pin_item, taken, pos) < 0:
                    found = pos
                    break
            if found < 0 and head_hi[p] - head_lo[p] >= _POPULAR_PINS:
                # every one of its first popular matches is hidden or taken: all of them
                for j in range(len(popular)):
                    pos = popular[j]
                    if (
                        preds[row, pos]
                        and (state == _MASK_ALL or mask[pos])
                        and _find(pin_item, taken, pos) < 0
                    ):
                        found = pos
                        break
        if found >= 0:
            pin_slot[taken], pin_item[taken], pin_rule[taken] = at, found, p
            pin_at[taken] = ranked
            taken += 1
    # 3. the rest, best first, at most k: what the pins left, under the cap (pinned
    # items count and stay)
    rest = np.empty(min(n, k), np.int64)
    r = 0
    held_code = np.empty(taken + k, np.int64)
    held = np.empty(taken + k, np.int64)
    categories = 0
    if cap > 0:
        for e in range(taken):
            code = codes[pin_item[e]]
            if code >= 0:
                c, categories = _category(held_code, held, categories, code)
                held[c] += 1
    for t in range(n):
        if r == k:
            break
        i = t if identity else order[t]
        pos = items[i]
        if taken and _find(pin_item, taken, pos) >= 0:
            continue
        if cap > 0:
            code = codes[pos]
            if code >= 0:
                c, categories = _category(held_code, held, categories, code)
                if held[c] >= cap:
                    continue
                held[c] += 1
        rest[r] = i
        r += 1
    # 4. each pin at its place (the next free one after an earlier pin's), in place
    # order, or after the rest when the rest is shorter
    free = np.empty(taken, np.int64)
    for e in range(taken):
        f = pin_slot[e]
        while _find(free, e, f) >= 0:
            f += 1
        free[e] = f
    picks = np.empty(r + taken, np.int64)
    picked_pin = np.empty(r + taken, np.int64)
    picked_item = np.empty(r + taken, np.int64)
    for t in range(r):
        picks[t], picked_pin[t], picked_item[t] = rest[t], -1, items[rest[t]]
    m = r
    done = np.zeros(taken, np.bool_)
    for _ in range(taken):
        e = -1
        for d in range(taken):
            if not done[d] and (e < 0 or free[d] < free[e]):
                e = d
        done[e] = True
        place = min(free[e], m)
        if place >= k:
            break
        pos = pin_item[e]
        for t in range(m, place, -1):
            picks[t] = picks[t - 1]
            picked_pin[t] = picked_pin[t - 1]
            picked_item[t] = picked_item[t - 1]
        picks[place], picked_pin[place], picked_item[place] = pin_at[e], pin_rule[e], pos
        m += 1
    m = min(m, k)
    width = len(slot) + 1
    for t in range(m):
        i = picks[t]
        if i >= 0:  # ranked anyway: keeps its score and reason
            pos = items[i]
            out_items[t], out_scores[t], out_reasons[t] = pos, scores[i], reasons[i]
            out_code[t] = (np.int64(group[pos]) if grouped else 0) * width + picked_pin[t] + 1
        else:
            out_items[t], out_scores[t], out_reasons[t] = picked_item[t], 0.0, _PINNED
            out_code[t] = -(picked_pin[t] + 1)
    return m, bits


_WEIGHED_TYPES: Final = (
    (np.dtype(np.int32), np.dtype(np.int64)),
    (np.dtype(np.uint8), np.dtype(np.uint16)),
)
"""The item and group types :func:`_weigh` is compiled for ahead (:func:`warm_up`)."""
_INT32: Final = np.dtype(np.int32)
_INT64: Final = np.dtype(np.int64)
_FLOAT32: Final = np.dtype(np.float32)
_INT8: Final = np.dtype(np.int8)
_BOOL: Final = np.dtype(np.bool_)
_GROUP_TYPES: Final = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int32))
"""The types of :attr:`Weights.group` (the smallest that holds the groups' numbers)."""
_NO_GROUP: Final = np.zeros(0, dtype=np.uint8)
_NO_BEST: Final = np.zeros(0, dtype=np.float32)


def warm_up() -> None:
    """Compile (or load from the cache) the boosts' and buries' kernel for the types a
    ranking hands it, and the pins' placing for either popular order's type and every
    group type, so no request waits for them."""
    one = np.zeros(1, dtype=np.int64)  # one pin of one item (item 0) at the first place
    for popular_type in (np.int32, np.int64):
        for group_type in _GROUP_TYPES:
            out = _Placed(1)
            _place(
                np.zeros(1, dtype=np.int32), np.ones(1, dtype=np.float32), np.zeros(1, np.int8),
                _NO_ORDER, 1, 1, one, one - 1, one, one + 1, one, np.zeros((0, 1), dtype=bool),
                _NO_ORDER, one, one, np.zeros(1, dtype=popular_type), _NO_MASK, _MASK_ALL,
                _NO_CATEGORY, 0, np.zeros(1, dtype=group_type), True, _NO_BEST, out.items,
                out.scores, out.reasons, out.code,
            )  # fmt: skip
    factors = np.ones((1, 1), dtype=np.float32)
    for item_type in _WEIGHED_TYPES[0]:
        for group_type in _WEIGHED_TYPES[1]:
            _weigh(
                np.zeros(1, dtype=item_type), np.ones(1, dtype=np.float32),
                np.zeros(1, dtype=group_type), factors, np.zeros(1, dtype=bool),
                np.zeros(1, dtype=np.float32),
            )  # fmt: skip


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
    def listed(self) -> list[int]:
        """An item list's known items as a list (what a pin walks, per request)."""
        return self.positions.tolist() if self.positions is not None else []

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


_PATTERNS_KEPT: Final = 1024
"""The most patterns of buried groups a :class:`Weights` keeps answers for."""


class Weights:
    """The boosts and buries of one rule set folded over a model's items, so that an
    answer pays a gather or two for them all rather than a pass per rule.

    Items the same rules pick form a group (a few dozen groups for ten rules that
    overlap little), numbered by how many rules pick them (0: none, if any item is
    left out); per item its group, per group its rules' weights in rule order (then 1),
    their ids and which of them bury. A score is multiplied by its group's weights one
    at a time, in rule order, as applying the rules one by one did (float32 rounding
    after each: the same scores to the bit).
    """

    __slots__ = (
        "_buried",
        "_buried_bits",
        "_buried_by",
        "_buries",
        "_burying",
        "_columns",
        "_compiled",
        "_deeper",
        "_factors",
        "_ids",
        "_unseen",
        "group",
        "rule_ids",
    )

    def __init__(self, weighed: Sequence[CompiledRule], n_items: int) -> None:
        group = np.zeros(n_items, dtype=np.int64)
        parent: list[int] = [-1]  # groups as a tree: a group is its parent plus one rule
        last: list[int] = [-1]
        for j, c in enumerate(weighed):
            if c.mask is not None:
                hit = np.flatnonzero(c.mask)
            else:
                assert c.positions is not None
                hit = np.unique(c.positions)
            if not len(hit):
                continue
            held = group[hit]  # the groups they were in: their hit items move to new ones
            split = np.zeros(len(parent), dtype=bool)
            split[held] = True
            before = np.flatnonzero(split)
            into = np.zeros(len(parent), dtype=np.int64)
            into[before] = np.arange(len(parent), len(parent) + len(before))
            group[hit] = into[held]
            parent += before.tolist()
            last += [j] * len(before)
        paths: list[tuple[int, ...]] = [()]
        for p, j in zip(parent[1:], last[1:], strict=True):
            paths.append((*paths[p], j))  # a parent comes before its children
        # the groups items are left in, fewest rules first
        used = sorted(np.flatnonzero(np.bincount(group, minlength=len(parent))).tolist(),
                      key=lambda g: len(paths[g]))  # fmt: skip
        renumber = np.zeros(len(parent), dtype=np.int64)
        renumber[used] = np.arange(len(used))
        self.group: NDArray[np.integer[Any]] = renumber[group].astype(
            next(t for t in _GROUP_TYPES if len(used) - 1 <= np.iinfo(t).max)
        )
        """Every item's group (the smallest of :data:`_GROUP_TYPES` that holds them)."""
        self._compiled = self.group.dtype in _WEIGHED_TYPES[1]
        """Whether :func:`_weigh` is compiled ahead for the groups' type."""
        kept = [paths[g] for g in used]
        depth = max(map(len, kept), default=0)
        self._deeper = [sum(1 for c in kept if len(c) <= d) for d in range(depth)]
        """Per d, the first group with more than d rules."""
        weights = [np.float32(c.rule.weight) for c in weighed]
        self._factors: NDArray[np.float32] = np.ones((len(kept), depth), dtype=np.float32)
        """Per group, its rules' weights in rule order, then 1."""
        for g, path in enumerate(kept):
            self._factors[g, : len(path)] = [weights[j] for j in path]
        self._columns = [np.ascontiguousarray(self._factors[:, d]) for d in range(depth)]
        """The factors' columns: each rule's weight in turn, per group."""
        self._ids = tuple(c.rule.rule_id for c in weighed)
        self.rule_ids: list[tuple[str, ...]] = [tuple(self._ids[j] for j in c) for c in kept]
        """Per group, its rules' ids in rule order."""
        bury = [c.rule.action is RuleAction.BURY for c in weighed]
        self._buries = [tuple(j for j in path if bury[j]) for path in kept]
        """Per group, which of its rules bury (indices into the boosts and buries)."""
        self._buried = frozenset(g for g, buries in enumerate(self._buries) if buries)
        """The groups with a bury."""
        self._burying: BoolArray = np.array([bool(b) for b in self._buries], dtype=bool)
        """Per group, whether it holds a bury."""
        self._unseen = np.full(len(kept), -np.inf, dtype=np.float32)
        """Per group, -inf: where a :class:`Weighing` starts its best scores."""
        self._buried_by: dict[bytes, list[str]] = {}
        """:meth:`buried_in`'s answers, by the groups' pattern."""
        self._buried_bits: dict[int, list[str]] = {}
        """:meth:`buried_bits`'s answers, by the groups' pattern."""

    @property
    def factors(self) -> NDArray[np.float32]:
        """Per group, its rules' weights in rule order, then 1."""
        return self._factors

    def apply(self, items: IntArray, scores: NDArray[np.float32]) -> list[int]:
        """Multiply ``scores`` (of ``items``, in place) by their rules' weights; the
        items' groups."""
        groups = self.group.take(items)
        self.multiply(groups, scores)
        listed: list[int] = groups.tolist()
        return listed

    def multiply(self, groups: NDArray[np.integer[Any]], scores: NDArray[np.float32]) -> None:
        """Multiply ``scores`` (of items in ``groups``, in place) by their weights."""
        if self._deeper and len(groups):
            most = int(groups.max())  # groups are numbered by how many rules they hold
            depth = sum(1 for first in self._deeper if most >= first)
            for column in self._columns[:depth]:
                scores *= column.take(groups)

    def buried(self, groups: list[int]) -> list[str]:
        """The buries that pick any of the items of ``groups``, in rule order."""
        buried = self._buried.intersection(groups)
        if not buried:
            return []
        found = sorted(set(chain.from_iterable(self._buries[g] for g in buried)))
        return [self._ids[j] for j in found]

    def buried_bits(self, bits: int) -> list[str]:
        """:meth:`buried` of the groups whose bit is set in ``bits`` (groups 0-62), kept
        per pattern as :meth:`buried_in`. Read only."""
        found = self._buried_bits.get(bits)
        if found is None:
            found = self.buried([g for g in range(bits.bit_length()) if bits >> g & 1])
            if len(self._buried_bits) < _PATTERNS_KEPT:
                self._buried_bits[bits] = found
        return found

    def buried_in(self, hit: BoolArray) -> list[str]:
        """:meth:`buried` of the groups ``hit`` is True for (one per group), kept per
        pattern: the answers of one rule set repeat a few patterns, and the sets and
        the sort cost ~4 µs per answer (a bytes key and a lookup, ~0.3). Read only."""
        key = hit.tobytes()
        found = self._buried_by.get(key)
        if found is None:
            found = self.buried(np.flatnonzero(hit).tolist())
            if len(self._buried_by) < _PATTERNS_KEPT:
                self._buried_by[key] = found
        return found


class Weighing:
    """One answer's boosts and buries as the ranking applies them to its candidates
    (a :class:`~recsvc.ranking.ScoreWeights`): the candidates' scores multiplied before
    the cut, so the search's candidates are ranked once, by the weighted score. It
    remembers the candidates the buries picked, with their scores before the weights,
    to say which buries pushed an item down (one per answer: never shared)."""

    __slots__ = ("_best", "weights")

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self._best: NDArray[np.float32] | None = None
        """Per group a bury picks, the best score before the weights of its candidates
        (-inf: none; None: no candidate weighed yet)."""

    def weigh(self, items: IntArray, scores: NDArray[np.float32]) -> None:
        w = self.weights
        best = self._best
        if best is None:
            best = self._best = w._unseen.copy()  # a copy costs a third of np.full
        if (
            w._compiled
            and len(items)
            and (items.dtype is _INT32 or items.dtype is _INT64)  # the types compiled
            and scores.dtype is _FLOAT32
            and scores.flags.c_contiguous
            and len(scores) == len(items)
            and _weigh(items, scores, w.group, w._factors, w._burying, best)
        ):  # one compiled pass (what follows is the same in NumPy calls)
            return
        groups = w.group.take(items)  # IndexError for an item past the rules' items
        if w._buried and len(groups):  # some group holds a bury
            hit = w._burying.take(groups)
            if hit.any():
                np.maximum.at(best, groups[hit], scores[hit])
        w.multiply(groups, scores)

    def room(self, basis: int) -> int:
        return basis  # a boost may lift any candidate: room for it to climb

    @property
    def best(self) -> NDArray[np.float32] | None:
        """Per group, the best score before the weights of its candidates (-inf: none;
        None: no candidate weighed yet). Read only."""
        return self._best

    def buried_at(self, scores: NDArray[np.float32], k: int) -> list[str]:
        """:meth:`buried` at the answer's last score: ``scores`` are the candidates'
        weighted scores, best first, and the answer takes ``k`` of them."""
        return self.buried(float(scores[k - 1]) if len(scores) >= k else -math.inf)

    def buried(self, threshold: float) -> list[str]:
        """The buries that picked a candidate whose score before the weights reached
        ``threshold`` (the answer's last score): each pushed an item down, or out.
        Shared with other answers of the rule set: read only."""
        best = self._best
        if best is None:
            return []
        # -inf (a short answer): every candidate counts, but a group without one not
        hit = best >= threshold if threshold > -math.inf else best > -math.inf
        return self.weights.buried_in(hit)


class ActiveRules(Sequence[CompiledRule]):
    """The rules that apply to an answer (in id order), with what :func:`merchandise`
    needs of them prepared: their pins, their actions and their boosts' and buries'
    :class:`Weights` (folded at the first answer, then kept with the rule set: see
    :meth:`LiveRules.active`)."""

    __slots__ = ("_coded", "_pins", "_rules", "_tallies", "_weights", "actions", "n_items",
                 "pins", "weighed")  # fmt: skip

    def __init__(self, rules: Sequence[CompiledRule], n_items: int) -> None:
        self._rules = tuple(rules)
        self.n_items = n_items
        """Items of the model the rules were compiled against."""
        self.pins = tuple(
            sorted(
                (c for c in self._rules if c.rule.action is RuleAction.PIN),
                key=lambda c: (c.rule.position, c.rule.rule_id),
            )
        )
        """The pins, in the order they take their places (position, then id)."""
        self.weighed = tuple(c for c in self._rules if c.rule.action is not RuleAction.PIN)
        """The boosts and buries."""
        self.actions = {c.rule.rule_id: c.rule.action for c in self._rules}
        self._weights: Weights | None = None
        self._pins: _Pins | None = None
        self._tallies: dict[tuple[str, ...], tuple[tuple[str, int], ...]] = {}
        self._coded: dict[int, tuple[str, ...]] = {}
        """:meth:`rule_ids` of each code seen, with this set's own weights."""

    @classmethod
    def of(cls, rules: Sequence[CompiledRule], items: IntArray) -> ActiveRules:
        """``rules`` ready for ranked ``items`` (the smallest item range they span)."""
        if isinstance(rules, ActiveRules):
            return rules
        n = int(items.max()) + 1 if len(items) else 0
        for c in rules:
            if c.mask is not None:
                n = max(n, len(c.mask))
            elif c.positions is not None and len(c.positions):
                n = max(n, int(c.positions.max()) + 1)
        return cls(rules, n)

    @property
    def weights(self) -> Weights | None:
        """The boosts and buries folded (None: there are none)."""
        if not self.weighed:
            return None
        weights = self._weights
        if weights is None:
            weights = self._weights = Weights(self.weighed, self.n_items)
        return weights

    def tally(self, applied: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        """How many of the rules ``applied`` (ids of these rules) act each way, by the
        action's value: kept per combination, as answers repeat a few of them (the last
        :data:`_TALLIES`)."""
        counts = self._tallies.get(applied)
        if counts is None:
            by: dict[str, int] = {}
            for rule_id in applied:
                action = self.actions[rule_id].value
                by[action] = by.get(action, 0) + 1
            if len(self._tallies) >= _TALLIES:
                self._tallies.clear()
            counts = self._tallies[applied] = tuple(by.items())
        return counts

    def rule_ids(self, codes: list[int], weights: Weights | None) -> list[tuple[str, ...]]:
        """The ids of the rules that placed or moved each item of an answer, from the
        codes :func:`_place` gives (``weights``: the boosts' and buries' whose groups
        the codes hold, if any), in rule order, a pin's last. Kept per code (a few
        dozen per rule set) when the weights are this set's own."""
        table = self._coded if weights is None or weights is self._weights else {}
        try:
            return [table[code] for code in codes]
        except KeyError:  # a code not seen yet
            pass
        if len(table) >= _TALLIES:
            table.clear()
        pin_ids = self.plan.rule_ids
        ids: tuple[str, ...]
        for code in codes:
            if code < 0:  # a pinned item that was not ranked: the pin's alone
                ids = (pin_ids[-code - 1],)
            else:
                g, pin = divmod(code, len(pin_ids) + 1)
                ids = _NO_IDS if weights is None else weights.rule_ids[g]
                if pin:  # ranked anyway: its boosts' and buries' ids, then the pin's
                    ids = (*ids, pin_ids[pin - 1])
            table[code] = ids
        return [table[code] for code in codes]

    @property
    def plan(self) -> _Pins:
        """The pins as the compiled placing reads them (made at the first answer)."""
        pins = self._pins
        if pins is None:
            pins = self._pins = _Pins(self.pins, self.n_items)
        return pins

    @overload
    def __getitem__(self, index: int) -> CompiledRule: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[CompiledRule, ...]: ...
    def __getitem__(self, index: int | slice) -> CompiledRule | tuple[CompiledRule, ...]:
        return self._rules[index]

    def __len__(self) -> int:
        return len(self._rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self._rules)


NO_RULES: Final = ActiveRules((), 0)


_MODELS = 4
"""Models whose compiled rules are kept (the served one, a few variants)."""


class LiveRules(Follower[Rule]):
    """This replica's copy of the merchandising rules, followed from ``store``."""

    store: RuleStore

    def __init__(self, store: RuleStore) -> None:
        super().__init__(store)
        self._models: dict[str, _Compiled] = {}
        """The rules compiled for each model asked for lately (the served one and an
        experiment's variants, whose requests alternate), the last :data:`_MODELS`."""

    def retain(self, versions: set[str]) -> None:
        """Drop the rules compiled for models not in ``versions`` (they hold the model's
        positions and masks)."""
        self._models = {v: c for v, c in self._models.items() if v in versions}

    def rules(self) -> list[Rule]:
        """Every rule not deleted, by id."""
        return sorted((r for r in self.records.values() if not r.deleted), key=lambda r: r.rule_id)

    def live_count(self, now: float | None = None) -> int:
        """How many rules apply at ``now`` (in some placement)."""
        t = time.time() if now is None else now
        return sum(1 for r in self.records.values() if r.live(t))

    def active(
        self, model: Model, view: CatalogView | None, placement: str, now: float
    ) -> ActiveRules:
        """The rules that apply to an answer for ``placement`` at ``now``, compiled.

        The answer for a placement holds until the next start or end of a rule's
        window, and is kept until then; the same subset of the rules (placements and
        windows make a few) gets the same :class:`ActiveRules` back, its weights folded
        once (the last :data:`_ACTIVE_SETS` subsets kept). All of it is compiled anew
        when the rules, the model or the catalogue's records change."""
        if not self.records:
            return NO_RULES
        key = (self.seq, view.revision if view is not None else -1)
        state = self._models.get(model.version)
        if state is None or state.key != key:
            rules = self.rules()
            ends = (t for r in rules for t in (r.starts_at, r.ends_at) if t is not None)
            state = _Compiled(
                key,
                [compile_rule(r, model, view) for r in rules],
                sorted(t for t in ends if not math.isnan(t)),
            )
            if model.version not in self._models and len(self._models) >= _MODELS:
                self._models.pop(next(iter(self._models)))
            self._models[model.version] = state
        placed = state.placed.get(placement)
        if placed is not None and placed[0] <= now < placed[1]:
            return placed[2]
        compiled = state.compiled
        which = tuple(i for i, c in enumerate(compiled) if c.rule.applies(placement, now))
        active = state.active.get(which) if which else NO_RULES
        if active is None:
            active = state.active[which] = ActiveRules([compiled[i] for i in which], model.n_items)
            if len(state.active) > _ACTIVE_SETS:
                _, evicted = state.active.popitem(last=False)
                state.placed = {p: v for p, v in state.placed.items() if v[2] is not evicted}
        elif which:
            state.active.move_to_end(which)
        # no window starts or ends between the last time at or before now and the next
        times = state.times
        at = bisect.bisect_right(times, now)
        since = times[at - 1] if at > 0 else -math.inf
        until = times[at] if at < len(times) else math.inf
        if len(state.placed) >= _PLACEMENTS:
            state.placed.clear()  # requests may name any placement
        state.placed[placement] = (since, until, active)
        return active


class _Compiled:
    """The rules compiled for one model (see :meth:`LiveRules.active`)."""

    def __init__(
        self, key: tuple[int, int], compiled: list[CompiledRule], times: list[float]
    ) -> None:
        self.key = key
        """(the rules' version, the catalogue view's revision) they were compiled at."""
        self.compiled = compiled
        self.times = times
        """Every time a rule's window starts or ends, in order."""
        self.active: OrderedDict[tuple[int, ...], ActiveRules] = OrderedDict()
        self.placed: dict[str, tuple[float, float, ActiveRules]] = {}
        """Per placement, the rules that apply from a time until another."""


class Merchandised(NamedTuple):
    """A list after the rules and the cap, at most ``k`` long: parallel Python lists
    (the answer is read item by item from here on, so no NumPy call is left to make)."""

    items: list[int]
    """Positions."""
    scores: list[float]
    """float32 values, exactly."""
    reasons: list[int]
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
    allowed: BoolArray | Shown | None,
    popular: IntArray,
    category: IntArray | None,
    cap: int,
    weighed: Weighing | None = None,
) -> Merchandised:
    """``items`` (ranked best first, every one allowed) reshaped by ``rules`` and the
    diversity ``cap`` (0: none; ``category``: each item's category code, -1 = none),
    cut to ``k`` (see the module docstring). ``allowed``: what may be shown (None:
    everything), for items a pin brings in, or a function that gives it (called only
    when a pin looks past the ranked items); ``popular``: every item, most popular
    first, where a predicate pin looks when no ranked item matches. ``rules``: best an
    :class:`ActiveRules` (a plain sequence is prepared here, per call). ``weighed``:
    the ranking already multiplied the scores by the boosts and buries and ranked the
    candidates by them (step 1 done; the rules' weights are ``weighed.weights``).

    Steps 2-4 are one compiled pass over the candidates (:func:`_place`); what is
    left in Python is the answer's rule ids, a few per item."""
    active = ActiveRules.of(rules, items)
    capped = cap > 0 and category is not None
    applied: dict[str, None] = {}

    # 1. boost and bury
    weights = active.weights
    order: NDArray[np.intp] | None = None  # the candidates best first (None: as they came)
    weighted: Weights | None = None  # the weights the candidates carry, if any
    if weighed is not None:
        # the ranking weighed and ordered the candidates: their groups, for the ids
        weighted = weighed.weights
        if not active.pins and not capped:
            applied.update(dict.fromkeys(weighed.buried_at(scores, k)))
            ids_of = weighted.rule_ids
            rule_ids = [ids_of[g] for g in weighted.group.take(items[:k]).tolist()]
            applied.update(dict.fromkeys(chain.from_iterable(rule_ids)))
            return _listed(items, scores, reasons, slice(k), rule_ids, tuple(applied))
    elif weights is not None:
        weighted = weights
        scores = scores.astype(np.float32)  # a copy
        groups = weights.apply(items, scores)
        applied.update(dict.fromkeys(weights.buried(groups[:k])))  # pushed down or out
        order = (-scores).argsort(kind="stable")
        if not active.pins and not capped:
            top = order[:k]
            ids_of = weights.rule_ids
            rule_ids = [ids_of[groups[i]] for i in top.tolist()]
            applied.update(dict.fromkeys(chain.from_iterable(rule_ids)))
            return _listed(items, scores, reasons, top, rule_ids, tuple(applied))
    elif not active.pins and not capped:
        return _listed(items, scores, reasons, slice(k), [_NO_IDS] * len(items[:k]), ())

    # 2-4. pins, the cap and the answer: one compiled pass (:func:`_place`)
    n_items = active.n_items
    # the types and layout the kernel is compiled for (no copy when they are)
    items = _typed(items, _INT32)
    scores = _typed(scores, _FLOAT32)
    reasons = _typed(reasons, _INT8)
    codes = _NO_CATEGORY
    if capped:
        assert category is not None
        codes = _typed(category, _INT32)
        if len(codes) < n_items:
            raise IndexError(f"{len(codes)} item categories for {n_items} items")
    plan = active.plan
    popular, heads, head_lo, head_hi = plan.heads(popular)
    # a ranked item is read in the predicates' masks, the categories and the groups
    bound = plan.preds.shape[1] if len(plan.preds) else _ANY_ITEM
    if capped:
        bound = min(bound, len(codes))
    group = _NO_GROUP if weighted is None else weighted.group
    if weighted is not None:
        bound = min(bound, len(group))
    # the ranking's buries: the kernel tests each group's best score before the weights
    best = _NO_BEST if weighed is None or weighed.best is None else weighed.best
    size = min(k, len(items) + plan.most)
    out = _Placed.room(size)
    mask, state = (_NO_MASK, _MASK_UNKNOWN) if callable(allowed) else _mask(allowed, n_items)
    while True:
        m, bits = _place(
            items, scores, reasons, _NO_ORDER if order is None else order, k, bound,
            plan.slot, plan.pred, plan.lo, plan.hi, plan.listed, plan.preds,
            heads, head_lo, head_hi, popular, mask, state, codes, cap if capped else 0,
            group, weighted is not None, best, out.items, out.scores, out.reasons, out.code,
        )  # fmt: skip
        if m >= 0:
            break
        if m == -2:
            raise IndexError(f"ranked items past the {bound} items the rules or the cap read")
        assert callable(allowed)  # a pin looked past the ranked items: asked once
        mask, state = _mask(allowed(), n_items)
    if len(best):
        assert weighed is not None and weighted is not None
        if bits >= 0:
            applied.update(dict.fromkeys(weighted.buried_bits(bits)))
        else:  # more groups than the bits hold
            applied.update(dict.fromkeys(weighed.buried_at(scores, k)))
    out_items, out_scores, out_reasons, out_codes = out.read(m)
    out_rules = active.rule_ids(out_codes, weighted)
    applied.update(dict.fromkeys(chain.from_iterable(out_rules)))
    return Merchandised(out_items, out_scores, out_reasons, out_rules, tuple(applied))


def _listed(
    items: IntArray,
    scores: NDArray[np.float32],
    reasons: NDArray[np.int8],
    take: slice | NDArray[np.intp],
    rule_ids: list[tuple[str, ...]],
    applied: tuple[str, ...],
) -> Merchandised:
    """The answer ``take`` picks of the ranked arrays (no pin, no cap), as lists."""
    return Merchandised(
        items[take].tolist(), scores[take].tolist(), reasons[take].tolist(), rule_ids, applied
    )


_Heads = tuple[IntArray, NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]
"""The popular order, the predicate pins' first matches in it, and their ranges."""


class _Pins:
    """One rule set's pins as :func:`_place` reads them: per pin its first place
    (``slot``), its row in the stacked predicates' masks (``pred``, -1 for an item
    list) and its items' range in ``listed``; each predicate's first popular matches
    are gathered once per popular order (:meth:`heads`)."""

    __slots__ = ("_heads", "hi", "listed", "lo", "most", "n_items", "pred", "preds", "rule_ids",
                 "rules", "slot")  # fmt: skip

    def __init__(self, pins: Sequence[CompiledRule], n_items: int) -> None:
        self.rules = tuple(pins)
        self.n_items = n_items
        self.slot = np.array([c.rule.position - 1 for c in pins], dtype=np.int64)
        pred: list[int] = []
        lo: list[int] = []
        hi: list[int] = []
        listed: list[int] = []
        masks: list[BoolArray] = []
        for c in pins:
            lo.append(len(listed))
            if c.mask is None:
                pred.append(-1)
                listed += c.listed
            else:
                pred.append(len(masks))
                masks.append(c.mask)
            hi.append(len(listed))
        self.pred = np.array(pred, dtype=np.int64)
        self.lo = np.array(lo, dtype=np.int64)
        self.hi = np.array(hi, dtype=np.int64)
        self.listed = np.array(listed, dtype=np.int64)
        if len(listed) and (int(self.listed.min()) < 0 or int(self.listed.max()) >= n_items):
            raise IndexError(f"a pin's items past the rules' {n_items} items")
        self.preds = np.zeros((len(masks), n_items if masks else 0), dtype=bool)
        for row, mask in enumerate(masks):
            self.preds[row, : len(mask)] = mask
        self.most = len(listed) + len(masks)
        """Items the pins place at most."""
        self.rule_ids = tuple(c.rule.rule_id for c in pins)
        none = np.zeros(len(pins), np.int64)
        self._heads: tuple[IntArray, _Heads] = (_NO_ITEMS, (_NO_ITEMS, _NO_ORDER, none, none))

    def heads(self, popular: IntArray) -> _Heads:
        """``popular`` as the kernel reads it, each predicate pin's first popular matches
        (:meth:`CompiledRule.popular_matches`) in one array and each one's range in it
        (gathered again when the popular order changes: at most once a second)."""
        cached = self._heads
        if cached[0] is popular:
            return cached[1]
        if not len(self.preds):  # no predicate: the popular order is never read
            return cached[1]
        if len(popular) and (int(popular.min()) < 0 or int(popular.max()) >= self.n_items):
            raise IndexError(f"popular items past the rules' {self.n_items} items")
        parts = [
            c.popular_matches(popular) if c.mask is not None else _NO_ORDER for c in self.rules
        ]
        sizes = np.array([len(part) for part in parts], dtype=np.int64)
        hi = np.cumsum(sizes)
        heads = np.concatenate(parts).astype(np.int64)
        flat = popular if popular.flags.c_contiguous else np.ascontiguousarray(popular)
        self._heads = (popular, (flat, heads, hi - sizes, hi))
        return self._heads[1]


class _Placed:
    """Room for an answer of at most ``size`` items (what :func:`_place` writes).
    Each thread keeps one per size (:meth:`room`): :func:`merchandise` reads it back
    into lists (:meth:`read`) before it returns, so the next answer may write it."""

    __slots__ = ("code", "items", "reasons", "scores")

    def __init__(self, size: int) -> None:
        self.items = np.empty(size, dtype=np.int32)
        self.scores = np.empty(size, dtype=np.float32)
        self.reasons = np.empty(size, dtype=np.int8)
        self.code = np.empty(size, dtype=np.int64)

    @staticmethod
    def room(size: int) -> _Placed:
        """This thread's room of ``size`` items (made at its first answer of that size)."""
        try:
            rooms: dict[int, _Placed] = _ROOMS.by_size
        except AttributeError:
            rooms = _ROOMS.by_size = {}
        room = rooms.get(size)
        if room is None:
            if len(rooms) >= _ROOM_SIZES:
                rooms.clear()
            room = rooms[size] = _Placed(size)
        return room

    def read(self, m: int) -> tuple[list[int], list[float], list[int], list[int]]:
        """The first ``m`` items, scores, reasons and codes :func:`_place` wrote, as
        lists (most answers fill the room: no slices then)."""
        if m == len(self.items):
            return (
                self.items.tolist(), self.scores.tolist(), self.reasons.tolist(),
                self.code.tolist(),
            )  # fmt: skip
        return (
            self.items[:m].tolist(), self.scores[:m].tolist(), self.reasons[:m].tolist(),
            self.code[:m].tolist(),
        )  # fmt: skip


_ROOMS = threading.local()
"""Per thread, the answers' rooms by size (:meth:`_Placed.room`)."""


def _mask(allowed: BoolArray | None, n_items: int) -> tuple[BoolArray, int]:
    """``allowed`` as :func:`_place` reads it: the mask and its state."""
    if allowed is None:
        return _NO_MASK, _MASK_ALL
    if len(allowed) < n_items:
        raise IndexError(f"an allowed mask of {len(allowed)} items for {n_items}")
    return _typed(allowed, _BOOL), _MASK_GIVEN


def _typed(a: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``a`` as a contiguous array of ``dtype``: itself when it is one (checked without
    a NumPy call: the answer's few arrays pass through this on every request)."""
    if a.dtype is dtype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=dtype)
