"""New products: items the live catalogue sells that the served model was not trained on.

Such an item has no vector, no trained popularity and no neighbours until the next
training; without help it could never be recommended. Each replica gives it a place
in the model's own vector space from what is known of it, refreshed every second
(:meth:`NewItems.follow`):

- **What shoppers put it with.** Every replica counts, for each event on a new item,
  the trained items of the same session (:class:`recsvc.store.cooccur.CoOccurrence`).
  The count-weighted mean of their unit vectors is where shoppers place the item:
  the item side of a fold-in, with co-views and co-purchases as its only ratings.
- **What the shop says of it.** The mean unit vector of the trained items that share
  its most specific live category and (where at least :data:`_MIN_PEERS` items do)
  its string attributes (brand, colour), and the IDF-weighted mean over the words of
  its title of the trained items whose titles hold them (rare words weigh most,
  words in over 5% of titles not at all). Nothing else is known on day one, and
  products of one category, brand or product line sell to the same shoppers.

The two are mixed as evidence accumulates: ``v = (n·cooc + β·content) / (n + β)``
with ``n`` the meetings counted and ``β`` = ``ranking.new_item_evidence`` (a prior
worth β meetings), then scaled to unit length. What the meetings vouch for is
``n / (n + β)``.

A SimilarItems answer holds at most :data:`NEW_PER_ANSWER` of every 10 places new
items: their places are means of the items they met, and means look alike (on the
Online Retail II replay, 81% of a new item's similar list were other new items, and
half of a cart's; weighing them by how much the met items agree instead took every
new item out of every list).

Where a new item shows:

- **SimilarItems of a new item** answers from ``v`` at once (from its attributes
  before anyone met it).
- **SimilarItems of trained items** lists a new item by its cosine to the query
  times that confidence: only once shoppers have put the two together, and more
  confidently with every meeting (an attribute guess alone never crowds out a
  trained neighbour), two in ten places at most.
- **Popular lists and popularity-weighted blends**: a new item's sales count into
  live popularity like any item's (:mod:`.popularity`); having no trained part, its
  prior takes that part to be what it sells now (``live / top``, on the trained
  items' blended scale), so it climbs the popular and category-popular lists as it
  sells.

Filters, withdrawal and availability windows apply to new items as to trained ones;
merchandising rules act on trained items only (a new item is theirs after the next
training), and a diversity cap counts new items too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import numpy as np
from numpy.typing import NDArray

from recsvc.catalog import CatalogItem
from recsvc.errors import StoreError
from recsvc.model import Model
from recsvc.ranking import Reason
from recsvc.store.cooccur import CoOccurrence

from .calls import FilterSpec, ScoredItem
from .catalog import CatalogView, JournalMark, LiveCatalog
from .popularity import LivePopularity

__all__ = [
    "NEW_PER_ANSWER",
    "NewItemLane",
    "NewItems",
    "PeerCache",
    "content_vectors",
    "merge_new",
]

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float32]

_MIN_PEERS: Final = 3
"""An attribute narrows the category's peers only while at least this many remain."""
_COMMON_WORD: Final = 0.05
"""Title words held by more than this share of the trained titles say nothing."""
_SESSION_ITEMS: Final = 20
"""A new item is counted with at most this many of its session's newest items."""
_TITLE_INDEX_EMPTY_SECONDS: Final = 5.0
"""... and at most this often while it holds no title (a catalogue still loading)."""
_TITLE_INDEX_CHANGED_SECONDS: Final = 60.0
"""The trained titles' index is rebuilt at most this often while the catalogue changes."""
_TITLE_INDEX_SECONDS: Final = 600.0
"""The trained items' title index is rebuilt at most this often (titles rarely
change; a new item's own title is read at every refresh)."""
NEW_PER_ANSWER: Final = 2
"""New items a SimilarItems answer holds at most per 10 places (at least one)."""
_CLOCK_MARGIN: Final = 10.0
"""Seconds of counts re-read at each refresh: replicas' clocks may differ this much."""
_PLACE_PER_REFRESH: Final = 1_000
"""Records placed by one refresh at most (a catalogue sync's new products are placed
over the next seconds)."""
_PLACE_CHUNK: Final = 25
"""Records placed between two yields to the event loop."""
_PLACE_BUDGET_SECONDS: Final = 0.05
"""Event-loop time one refresh spends placing records at most (in chunks)."""
_PEERS_SECONDS: Final = 60.0
"""The category and attribute peers' means are computed again after this long (the
trained items' categories change rarely; new items reuse them meanwhile)."""
_WORD = re.compile(r"[^\W\d_]{2,}")


