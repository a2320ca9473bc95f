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
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any, Final, overload

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
_PIN_STEP: Final = 16
"""A predicate pin looks through its popular matches this many at a time."""
_ACTIVE_SETS: Final = 16
"""Subsets of the rules (placements, windows) kept prepared (see LiveRules.active)."""
_PLACEMENTS: Final = 64
"""Placements whose active rules are kept (see LiveRules.active)."""


@kernel()
def _weigh(
    items: np.ndarray,
    scores: np.ndarray,
    group: np.ndarray,
    factors: np.ndarray,
    burying: np.ndarray,
    buried_groups: np.ndarray,
    buried_scores: np.ndarray,
) -> int:  # pragma: no cover (compiled; tests run it through Weighing.weigh)
    """Multiply ``scores`` (of ``items``, in place) by their group's ``factors``, one
    at a time in rule order (float32 rounding after each, as :meth:`Weights.multiply`:
    a factor of 1 changes nothing); the groups and scores before the weights of the
    items a bury picks (``burying``) go to ``buried_groups`` / ``buried_scores``, and
    how many there are is returned."""
    depth = factors.shape[1]
    found = 0
    for i in range(len(items)):
        g = group[items[i]]
        s = scores[i]
        if burying[g]:
            buried_groups[found] = g
            buried_scores[found] = s
            found += 1
        for d in range(depth):
            s = s * factors[g, d]
        scores[i] = s
    return found


_WEIGHED_TYPES: Final = (
    (np.dtype(np.int32), np.dtype(np.int64)),
    (np.dtype(np.uint8), np.dtype(np.uint16)),
)
"""The item and group types :func:`_weigh` is compiled for ahead (:func:`warm_up`)."""


def warm_up() -> None:
    """Compile (or load from the cache) the boosts' and buries' kernel for the types a
    ranking hands it, so no request waits for it."""
    factors = np.ones((1, 1), dtype=np.float32)
    for item_type in _WEIGHED_TYPES[0]:
        for group_type in _WEIGHED_TYPES[1]:
            _weigh(
                np.zeros(1, dtype=item_type), np.ones(1, dtype=np.float32),
                np.zeros(1, dtype=group_type), factors, np.zeros(1, dtype=bool),
                np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float32),
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
        "_buries",
        "_burying",
        "_columns",
        "_deeper",
        "_factors",
        "_ids",
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
        self.group: NDArray[np.unsignedinteger[Any]] = renumber[group].astype(
            np.min_scalar_type(max(len(used) - 1, 0))
        )
        """Every item's group."""
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

    def multiply(
        self, groups: NDArray[np.unsignedinteger[Any]], scores: NDArray[np.float32]
    ) -> None:
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


class Weighing:
    """One answer's boosts and buries as the ranking applies them to its candidates
    (a :class:`~recsvc.ranking.ScoreWeights`): the candidates' scores multiplied before
    the cut, so the search's candidates are ranked once, by the weighted score. It
    remembers the candidates the buries picked, with their scores before the weights,
    to say which buries pushed an item down (one per answer: never shared)."""

    __slots__ = ("_buried", "weights")

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self._buried: list[tuple[NDArray[np.integer[Any]], NDArray[np.float32]]] = []

    def weigh(self, items: IntArray, scores: NDArray[np.float32]) -> None:
        w = self.weights
        if (
            len(items)
            and items.dtype in _WEIGHED_TYPES[0]
            and w.group.dtype in _WEIGHED_TYPES[1]
            and scores.dtype == np.float32
            and scores.flags.c_contiguous
            and len(scores) == len(items)
            and items.min() >= 0
            and items.max() < len(w.group)  # it reads without bounds checks
        ):  # one compiled pass (what follows is the same in NumPy calls)
            found_groups = np.empty(len(items), dtype=np.int64)
            found_scores = np.empty(len(items), dtype=np.float32)
            found = _weigh(
                items, scores, w.group, w._factors, w._burying, found_groups, found_scores
            )
            if found:
                self._buried.append((found_groups[:found], found_scores[:found]))
            return
        groups = w.group.take(items)
        if w._buried and len(groups):  # some group holds a bury
            hit = w._burying.take(groups)
            if hit.any():
                self._buried.append((groups[hit], scores[hit]))
        w.multiply(groups, scores)

    def room(self, basis: int) -> int:
        return basis  # a boost may lift any candidate: room for it to climb

    def buried(self, threshold: float) -> list[str]:
        """The buries that picked a candidate whose score before the weights reached
        ``threshold`` (the answer's last score): each pushed an item down, or out."""
        groups: set[int] = set()
        for g, before in self._buried:
            groups.update(g[before >= threshold].tolist())
        return self.weights.buried(list(groups)) if groups else []


