"""The live catalogue as this replica sees it: followed from the store, kept in memory.

:class:`LiveCatalog` loads a snapshot of the catalogue at start-up and then follows its
change stream (:class:`recsvc.store.catalog.CatalogStore`): a change written through any
replica reaches this one's next answer within a blocking read (well under a second).
Requests never wait for the store: they read :class:`CatalogView`, the catalogue laid
over the served model's item positions — which items may be shown, their live
categories and attributes — rebuilt for each model and updated in place per change.

What a view answers:

- ``shown``: items that may be recommended (not withdrawn, available, inside their
  window); None while nothing is hidden (the common case costs nothing per request).
  Items the live catalogue does not know are shown. Windows are re-checked every
  second (:meth:`LiveCatalog.tick`), for the items that have one.
- category and attribute masks for a request's filters: a category matches any level
  of an item's live path (or its trained category when the live catalogue does not
  know it); string attributes by equality or set membership, numeric ones (``price``
  included) by range; an item without the attribute does not match.

Following, failures and gaps are :class:`serving.follow.Follower`'s.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from recsvc.catalog import AttributeFilter, CatalogItem
from recsvc.errors import FieldViolation, InvalidRequestError
from recsvc.model import Model
from recsvc.store.catalog import CatalogStore

from .follow import Follower

__all__ = ["CatalogView", "LiveCatalog"]

log = logging.getLogger(__name__)

BoolArray = NDArray[np.bool_]
_SERIALS = itertools.count()


class CatalogView:
    """The live catalogue over one model's item positions (see the module docstring).

    Every per-item fact is an array over the model's positions, so a request's filter
    is a few vectorised passes. Updated in place by :class:`LiveCatalog` on the event
    loop; read by requests on the same loop, so a request sees one consistent state
    between its awaits.
    """

    def __init__(self, model: Model, items: Iterable[CatalogItem], now: float) -> None:
        self.model = model
        n = model.n_items
        self._shown = np.ones(n, dtype=bool)
        self._n_hidden = 0
        # category paths as codes, one row per item (-1 pads): the trained category
        # until the live catalogue says otherwise
        self._category_code: dict[str, int] = {}
        trained = model.artifact.item_category
        names = model.artifact.categories.tolist()
        self._paths = np.full((n, 1), -1, dtype=np.int32)
        for code, name in enumerate(names):
            self._category_code[str(name)] = code
        known = trained >= 0
        self._paths[known, 0] = trained[known]
        self._labels: dict[str, NDArray[np.int32]] = {}
        self._label_code: dict[str, dict[str, int]] = {}
        self._numbers: dict[str, NDArray[np.float64]] = {}
        self._windowed: dict[int, CatalogItem] = {}
        self._new_labels: set[str] = set()
        self._new_numbers: set[str] = set()
        """Attribute names only new products have (filters may name them)."""
        self._live = False
        self.revision = 0
        """Counts the records laid over the view: what was derived from its
        categories and attributes at one revision holds until the next."""
        self.serial = next(_SERIALS)
        """Unique per view in this process (an id() may be reused by a later view)."""
        self.flips = 0
        """Counts the items shown or hidden (a record or a window's start or end): with
        :attr:`revision`, what was derived from the view holds until either moves."""
        self._leaves: tuple[int, NDArray[np.int32]] | None = None
        for item in items:
            self.apply(item, now)

    # --- updates ---------------------------------------------------------------------

    def apply(self, item: CatalogItem, now: float) -> None:
        """Lay ``item``'s record over its position (no-op for an item the model lacks)."""
        pos = self.model.item_position.get(item.item_id)
        if pos is None:
            # a new product (:mod:`.newitems`): its attributes may be filtered on
            self._new_labels.update(item.labels)
            self._new_numbers.update(n for n in ("price", *item.numbers)
                                     if not math.isnan(item.number(n)))  # fmt: skip
            return
        self._live = True
        self.revision += 1
        self._set_hidden(pos, not item.shown(now))
        if item.available_from is not None or item.available_until is not None:
            self._windowed[pos] = item
        else:
            self._windowed.pop(pos, None)
        self._set_path(pos, item.category)
        for codes in self._labels.values():
            codes[pos] = -1
        for name, label in item.labels.items():
            if name not in self._labels:
                self._labels[name] = np.full(self.model.n_items, -1, dtype=np.int32)
            vocab = self._label_code.setdefault(name, {})
            self._labels[name][pos] = vocab.setdefault(label, len(vocab))
        for numbers in self._numbers.values():
            numbers[pos] = math.nan
        for name in {"price", *item.numbers}:
            number = item.number(name)
            if math.isnan(number) and name not in self._numbers:
                continue
            if name not in self._numbers:
                self._numbers[name] = np.full(self.model.n_items, np.nan)
            self._numbers[name][pos] = number

    def _set_path(self, pos: int, path: Sequence[str]) -> None:
        if len(path) > self._paths.shape[1]:
            wider = np.full((self._paths.shape[0], len(path)), -1, dtype=np.int32)
            wider[:, : self._paths.shape[1]] = self._paths
            self._paths = wider
        row = self._paths[pos]
        row[:] = -1
        for level, name in enumerate(path):
            row[level] = self._category_code.setdefault(name, len(self._category_code))

    def tick(self, now: float) -> None:
        """Re-check the windows: items whose start or end passed show or hide."""
        for pos, item in self._windowed.items():
            self._set_hidden(pos, not item.shown(now))

    def _set_hidden(self, pos: int, hidden: bool) -> None:
        if self._shown[pos] == hidden:
            self._shown[pos] = not hidden
            self._n_hidden += 1 if hidden else -1
            self.flips += 1

    # --- reads -----------------------------------------------------------------------

    @property
    def shown(self) -> BoolArray | None:
        """Items that may be recommended, None when all may (read it, never write: it is
        the view's own array)."""
        return self._shown if self._n_hidden else None

    @property
    def live(self) -> bool:
        """Whether the live catalogue knows any of the model's items (then categories
        are matched here, on live paths)."""
        return self._live

    @property
    def attributes(self) -> set[str]:
        """Attribute names a filter may name now (``price`` once any item has one)."""
        return {*self._labels, *self._numbers, *self._new_labels, *self._new_numbers}

    def categories(self, names: Sequence[str]) -> BoolArray:
        """Items whose live category path (or, for items the live catalogue does not
        know, trained category) holds any of ``names``."""
        codes = [self._category_code[n] for n in dict.fromkeys(names) if n in self._category_code]
        if not codes:
            return np.zeros(self.model.n_items, dtype=bool)
        if len(codes) == 1:  # a third of np.isin's time
            one: BoolArray = (self._paths == codes[0]).any(axis=1)
            return one
        inside = np.isin(self._paths, np.array(codes, dtype=np.int32))
        hit: BoolArray = np.logical_or.reduce(inside, axis=1)
        return hit

    def labelled(self, name: str, value: str) -> BoolArray:
        """Items whose string attribute ``name`` is ``value``."""
        codes = self._labels.get(name)
        code = self._label_code.get(name, {}).get(value)
        if codes is None or code is None:
            return np.zeros(self.model.n_items, dtype=bool)
        hit: BoolArray = codes == code
        return hit

    def labelled_at(self, name: str, value: str, positions: NDArray[np.intp]) -> BoolArray:
        """Whether each item at ``positions`` has string attribute ``name`` = ``value``
        (:meth:`labelled` for a few items, without a catalogue-sized array)."""
        codes = self._labels.get(name)
        code = self._label_code.get(name, {}).get(value)
        if codes is None or code is None:
            return np.zeros(len(positions), dtype=bool)
        hit: BoolArray = codes[positions] == code
        return hit

    def leaf_names(self, positions: Sequence[int]) -> list[str]:
        """The most specific category name of each item at ``positions`` ('' = none)."""
        names = list(self._category_code)  # codes are given in insertion order
        leaves = self.leaf_categories()
        return [names[c] if c >= 0 else "" for c in leaves[list(positions)].tolist()]

    def leaf_categories(self) -> NDArray[np.int32]:
        """Each item's most specific category as a code (-1: none), live path first:
        what a diversity cap counts. Read it, never write: it is cached."""
        if self._leaves is None or self._leaves[0] != self.revision:
            paths = self._paths
            depth = (paths >= 0).sum(axis=1)
            leaves = np.where(
                depth > 0, paths[np.arange(len(paths)), np.maximum(depth - 1, 0)], -1
            ).astype(np.int32)
            self._leaves = (self.revision, leaves)
        return self._leaves[1]

    def matching(
        self, filters: Sequence[AttributeFilter], path: str = "filters.attributes"
    ) -> BoolArray:
        """Items matching every filter; InvalidRequestError naming each filter whose
        attribute no item has, or whose kind (string, number) it does not match."""
        bad = []
        numbers, labels = {*self._numbers, *self._new_numbers}, {*self._labels, *self._new_labels}
        for i, f in enumerate(filters):
            if f.name not in numbers and f.name not in labels:
                bad.append(FieldViolation(f"{path}[{i}].name", f"no item has attribute {f.name!r}"))
            elif f.numeric and f.name not in numbers:
                bad.append(FieldViolation(f"{path}[{i}].range", f"{f.name!r} holds strings"))
            elif not f.numeric and f.name not in labels:
                bad.append(FieldViolation(f"{path}[{i}].values", f"{f.name!r} holds numbers"))
        if bad:
            raise InvalidRequestError(bad)
        out: BoolArray = np.ones(self.model.n_items, dtype=bool)
        for f in filters:
            if f.name not in (self._numbers if f.numeric else self._labels):
                out[:] = False  # only new products have it
            elif f.numeric:
                column = self._numbers[f.name]
                out &= ~np.isnan(column)
                with np.errstate(invalid="ignore"):
                    if f.low is not None:
                        out &= column >= f.low
                    if f.high is not None:
                        out &= column <= f.high
            else:
                vocab = self._label_code[f.name]
                codes = [vocab[v] for v in f.values if v in vocab]
                out &= np.isin(self._labels[f.name], np.array(codes, dtype=np.int32))
        return out


VIEWS_KEPT = 4
"""Models whose catalogue views a replica keeps (the served one, a few variants)."""


JournalMark = tuple[int, int]
"""Where a reader of :meth:`LiveCatalog.changed_since` got to: (epoch, position)."""
_JOURNAL_MAX: Final = 1_000_000
"""Changed item ids the journal holds before it begins again (~8 MB of references)."""


class LiveCatalog(Follower[CatalogItem]):
    """This replica's copy of the live catalogue, followed from ``store``."""

    store: CatalogStore

    def __init__(self, store: CatalogStore) -> None:
        super().__init__(store)
        self._views: dict[str, CatalogView] = {}
        self._journal: list[str] = []
        """The item ids of the records changed since the journal began, in order."""
        self._journal_epoch = 0
        """Bumped when the journal begins again (a reload, or trimmed)."""

    @property
    def items(self) -> dict[str, CatalogItem]:
        """Every record by item id, withdrawn ones included."""
        return self.records

    def view(self, model: Model) -> CatalogView:
        """The catalogue over ``model``'s items (built once per model). The views of
        the last :data:`VIEWS_KEPT` models asked for are kept up to date: the served
        one and an experiment's variants alternate request by request, and a view
        costs a pass over the catalogue to build."""
        views = self._views
        view = views.get(model.version)
        if view is None:
            view = CatalogView(model, self.items.values(), time.time())
            kept = [(v, w) for v, w in views.items() if w.model is not model]
            self._views = dict([*kept[-(VIEWS_KEPT - 1) :], (model.version, view)])
        return view

    def retain(self, versions: set[str]) -> None:
        """Drop the views of models not in ``versions`` (reloaded away, or a variant's
        that ended): a view holds its model."""
        self._views = {v: view for v, view in self._views.items() if v in versions}

    def changed_since(self, mark: JournalMark | None) -> tuple[list[str] | None, JournalMark]:
        """The item ids whose records changed since ``mark`` (a previous call's; None:
        none), and the mark to pass next. None instead of the ids when it cannot say
        (no mark, a reload, or a journal begun again since): read every record. What
        keeps a derived set up to date without a pass over the catalogue every time."""
        now_mark = (self._journal_epoch, len(self._journal))
        if mark is None or mark[0] != self._journal_epoch or mark[1] > len(self._journal):
            return None, now_mark
        return self._journal[mark[1] :], now_mark

    def reloaded(self, now: float) -> None:
        self._views = {v: CatalogView(view.model, self.items.values(), now)
                       for v, view in self._views.items()}  # fmt: skip
        self._journal, self._journal_epoch = [], self._journal_epoch + 1

    def changed(self, record: CatalogItem, now: float) -> None:
        for view in self._views.values():
            view.apply(record, now)
        journal = self._journal
        journal.append(record.item_id)
        if len(journal) > _JOURNAL_MAX:  # readers behind it read every record once
            self._journal, self._journal_epoch = [], self._journal_epoch + 1

    def tick(self) -> None:
        now = time.time()
        for view in self._views.values():
            view.tick(now)