def title_words(title: str) -> set[str]:
    """The words of a title that can match: letters only, two or more, lower case."""
    return {w.lower() for w in _WORD.findall(title)}


class TitleIndex:
    """Which trained items' titles hold each word (of the live catalogue's records).

    ``words``: each title's words as the last index found them (read, and replaced by
    this index's own in :attr:`words`): titles rarely change, and splitting them is
    most of the work of a build (100k titles: ~0.3 s, a thread holding the GIL)."""

    def __init__(
        self,
        model: Model,
        records: Iterable[CatalogItem],
        words: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        positions: defaultdict[str, list[int]] = defaultdict(list)
        known = words or {}
        found: dict[str, tuple[str, ...]] = {}
        vocabulary: dict[str, str] = {}
        titled = 0
        for record in records:
            pos = model.item_position.get(record.item_id)
            title = record.title
            if pos is None or not title:
                continue
            titled += 1
            split = found.get(title)
            if split is None:
                split = known.get(title)
                if split is None:  # one string per word, however many titles hold it
                    split = tuple(vocabulary.setdefault(w, w) for w in title_words(title))
                found[title] = split
            for word in split:
                positions[word].append(pos)
        self.words = found
        """Each title's words (what the next build reads)."""
        limit = max(_MIN_PEERS, _COMMON_WORD * titled)
        self.items = {
            w: np.array(p, dtype=np.int32) for w, p in positions.items() if len(p) <= limit
        }
        self.titled = titled
        self.built_at = time.monotonic()
        self.catalog_version = -1
        """The live catalogue's version the titles were read at (-1: unknown)."""
        self.signature = (titled, tuple(sorted((w, len(p)) for w, p in self.items.items())))
        """What the index says, in brief: an index rebuilt with the same signature
        places every item as before."""

    def vector(self, title: str, unit: FloatArray) -> FloatArray | None:
        """IDF-weighted mean, over ``title``'s words, of the mean unit vector of the
        trained items whose titles hold the word; None when no word matches."""
        total: FloatArray | None = None
        for word in sorted(title_words(title)):
            hits = self.items.get(word)
            if hits is None:
                continue
            part = unit[hits].mean(axis=0) * math.log(1.0 + self.titled / len(hits))
            total = part if total is None else total + part
        return total


def content_vectors(
    model: Model,
    view: CatalogView | None,
    records: Sequence[CatalogItem],
    unit: FloatArray,
    titles: TitleIndex | None,
    peers_of: PeerCache | None = None,
) -> list[FloatArray | None]:
    """What the shop says of each of ``records`` (new items), as a direction in
    ``model``'s space (see the module docstring); None where nothing matches.
    ``peers_of``: the peers already found (filled as they are)."""
    if peers_of is None:
        peers_of = PeerCache()
    means = peers_of.means
    out: list[FloatArray | None] = []
    for record in records:
        parts: list[FloatArray] = []
        if view is not None and record.category:
            key = (record.category[-1], tuple(sorted(record.labels.items())))
            if key not in means:
                means[key] = _peers_vector(view, key[0], record.labels, unit, peers_of.members)
            peer = means[key]
            if peer is not None:
                parts.append(_unit(peer))
        if titles is not None and record.title:
            words = titles.vector(record.title, unit)
            if words is not None:
                parts.append(_unit(words))
        total = np.sum(parts, axis=0) if parts else None
        out.append(_unit(total) if total is not None and np.linalg.norm(total) > 0 else None)
    return out


def _described(record: CatalogItem) -> tuple[object, ...]:
    """What places a record by its attributes: its category, string attributes, title."""
    return record.category, tuple(sorted(record.labels.items())), record.title


class PeerCache:
    """Peers found while placing new items: each (leaf category, string attributes)'s
    mean unit vector, and each leaf's members (trained item positions), so that a
    leaf's catalogue-wide mask is made once, not once per attribute combination."""

    __slots__ = ("means", "members")

    def __init__(self) -> None:
        self.means: dict[tuple[str, tuple[tuple[str, str], ...]], FloatArray | None] = {}
        self.members: dict[str, NDArray[np.intp]] = {}


def _peers_vector(
    view: CatalogView,
    leaf: str,
    labels: Mapping[str, str],
    unit: FloatArray,
    members: dict[str, NDArray[np.intp]],
) -> FloatArray | None:
    peers = members.get(leaf)
    if peers is None:
        peers = members[leaf] = np.flatnonzero(view.categories([leaf]))
    if not len(peers):
        return None
    for name, value in sorted(labels.items()):
        narrower = peers[view.labelled_at(name, value, peers)]
        if len(narrower) >= _MIN_PEERS:
            peers = narrower
    mean: FloatArray = unit[peers].mean(axis=0)
    return mean


def _unit(v: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(v))
    return (v / norm).astype(np.float32) if norm > 0 else v.astype(np.float32)


@dataclass(frozen=True)
class NewItemLane:
    """The new items over one model, as requests read them (immutable: a refresh
    builds the next one)."""

    model_version: str
    records: tuple[CatalogItem, ...]
    vectors: FloatArray
    """``(m, factors)`` unit rows; zero where nothing places the item."""
    placed: NDArray[np.bool_]
    """``(m,)`` whether the item has a direction."""
    confidence: NDArray[np.float32]
    """``(m,)`` ``n / (n + β)``: what shoppers' meetings vouch for its place."""
    prior: NDArray[np.float32]
    """``(m,)`` its live popularity on the blended prior's scale (0: no sales)."""
    position: Mapping[str, int]
    """Item id -> row."""
    leaf: tuple[str, ...]
    """Each item's most specific live category ('' = none)."""
    met: NDArray[np.int64] = field(init=False)
    """Rows shoppers have put with trained items (confidence > 0), placed."""
    selling: NDArray[np.int64] = field(init=False)
    """Rows with live sales (prior > 0), best-selling first."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "met", np.flatnonzero(self.placed & (self.confidence > 0)))
        rows = np.flatnonzero(self.prior > 0)
        object.__setattr__(self, "selling", rows[np.argsort(-self.prior[rows], kind="stable")])

    @property
    def size(self) -> int:
        return len(self.records)

    def counts(self) -> dict[str, int]:
        """How many are known, placed, met by shoppers, selling (the metric's states)."""
        return {
            "known": self.size,
            "placed": int(self.placed.sum()),
            "met": len(self.met),
            "selling": len(self.selling),
        }

    def passes(self, row: int, spec: FilterSpec, now: float) -> bool:
        """Whether ``spec`` and the live catalogue let item ``row`` be shown."""
        record = self.records[row]
        if not record.shown(now) or record.item_id in spec.exclude_item_ids:
            return False
        path = record.category
        if spec.include_categories and not any(c in path for c in spec.include_categories):
            return False
        if any(c in path for c in spec.exclude_categories):
            return False
        for f in spec.attributes:
            if f.numeric:
                number = record.number(f.name)
                if math.isnan(number):
                    return False
                if (f.low is not None and number < f.low) or (
                    f.high is not None and number > f.high
                ):
                    return False
            elif record.labels.get(f.name) not in f.values:
                return False
        return True

    def popular(self, spec: FilterSpec, now: float, k: int, weight: float) -> list[ScoredItem]:
        """The ``k`` best-selling new items ``spec`` allows, scored ``weight · prior``
        (what a trained item with no other signal scores in the same blend)."""
        out = []
        for row in self.selling.tolist():
            if self.passes(row, spec, now):
                score = float(weight * self.prior[row])
                out.append(ScoredItem(self.records[row].item_id, score, Reason.POPULAR))
                if len(out) == k:
                    break
        return out

    def similar(
        self, direction: FloatArray, spec: FilterSpec, now: float, k: int, skip: set[str]
    ) -> list[ScoredItem]:
        """The ``k`` new items closest to ``direction`` (unit) that shoppers have met,
        scored by cosine times confidence."""
        rows = self.met
        if len(rows) == 0:
            return []
        scores = (self.vectors[rows] @ direction) * self.confidence[rows]
        order = np.argsort(-scores, kind="stable")
        out = []
        for i in order.tolist():
            row, score = int(rows[i]), float(scores[i])
            if score <= 0:
                break
            item_id = self.records[row].item_id
            if item_id not in skip and self.passes(row, spec, now):
                out.append(ScoredItem(item_id, score, Reason.SIMILAR))
                if len(out) == k:
                    break
        return out


def merge_new(
    items: Sequence[ScoredItem],
    new: Sequence[ScoredItem],
    k: int,
    *,
    category: Mapping[str, str] | None = None,
    cap: int = 0,
) -> tuple[list[ScoredItem], list[int]]:
    """``items`` (an answer, best first) with ``new`` items merged in by score: pinned
    items keep their places, every other place goes to the best of both, and with a
    ``cap`` at most ``cap`` items per ``category`` (item id -> leaf category) are
    kept. Returns the answer and, for each of its items, its index in ``items`` (-1:
    a new item)."""
    if not new:
        return list(items[:k]), list(range(min(k, len(items))))
    pinned = {i: it for i, it in enumerate(items) if it.reason is Reason.PINNED and i < k}
    free = [(it, i) for i, it in enumerate(items) if i not in pinned]
    free += [(it, -1) for it in new]
    free.sort(key=lambda pair: -pair[0].score)  # stable: an answer's item first on ties
    counts: Counter[str] = Counter()
    if cap and category is not None:
        counts.update(category.get(it.item_id, "") for it in pinned.values())
    out: list[tuple[ScoredItem, int]] = []
    chosen = iter(free)
    for slot in range(k):
        if slot in pinned:
            out.append((pinned[slot], slot))
            continue
        for it, origin in chosen:
            if cap and category is not None:
                leaf = category.get(it.item_id, "")
                if leaf and counts[leaf] >= cap:
                    continue
                counts[leaf] += 1
            out.append((it, origin))
            break
    return [it for it, _ in out], [origin for _, origin in out]


@dataclass(frozen=True)
class _Row:
    """One new item's place, with what it was computed from (compared by identity)."""

    met: list[tuple[str, float]] | None
    content: FloatArray | None
    vector: FloatArray | None
    confidence: float


class NewItems:
    """This replica's new items (see the module docstring).

    A refresh costs what changed since the last one: the meetings of the items whose
    counts moved (:meth:`CoOccurrence.touched`), the attribute places of the records
    that changed, and one stack of the rows; everything is read afresh when the served
    model changes, and the trained titles' index every :data:`_TITLE_INDEX_SECONDS`.
    """

    def __init__(
        self,
        catalog: LiveCatalog,
        cooccurrence: CoOccurrence,
        popularity: LivePopularity | None,
        *,
        evidence: float = 2.0,
        max_items: int = 10_000,
    ) -> None:
        self.catalog = catalog
        self.cooccurrence = cooccurrence
        self.popularity = popularity
        self.evidence = evidence
        self.max_items = max_items
        self.lane: NewItemLane | None = None
        self._version = ""
        self._unit: FloatArray | None = None
        self._titles: TitleIndex | None = None
        self._met: dict[str, list[tuple[str, float]]] = {}
        self._read_until: float | None = None
        self._content: dict[str, tuple[CatalogItem, FloatArray | None]] = {}
        self._peers = PeerCache()
        self._peers_at = -math.inf
        self._rows: dict[str, _Row] = {}
        self._candidates: tuple[tuple[object, ...], list[CatalogItem]] | None = None
        self._unknown: dict[str, CatalogItem] = {}
        """The records the model of :attr:`_unknown_of` does not know, not withdrawn."""
        self._unknown_of: tuple[str, int, JournalMark] | None = None
        """(model version, the catalogue's records' identity, journal mark) they are of."""
        self._placed: list[CatalogItem] | None = None
        """The candidates every one of which has its attribute place (None: not yet)."""
        self._met_changed = True
        self._built_from: list[CatalogItem] | None = None
        """The candidates :attr:`lane` was built from."""

    def of(self, model: Model) -> NewItemLane | None:
        """The new items of ``model``; None when there are none (or not yet read)."""
        lane = self.lane
        if lane is None or lane.model_version != model.version or lane.size == 0:
            return None
        return lane

    def candidates(self, model: Model) -> list[CatalogItem]:
        """Records of the live catalogue ``model`` does not know, not withdrawn: the
        newest :attr:`max_items` of them."""
        if self.max_items == 0:
            return []
        # the same list while neither the catalogue nor the model changed: a refresh of
        # an unchanged catalogue costs no pass over its records
        key = (model.version, self.catalog.version, id(self.catalog.items), self.max_items)
        if self._candidates is not None and self._candidates[0] == key:
            return self._candidates[1]
        new = list(self._unknown_records(model).values())
        if len(new) > self.max_items:
            new.sort(key=lambda r: (-r.updated_at, r.item_id))
            new = new[: self.max_items]
        new.sort(key=lambda r: r.item_id)
        self._candidates = (key, new)
        return new

    def _unknown_records(self, model: Model) -> dict[str, CatalogItem]:
        """The records ``model`` does not know, not withdrawn, by item id: a pass over
        the catalogue once per model and reload, then only over the records changed
        since (:meth:`LiveCatalog.changed_since`). The pass over 100k records took
        ~50 ms of the event loop at every refresh while a sync changed the catalogue."""
        items = self.catalog.items
        known = model.item_position
        last = self._unknown_of
        changed, mark = self.catalog.changed_since(last[2] if last is not None else None)
        unknown = self._unknown
        if changed is None or last is None or last[:2] != (model.version, id(items)):
            unknown = {r.item_id: r for r in items.values()
                       if not r.withdrawn and r.item_id not in known}  # fmt: skip
        else:
            for item_id in changed:
                if item_id in known:
                    continue  # the model's: never a new item (most of a sync's)
                record = items.get(item_id)
                if record is None or record.withdrawn:
                    unknown.pop(item_id, None)
                else:
                    unknown[item_id] = record
        self._unknown, self._unknown_of = unknown, (model.version, id(items), mark)
        return unknown

    def is_new(self, model: Model, item_id: str) -> bool:
        """Whether ``item_id`` is a new item of the live catalogue for ``model``."""
        if self.max_items == 0 or item_id in model.item_position:
            return False
        record = self.catalog.items.get(item_id)
        return record is not None and not record.withdrawn

    async def count(
        self, model: Model, sessions: Mapping[str, tuple[Sequence[str], Sequence[str]]]
    ) -> None:
        """Count meetings: ``sessions`` maps a session to its new items and the trained
        items they met there (oldest first). StoreError when the store fails."""
        counts: dict[str, dict[str, float]] = {}
        for new, others in sessions.values():
            known = [o for o in dict.fromkeys(reversed(others)) if o in model.item_position]
            for item in dict.fromkeys(new):
                row = counts.setdefault(item, {})
                for other in known[:_SESSION_ITEMS]:
                    row[other] = row.get(other, 0.0) + 1.0
        await self.cooccurrence.add(counts)

    async def refresh(self, model: Model) -> None:
        """Bring the lane of ``model`` up to date with the live catalogue, the counts and
        live popularity (StoreError when the counts cannot be read: the last lane
        stays)."""
        now = time.time()
        if model.version != self._version:
            self._version = model.version
            self._unit = _unit_rows(model.artifact.item_factors)
            self._titles = None
            self._met, self._read_until, self._content, self._rows = {}, None, {}, {}
            self._peers, self._peers_at = PeerCache(), -math.inf
            self._placed = None
        records = self.candidates(model)
        lane = self.lane
        same = lane is not None and self._built_from is records
        ids = set(lane.position) if lane is not None and same else {r.item_id for r in records}
        if self.popularity is not None and ids != self.popularity.new_ids:
            self.popularity.new_ids = frozenset(ids)  # kept otherwise: it keys a cache
        await self._read_meetings(ids, now)
        placed = await self._place(model, records)
        prior = self._prior(model, records)
        if (
            lane is not None
            and lane.model_version == model.version
            and same
            and not placed
            and not self._met_changed
        ):
            # nothing a row depends on changed: at most the live popularity moved
            if not np.array_equal(prior, lane.prior):
                self.lane = replace(lane, prior=prior)
            return
        self._met_changed = False
        self._build(model, records, prior)

    def _prior(self, model: Model, records: Sequence[CatalogItem]) -> FloatArray:
        prior = np.zeros(len(records), np.float32)
        if self.popularity is not None:
            prior[:] = self.popularity.new_prior([r.item_id for r in records], model)
        return prior

    async def _read_meetings(self, ids: set[str], now: float) -> None:
        if self._read_until is None:
            wanted = sorted(ids)
        else:
            # replicas' clocks differ a little: re-read a margin of what was read
            touched = await self.cooccurrence.touched(self._read_until - _CLOCK_MARGIN)
            wanted = [i for i in touched if i in ids]
        if wanted:
            met = await self.cooccurrence.read(wanted)
            for item in wanted:
                fresh = met.get(item)
                if fresh is None:
                    if self._met.pop(item, None) is not None:
                        self._met_changed = True
                elif fresh != self._met.get(item):
                    # kept when equal: a re-read of the margin changes no row
                    self._met[item] = fresh
                    self._met_changed = True
        self._read_until = now
        gone = [i for i in self._met if i not in ids]
        for item in gone:
            del self._met[item]
        self._met_changed = self._met_changed or bool(gone)

    async def _place(self, model: Model, records: list[CatalogItem]) -> bool:
        """Attribute places of records that changed (all of them when the title index
        is rebuilt); whether any place was computed or kept for a new record."""
        assert self._unit is not None
        titles = self._titles
        stale = titles is None or self._titles_stale(titles)
        if records is self._placed and not stale:
            return False  # every one placed, and nothing changed since
        if stale:
            every = list(self.catalog.items.values())
            version = self.catalog.version
            # off the event loop: 100k titles take a few hundred milliseconds (it reads
            # immutable records and the model, never the view)
            rebuilt = await asyncio.to_thread(
                TitleIndex, model, every, titles.words if titles is not None else None
            )
            rebuilt.catalog_version = version
            if titles is None or rebuilt.signature != titles.signature:
                self._content = {}  # the words place items differently now
            self._titles = titles = rebuilt
        assert titles is not None
        # a record whose category, attributes and title did not change (a stock or price
        # update, a catalogue sync rewriting every record) keeps its place
        changed: list[CatalogItem] = []
        kept = False
        content = self._content
        for r in records:
            cached = content.get(r.item_id)
            if cached is None:
                changed.append(r)
            elif cached[0] is not r:  # the same record object: nothing to compare
                if _described(cached[0]) == _described(r):
                    content[r.item_id] = (r, cached[1])
                    kept = True
                else:
                    changed.append(r)
        if not changed:
            self._placed = records
            return kept
        if time.monotonic() - self._peers_at > _PEERS_SECONDS:
            self._peers, self._peers_at = PeerCache(), time.monotonic()
        view = self.catalog.view(model)
        index = titles if titles.titled else None
        # on the event loop, never in a thread: the view changes under it with every
        # catalogue change. In small chunks, yielding between them, within a budget of
        # loop time per refresh; the rest are placed by the next refreshes
        started = time.monotonic()
        done = 0
        for start in range(0, min(len(changed), _PLACE_PER_REFRESH), _PLACE_CHUNK):
            chunk = changed[start : start + _PLACE_CHUNK]
            placed = content_vectors(model, view, chunk, self._unit, index, self._peers)
            for record, vector in zip(chunk, placed, strict=True):
                self._content[record.item_id] = (record, vector)
            done += len(chunk)
            if time.monotonic() - started > _PLACE_BUDGET_SECONDS:
                break
            await asyncio.sleep(0)
        # placed by now unless the budget ran out (or the catalogue moved meanwhile)
        self._placed = records if done == len(changed) else None
        return True

    def _titles_stale(self, titles: TitleIndex) -> bool:
        """Whether the trained titles' index should be built again: every
        :data:`_TITLE_INDEX_SECONDS`, and sooner once the catalogue changed (at most
        every :data:`_TITLE_INDEX_CHANGED_SECONDS`; at once while it holds no title: a
        server started before the shop's catalogue was loaded)."""
        age = time.monotonic() - titles.built_at
        if age > _TITLE_INDEX_SECONDS:
            return True
        if self.catalog.version == titles.catalog_version:
            return False
        return age > (
            _TITLE_INDEX_EMPTY_SECONDS if titles.titled == 0 else _TITLE_INDEX_CHANGED_SECONDS
        )

    def _build(self, model: Model, records: list[CatalogItem], prior: FloatArray) -> None:
        assert self._unit is not None
        m, factors = len(records), self._unit.shape[1]
        vectors = np.zeros((m, factors), np.float32)
        placed = np.zeros(m, bool)
        confidence = np.zeros(m, np.float32)
        rows: dict[str, _Row] = {}
        for row, record in enumerate(records):
            item = record.item_id
            met = self._met.get(item)
            content = self._content.get(item, (None, None))[1]
            cached = self._rows.get(item)
            if cached is not None and cached.met is met and cached.content is content:
                # nothing its place depends on changed (a new record whose description
                # did not change keeps its content: a stock or price update, a sync)
                v, c = cached.vector, cached.confidence
            else:
                v, c = self._direction(model, content, met)
            rows[item] = _Row(met, content, v, c)
            if v is not None:
                vectors[row], placed[row] = v, True
            confidence[row] = c
        self._rows = rows
        self._built_from = records
        self.lane = NewItemLane(
            model_version=model.version,
            records=tuple(records),
            vectors=vectors,
            placed=placed,
            confidence=confidence,
            prior=prior,
            position={r.item_id: i for i, r in enumerate(records)},
            leaf=tuple(r.category[-1] if r.category else "" for r in records),
        )

    def _direction(
        self, model: Model, content: FloatArray | None, met: list[tuple[str, float]] | None
    ) -> tuple[FloatArray | None, float]:
        """An item's unit direction from its attribute place ``content`` and its
        meetings ``met``, and the confidence the meetings give it."""
        assert self._unit is not None
        pairs = [(model.item_position.get(o), n) for o, n in met or ()]
        known = [(p, n) for p, n in pairs if p is not None]
        if not known:
            return content, 0.0
        at = np.array([p for p, _ in known], np.int32)
        w = np.array([n for _, n in known], np.float32)
        n = float(w.sum())
        shoppers = (w[:, None] * self._unit[at]).sum(axis=0) / n
        beta = self.evidence
        v = shoppers if content is None else (n * shoppers + beta * content) / (n + beta)
        return _unit(v), n / (n + beta)

    async def follow(
        self, stop: asyncio.Event, model: Callable[[], Model | None], every: float = 1.0
    ) -> None:
        """Refresh the lane of the served model every ``every`` seconds until ``stop``."""
        while not stop.is_set():
            served = model()
            if served is not None:
                try:
                    await self.refresh(served)
                except StoreError as exc:
                    log.warning("reading new items' meetings failed, keeping the last: %s", exc)
            del served  # a model reloaded away goes at once, not after the wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)


def _unit_rows(y: FloatArray) -> FloatArray:
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    unit: FloatArray = (y / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return unit