class ActiveRules(Sequence[CompiledRule]):
    """The rules that apply to an answer (in id order), with what :func:`merchandise`
    needs of them prepared: their pins, their actions and their boosts' and buries'
    :class:`Weights` (folded at the first answer, then kept with the rule set: see
    :meth:`LiveRules.active`)."""

    __slots__ = ("_rules", "_weights", "actions", "n_items", "pins", "weighed")

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

    A few dozen candidates: the work is in Python lists but for the scores, and the
    answer is gathered from the candidates' arrays once, at the end."""
    active = ActiveRules.of(rules, items)
    capped = cap > 0 and category is not None
    applied: dict[str, None] = {}

    # 1. boost and bury
    weights = active.weights
    order: list[int] | None = None  # the candidates best first (None: as they came)
    groups: list[int] = []  # each candidate's group of boosts and buries
    ids_of: list[tuple[str, ...]] = [_NO_IDS]  # per group, its rules
    if weighed is not None:
        # the ranking weighed and ordered the candidates: their groups, for the ids
        ids_of = weighed.weights.rule_ids
        groups = weighed.weights.group.take(items).tolist()
        last = float(scores[k - 1]) if len(scores) >= k else -math.inf
        applied.update(dict.fromkeys(weighed.buried(last)))
        if not active.pins and not capped:
            rule_ids = [ids_of[g] for g in groups[:k]]
            applied.update(dict.fromkeys(chain.from_iterable(rule_ids)))
            return Merchandised(items[:k], scores[:k], reasons[:k], rule_ids, tuple(applied))
    elif weights is not None:
        scores = scores.astype(np.float32)  # a copy
        groups = weights.apply(items, scores)
        applied.update(dict.fromkeys(weights.buried(groups[:k])))  # pushed down or out
        sort = (-scores).argsort(kind="stable")
        ids_of = weights.rule_ids
        if not active.pins and not capped:
            top = sort[:k]
            rule_ids = [ids_of[groups[i]] for i in top.tolist()]
            applied.update(dict.fromkeys(chain.from_iterable(rule_ids)))
            return Merchandised(items[top], scores[top], reasons[top], rule_ids, tuple(applied))
        order = sort.tolist()
    elif not active.pins and not capped:
        top_k = items[:k]
        return Merchandised(top_k, scores[:k], reasons[:k], [_NO_IDS] * len(top_k), ())
    if not groups:
        groups = [0] * len(items)

    # 2. pins
    listed: list[int] = items.tolist()
    best_first: Sequence[int] = range(len(listed)) if order is None else order  # indices
    shown = _Allowed(allowed)
    pins: list[tuple[int, int, str]] = []  # (slot, item, rule id)
    taken: set[int] = set()
    for c in active.pins:
        slot = c.rule.position - 1
        for pos in _pinned(c, items, listed, best_first, shown, popular, taken):
            pins.append((slot, pos, c.rule.rule_id))
            taken.add(pos)
            slot += 1

    # 3. the cap, over what the pins left: the rest, best first, at most k
    rest = [i for i in best_first if listed[i] not in taken] if taken else list(best_first)
    if capped:
        assert category is not None
        counts: dict[int, int] = {}
        for _, pos, _ in pins:
            code = int(category[pos])
            if code >= 0:
                counts[code] = counts.get(code, 0) + 1
        rest = _capped(rest, category.take(items).tolist(), counts, cap, k)
    else:
        del rest[k:]

    # 4. assemble: each pin put in at its place (the next free one after an earlier
    # pin's), or after the rest when the rest is shorter
    slots: dict[int, tuple[int, str]] = {}
    for wanted, pos, rule_id in pins:
        free = wanted
        while free in slots:
            free += 1
        slots[free] = (pos, rule_id)
    picks = rest  # indices into items; -1 - j: others[j]
    out_rules = [ids_of[groups[i]] for i in picks]
    others: list[int] = []  # pinned items that were not ranked
    for slot in sorted(slots):
        place = min(slot, len(picks))
        if place >= k:
            break
        pos, rule_id = slots[slot]
        if pos in listed:  # ranked anyway: keeps its score, reason and rules
            i = listed.index(pos)
            picks.insert(place, i)
            out_rules.insert(place, (*ids_of[groups[i]], rule_id))
        else:
            picks.insert(place, -1 - len(others))
            others.append(pos)
            out_rules.insert(place, (rule_id,))
    del picks[k:], out_rules[k:]
    applied.update(dict.fromkeys(chain.from_iterable(out_rules)))
    if not others:
        chosen = np.array(picks, dtype=np.intp)
    elif len(items):
        chosen = np.array([i if i >= 0 else 0 for i in picks], dtype=np.intp)
    else:  # nothing ranked: only pinned items
        return Merchandised(
            np.array([others[-1 - i] for i in picks], dtype=np.int32),
            np.zeros(len(picks), dtype=np.float32),
            np.full(len(picks), _PINNED, dtype=np.int8),
            out_rules,
            tuple(applied),
        )
    out_items = items[chosen].astype(np.int32, copy=False)
    out_scores = scores[chosen].astype(np.float32, copy=False)
    out_reasons = reasons[chosen].astype(np.int8, copy=False)
    if others:
        for place, i in enumerate(picks):
            if i < 0:
                out_items[place], out_scores[place], out_reasons[place] = (
                    others[-1 - i], 0.0, _PINNED
                )  # fmt: skip
    return Merchandised(out_items, out_scores, out_reasons, out_rules, tuple(applied))


