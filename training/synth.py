"""A seeded synthetic shop, streamed to disk as canonical event CSV plus a catalogue.

It feeds the demo, the tests and the scale benchmarks (1k to 50M events). The shop has
the structure a recommender should find:

* **Catalogue** — ``n_items`` items in ``n_categories`` categories. Category popularity and
  item popularity within a category are Zipf-like, so item popularity is long-tailed. About
  ``out_of_stock_rate`` of the items are unavailable (they keep their history: they went
  out of stock recently, which is what serving must filter).
* **Users** — each has a sparse Dirichlet taste over ``categories_per_user`` distinct
  favourite categories (popular categories are favoured more often), a few *staples* they
  re-buy, and a log-normal activity, so the number of events and sessions per user is
  long-tailed.
* **Sessions** — a session is a run of *units*: view an item, maybe add it to the cart,
  maybe buy it. Items come from the user's favourite categories (or, with probability
  ``explore_rate``, from anywhere); a bought item is one of the user's staples with
  probability ``repeat_rate``. Purchases happen together at checkout, at the end of the
  session, with one timestamp and one ``basket_id`` per purchasing session.

Files (comma-separated, ``\\n`` line ends, never quoted; gzip when the path ends in ``.gz``):

``events``  ``user_id,item_id,timestamp,event_type,quantity,basket_id``
    ``u000123,i000456,1672531200,view,1,`` — ids are zero-padded to the width of the
    largest index (``u`` + ``len(str(n_users - 1))`` digits, likewise ``i``); ``timestamp``
    is Unix seconds in ``[end_timestamp - days * 86400, end_timestamp)``; ``event_type`` is
    ``view``, ``add_to_cart`` or ``purchase``; ``quantity`` is an int >= 1 (1 for views);
    ``basket_id`` (``b`` + digits) is set on purchase rows only. Rows are grouped by user
    (ascending id) and are in time order within a user.
``catalogue``  ``item_id,category,available,title,price``
    ``i000456,c07,true,Item 456 (category 7),12.99`` — every item, in id order.

Generation is streamed: users are cut into blocks of about :data:`BLOCK_EVENTS` events,
each block is built with vectorised NumPy and written with ``pyarrow.csv.CSVWriter``, so
memory is bounded by a block (plus the catalogue), not by ``n_events``. Every block draws
from its own ``SeedSequence(seed, spawn_key=(stream, block))``, so the output is a pure
function of the :class:`SynthConfig`: the same config gives byte-identical files. Files are
written to hidden temporary files in the destination directory and renamed into place only
when everything succeeded.

:func:`ground_truth` recomputes the hidden structure (item categories and popularity,
user tastes, staples, activity) from the config without generating events, so tests can
check that a model learns what the data was built from.
"""

from __future__ import annotations

import gzip
import math
import numbers
import operator
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from recsvc.errors import ConfigError

__all__ = [
    "BLOCK_EVENTS",
    "MAX_EVENTS",
    "MIN_EVENTS",
    "SynthConfig",
    "SynthSummary",
    "SynthTruth",
    "default_catalog_path",
    "generate",
    "ground_truth",
]

