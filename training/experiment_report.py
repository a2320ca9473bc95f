"""The offline report of one A/B experiment, read from the server's event log
(``recsvc experiment report NAME``).

What is counted
---------------
Only *attributed* events: rows of the event log (``events-*.csv`` in each directory,
see :mod:`recsvc.serving.eventlog`) whose ``recommendation_id`` is filled, which the
server does only when the event's shopper owns the id and the event fell inside the
attribution window. The id names the experiment and variant
(:func:`recsvc.experiments.parse_recommendation_id`); a row whose id does not parse,
or without a shopper or a timestamp, is skipped and counted (``skipped_rows``). Event
types counted: ``impression``, ``click``, ``add_to_cart``, ``purchase``; the others
are ignored. Files are read by their header names, so files of older servers (seven
columns, no ``recommendation_id``) sit beside new ones; they hold no attributed rows. A row
logged twice by a retried batch (the same non-empty ``event_id``) counts once: the
first copy, in file order (file name time stamp, then sequence number, then the order
of the directories given, then the row). The server attributes a retried event the
same way every time, so duplicates are looked for among the attributed rows only. A
file's last line without its line break (a writer that crashed mid-row) and rows that
do not split into the header's columns are dropped and counted (``bad_lines``).

The unit is the shopper: ``user_id`` when set, else ``basket_id`` (a visitor's rows
carry ``visit:<session>`` there). Assignment is sticky per shopper, so shoppers, not
events, are the independent observations.

Metrics and their variance
--------------------------
Per variant: CTR = clicks / impressions, conversion rate = purchases / impressions,
revenue per impression = revenue / impressions (``revenue`` of purchases; empty cells
count 0 and are counted in ``purchases_without_revenue``). Each is a ratio of sums
over shoppers, R = Σy / Σx, and a shopper's events are correlated, so the variance is
the delta method over shoppers (Deng, Knoblich & Lu, "Applying the Delta Method in
Metric Analytics", KDD 2018)::

    Var(R) ≈ (s_y² − 2·R·s_xy + R²·s_x²) / (n · x̄²)

with n the shoppers of the variant that have any attributed event (``units`` counts
those with at least one impression; a shopper with a click but no logged impression
adds to the variance as it should), x̄ their mean impressions and s the sample
(co)variances of their per-shopper totals.

The test
--------
Each variant is compared with the control on each metric: the difference
d = R_variant − R_control with V = Var(R_variant) + Var(R_control). The
significance test is the mixture sequential probability ratio test (mSPRT; Johari,
Koomen, Pekelis & Walsh, "Peeking at A/B tests", KDD 2017 and Operations Research
2022) on the normal approximation, with a normal mixture N(0, τ²) over the true
difference::

    Λ = sqrt(V / (V + τ²)) · exp(τ²·d² / (2·V·(V + τ²)))

evaluated at every checkpoint (below). The always-valid p-value is the running
minimum of min(1, 1/Λ) over the checkpoints in time order, so it may be read at any
checkpoint, as often as one likes, and stopping as soon as it falls below alpha keeps
the false-positive rate at most alpha. The always-valid (1 − alpha) confidence
sequence at a checkpoint is::

    d ± sqrt(V·(V + τ²)/τ² · (2·ln(1/alpha) + ln((V + τ²)/V)))

and the interval reported is its *intersection over the checkpoints* (valid, since
the sequence covers the true difference at all checkpoints at once); it excludes 0
exactly when the always-valid p is below alpha (up to ties). Should the intersection be empty
(the difference drifted: the effect is not stable over time) the last checkpoint's
interval is reported instead.

τ is :data:`TAU_RELATIVE` (0.1) times the control's metric over the whole report
(the pooled value of both arms when the control's is 0): the mixture puts its weight
on effects of the order of a 10% relative lift, where the test has most power. τ only trades
power between effect sizes; the guarantee holds for any τ that does not depend on the
difference. (Strictly it should be fixed before the data are seen; this τ depends on
the control's level only, not on the difference, and the A/A simulation in
``tests/training/test_experiment_report.py`` checks the error rate.)

Beside it, the classic fixed-horizon two-sided z-test (p-value and (1 − alpha)
interval d ± z·sqrt(V)) at the end of the data: valid only if the sample size was
fixed in advance and the result looked at once. Read at every checkpoint it is not:
that is what peeking does, and why ``significant`` is the always-valid test.

Checkpoints
-----------
The experiment's events are cut into ``checkpoints`` cumulative prefixes by time,
evenly spaced between its first and last attributed event (the last is all of
them). At each: the cumulative metrics of every variant (for the plot) and the
always-valid and fixed-horizon p-values of every comparison.
``impressions_to_significance`` is the total impressions of both arms at the first
checkpoint whose always-valid p is below alpha. A checkpoint where either arm has
fewer than :data:`MIN_UNITS` shoppers with impressions is not tested (p = 1, no
interval): the normal approximation needs shoppers, and a spurious early minimum
would stay in the running minimum for good.

Speed: the files are parsed with :mod:`pyarrow.csv`, ids are parsed once per distinct
id, and the per-shopper sums at every checkpoint come from one sort of the events
(see :func:`analyze`): about 1.5 s per million rows on two cores, linear in the
rows (5 million: 7 s).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from numpy.typing import NDArray

from recsvc.errors import DataError
from recsvc.experiments import parse_recommendation_id

__all__ = [
    "EVENT_KINDS",
    "METRICS",
    "MIN_UNITS",
    "TAU_RELATIVE",
    "AttributedEvents",
    "Checkpoint",
    "Comparison",
    "ComparisonPoint",
    "ExperimentReport",
    "MetricComparison",
    "MetricEstimate",
    "VariantPoint",
    "VariantSummary",
    "analyze",
    "format_text",
    "plot",
    "read_experiment_events",
    "report",
]

EVENT_KINDS: Final = ("impression", "click", "add_to_cart", "purchase")
"""The event types counted; :attr:`AttributedEvents.kind` is an index into it."""
IMPRESSION: Final = 0
CLICK: Final = 1
ADD_TO_CART: Final = 2
PURCHASE: Final = 3

METRICS: Final = ("ctr", "conversion_rate", "revenue_per_impression")
"""The metrics, by their field names in :class:`VariantSummary`."""
METRIC_LABELS: Final = {
    "ctr": "CTR",
    "conversion_rate": "conversion",
    "revenue_per_impression": "revenue/impression",
}
TAU_RELATIVE: Final = 0.1
"""The mSPRT mixture's scale τ as a fraction of the control's metric (a 10% lift)."""
MIN_UNITS: Final = 100
"""Shoppers with impressions each arm needs at a checkpoint before it is tested."""

# Same as serving/eventlog.py's names; recsvc.compaction.event_files is not reused
# because it deletes compaction's temporary files, which a read-only report must not.
_FILE_RE: Final = re.compile(r"events-(\d{8}T\d{6})-(\d+)\.csv")
_COLUMNS: Final = (
    "user_id",
    "timestamp",
    "event_type",
    "basket_id",
    "event_id",
    "recommendation_id",
    "revenue",
)
_REQUIRED: Final = ("timestamp", "event_type")
_FloatArray = NDArray[np.float64]
_IntArray = NDArray[np.int64]


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricEstimate:
    """A ratio metric and its delta-method standard error."""

    value: float | None
    """None when the variant has no impressions."""
    std_error: float | None
    """None with fewer than two shoppers."""


@dataclass(frozen=True)
class VariantSummary:
    """One variant over the whole report."""

    name: str
    units: int
    """Distinct shoppers with at least one attributed impression."""
    impressions: int
    clicks: int
    add_to_carts: int
    purchases: int
    revenue: float
    ctr: MetricEstimate
    conversion_rate: MetricEstimate
    revenue_per_impression: MetricEstimate


@dataclass(frozen=True)
class MetricComparison:
    """One metric of a variant against the control, at the end of the data."""

    metric: str
    """One of :data:`METRICS`."""
    control_value: float | None
    variant_value: float | None
    difference: float | None
    """variant − control."""
    relative_lift: float | None
    """difference / control (None when the control's value is 0 or unknown)."""
    std_error: float | None
    """sqrt(Var(variant) + Var(control)), delta method."""
    tau: float
    """The mSPRT mixture's standard deviation (TAU_RELATIVE × the control's value)."""
    tested: bool
    """Whether both arms reached ``min_units`` shoppers with a variance (else the
    p-values are 1 and there are no intervals)."""
    always_valid_p: float
    """mSPRT, the running minimum over the checkpoints: valid under peeking."""
    always_valid_ci_low: float | None
    always_valid_ci_high: float | None
    """The (1 − alpha) confidence sequence on the difference, intersected over the
    checkpoints."""
    fixed_horizon_p: float
    """Two-sided z-test on all the data: valid only for a sample size fixed in advance."""
    fixed_horizon_ci_low: float | None
    fixed_horizon_ci_high: float | None
    significant: bool
    """always_valid_p < alpha."""
    impressions_to_significance: int | None
    """Impressions of both arms at the first checkpoint with always_valid_p < alpha."""


@dataclass(frozen=True)
class Comparison:
    """A variant against the control."""

    variant: str
    control: str
    metrics: tuple[MetricComparison, ...]
    """In the order of :data:`METRICS`."""


@dataclass(frozen=True)
class VariantPoint:
    """A variant's cumulative numbers at a checkpoint."""

    variant: str
    units: int
    impressions: int
    ctr: MetricEstimate
    conversion_rate: MetricEstimate
    revenue_per_impression: MetricEstimate


@dataclass(frozen=True)
class ComparisonPoint:
    """A comparison's p-values at a checkpoint."""

    variant: str
    metric: str
    always_valid_p: float
    """The running minimum up to this checkpoint."""
    fixed_horizon_p: float
    """This checkpoint's z-test alone (what a peek at a fixed-horizon test shows)."""


@dataclass(frozen=True)
class Checkpoint:
    """The events up to ``until`` (cumulative)."""

    index: int
    until: float
    """Unix seconds: events at or before it are included."""
    impressions: int
    """All variants'."""
    variants: tuple[VariantPoint, ...]
    comparisons: tuple[ComparisonPoint, ...]


@dataclass(frozen=True)
class ExperimentReport:
    """The report of one experiment; JSON-able with :func:`dataclasses.asdict`."""

    experiment: str
    control: str
    alpha: float
    tau_relative: float
    min_units: int
    since: float | None
    until: float | None
    first_event: float
    last_event: float
    rows: int
    """Attributed events of the experiment counted (after dropping duplicates)."""
    duplicate_rows: int
    """Copies of an event id already counted (retried batches), dropped."""
    skipped_rows: int
    """Attributed rows that cannot be used, skipped: a recommendation id that does not
    parse (any experiment's rows), or one of this experiment without a variant, no
    shopper (neither user nor basket) or no timestamp."""
    bad_lines: int
    """Lines of the files that are no complete row, skipped."""
    purchases_without_revenue: int
    """Attributed purchases of the experiment with an empty revenue (counted as 0)."""
    crossover_units: int
    """Shoppers with attributed events in more than one variant (counted in each)."""
    files: int
    variants: tuple[VariantSummary, ...]
    """The control first, then the others by name."""
    comparisons: tuple[Comparison, ...]
    checkpoints: tuple[Checkpoint, ...]


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AttributedEvents:
    """The attributed events of one experiment, one entry per event (columns), and what
    reading them found. :func:`analyze` takes it; simulations build it directly."""

    timestamp: _FloatArray
    """Unix seconds."""
    unit: _IntArray
    """The shopper, as a code (0..number of shoppers − 1)."""
    variant: _IntArray
    """Index into ``variant_names``."""
    kind: _IntArray
    """Index into :data:`EVENT_KINDS`."""
    revenue: _FloatArray
    """A purchase's revenue (0 when unknown and for other kinds)."""
    variant_names: tuple[str, ...]
    experiments: tuple[tuple[str, int], ...] = ()
    """Every experiment of the attributed rows read and its row count, most rows first."""
    files: int = 0
    duplicate_rows: int = 0
    skipped_rows: int = 0
    bad_lines: int = 0
    purchases_without_revenue: int = 0
    since: float | None = None
    until: float | None = None


@dataclass
class _Parts:
    """What the files of a read gave, gathered before concatenation."""

    timestamp: list[_FloatArray] = field(default_factory=list)
    kind: list[_IntArray] = field(default_factory=list)
    variant: list[_IntArray] = field(default_factory=list)
    revenue: list[_FloatArray] = field(default_factory=list)
    unknown_revenue: list[NDArray[np.bool_]] = field(default_factory=list)
    unit: list[pa.Array] = field(default_factory=list)
    event_id: list[pa.Array] = field(default_factory=list)
    variants: dict[str, int] = field(default_factory=dict)
    experiments: Counter[str] = field(default_factory=Counter)
    skipped: int = 0
    bad_lines: int = 0


def _log_files(dirs: Sequence[Path]) -> list[Path]:
    found: list[tuple[str, int, int, Path]] = []
    for rank, given in enumerate(dirs):
        directory = Path(given)
        try:
            names = [p.name for p in directory.iterdir()]
        except FileNotFoundError as exc:
            raise DataError(f"event log directory {directory} does not exist") from exc
        except OSError as exc:
            raise DataError(f"cannot list event log directory {directory}: {exc}") from exc
        for name in names:
            match = _FILE_RE.fullmatch(name)
            if match:
                found.append((match.group(1), int(match.group(2)), rank, directory / name))
    return [path for *_, path in sorted(found)]


def _read_file(path: Path, parts: _Parts) -> pa.Table | None:
    """The needed columns of one file, None for a file without attributed rows."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read event log file {path}: {exc}") from exc
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a last row without its line break: cut off mid-write
        parts.bad_lines += 1
    if end == 0:
        return None
    header_end = data.index(b"\n")
    try:
        header = next(csv.reader([data[:header_end].decode("utf-8-sig").rstrip("\r")]))
    except (UnicodeDecodeError, StopIteration) as exc:
        raise DataError(f"{path}: unreadable header") from exc
    if "recommendation_id" not in header:
        return None  # an older server's file: nothing attributed
    missing = [c for c in _REQUIRED if c not in header]
    if "user_id" not in header and "basket_id" not in header:
        missing.append("user_id")
    if missing:
        raise DataError(f"{path}: not an event log file (no column {', '.join(missing)})")
    if end == header_end + 1:
        return None
    wanted = [c for c in _COLUMNS if c in header]
    types = {c: pa.string() for c in wanted}
    types["timestamp"] = pa.float64()
    if "revenue" in types:
        types["revenue"] = pa.float64()
    bad: list[int] = []

    def skip(_row: Any) -> str:
        bad.append(1)
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.py_buffer(memoryview(data)[:end]),
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types=types, include_columns=wanted, strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"{path}: cannot read as an event log file: {exc}") from exc
    parts.bad_lines += len(bad)
    return table


def _take_file(
    table: pa.Table, experiment: str, since: float | None, until: float | None, parts: _Parts
) -> None:
    """Adds the attributed rows of ``experiment`` in ``table`` to ``parts``."""
    kind = pc.index_in(table["event_type"], value_set=pa.array(EVENT_KINDS))
    attributed = pc.and_(pc.is_valid(table["recommendation_id"]), pc.is_valid(kind))
    untimed = pc.sum(pc.and_(attributed, pc.is_null(table["timestamp"]))).as_py()
    parts.skipped += int(untimed or 0)
    keep = pc.and_(attributed, pc.is_valid(table["timestamp"]))
    if since is not None:
        keep = pc.and_(keep, pc.greater_equal(table["timestamp"], since))
    if until is not None:
        keep = pc.and_(keep, pc.less(table["timestamp"], until))
    table = table.append_column("kind", kind).filter(keep)
    if table.num_rows == 0:
        return
    encoded = pc.dictionary_encode(table["recommendation_id"].combine_chunks())
    indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    ids = encoded.dictionary.to_pylist()
    counts = np.bincount(indices, minlength=len(ids))
    variant_of = np.full(len(ids), -1, dtype=np.int64)
    for i, text in enumerate(ids):
        rid = parse_recommendation_id(text)
        if rid is None:
            parts.skipped += int(counts[i])
        elif rid.experiment:
            parts.experiments[rid.experiment] += int(counts[i])
            if rid.experiment != experiment:
                continue
            if rid.variant:
                variant_of[i] = parts.variants.setdefault(rid.variant, len(parts.variants))
            else:  # an experiment without a variant: no server writes that
                parts.skipped += int(counts[i])
    row_variant = variant_of[indices]
    mine = row_variant >= 0
    if not mine.any():
        return
    table = table.filter(pa.array(mine))
    row_variant = row_variant[mine]
    names = table.column_names
    null = pa.nulls(table.num_rows, pa.string())
    user = table["user_id"] if "user_id" in names else null
    basket = table["basket_id"] if "basket_id" in names else null
    # prefixed so a customer id can never equal a visit's basket
    unit = pc.if_else(
        pc.is_valid(user),
        pc.binary_join_element_wise("u", user, "\x1f"),
        pc.binary_join_element_wise("b", basket, "\x1f"),
    )
    known = pc.is_valid(unit).to_numpy(zero_copy_only=False)
    if not known.all():  # neither a user nor a basket: no shopper to count it for
        parts.skipped += int((~known).sum())
        table = table.filter(pa.array(known))
        unit = unit.filter(pa.array(known))
        row_variant = row_variant[known]
    kinds = table["kind"].to_numpy().astype(np.int64)
    purchase = kinds == PURCHASE
    if "revenue" in names:
        revenue = table["revenue"].to_numpy().astype(np.float64)  # nulls become NaN
    else:
        revenue = np.full(table.num_rows, np.nan)
    unknown = purchase & ~np.isfinite(revenue)
    revenue = np.where(purchase & ~unknown, revenue, 0.0)
    parts.timestamp.append(table["timestamp"].to_numpy().astype(np.float64))
    parts.kind.append(kinds)
    parts.variant.append(row_variant)
    parts.revenue.append(revenue)
    parts.unknown_revenue.append(unknown)
    parts.unit.append(unit.combine_chunks() if isinstance(unit, pa.ChunkedArray) else unit)
    event_id = table["event_id"] if "event_id" in names else null
    if isinstance(event_id, pa.ChunkedArray):
        event_id = event_id.combine_chunks()
    parts.event_id.append(event_id)


def read_experiment_events(
    dirs: Sequence[Path],
    experiment: str,
    *,
    since: float | None = None,
    until: float | None = None,
) -> AttributedEvents:
    """The attributed events of ``experiment`` in the event logs of ``dirs`` with
    ``since <= timestamp < until`` (see the module docstring for what counts).
    DataError for a directory that does not exist or a file that is no event log."""
    parts = _Parts()
    files = _log_files(dirs)
    for path in files:
        table = _read_file(path, parts)
        if table is not None:
            _take_file(table, experiment, since, until, parts)
    experiments = tuple(sorted(parts.experiments.items(), key=lambda e: (-e[1], e[0])))
    if not parts.timestamp:
        empty_f = np.zeros(0, dtype=np.float64)
        empty_i = np.zeros(0, dtype=np.int64)
        return AttributedEvents(
            timestamp=empty_f,
            unit=empty_i,
            variant=empty_i,
            kind=empty_i,
            revenue=empty_f,
            variant_names=(),
            experiments=experiments,
            files=len(files),
            skipped_rows=parts.skipped,
            bad_lines=parts.bad_lines,
            since=since,
            until=until,
        )
    timestamp = np.concatenate(parts.timestamp)
    kind = np.concatenate(parts.kind)
    variant = np.concatenate(parts.variant)
    revenue = np.concatenate(parts.revenue)
    units = pa.concat_arrays(parts.unit)
    event_ids = pa.concat_arrays(parts.event_id)
    unknown_revenue = np.concatenate(parts.unknown_revenue)
    keep = _first_copies(event_ids)
    duplicates = len(keep) - int(keep.sum())
    if duplicates:
        timestamp, kind, variant = timestamp[keep], kind[keep], variant[keep]
        revenue, unknown_revenue = revenue[keep], unknown_revenue[keep]
        units = units.filter(pa.array(keep))
    unit = pc.dictionary_encode(units).indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return AttributedEvents(
        timestamp=timestamp,
        unit=unit,
        variant=variant,
        kind=kind,
        revenue=revenue,
        variant_names=tuple(parts.variants),
        experiments=experiments,
        files=len(files),
        duplicate_rows=duplicates,
        skipped_rows=parts.skipped,
        bad_lines=parts.bad_lines,
        purchases_without_revenue=int(unknown_revenue.sum()),
        since=since,
        until=until,
    )


def _first_copies(event_ids: pa.Array) -> NDArray[np.bool_]:
    """Which rows to keep: those without an event id and each id's first row."""
    n = len(event_ids)
    keep = np.ones(n, dtype=bool)
    if event_ids.null_count == n:
        return keep
    codes = pc.dictionary_encode(event_ids).indices
    codes_np = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    has_id = codes_np >= 0
    positions = np.flatnonzero(has_id)
    _, first = np.unique(codes_np[positions], return_index=True)
    keep[positions] = False
    keep[positions[first]] = True
    return keep


# --- analysis --------------------------------------------------------------------------

_Grid = dict[str, _FloatArray]  # name -> (variants, checkpoints), cumulative over time
_METRIC_NUMERATOR: Final = {
    "ctr": "clicks",
    "conversion_rate": "purchases",
    "revenue_per_impression": "revenue",
}


def _checkpoint_bins(timestamp: _FloatArray, checkpoints: int) -> tuple[_FloatArray, _IntArray]:
    """The checkpoints' end times (evenly from the first event to the last) and each
    event's first checkpoint."""
    first, last = float(timestamp.min()), float(timestamp.max())
    cuts = first + (last - first) * np.arange(1, checkpoints + 1, dtype=np.float64) / checkpoints
    cuts[-1] = last
    bins = np.searchsorted(cuts, timestamp, side="left").astype(np.int64)
    return cuts, np.minimum(bins, checkpoints - 1)


def _cumulative_sums(
    events: AttributedEvents, bins: _IntArray, n_bins: int, n_variants: int
) -> _Grid:
    """Every sum the delta method needs, per variant and checkpoint, over the shoppers'
    cumulative totals: one sort of the events by (variant, shopper, checkpoint).

    A shopper's totals change only at the checkpoints where it has events; a sum of
    f(totals) over shoppers at checkpoint k is then the running sum of the changes
    f(totals after) − f(totals before) of every (shopper, checkpoint) group up to k.
    """
    n_units = int(events.unit.max()) + 1
    key = (events.variant * n_units + events.unit) * n_bins + bins
    groups, inverse = np.unique(key, return_inverse=True)
    size = len(groups)
    kind = events.kind

    def per_group(weights: _FloatArray) -> _FloatArray:
        return np.bincount(inverse, weights=weights, minlength=size).astype(np.float64)

    step = {
        "impressions": per_group((kind == IMPRESSION).astype(np.float64)),
        "clicks": per_group((kind == CLICK).astype(np.float64)),
        "add_to_carts": per_group((kind == ADD_TO_CART).astype(np.float64)),
        "purchases": per_group((kind == PURCHASE).astype(np.float64)),
        "revenue": per_group(np.where(kind == PURCHASE, events.revenue, 0.0)),
    }
    pair = groups // n_bins  # (variant, shopper)
    first = np.ones(size, dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(size), 0))
    slot = (pair // n_units) * n_bins + groups % n_bins

    def running(a: _FloatArray) -> _FloatArray:
        """The (variant, shopper)'s totals through each group."""
        c = np.cumsum(a)
        return c - (c[start] - a[start])

    def total(change: _FloatArray) -> _FloatArray:
        grid = np.bincount(slot, weights=change, minlength=n_variants * n_bins)
        return np.cumsum(grid.reshape(n_variants, n_bins), axis=1)

    grid: _Grid = {name: total(a) for name, a in step.items()}
    grid["n"] = total(first.astype(np.float64))
    x_after = running(step["impressions"])
    x_before = x_after - step["impressions"]
    grid["units"] = total((x_after > 0).astype(np.float64) - (x_before > 0))
    grid["xx"] = total(x_after * x_after - x_before * x_before)
    for metric, numerator in _METRIC_NUMERATOR.items():
        y_after = running(step[numerator])
        y_before = y_after - step[numerator]
        grid[f"yy:{metric}"] = total(y_after * y_after - y_before * y_before)
        grid[f"xy:{metric}"] = total(x_after * y_after - x_before * y_before)
    return grid


def _ratio(grid: _Grid, metric: str) -> tuple[_FloatArray, _FloatArray]:
    """R = Σy/Σx and its delta-method variance, per variant and checkpoint (NaN where
    undefined)."""
    n, sx, sy = grid["n"], grid["impressions"], grid[_METRIC_NUMERATOR[metric]]
    sxx, syy, sxy = grid["xx"], grid[f"yy:{metric}"], grid[f"xy:{metric}"]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(sx > 0, sy / sx, np.nan)
        var_x = (sxx - sx * sx / n) / (n - 1)
        var_y = (syy - sy * sy / n) / (n - 1)
        cov_xy = (sxy - sx * sy / n) / (n - 1)
        mean_x = sx / n
        var = (var_y - 2.0 * r * cov_xy + r * r * var_x) / (n * mean_x * mean_x)
    var = np.where((n >= 2) & (sx > 0), np.maximum(var, 0.0), np.nan)
    return r, var


def _opt(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _estimate(r: float, var: float) -> MetricEstimate:
    return MetricEstimate(_opt(r), _opt(math.sqrt(var)) if math.isfinite(var) else None)


@dataclass(frozen=True)
class _Test:
    """One comparison on one metric at every checkpoint."""

    comparison: MetricComparison
    always_valid_p: _FloatArray
    fixed_horizon_p: _FloatArray


def _compare(
    metric: str,
    grid: _Grid,
    ratios: dict[str, tuple[_FloatArray, _FloatArray]],
    control: int,
    variant: int,
    alpha: float,
    min_units: int,
) -> _Test:
    r, var = ratios[metric]
    d = r[variant] - r[control]
    v = var[variant] + var[control]
    units = grid["units"]
    with np.errstate(invalid="ignore"):
        tested = (
            (units[control] >= min_units)
            & (units[variant] >= min_units)
            & np.isfinite(d)
            & np.isfinite(v)
            & (v > 0)
        )
    control_value = float(r[control, -1])
    if not (math.isfinite(control_value) and control_value != 0.0):
        num = grid[_METRIC_NUMERATOR[metric]]
        den = grid["impressions"]
        pooled = (num[control, -1] + num[variant, -1]) / max(
            den[control, -1] + den[variant, -1], 1.0
        )
        control_value = float(pooled)
    tau = TAU_RELATIVE * abs(control_value)
    tau2 = tau * tau
    n_points = d.shape[0]
    av_p = np.ones(n_points)
    fh_p = np.ones(n_points)
    lo, hi = -math.inf, math.inf
    last_interval: tuple[float, float] | None = None
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    for at in np.flatnonzero(tested):
        k = int(at)
        dk, vk = float(d[k]), float(v[k])
        fh_p[k] = math.erfc(abs(dk) / math.sqrt(2.0 * vk))
        if tau2 > 0.0:
            log_lambda = 0.5 * math.log(vk / (vk + tau2)) + tau2 * dk * dk / (
                2.0 * vk * (vk + tau2)
            )
            av_p[k] = min(1.0, math.exp(-log_lambda)) if log_lambda < 700 else 0.0
            half = math.sqrt(
                vk * (vk + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log((vk + tau2) / vk))
            )
            lo, hi = max(lo, dk - half), min(hi, dk + half)
            last_interval = (dk - half, dk + half)
    av_p = np.minimum.accumulate(av_p)
    if last_interval is None:
        ci: tuple[float | None, float | None] = (None, None)
    elif lo <= hi:
        ci = (lo, hi)
    else:  # the difference drifted out of its earlier intervals
        ci = last_interval
    final_tested = bool(tested[-1])
    d_end, v_end = float(d[-1]), float(v[-1])
    fh_ci: tuple[float | None, float | None] = (None, None)
    if final_tested:
        fh_ci = (d_end - z * math.sqrt(v_end), d_end + z * math.sqrt(v_end))
    significant_at = np.flatnonzero(av_p < alpha)
    reached: int | None = None
    if significant_at.size:
        k = int(significant_at[0])
        impressions = grid["impressions"]
        reached = int(impressions[control, k] + impressions[variant, k])
    control_end = float(r[control, -1])
    comparison = MetricComparison(
        metric=metric,
        control_value=_opt(control_end),
        variant_value=_opt(float(r[variant, -1])),
        difference=_opt(d_end),
        relative_lift=(
            _opt(d_end / control_end) if math.isfinite(control_end) and control_end != 0.0 else None
        ),
        std_error=_opt(math.sqrt(v_end)) if math.isfinite(v_end) else None,
        tau=tau,
        tested=final_tested,
        always_valid_p=float(av_p[-1]),
        always_valid_ci_low=ci[0],
        always_valid_ci_high=ci[1],
        fixed_horizon_p=float(fh_p[-1]),
        fixed_horizon_ci_low=fh_ci[0],
        fixed_horizon_ci_high=fh_ci[1],
        significant=bool(av_p[-1] < alpha),
        impressions_to_significance=reached,
    )
    return _Test(comparison, av_p, fh_p)


def _no_rows_error(events: AttributedEvents, experiment: str) -> DataError:
    window = ""
    if events.since is not None or events.until is not None:
        start = "..." if events.since is None else _when(events.since)
        end = "..." if events.until is None else _when(events.until)
        window = f" between {start} and {end}"
    if events.experiments:
        seen = ", ".join(f"{name} ({rows:,} rows)" for name, rows in events.experiments)
    else:
        seen = "none"
    return DataError(
        f"experiment {experiment!r} has no attributed events{window} in the event log "
        f"({events.files} files); experiments in it: {seen}"
    )


def analyze(
    events: AttributedEvents,
    experiment: str,
    *,
    control: str | None = None,
    alpha: float = 0.05,
    checkpoints: int = 20,
    min_units: int = MIN_UNITS,
) -> ExperimentReport:
    """The report of ``events`` (the attributed events of ``experiment``).

    ``control``: the variant the others are compared with; None: the variant named
    ``control`` if there is one, else the first by name (the log does not say which
    variant an experiment lists first: pass ``Experiment.control.name``). DataError
    when there are no events, for an unknown control, or bad parameters.
    """
    if not 0.0 < alpha < 1.0:
        raise DataError(f"alpha must be in (0, 1), got {alpha!r}")
    if checkpoints < 1:
        raise DataError(f"checkpoints must be at least 1, got {checkpoints!r}")
    if len(events.timestamp) == 0:
        raise _no_rows_error(events, experiment)
    names = events.variant_names
    if control is None:
        control = "control" if "control" in names else min(names)
    elif control not in names:
        raise DataError(
            f"control {control!r} is no variant of experiment {experiment!r} in the event "
            f"log; its variants: {', '.join(sorted(names))}"
        )
    order = [names.index(control)] + [names.index(n) for n in sorted(names) if n != control]
    c = order[0]

    cuts, bins = _checkpoint_bins(events.timestamp, checkpoints)
    grid = _cumulative_sums(events, bins, checkpoints, len(names))
    ratios = {m: _ratio(grid, m) for m in METRICS}
    tests = {
        (v, m): _compare(m, grid, ratios, c, v, alpha, min_units)
        for v in order[1:]
        for m in METRICS
    }

    def estimates(v: int, k: int) -> dict[str, MetricEstimate]:
        return {m: _estimate(float(ratios[m][0][v, k]), float(ratios[m][1][v, k])) for m in METRICS}

    summaries = tuple(
        VariantSummary(
            name=names[v],
            units=int(grid["units"][v, -1]),
            impressions=int(grid["impressions"][v, -1]),
            clicks=int(grid["clicks"][v, -1]),
            add_to_carts=int(grid["add_to_carts"][v, -1]),
            purchases=int(grid["purchases"][v, -1]),
            revenue=float(grid["revenue"][v, -1]),
            **estimates(v, checkpoints - 1),
        )
        for v in order
    )
    comparisons = tuple(
        Comparison(names[v], control, tuple(tests[v, m].comparison for m in METRICS))
        for v in order[1:]
    )
    points = tuple(
        Checkpoint(
            index=k,
            until=float(cuts[k]),
            impressions=int(grid["impressions"][:, k].sum()),
            variants=tuple(
                VariantPoint(
                    variant=names[v],
                    units=int(grid["units"][v, k]),
                    impressions=int(grid["impressions"][v, k]),
                    **estimates(v, k),
                )
                for v in order
            ),
            comparisons=tuple(
                ComparisonPoint(
                    names[v],
                    m,
                    float(tests[v, m].always_valid_p[k]),
                    float(tests[v, m].fixed_horizon_p[k]),
                )
                for v in order[1:]
                for m in METRICS
            ),
        )
        for k in range(checkpoints)
    )
    pairs = np.unique(events.unit * len(names) + events.variant)
    crossover = int((np.bincount(pairs // len(names)) > 1).sum())
    return ExperimentReport(
        experiment=experiment,
        control=control,
        alpha=alpha,
        tau_relative=TAU_RELATIVE,
        min_units=min_units,
        since=events.since,
        until=events.until,
        first_event=float(events.timestamp.min()),
        last_event=float(events.timestamp.max()),
        rows=len(events.timestamp),
        duplicate_rows=events.duplicate_rows,
        skipped_rows=events.skipped_rows,
        bad_lines=events.bad_lines,
        purchases_without_revenue=events.purchases_without_revenue,
        crossover_units=crossover,
        files=events.files,
        variants=summaries,
        comparisons=comparisons,
        checkpoints=points,
    )


def report(
    dirs: Sequence[Path],
    experiment: str,
    *,
    control: str | None = None,
    alpha: float = 0.05,
    since: float | None = None,
    until: float | None = None,
    checkpoints: int = 20,
) -> ExperimentReport:
    """The report of ``experiment`` from the event logs in ``dirs`` (each a directory
    of ``events-*.csv`` files), events with ``since <= timestamp < until`` (Unix
    seconds; None: unbounded). See the module docstring and :func:`analyze`.

    Raises DataError naming the experiment and the experiments the log does hold when
    it has no attributed events, for an unknown ``control``, for a missing directory
    or a file that is no event log.
    """
    events = read_experiment_events(dirs, experiment, since=since, until=until)
    return analyze(events, experiment, control=control, alpha=alpha, checkpoints=checkpoints)


# --- presentation ----------------------------------------------------------------------


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _is_rate(metric: str) -> bool:
    return metric != "revenue_per_impression"


def _value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.3f}%" if _is_rate(metric) else f"{value:.4g}"


def _difference(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.3f}pp" if _is_rate(metric) else f"{value:+.4g}"


def _p(value: float) -> str:
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def _verdict(result: ExperimentReport) -> str:
    if not result.comparisons:
        return f"only one variant ({result.control}) in the log: nothing to compare"
    parts = []
    for comparison in result.comparisons:
        better: list[str] = []
        worse: list[str] = []
        for m in comparison.metrics:
            if m.significant and m.difference is not None:
                lift = "" if m.relative_lift is None else f" ({100 * m.relative_lift:+.1f}%)"
                (better if m.difference > 0 else worse).append(f"{METRIC_LABELS[m.metric]}{lift}")
        name, control = comparison.variant, comparison.control
        if better and worse:
            parts.append(
                f"{name} beats {control} on {', '.join(better)} but loses on {', '.join(worse)}"
            )
        elif better:
            parts.append(f"{name} beats {control} on {', '.join(better)}")
        elif worse:
            parts.append(f"{name} loses to {control} on {', '.join(worse)}")
        elif not any(m.tested for m in comparison.metrics):
            parts.append(f"{name}: too few shoppers to test (< {result.min_units} per arm)")
        else:
            parts.append(f"no significant difference between {name} and {control} yet")
    return "; ".join(parts)


def format_text(result: ExperimentReport) -> str:
    """The report as a compact text table: the variants, each comparison with the
    control, and a one-line verdict (always-valid test)."""
    lines = [
        f"experiment {result.experiment}: control {result.control}, alpha {result.alpha:g}, "
        f"{_when(result.first_event)} to {_when(result.last_event)} UTC",
        f"{result.rows:,} attributed events from {result.files} file"
        f"{'' if result.files == 1 else 's'}; "
        f"dropped {result.duplicate_rows:,} duplicates, {result.skipped_rows:,} unusable rows, "
        f"{result.bad_lines:,} bad lines",
    ]
    if result.crossover_units:
        lines.append(f"warning: {result.crossover_units:,} shoppers appear in several variants")
    if result.purchases_without_revenue:
        lines.append(
            f"warning: {result.purchases_without_revenue:,} purchases without revenue (as 0)"
        )
    rows = [
        [
            "variant",
            "units",
            "impressions",
            "clicks",
            "purchases",
            "revenue",
            "CTR",
            "conversion",
            "revenue/impr",
        ]
    ]
    for v in result.variants:
        rows.append(
            [
                f"{v.name} (control)" if v.name == result.control else v.name,
                f"{v.units:,}",
                f"{v.impressions:,}",
                f"{v.clicks:,}",
                f"{v.purchases:,}",
                f"{v.revenue:,.2f}",
                _value("ctr", v.ctr.value),
                _value("conversion_rate", v.conversion_rate.value),
                _value("revenue_per_impression", v.revenue_per_impression.value),
            ]
        )
    lines += ["", *_table(rows, set(range(1, 9)))]
    confidence = f"{100 * (1 - result.alpha):g}%"
    for comparison in result.comparisons:
        rows = [
            [
                f"{comparison.variant} vs {comparison.control}",
                "difference",
                "lift",
                f"always-valid {confidence} CI",
                "p always-valid",
                "p fixed-horizon*",
                "significant",
            ]
        ]
        for m in comparison.metrics:
            if m.always_valid_ci_low is None or m.always_valid_ci_high is None:
                ci = "-"
            else:
                ci = (
                    f"[{_difference(m.metric, m.always_valid_ci_low)}, "
                    f"{_difference(m.metric, m.always_valid_ci_high)}]"
                )
            rows.append(
                [
                    f"  {METRIC_LABELS[m.metric]}",
                    _difference(m.metric, m.difference),
                    "-" if m.relative_lift is None else f"{100 * m.relative_lift:+.1f}%",
                    ci,
                    _p(m.always_valid_p) if m.tested else "not tested",
                    _p(m.fixed_horizon_p) if m.tested else "not tested",
                    "yes" if m.significant else "no",
                ]
            )
        lines += ["", *_table(rows, {1, 2, 4, 5})]
        reached = [
            f"{METRIC_LABELS[m.metric]} at {m.impressions_to_significance:,}"
            for m in comparison.metrics
            if m.impressions_to_significance is not None
        ]
        if reached:
            lines.append(f"  impressions (both arms) to significance: {'; '.join(reached)}")
    lines += [
        "",
        f"verdict: {_verdict(result)}",
        f"significant: mSPRT always-valid p < {result.alpha:g} (tau = {result.tau_relative:g} x "
        "control), valid however often the report is read",
        "* fixed-horizon z-test: valid only for a sample size fixed in advance, read once",
    ]
    return "\n".join(lines)


def plot(result: ExperimentReport, path: Path) -> None:
    """A PNG at ``path``: per metric, each variant's cumulative value over the
    checkpoints with its (1 − alpha) pointwise band (delta-method standard error), and
    the always-valid p-values of every comparison with the alpha line.

    Needs matplotlib (a development dependency): ModuleNotFoundError naming it
    otherwise.
    """
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 (optional, for plots only)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "plotting the experiment report needs matplotlib, which is not installed "
            "(pip install matplotlib; it comes with recsvc[dev])",
            name="matplotlib",
        ) from exc
    times = [datetime.fromtimestamp(c.until, tz=UTC) for c in result.checkpoints]
    z = NormalDist().inv_cdf(1.0 - result.alpha / 2.0)
    confidence = f"{100 * (1 - result.alpha):g}%"
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, metric in zip(axes, METRICS, strict=False):
        scale = 100.0 if _is_rate(metric) else 1.0
        for i, summary in enumerate(result.variants):
            estimates: list[MetricEstimate] = [
                getattr(c.variants[i], metric) for c in result.checkpoints
            ]
            value = np.array([np.nan if e.value is None else e.value for e in estimates]) * scale
            se = (
                np.array([np.nan if e.std_error is None else e.std_error for e in estimates])
                * scale
            )
            (line,) = ax.plot(times, value, marker=".", label=summary.name)
            ax.fill_between(
                times, value - z * se, value + z * se, alpha=0.2, color=line.get_color()
            )
        unit = " (%)" if _is_rate(metric) else ""
        ax.set_title(f"{METRIC_LABELS[metric]}{unit}, cumulative; pointwise {confidence} band")
        ax.legend(loc="best", fontsize="small")
        ax.grid(alpha=0.3)
    ax = axes[3]
    for j, comparison in enumerate(result.comparisons):
        for m in METRICS:
            p = [
                max(c.comparisons[j * len(METRICS) + METRICS.index(m)].always_valid_p, 1e-12)
                for c in result.checkpoints
            ]
            ax.plot(times, p, marker=".", label=f"{comparison.variant} {METRIC_LABELS[m]}")
    ax.axhline(result.alpha, color="red", linestyle="--", label=f"alpha = {result.alpha:g}")
    ax.set_yscale("log")
    ax.set_title(f"always-valid p vs {result.control} (mSPRT)")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.suptitle(f"experiment {result.experiment}")
    for ax in axes[2:]:
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise DataError(f"cannot write the plot to {path}: {exc}") from exc