class _Allowed:
    """What may be shown: a mask, or a function that computes it, asked only when a pin
    looks past the ranked items (a catalogue-sized mask)."""

    __slots__ = ("_ask", "_mask")

    def __init__(self, allowed: BoolArray | Shown | None) -> None:
        self._ask = allowed if callable(allowed) else None
        self._mask = None if callable(allowed) else allowed

    def mask(self) -> BoolArray | None:
        """Which items may be shown (None: all)."""
        if self._ask is not None:
            self._mask, self._ask = self._ask(), None
        return self._mask


def _capped(
    rest: list[int], codes: list[int], counts: dict[int, int], cap: int, k: int
) -> list[int]:
    """The first ``k`` of ``rest`` (indices into ``codes``, each item's category) whose
    category does not hold ``cap`` items yet (``counts``, updated)."""
    kept = []
    for i in rest:
        code = codes[i]
        if code >= 0:
            held = counts.get(code, 0)
            if held >= cap:
                continue
            counts[code] = held + 1
        kept.append(i)
        if len(kept) == k:
            break
    return kept


def _pinned(
    c: CompiledRule,
    items: IntArray,
    listed: list[int],
    best_first: Sequence[int],
    allowed: _Allowed,
    popular: IntArray,
    taken: set[int],
) -> list[int]:
    """The items pin ``c`` places, in order (``listed``: the ranked ``items`` as a
    list, ``best_first`` their indices after boost and bury; a ranked item may be
    shown)."""
    if c.positions is not None:
        placed = []
        for pos in c.listed:
            if pos in taken:
                continue
            if pos not in listed:
                mask = allowed.mask()
                if mask is not None and not mask[pos]:
                    continue
            placed.append(pos)
        return placed
    assert c.mask is not None
    hit: list[bool] = c.mask.take(items).tolist()
    for i in best_first:
        if hit[i] and listed[i] not in taken:
            return [listed[i]]
    mask = allowed.mask()
    head = c.popular_matches(popular)
    for lo in range(0, len(head), _PIN_STEP):  # the first few usually hold one
        part = head[lo : lo + _PIN_STEP]
        for pos in (part if mask is None else part[mask[part]]).tolist():
            if pos not in taken:
                return [pos]
    if len(head) < _POPULAR_PINS:  # that was every match
        return []
    # every one of the first few hundred is hidden or taken: look through them all
    everything = popular[c.mask[popular]]
    if mask is not None:
        everything = everything[mask[everything]]
    return next(([p] for p in everything.tolist() if p not in taken), [])