# Array aliases; the shape is given in each docstring.
IntArray: TypeAlias = npt.NDArray[np.int64]
Int32Array: TypeAlias = npt.NDArray[np.int32]
FloatArray: TypeAlias = npt.NDArray[np.float64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

MIN_EVENTS = 1_000
"""Smallest ``n_events`` accepted."""
MAX_EVENTS = 50_000_000
"""Largest ``n_events`` accepted."""
BLOCK_EVENTS = 500_000
"""Target events per generated block. Part of the output's definition: changing it changes
the files a seed produces (block boundaries choose the random streams)."""

MAX_ITEMS = 10_000_000
MAX_CATEGORIES = 10_000
MAX_EVENTS_PER_USER = 10_000  # on average; keeps one user's rows within a block's memory
DEFAULT_END_TIMESTAMP = 1_704_067_200  # 2024-01-01T00:00:00Z
GZIP_LEVEL = 1  # 5x faster than level 6 on this CSV for ~20% more bytes (pyarrow's is level 9)

# Independent random streams: (stream, block) is the SeedSequence spawn key.
_STREAM_CATALOG = 0
_STREAM_ALLOCATION = 1
_STREAM_USERS = 2
_STREAM_EVENTS = 3

_VIEW, _CART, _PURCHASE = 0, 1, 2
_EVENT_NAMES = ("view", "add_to_cart", "purchase")
_VIEW_GAP_SECONDS = 45.0  # mean seconds between browsing events in a session
_CHECKOUT_GAP_SECONDS = 90.0  # mean seconds from the last browse event to checkout
_EXTRA_UNIT_PROBABILITY = 0.3  # P(quantity > 1) for a carted item; geometric tail
_CSV_BATCH_ROWS = 65_536

_EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("event_type", pa.string()),
        ("quantity", pa.int32()),
        ("basket_id", pa.string()),
    ]
)
_CATALOG_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("available", pa.bool_()),
        ("title", pa.string()),
        ("price", pa.string()),
    ]
)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the synthetic shop. Validated on construction.

    Raises:
        ConfigError: a value out of range (``n_events`` outside
            ``[MIN_EVENTS, MAX_EVENTS]``, more users than events, a rate outside ``[0, 1]``...).
    """

    n_events: int = 100_000
    """Exact number of event rows written, in ``[MIN_EVENTS, MAX_EVENTS]``."""
    n_items: int | None = None
    """Catalogue size; default ``clamp(n_events // 50, 200, 1_000_000)``."""
    n_users: int | None = None
    """Number of users, each with at least one event; default ``n_events // 50``.
    At most ``n_events`` and at least ``n_events / 10_000``."""
    n_categories: int | None = None
    """Number of categories; default ``clamp(round(sqrt(n_items) / 2), 5, 1000)``."""
    repeat_rate: float = 0.3
    """Probability that a purchased item is one of the user's staples (a re-buy)."""
    seed: int = 0
    """Seed of every random stream; non-negative."""
    categories_per_user: int = 3
    """Distinct favourite categories per user (capped at ``n_categories``)."""
    taste_concentration: float = 0.5
    """Dirichlet alpha of a user's weights over their favourites; < 1 is peaked."""
    explore_rate: float = 0.1
    """Probability that a viewed item comes from any category (by popularity)
    instead of the user's favourites."""
    staples_per_user: int = 3
    """Items per user that they re-buy across sessions (drawn from their taste)."""
    cart_rate: float = 0.15
    """Probability that a viewed item is added to the cart."""
    purchase_rate: float = 0.5
    """Probability that a carted item is bought at the session's checkout."""
    session_length: float = 8.0
    """Mean number of events per session (>= 1)."""
    activity_sigma: float = 1.0
    """Sigma of the log-normal user activity, in ``[0, 2]``: larger gives a longer tail of
    heavy users (2 lets the heaviest of 1M users have ~2000x the mean)."""
    item_zipf: float = 1.0
    """Zipf exponent of item popularity within a category (0 is uniform)."""
    category_zipf: float = 1.0
    """Zipf exponent of category popularity (0 is uniform)."""
    out_of_stock_rate: float = 0.05
    """Probability that an item is unavailable (``available`` false)."""
    days: int = 365
    """Length of the time span, in days, ending at ``end_timestamp``."""
    end_timestamp: int = DEFAULT_END_TIMESTAMP
    """Exclusive end of the time span, Unix seconds (default 2024-01-01T00:00:00Z)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            integral = isinstance(f.default, int) or f.default is None
            if integral and isinstance(value, numbers.Integral) and not isinstance(value, bool):
                coerced: float = operator.index(value)
            elif not integral and isinstance(value, numbers.Real) and not isinstance(value, bool):
                coerced = float(value)
            else:
                expected = "an integer" if integral else "a number"
                raise ConfigError(f"synth: {f.name} must be {expected}, got {value!r}")
            # Plain Python numbers from here on (numpy scalars are accepted as input).
            object.__setattr__(self, f.name, coerced)
        _check_range("n_events", self.n_events, MIN_EVENTS, MAX_EVENTS)
        if self.n_items is not None:
            _check_range("n_items", self.n_items, 10, MAX_ITEMS)
        n_items = _default_items(self.n_events) if self.n_items is None else self.n_items
        if self.n_users is not None:
            low = math.ceil(self.n_events / MAX_EVENTS_PER_USER)
            _check_range("n_users", self.n_users, low, self.n_events)
        if self.n_categories is not None:
            _check_range("n_categories", self.n_categories, 1, min(n_items, MAX_CATEGORIES))
        for name in (
            "repeat_rate",
            "explore_rate",
            "cart_rate",
            "purchase_rate",
            "out_of_stock_rate",
        ):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        _check_range("categories_per_user", self.categories_per_user, 1, 100)
        _check_range("staples_per_user", self.staples_per_user, 1, 100)
        _check_range("session_length", self.session_length, 1.0, 10_000.0)
        _check_range("activity_sigma", self.activity_sigma, 0.0, 2.0)
        _check_range("item_zipf", self.item_zipf, 0.0, 5.0)
        _check_range("category_zipf", self.category_zipf, 0.0, 5.0)
        _check_range("days", self.days, 1, 100 * 365)
        _check_range("end_timestamp", self.end_timestamp, self.days * 86_400, 2**40)
        if not self.taste_concentration > 0.0:
            raise ConfigError(
                f"synth: taste_concentration must be > 0, got {self.taste_concentration!r}"
            )


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    events_path: Path
    """The events CSV (gzip if it ends in ``.gz``)."""
    catalog_path: Path
    """The catalogue CSV."""
    n_events: int
    """Rows in the events file (== ``config.n_events``)."""
    n_views: int
    """Rows with ``event_type`` ``view``."""
    n_add_to_cart: int
    """Rows with ``event_type`` ``add_to_cart``."""
    n_purchases: int
    """Rows with ``event_type`` ``purchase``."""
    n_sessions: int
    """Sessions generated."""
    n_baskets: int
    """Distinct ``basket_id`` values (sessions with a purchase)."""
    n_users: int
    """Users (every one has at least one event)."""
    n_items: int
    """Items in the catalogue (not all need appear in the events)."""
    n_categories: int
    """Categories in the catalogue."""
    seconds: float
    """Wall-clock time of the generation."""


@dataclass(frozen=True)
class SynthTruth:
    """The hidden structure of a shop; row ``u`` is user ``u``, row ``i`` item ``i``."""

    item_category: Int32Array
    """``(n_items,)`` int32 category index of each item."""
    item_popularity: FloatArray
    """``(n_items,)`` float64 marginal probability of an item under the popularity model."""
    item_available: BoolArray
    """``(n_items,)`` bool, false for out-of-stock items."""
    user_categories: Int32Array
    """``(n_users, k)`` int32 distinct favourite categories, by descending weight."""
    user_category_weights: FloatArray
    """``(n_users, k)`` float64 Dirichlet weights of ``user_categories``; rows sum to 1."""
    user_staples: Int32Array
    """``(n_users, staples_per_user)`` int32 items the user re-buys."""
    user_event_counts: IntArray
    """``(n_users,)`` int64 rows of each user in the events file; sums to ``n_events``."""


def generate(
    config: SynthConfig,
    events_path: Path,
    catalog_path: Path | None = None,
    progress: bool = False,
) -> SynthSummary:
    """Write the events and catalogue CSVs of the shop ``config`` describes.

    Args:
        config: the shop; the same config gives byte-identical files.
        events_path: destination of the events; gzip-compressed if it ends in ``.gz``.
        catalog_path: destination of the catalogue; default :func:`default_catalog_path`.
        progress: show a tqdm bar (events written) on stderr.

    Returns:
        Counts and paths of what was written.

    Raises:
        ConfigError: the destination directory does not exist, or both paths are the same.
        OSError: writing failed; no partial file is left behind and an existing file at a
            destination is untouched.
    """
    started = time.perf_counter()
    events_path = Path(events_path)
    catalog_path = default_catalog_path(events_path) if catalog_path is None else catalog_path
    catalog_path = Path(catalog_path)
    for path in (events_path, catalog_path):
        if not path.parent.is_dir():
            raise ConfigError(f"synth: directory {str(path.parent)!r} does not exist")
    if events_path.resolve() == catalog_path.resolve():
        raise ConfigError(f"synth: events and catalogue paths are the same: {str(events_path)!r}")

    sizes = _Sizes.of(config)
    catalog = _build_catalog(config, sizes)
    item_ids = _ids("i", np.arange(sizes.n_items), _width(sizes.n_items))
    counts = np.zeros(3, dtype=np.int64)
    n_sessions = 0
    n_baskets = 0

    temps: list[Path] = []
    try:
        events_tmp = _temp_beside(events_path)
        temps.append(events_tmp)
        catalog_tmp = _temp_beside(catalog_path)
        temps.append(catalog_tmp)

        with _open_sink(catalog_tmp, gz=catalog_path.name.endswith(".gz")) as sink:
            _write_catalog(sink, catalog, item_ids)

        basket_width = _width(config.n_events)
        with (
            _open_sink(events_tmp, gz=events_path.name.endswith(".gz")) as sink,
            tqdm(total=config.n_events, unit="ev", unit_scale=True, disable=not progress) as bar,
        ):
            writer = pacsv.CSVWriter(sink, _EVENT_SCHEMA, write_options=_write_options())
            for users in _iter_users(config, sizes, catalog):
                block = _block_events(config, catalog, users)
                table = _block_table(
                    block,
                    users=users,
                    item_ids=item_ids,
                    sizes=sizes,
                    basket_offset=n_baskets,
                    basket_width=basket_width,
                )
                writer.write_table(table, max_chunksize=_CSV_BATCH_ROWS)
                counts += np.bincount(block.event_type, minlength=3)
                n_sessions += block.n_sessions
                n_baskets += block.n_baskets
                bar.update(len(block.event_type))
            writer.close()

        if int(counts.sum()) != config.n_events:  # pragma: no cover - an internal bug
            raise AssertionError(f"synth wrote {int(counts.sum())} rows, not {config.n_events}")
        os.replace(catalog_tmp, catalog_path)
        os.replace(events_tmp, events_path)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise

    return SynthSummary(
        events_path=events_path,
        catalog_path=catalog_path,
        n_events=int(counts.sum()),
        n_views=int(counts[_VIEW]),
        n_add_to_cart=int(counts[_CART]),
        n_purchases=int(counts[_PURCHASE]),
        n_sessions=n_sessions,
        n_baskets=n_baskets,
        n_users=sizes.n_users,
        n_items=sizes.n_items,
        n_categories=sizes.n_categories,
        seconds=time.perf_counter() - started,
    )


def ground_truth(config: SynthConfig) -> SynthTruth:
    """Recompute the hidden structure of the shop ``config`` describes, without events.

    Costs O(n_users + n_items) time and memory; the arrays match what :func:`generate`
    used for the same config.
    """
    sizes = _Sizes.of(config)
    catalog = _build_catalog(config, sizes)
    blocks = list(_iter_users(config, sizes, catalog))
    return SynthTruth(
        item_category=catalog.item_category,
        item_popularity=catalog.item_popularity,
        item_available=catalog.available,
        user_categories=np.concatenate([b.categories for b in blocks]),
        user_category_weights=np.concatenate([b.weights for b in blocks]),
        user_staples=np.concatenate([b.staples for b in blocks]),
        user_event_counts=np.concatenate([b.event_counts for b in blocks]),
    )


def default_catalog_path(events_path: Path) -> Path:
    """``events.csv.gz`` -> ``events.catalog.csv.gz``; ``events.csv`` -> ``events.catalog.csv``."""
    name = events_path.name
    gz = name.endswith(".gz")
    base = name.removesuffix(".gz").removesuffix(".csv")
    return events_path.with_name(f"{base}.catalog.csv" + (".gz" if gz else ""))


# --- sizes and validation -------------------------------------------------------------


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also rejects NaN
        raise ConfigError(f"synth: {name} must be in [{low}, {high}], got {value!r}")


def _default_items(n_events: int) -> int:
    return min(max(n_events // 50, 200), 1_000_000)


@dataclass(frozen=True)
class _Sizes:
    n_users: int
    n_items: int
    n_categories: int
    users_per_block: int

    @classmethod
    def of(cls, config: SynthConfig) -> _Sizes:
        n_items = _default_items(config.n_events) if config.n_items is None else config.n_items
        n_users = config.n_events // 50 if config.n_users is None else config.n_users
        n_categories = (
            min(max(round(math.sqrt(n_items) / 2), 5), 1000)
            if config.n_categories is None
            else config.n_categories
        )
        per_block = max(1, min(n_users, round(BLOCK_EVENTS * n_users / config.n_events)))
        return cls(n_users, n_items, n_categories, per_block)


def _rng(config: SynthConfig, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(stream, block)))


# --- catalogue ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    item_category: Int32Array  # (n_items,)
    item_popularity: FloatArray  # (n_items,) marginal probability
    available: BoolArray  # (n_items,)
    price_cents: IntArray  # (n_items,)
    category_cdf: FloatArray  # (n_categories,) cumulative popularity, last == 1
    items_by_category: Int32Array  # (n_items,) item indices by category, then popularity
    item_key: FloatArray  # (n_items,) category + cumulative within-category probability

    def sample_in(self, rng: np.random.Generator, categories: IntArray) -> IntArray:
        """``(n,)`` items, one per entry of ``categories`` ``(n,)``, by within-category
        popularity: one ``searchsorted`` over all categories at once."""
        keys = categories + rng.random(len(categories))
        at = np.searchsorted(self.item_key, keys, side="right")
        return self.items_by_category[np.minimum(at, len(self.item_key) - 1)].astype(np.int64)

    def sample_category(self, rng: np.random.Generator, n: int) -> IntArray:
        """``(n,)`` categories by popularity."""
        at = np.searchsorted(self.category_cdf, rng.random(n), side="right")
        return np.minimum(at, len(self.category_cdf) - 1).astype(np.int64)


def _zipf(n: int, exponent: float) -> FloatArray:
    weights: FloatArray = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    weights /= weights.sum()
    return weights


def _build_catalog(config: SynthConfig, sizes: _Sizes) -> _Catalog:
    rng = _rng(config, _STREAM_CATALOG)
    n_items, n_cats = sizes.n_items, sizes.n_categories
    # Category popularity: Zipf over a random ranking of the categories.
    cat_pop = _zipf(n_cats, config.category_zipf)[rng.permutation(n_cats)]
    # Popular categories are also larger; every category gets at least one item.
    size_weights = np.sqrt(cat_pop) / np.sqrt(cat_pop).sum()
    cat_sizes = 1 + rng.multinomial(n_items - n_cats, size_weights)
    item_category = rng.permutation(np.repeat(np.arange(n_cats, dtype=np.int32), cat_sizes))
    # Items grouped by category, in a random order within it: that order is the item's
    # popularity rank, so popularity is independent of the id.
    by_category = np.argsort(item_category + rng.random(n_items)).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(cat_sizes)[:-1]])
    rank = np.arange(n_items) - np.repeat(starts, cat_sizes)  # 0-based, in by_category order
    within = 1.0 / (rank + 1.0) ** config.item_zipf
    within /= np.repeat(np.add.reduceat(within, starts), cat_sizes)
    cumulative = np.cumsum(within)
    segment_base = np.repeat(cumulative[starts] - within[starts], cat_sizes)
    within_cdf = cumulative - segment_base
    within_cdf[np.cumsum(cat_sizes) - 1] = 1.0  # exact segment ends: no spill to the next
    item_key = np.repeat(np.arange(n_cats, dtype=np.float64), cat_sizes) + within_cdf

    popularity = np.empty(n_items, dtype=np.float64)
    popularity[by_category] = within * np.repeat(cat_pop, cat_sizes)
    category_cdf = np.cumsum(cat_pop)
    category_cdf[-1] = 1.0

    available = rng.random(n_items) >= config.out_of_stock_rate
    base = rng.lognormal(math.log(15.0), 0.9, n_cats)[item_category]
    price = base * rng.lognormal(0.0, 0.35, n_items)
    price_cents = np.maximum(np.round(price * 100.0).astype(np.int64), 49)
    return _Catalog(
        item_category=item_category,
        item_popularity=popularity,
        available=available,
        price_cents=price_cents,
        category_cdf=category_cdf,
        items_by_category=by_category,
        item_key=item_key,
    )


# --- users ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Users:
    block: int  # index of the block, which picks its random streams
    first: int  # global index of the block's first user
    event_counts: IntArray  # (m,) >= 1
    categories: Int32Array  # (m, k) distinct, by descending weight
    weights: FloatArray  # (m, k) rows sum to 1
    staples: Int32Array  # (m, s)


def _iter_users(config: SynthConfig, sizes: _Sizes, catalog: _Catalog) -> Iterator[_Users]:
    """Blocks of users in id order; each block's draws come from its own stream."""
    per_block = sizes.users_per_block
    n_blocks = -(-sizes.n_users // per_block)
    bounds = [(b * per_block, min((b + 1) * per_block, sizes.n_users)) for b in range(n_blocks)]
    # Pass 1: total activity of each block (the first draws of its stream), so the extra
    # events beyond one per user can be shared among blocks exactly.
    totals = np.array(
        [
            _activity(_rng(config, _STREAM_USERS, b), config, hi - lo).sum()
            for b, (lo, hi) in enumerate(bounds)
        ],
        dtype=np.float64,
    )
    extra = _rng(config, _STREAM_ALLOCATION).multinomial(
        config.n_events - sizes.n_users, totals / totals.sum()
    )
    k = min(config.categories_per_user, sizes.n_categories)
    for b, (lo, hi) in enumerate(bounds):
        m = hi - lo
        rng = _rng(config, _STREAM_USERS, b)
        activity = _activity(rng, config, m)  # the same draws as in pass 1
        counts = 1 + rng.multinomial(int(extra[b]), activity / activity.sum())
        categories = _distinct_categories(rng, catalog, m, k)
        weights = rng.dirichlet(np.full(k, config.taste_concentration), size=m)
        order = np.argsort(-weights, axis=1, kind="stable")
        weights = np.take_along_axis(weights, order, axis=1)
        categories = np.take_along_axis(categories, order, axis=1)
        s = config.staples_per_user
        owners = np.repeat(np.arange(m), s)
        staple_categories = _taste_categories(rng, categories, np.cumsum(weights, axis=1), owners)
        staples = catalog.sample_in(rng, staple_categories).reshape(m, s).astype(np.int32)
        yield _Users(b, lo, counts.astype(np.int64), categories.astype(np.int32), weights, staples)


def _activity(rng: np.random.Generator, config: SynthConfig, m: int) -> FloatArray:
    """``(m,)`` log-normal activity weights: the first draws of a block's user stream."""
    activity: FloatArray = rng.lognormal(0.0, config.activity_sigma, m)
    return activity


def _distinct_categories(rng: np.random.Generator, catalog: _Catalog, m: int, k: int) -> IntArray:
    """``(m, k)`` distinct categories per row, drawn by popularity (duplicates redrawn)."""
    categories = catalog.sample_category(rng, m * k).reshape(m, k)
    earlier = np.tril(np.ones((k, k), dtype=np.bool_), k=-1)  # [j, i]: i before j
    for _ in range(50):
        repeated = ((categories[:, :, None] == categories[:, None, :]) & earlier).any(axis=2)
        n_repeated = int(repeated.sum())
        if n_repeated == 0:
            return categories
        categories[repeated] = catalog.sample_category(rng, n_repeated)
    # Few categories and a steep popularity: Gumbel top-k for the rows still clashing.
    rows = np.flatnonzero(
        ((categories[:, :, None] == categories[:, None, :]) & earlier).any(axis=(1, 2))
    )
    log_pop = np.log(np.diff(np.concatenate([[0.0], catalog.category_cdf])) + 1e-300)
    keys = log_pop + rng.gumbel(size=(len(rows), len(log_pop)))
    categories[rows] = np.argsort(-keys, axis=1)[:, :k]
    return categories


def _taste_categories(
    rng: np.random.Generator,
    categories: npt.NDArray[np.integer[Any]],
    cumulative: FloatArray,
    users: IntArray,
) -> IntArray:
    """``(n,)`` categories for local ``users`` ``(n,)``, each by that user's weights;
    ``categories`` and ``cumulative`` are ``(m, k)``."""
    k = categories.shape[1]
    slot = (rng.random(len(users))[:, None] > cumulative[users]).sum(axis=1)
    picked: IntArray = categories[users, np.minimum(slot, k - 1)].astype(np.int64)
    return picked


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """One block's rows, in file order; ``E`` rows, user indices local to the block."""

    user: IntArray  # (E,)
    item: IntArray  # (E,)
    timestamp: IntArray  # (E,)
    event_type: IntArray  # (E,) _VIEW, _CART or _PURCHASE
    quantity: Int32Array  # (E,)
    basket: IntArray  # (E,) block-local basket number, -1 on non-purchase rows
    n_sessions: int
    n_baskets: int


def _segment_starts(flags: BoolArray) -> IntArray:
    """``(E,)`` index of the first row of the segment each row is in; ``flags[0]`` is true."""
    starts: IntArray = np.maximum.accumulate(np.where(flags, np.arange(len(flags)), 0))
    return starts


def _block_events(config: SynthConfig, catalog: _Catalog, users: _Users) -> _Block:
    """All rows of a block, vectorised: no Python loop runs per event."""
    rng = _rng(config, _STREAM_EVENTS, users.block)
    counts = users.event_counts
    m, n = len(counts), int(counts.sum())
    rows = np.arange(n)
    user = np.repeat(np.arange(m), counts)
    user_start = np.zeros(n, dtype=np.bool_)
    user_start[np.cumsum(counts) - counts] = True

    # Units: view (1 row), view + cart (2), view + cart + purchase (3), drawn as one stream
    # laid over the rows; a unit that runs over a user's end is cut there.
    p_cart, p_buy = config.cart_rate, config.cart_rate * config.purchase_rate
    mean_unit = 1.0 + p_cart + p_buy
    lengths = np.empty(0, dtype=np.int64)
    while lengths.sum() < n:
        u = rng.random(int(n / mean_unit * 1.02) + 64)
        lengths = np.concatenate([lengths, 1 + (u < p_cart) + (u < p_buy)])
    unit_start = np.zeros(n, dtype=np.bool_)
    ends = np.cumsum(lengths)
    unit_start[ends[ends < n]] = True
    unit_start[0] = True

    # Sessions break only between units (or users), ~session_length rows each.
    p_break = min(1.0, mean_unit / config.session_length)
    session_start = user_start | (unit_start & (rng.random(n) < p_break))
    segment_start = unit_start | session_start
    first = _segment_starts(segment_start)
    event_type = np.minimum(rows - first, _PURCHASE)

    # One item (and quantity) per segment: the user's taste, exploration, or a staple.
    seg_first = np.flatnonzero(segment_start)
    seg_len = np.diff(np.append(seg_first, n))
    seg_user = user[seg_first]
    categories = _taste_categories(
        rng, users.categories, np.cumsum(users.weights, axis=1), seg_user
    )
    explore = rng.random(len(seg_first)) < config.explore_rate
    categories[explore] = catalog.sample_category(rng, int(explore.sum()))
    seg_item = catalog.sample_in(rng, categories)
    staple = (seg_len > _PURCHASE) & (rng.random(len(seg_first)) < config.repeat_rate)
    pick = rng.integers(0, users.staples.shape[1], int(staple.sum()))
    seg_item[staple] = users.staples[seg_user[staple], pick]
    seg_quantity = rng.geometric(1.0 - _EXTRA_UNIT_PROBABILITY, len(seg_first))
    segment = np.cumsum(segment_start) - 1
    item = seg_item[segment]
    quantity = np.where(event_type == _VIEW, 1, seg_quantity[segment]).astype(np.int32)

    # Checkout: a session's purchases move (stably) to its end.
    session = np.cumsum(session_start) - 1
    is_purchase = event_type == _PURCHASE
    order = np.argsort(session * 2 + is_purchase, kind="stable")
    item, event_type, quantity, is_purchase = (
        item[order],
        event_type[order],
        quantity[order],
        is_purchase[order],
    )  # user and session are non-decreasing, so unchanged by this order

    # Times: session starts uniform over the span, in order per user; rows follow with
    # exponential gaps; a basket's lines share the checkout second.
    n_sessions = int(session[-1]) + 1
    span = config.days * 86_400
    span_start = config.end_timestamp - span
    # Sorting by user * span + offset (fits int64) sorts within users; lexsort is 4x slower.
    by_user = user[session_start] * span
    offsets = np.sort(by_user + rng.integers(0, span, n_sessions)) - by_user
    gaps = 1 + rng.exponential(_VIEW_GAP_SECONDS, n).astype(np.int64)
    first_purchase = is_purchase & ~np.concatenate([[False], is_purchase[:-1]])
    gaps[first_purchase] = 1 + rng.exponential(_CHECKOUT_GAP_SECONDS, int(first_purchase.sum()))
    gaps[is_purchase & ~first_purchase] = 0
    gaps[session_start] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= elapsed[_segment_starts(session_start)]
    offset = np.minimum(offsets[session] + elapsed, span - 1)

    # Rare overlapping sessions of one user: keep each user's rows in time order.
    order = np.argsort(user * span + offset, kind="stable")
    has_purchase = np.bincount(session, weights=is_purchase, minlength=n_sessions) > 0
    basket_of_session = np.where(has_purchase, np.cumsum(has_purchase) - 1, -1)
    basket = np.where(is_purchase, basket_of_session[session], -1)
    return _Block(
        user=user[order],
        item=item[order],
        timestamp=offset[order] + span_start,
        event_type=event_type[order],
        quantity=quantity[order],
        basket=basket[order],
        n_sessions=n_sessions,
        n_baskets=int(has_purchase.sum()),
    )


# --- writing --------------------------------------------------------------------------


def _width(count: int) -> int:
    """Digits of the largest index below ``count``."""
    return len(str(max(count - 1, 0)))


def _ids(prefix: str, numbers: IntArray, width: int) -> pa.Array:
    """``(n,)`` strings ``prefix`` + zero-padded ``numbers``, built in Arrow (no Python loop)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _block_table(
    block: _Block,
    *,
    users: _Users,
    item_ids: pa.Array,
    sizes: _Sizes,
    basket_offset: int,
    basket_width: int,
) -> pa.Table:
    user_ids = _ids("u", np.arange(len(users.event_counts)) + users.first, _width(sizes.n_users))
    is_purchase = block.basket >= 0
    basket_ids = _ids("b", block.basket[is_purchase] + basket_offset, basket_width)
    # Scatter the purchase rows' ids into a column that is null elsewhere.
    slot = np.where(is_purchase, np.cumsum(is_purchase) - 1, len(basket_ids))
    basket_column = pc.take(
        pa.concat_arrays([basket_ids.cast(pa.string()), pa.nulls(1, pa.string())]), slot
    )
    return pa.Table.from_arrays(
        [
            pc.take(user_ids, block.user),
            pc.take(item_ids, block.item),
            pa.array(block.timestamp, pa.int64()),
            pc.take(pa.array(_EVENT_NAMES, pa.string()), block.event_type),
            pa.array(block.quantity, pa.int32()),
            basket_column,
        ],
        schema=_EVENT_SCHEMA,
    )


def _write_catalog(sink: Any, catalog: _Catalog, item_ids: pa.Array) -> None:
    n_items = len(catalog.item_category)
    cat_width = max(2, _width(int(catalog.item_category.max()) + 1))
    writer = pacsv.CSVWriter(sink, _CATALOG_SCHEMA, write_options=_write_options())
    step = 1_000_000
    for lo in range(0, n_items, step):
        hi = min(lo + step, n_items)
        category = catalog.item_category[lo:hi].astype(np.int64)
        cents = catalog.price_cents[lo:hi]
        title = pc.binary_join_element_wise(
            "Item ",
            pc.cast(pa.array(np.arange(lo, hi, dtype=np.int64)), pa.string()),
            " (category ",
            pc.cast(pa.array(category), pa.string()),
            ")",
            "",
        )
        price = pc.binary_join_element_wise(
            pc.cast(pa.array(cents // 100), pa.string()),
            pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), 2, "0"),
            ".",
        )
        table = pa.Table.from_arrays(
            [
                item_ids[lo:hi],
                _ids("c", category, cat_width),
                pa.array(catalog.available[lo:hi], pa.bool_()),
                title,
                price,
            ],
            schema=_CATALOG_SCHEMA,
        )
        writer.write_table(table, max_chunksize=_CSV_BATCH_ROWS)
    writer.close()


def _write_options() -> pacsv.WriteOptions:
    # Values never hold a comma, quote or newline, so nothing is quoted: plain, small CSV.
    return pacsv.WriteOptions(quoting_style="none", quoting_header="none")


def _temp_beside(path: Path) -> Path:
    """A new hidden file in ``path``'s directory, so the final rename stays atomic.

    Created with ``open(..., "xb")`` rather than ``mkstemp`` so the file gets the usual
    umask permissions instead of 0600."""
    while True:
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            temp.open("xb").close()
        except FileExistsError:  # pragma: no cover - a 32-bit random clash
            continue
        return temp


@contextmanager
def _open_sink(path: Path, gz: bool) -> Iterator[BinaryIO | gzip.GzipFile]:
    """A binary stream to ``path``, gzip-compressed when ``gz`` (level :data:`GZIP_LEVEL`;
    no name or mtime in the header, so the bytes are reproducible)."""
    with path.open("wb") as raw:
        if not gz:
            yield raw
            return
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0
        ) as stream:
            yield stream
