"""Purchase history and catalogue files in, canonical arrow tables out.

:func:`load_events` reads an event file (CSV, gzip CSV or Parquet) and returns the
canonical event table documented in :mod:`recsvc.events` plus a :class:`LoadSummary`
of what was read, kept and removed. :func:`load_catalog` reads the item catalogue.

How it reads
------------
CSV is streamed with :func:`pyarrow.csv.open_csv` in blocks of a few MB, every column
as bytes then decoded as UTF-8 text (so ids like ``00123`` keep their zeros, and empty
cells are nulls); quoted values may hold commas and line breaks; a UTF-8 byte-order
mark is dropped. Each block is converted column by column with :mod:`pyarrow.compute`
and only the converted canonical columns are kept, so memory is bounded by the output
table.
Parquet is streamed in batches with its native types and converted the same way.
Batches are converted on a small thread pool while the next one is read.

Bad values are found with vectorised masks on the success path. When a vectorised
cast of a batch fails, that batch alone takes the slow path: its values are grouped
by shape, checked with masks (the calendar too) and cast group by group; a value that
still fails its cast is found by bisection.

A bad value either raises :class:`~recsvc.errors.InputRowError` naming the file, the
line (header = line 1; blank lines and line breaks inside quoted values counted) or,
for Parquet, the row number (first row = 1), the column and what was expected; or,
with ``skip_bad_rows=True``, the row is dropped and counted under
``removed["bad_row"]``. A value that is not UTF-8 is a bad value like any other: CSV's
separators and quotes are ASCII and no byte of a multi-byte UTF-8 character is, so a
stray byte (one Latin-1 "é") cannot shift the row boundaries and the other rows read as
they are.

A file that cannot be events at all raises :class:`~recsvc.errors.DataError` with one
line naming it, with or without ``skip_bad_rows``: empty, no data rows, not text (a
NUL byte in its first 8 KB: a spreadsheet, an archive, UTF-16), a header that is not
UTF-8, a column to be read that the header names twice, a Parquet column of lists or
structs, a corrupt or truncated gzip or Parquet file.

Layouts
-------
``events``
    One row per event; columns named by a :class:`ColumnMapping`. ``user_id``,
    ``item_id`` and ``timestamp`` are required; ``event_type``, ``quantity`` and
    ``basket_id`` are optional, and an empty cell in them takes the default. A row
    with an empty ``user_id`` but a ``basket_id`` is a guest's (an anonymous visit a
    server logged, the basket naming the visit): kept with a null ``user_id``.
``online-retail``
    The UCI Online Retail II export (``Invoice, StockCode, Description, Quantity,
    InvoiceDate, Price, Customer ID, Country``). Cleaning removes, counting each row
    once under the first reason that applies in this order: ``cancelled_invoice``
    (Invoice starting with ``C``), ``return_or_zero_quantity`` (Quantity <= 0),
    ``non_product`` (postage, fees, manual adjustments, vouchers, tests: see
    :data:`NON_PRODUCT_STOCK_CODE`). Guest lines (no Customer ID) are kept with a
    null ``user_id``; the invoice is the basket; stock codes are upper-cased (the export
    spells some in both cases).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsvc.errors import ConfigError, DataError, InputRowError
from recsvc.events import CANONICAL_COLUMNS, EventType

__all__ = [
    "EVENT_SCHEMA",
    "NON_PRODUCT_STOCK_CODE",
    "Catalog",
    "ColumnMapping",
    "LoadSummary",
    "load_catalog",
    "load_events",
]

logger = logging.getLogger(__name__)

EVENT_SCHEMA: pa.Schema = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("timestamp", pa.int64()),
        ("event_type", pa.string()),
        ("quantity", pa.float32()),
        ("basket_id", pa.string()),
    ]
)
"""Schema of the table :func:`load_events` returns (see :mod:`recsvc.events`)."""

NON_PRODUCT_STOCK_CODE = (
    r"(?i)^(POST|DOT|M|C2|C3|D|S|B|CRUK|BANK CHARGES|AMAZONFEE|ADJUST\d*|TEST\d*|GIFT"
    r"|gift_\d+_\d+)$"
)
"""Online Retail II stock codes that are not products: postage (POST, DOT, C2, C3),
manual lines and discounts (M, D), samples (S), bad-debt adjustments (B, ADJUST*),
fees (BANK CHARGES, AMAZONFEE, CRUK), test items (TEST*) and gift vouchers."""

# Streaming sizes: a CSV block of a few MB is ~50-100k rows, big enough that the
# per-batch Python overhead is noise and small enough that memory stays bounded.
_CSV_BLOCK_BYTES = 4 << 20
_PARQUET_BATCH_ROWS = 1 << 17
# A CSV file holds no NUL byte; a binary file (or UTF-16 text) shows one within a few KB.
_TEXT_SNIFF_BYTES = 8192

# Typed scalars: pyarrow converts a bare Python value on every call, ~0.1 ms each
# (it retries a failing optional import of dateutil), which adds up over many batches.
_TRUE = pa.scalar(True, pa.bool_())
_FALSE = pa.scalar(False, pa.bool_())
_EMPTY = pa.scalar("", pa.string())
_ZERO_TEXT = pa.scalar("0", pa.string())
_AT = pa.scalar("@", pa.string())
_ZERO = pa.scalar(0.0, pa.float64())
_ONE = pa.scalar(1.0, pa.float64())

# Numeric timestamps at or above this are not plausible Unix seconds (year 5138);
# they are almost always milliseconds, which would silently land in the far future.
_MAX_UNIX_SECONDS = pa.scalar(1e11, pa.float64())

_MAX_FLOAT32 = pa.scalar(float(np.finfo(np.float32).max), pa.float64())

_EXPECT_TIMESTAMP = "an ISO 8601 date/time or Unix seconds"
_EXPECT_QUANTITY = "a number > 0"
_EXPECT_NUMBER = "a number"
_EXPECT_EVENT_TYPE = "one of " + ", ".join(e.value for e in EventType)
_EXPECT_AVAILABLE = "true/false, yes/no or 1/0"
_EXPECT_UTF8 = "UTF-8 text (is the file in another encoding? save it as UTF-8)"

_EVENT_ALIASES: dict[str, EventType] = {
    **{e.value: e for e in EventType},
    "addtocart": EventType.ADD_TO_CART,
    "cart": EventType.ADD_TO_CART,
    "transaction": EventType.PURCHASE,
    "buy": EventType.PURCHASE,
}
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

# Shapes of the values the slow path accepts; anything else is bad without a cast.
_NUMERIC_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ISO_RE = (
    r"^(?P<year>\d{4})-(?P<month>\d\d)-(?P<day>\d\d)"
    r"(?:[T ](?P<hour>\d\d)(?::(?P<minute>\d\d)(?::(?P<second>\d\d)(?P<fraction>\.\d{1,9})?)?)?"
    r"(?P<zone>[Zz]|[+-]\d\d(?::?\d\d)?)?)?$"
)
_ZONED_RE = r"[T ]\d\d(:\d\d(:\d\d(\.\d+)?)?)?([Zz]|[+-]\d\d(:?\d\d)?)$"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
# Nanosecond timestamps (needed for fractions) cover 1677-09-21 .. 2262-04-11.
_NS_YEARS = (1678, 2261)

_RETAIL_COLUMNS = ("Invoice", "StockCode", "Quantity", "InvoiceDate", "Customer ID")


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class ColumnMapping:
    """The source column for each canonical column of the ``events`` layout.

    A name that differs from the default must exist in the file; an optional column
    left at its default name may be absent, and ``None`` means "never read it".
    """

    user_id: str = "user_id"
    """Customer id column (required)."""
    item_id: str = "item_id"
    """Product id column (required)."""
    timestamp: str = "timestamp"
    """ISO 8601 date/time or Unix seconds column (required)."""
    event_type: str | None = "event_type"
    """Event type column; absent or empty cells take ``default_event_type``."""
    quantity: str | None = "quantity"
    """Units column (> 0); absent or empty cells mean 1."""
    basket_id: str | None = "basket_id"
    """Order / basket column; absent or empty cells mean ``f"{user_id}@{timestamp}"``."""
    event_id: str | None = "event_id"
    """Event id column (the server's event log has one); a row repeating an id read
    before is dropped, absent or empty cells are never dropped."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not value.strip():
                raise ConfigError(f"column mapping: {f.name} must name a column, got {value!r}")

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """Parse ``"user_id=Customer,item_id=SKU,timestamp=ts"`` (the CLI form).

        Unnamed canonical columns keep their default source name; ``quantity=`` (empty)
        or ``quantity=-`` means the file has no such column. Raises ConfigError.
        """
        known = {f.name for f in fields(cls)}
        optional = {"event_type", "quantity", "basket_id", "event_id"}
        values: dict[str, str | None] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in known:
                raise ConfigError(
                    f"column mapping: expected canonical=source pairs with canonical one of "
                    f"{', '.join(sorted(known))}, got {part!r}"
                )
            if key in values:
                raise ConfigError(f"column mapping: {key} given twice")
            if value in ("", "-"):
                if key not in optional:
                    raise ConfigError(f"column mapping: {key} is required and needs a column")
                values[key] = None
            else:
                values[key] = value
        # Required keys never map to None (checked above).
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class LoadSummary:
    """What :func:`load_events` read, kept and removed.

    ``rows_read == rows_kept + sum(removed.values())`` always holds.
    """

    path: str
    """The file read."""
    format: str
    """The layout: ``"events"`` or ``"online-retail"``."""
    file_format: str
    """How the bytes were stored: ``"csv"``, ``"csv+gzip"`` or ``"parquet"``."""
    rows_read: int
    """Data rows in the file (header excluded), including rows the CSV parser skipped."""
    rows_kept: int
    """Rows in the returned table."""
    removed: dict[str, int]
    """Rows removed, by reason (every reason of the layout is present, maybe 0;
    ``repeated_event_id`` when the file has an ``event_id`` column)."""
    guest_rows: int
    """Kept rows without a user (null ``user_id``)."""
    users: int
    """Distinct non-null user ids kept."""
    items: int
    """Distinct item ids kept."""
    min_timestamp: int | None
    """Earliest kept timestamp (Unix seconds)."""
    max_timestamp: int | None
    """Latest kept timestamp (Unix seconds)."""
    seconds: float = 0.0
    """Wall time spent loading."""


@dataclass(frozen=True)
class Catalog:
    """The item catalogue, as arrow arrays aligned by row (one row per item).

    Item ids are unique. ``category`` and ``title`` are null where the file has no such
    column or an empty cell; ``available`` defaults to true.
    """

    item_id: pa.Array
    """string, never null, unique."""
    category: pa.Array
    """string, nullable."""
    available: pa.Array
    """bool, never null."""
    title: pa.Array
    """string, nullable."""
    attributes: dict[str, pa.Array] = field(default_factory=dict)
    """Every other column of the file, by its name (strings for CSV, native for Parquet)."""
    skipped_rows: int = 0
    """Rows dropped with ``skip_bad_rows=True`` (bad values and repeated item ids)."""

    def __len__(self) -> int:
        return len(self.item_id)


# --------------------------------------------------------------------------- input files


def _one_line(exc: BaseException) -> str:
    """A lower library's message on one line (pyarrow's Parquet errors take several)."""
    return "; ".join(part.strip() for part in str(exc).splitlines() if part.strip())


class _RowHandler:
    """CSV invalid-row callback: counts skipped rows, or remembers the first for the error."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.skipped = 0
        self.first: Any = None
        self.undecodable: bytes | None = None
        """The text of a malformed row that pyarrow could not decode (see _quiet)."""

    def __call__(self, row: Any) -> str:
        if self.skip:
            self.skipped += 1
            return "skip"
        if self.first is None:
            self.first = row
        return "error"

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While reading with this handler: pyarrow decodes a malformed row's text as
        UTF-8 before it calls the handler, and when that fails it prints the
        UnicodeDecodeError as an "Exception ignored" traceback and stops the read.
        Keep the row's bytes here instead (the unraisable's object is this handler),
        for a one-line error; any other unraisable exception goes where it went."""
        previous = sys.unraisablehook

        def hook(args: Any) -> None:
            if args.object is self and isinstance(args.exc_value, UnicodeDecodeError):
                self.undecodable = self.undecodable or bytes(args.exc_value.object)
                return
            previous(args)

        sys.unraisablehook = hook
        try:
            yield
        finally:
            if sys.unraisablehook is hook:  # else someone hooked in since: leave theirs
                sys.unraisablehook = previous


class _Source:
    """One input file: its kind, its header and a stream of record batches."""

    def __init__(self, path: str | Path, skip_bad_rows: bool) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.handler = _RowHandler(skip_bad_rows)
        if not self.path.exists():
            raise DataError(f"{self.name}: no such file")
        if not self.path.is_file():
            raise DataError(f"{self.name}: not a regular file")
        try:
            with self.path.open("rb") as fh:
                magic = fh.read(4)
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read: {exc.strerror or exc}") from exc
        if not magic:
            raise DataError(f"{self.name}: empty file (no header, no rows)")
        suffixes = [s.lower() for s in self.path.suffixes]
        if magic == b"PAR1":
            self.kind = "parquet"
        elif suffixes and suffixes[-1] in (".parquet", ".pq"):
            raise DataError(f"{self.name}: not a Parquet file (no PAR1 magic)")
        elif magic[:2] == b"\x1f\x8b":
            self.kind = "csv+gzip"
        else:
            self.kind = "csv"
        # Batches are located by record: CSV's header is record 1, so its data start at
        # record 2; Parquet's first row is row 1. where() turns a record into a line.
        self.first_line = 1 if self.kind == "parquet" else 2
        self.unit = "row" if self.kind == "parquet" else "line"
        self.types: dict[str, pa.DataType] = {}  # Parquet's column types
        self.head = b""  # the first bytes of a CSV file's text (decompressed)
        if self.kind != "parquet":
            self._check_text()
        self.columns: list[str] = self._header()

    def _check_text(self) -> None:
        """Refuse a file that is not text, even with ``skip_bad_rows``: its "rows" would
        be garbage. CSV never holds a NUL byte; UTF-16 text holds one in every ASCII
        character, and binary formats (zip, xlsx, images) within their first bytes."""
        try:
            with self._stream() as stream:
                head = stream.read(_TEXT_SNIFF_BYTES)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.name}: cannot read {self.kind}: {_one_line(exc)}") from exc
        self.head = head
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError(f"{self.name}: UTF-16 text; events files must be UTF-8 (save as UTF-8)")
        nul = head.find(b"\0")
        if nul >= 0:
            raise DataError(
                f"{self.name}: binary content (a NUL byte at byte {nul:,}"
                f"{' after decompression' if self.kind == 'csv+gzip' else ''}); "
                f"expected CSV text (UTF-8), gzip CSV or Parquet"
            )

    def _header(self) -> list[str]:
        skip = _RowHandler(skip=True)
        try:
            if self.kind == "parquet":
                schema = pq.ParquetFile(self.name).schema_arrow
                self.types = dict(zip(schema.names, schema.types, strict=True))
                return list(schema.names)
            # Only the names matter here: rows are checked when the file is read.
            with skip.quiet():
                reader = pacsv.open_csv(
                    self._stream(),
                    read_options=pacsv.ReadOptions(block_size=1 << 20, use_threads=False),
                    parse_options=pacsv.ParseOptions(
                        invalid_row_handler=skip, newlines_in_values=True
                    ),
                )
                names = list(reader.schema.names)
                reader.close()
            return names
        except UnicodeDecodeError as exc:  # pyarrow decodes the names for the schema
            raise DataError(
                f"{self.name}:1: the header is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}); save the file as UTF-8"
            ) from exc
        except (pa.ArrowException, OSError) as exc:
            if "Empty CSV file" in str(exc):  # no line found in the first block
                raise DataError(self._no_header()) from exc
            if skip.undecodable is not None:  # in the first block: as the full read would
                raise self._undecodable_row(str(exc), skip.undecodable) from exc
            raise DataError(f"{self.name}: cannot read {self.kind}: {_one_line(exc)}") from exc

    def _no_header(self) -> str:
        """Why the CSV reader found no header line in the file's first block."""
        if not self.head.strip():
            return f"{self.name}: empty file (no header, no rows)"
        if len(self.head) < _TEXT_SNIFF_BYTES and not re.search(rb"[\r\n]", self.head.strip()):
            return f"{self.name}: no data rows (one line, no line break)"
        return f"{self.name}: no line break in the first MB; not a CSV file"

    def _stream(self) -> Any:
        return pa.input_stream(self.name, compression="gzip" if self.kind == "csv+gzip" else None)

    def require(self, wanted: list[str], what: str) -> None:
        """Raise DataError naming the first wanted column the file lacks."""
        for name in wanted:
            if name not in self.columns:
                found = ", ".join(repr(c) for c in self.columns)
                raise DataError(
                    f"{self.name}: missing column {name!r} ({what}); columns found: {found}"
                )

    def check_unique(self, include: list[str]) -> None:
        """Raise DataError for a column to be read that the header names twice: which
        one is meant is ambiguous (a column that is not read may repeat)."""
        for name in include:
            at = [i + 1 for i, c in enumerate(self.columns) if c == name]
            if len(at) > 1:
                header = ":1" if self.kind != "parquet" else ""
                raise DataError(
                    f"{self.name}{header}: column {name!r} appears {len(at)} times "
                    f"(columns {', '.join(map(str, at))}); rename all but one"
                )

    def check_types(self, include: list[str]) -> None:
        """Raise DataError for a Parquet column of a type no canonical column can come
        from (lists, structs, maps): text, numbers, booleans and times convert."""
        for name in include:
            t = self.types.get(name)
            if t is not None and pa.types.is_nested(t):
                raise DataError(
                    f"{self.name}: column {name!r} holds {t} values; expected text, "
                    f"numbers or timestamps"
                )

    def batches(self, include: list[str]) -> Iterator[pa.RecordBatch]:
        """Yield batches of the included columns, translating reader errors."""
        try:
            if self.kind == "parquet":
                parquet = pq.ParquetFile(self.name)
                yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=include)
                return
            # use_threads=False: as fast here as threaded, and only then does the
            # invalid-row callback get the line number of the malformed row.
            # Bytes, not strings: a value that is not UTF-8 is then one bad value (see
            # _decode) rather than an unreadable file. Quoted values may hold line
            # breaks: without newlines_in_values a block boundary inside one is a
            # parse error.
            with self.handler.quiet():
                reader = pacsv.open_csv(
                    self._stream(),
                    read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
                    parse_options=pacsv.ParseOptions(
                        invalid_row_handler=self.handler, newlines_in_values=True
                    ),
                    convert_options=pacsv.ConvertOptions(
                        include_columns=include,
                        column_types=dict.fromkeys(include, pa.binary()),
                        strings_can_be_null=True,
                        null_values=[""],
                    ),
                )
                yield from reader
        except (pa.ArrowException, OSError) as exc:
            row = self.handler.first
            if row is not None:
                line = self.line_of(row.number) if row.number is not None else 0
                raise InputRowError(
                    self.name,
                    line,
                    "(row)",
                    f"{row.expected_columns} comma-separated fields",
                    f"{row.actual_columns} fields: {row.text}",
                ) from exc
            if self.handler.undecodable is not None:
                raise self._undecodable_row(str(exc), self.handler.undecodable) from exc
            raise DataError(f"{self.name}: cannot read {self.kind}: {_one_line(exc)}") from exc

    def _undecodable_row(self, message: str, text: bytes) -> DataError:
        """A malformed row that is not UTF-8: pyarrow could not hand it to the handler,
        so it cannot be skipped either; its place and shape are in pyarrow's message."""
        record = re.search(r"Row #(\d+)", message)
        line = self.line_of(int(record.group(1))) if record else 0
        shape = re.search(r"Expected (\d+) columns, got (\d+)", message)
        expected, got = shape.groups() if shape else ("?", "?")
        shown = text.decode("utf-8", "backslashreplace")
        if not self.handler.skip:
            return InputRowError(
                self.name, line, "(row)", f"{expected} comma-separated fields",
                f"{got} fields: {shown}",
            )  # fmt: skip
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return DataError(
            f"{self.name}:{line}: a malformed row ({got} fields, expected {expected}) that "
            f"is not UTF-8 cannot be skipped; fix it or save the file as UTF-8: {shown!r}"
        )

    def where(self, first_line: int, index: int) -> int:
        """Line (CSV) or row number (Parquet) of row ``index`` of a batch whose first
        row is record ``first_line``."""
        record = first_line + index
        return record if self.kind == "parquet" else self.line_of(record)

    def line_of(self, record: int) -> int:
        """The file line on which CSV record ``record`` (header = 1) starts.

        Records are lines unless quoted values hold line breaks or blank lines are
        skipped; the file is read again up to the record to count them. This runs only
        to report a bad row (~1.5 s per million rows before it); the count stays the
        record's number if the file cannot be read again.
        """
        try:
            with self._stream() as stream:
                text = io.TextIOWrapper(
                    stream, encoding="utf-8", errors="surrogateescape", newline=""
                )
                reader = csv.reader(text, strict=False)
                seen, line = 0, 0
                for fields in reader:
                    if not fields:  # a blank line: the CSV reader skips it
                        line = reader.line_num
                        continue
                    seen += 1
                    if seen == record:
                        return line + 1
                    line = reader.line_num
        except (csv.Error, pa.ArrowException, OSError, UnicodeError):
            pass
        return record


# --------------------------------------------------------------------------- conversions


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[_Check]]:
    """The batch with its byte columns (every CSV column; Parquet's byte arrays and
    strings) as UTF-8 strings, and a check per column holding values that are not
    UTF-8 (those values become null)."""
    arrays: list[pa.Array] = []
    checks: list[_Check] = []
    for name, arr in zip(batch.schema.names, batch.columns, strict=True):
        text, bad, raw = _utf8(arr)
        arrays.append(text)
        if bad is not None:
            checks.append(_Check(name, bad, _EXPECT_UTF8, raw))
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names), checks


def _utf8(arr: pa.Array) -> tuple[pa.Array, pa.Array | None, pa.Array]:
    """A byte or string column as checked UTF-8 strings (other types as they are), the
    mask of values that are not UTF-8 (None when all are) and the column as bytes."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        try:  # Parquet's reader does not check that its strings are UTF-8
            arr.validate(full=True)
            return arr, None, arr
        except pa.ArrowInvalid:
            arr = arr.view(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        return arr, None, arr
    try:
        return pc.cast(arr, pa.string()), None, arr  # validates UTF-8 at memory speed
    except pa.ArrowInvalid:
        # the slow path, for a batch holding a value that is not UTF-8
        bad = pa.array([v is not None and not _is_utf8(v) for v in arr.to_pylist()])
        valid = pc.if_else(bad, pa.scalar(None, arr.type), arr)
        return pc.cast(valid, pa.string()), bad, arr


def _to_string(arr: pa.Array) -> pa.Array:
    """Any id column as strings; empty strings become null; integral floats lose ``.0``."""
    t = arr.type
    if pa.types.is_floating(t):
        finite = pc.fill_null(pc.is_finite(arr), _TRUE)
        if pc.all(pc.and_(finite, pc.fill_null(pc.equal(pc.floor(arr), arr), _TRUE))).as_py():
            arr = pc.cast(arr, pa.int64())
    if pa.types.is_dictionary(t):
        arr = pc.cast(arr, t.value_type)
    if not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    blank = pc.equal(arr, _EMPTY)
    if pc.any(blank).as_py():
        arr = pc.if_else(blank, pa.scalar(None, pa.string()), arr)
    return arr


def _cast_or_null(arr: pa.Array, to: pa.DataType) -> pa.Array:
    """Cast; values that do not cast become null. Bisects only when the cast fails."""
    try:
        return pc.cast(arr, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) == 1:
            return pa.nulls(1, to)
    mid = len(arr) // 2
    return pa.concat_arrays([_cast_or_null(arr[:mid], to), _cast_or_null(arr[mid:], to)])


def _cast_matching(arr: pa.Array, pattern: str, to: pa.DataType) -> pa.Array:
    """Cast the values that match ``pattern``; the rest (and failed casts) become null."""
    mask = pc.fill_null(pc.match_substring_regex(arr, pattern), _FALSE)
    if not pc.any(mask).as_py():
        return pa.nulls(len(arr), to)
    return pc.replace_with_mask(pa.nulls(len(arr), to), mask, _cast_or_null(arr.filter(mask), to))


def _seconds_from_numbers(values: pa.Array) -> pa.Array:
    """Float seconds -> int64 seconds (floored); implausible values become null."""
    values = pc.cast(values, pa.float64())
    ok = pc.and_(pc.is_finite(values), pc.less(pc.abs(values), _MAX_UNIX_SECONDS))
    values = pc.if_else(ok, values, pa.scalar(None, pa.float64()))
    return pc.cast(pc.floor(values), pa.int64())


_PER_SECOND = {unit: pa.scalar(10**i, pa.int64()) for unit, i in (("ms", 3), ("us", 6), ("ns", 9))}


def _seconds_from_timestamps(values: pa.Array) -> pa.Array:
    """Timestamp (any unit, naive = UTC) -> int64 Unix seconds (floored)."""
    ticks = pc.cast(pc.floor_temporal(values, unit="second"), pa.int64())
    per_second = _PER_SECOND.get(values.type.unit)
    return ticks if per_second is None else pc.divide(ticks, per_second)


def _parse_time_strings(arr: pa.Array) -> pa.Array:
    """ISO 8601 / Unix-second strings -> int64 seconds, the fast path.

    Guesses the shape from the first value and casts the whole batch at once; raises
    ArrowInvalid if any value does not fit (then :func:`_parse_time_strings_slowly`).
    """
    first = pc.index(arr.is_valid(), _TRUE).as_py()
    sample = arr[first].as_py() if first >= 0 else ""
    if re.match(_NUMERIC_RE, sample):
        return _seconds_from_numbers(pc.cast(arr, pa.float64()))
    tz = "UTC" if re.search(_ZONED_RE, sample) else None
    try:
        # Straight to seconds when there are no fractions: a third cheaper.
        return _seconds_from_timestamps(pc.cast(arr, pa.timestamp("s", tz=tz)))
    except pa.ArrowInvalid:
        return _seconds_from_timestamps(pc.cast(arr, pa.timestamp("ns", tz=tz)))


def _parse_time_strings_slowly(arr: pa.Array) -> pa.Array:
    """ISO 8601 / Unix-second strings -> int64 seconds; null where unparseable.

    Routes each value by its shape (number, ISO with or without zone and fraction),
    checks the calendar with masks and casts each group; only a value that passes the
    checks and still fails its cast costs a bisection.
    """
    out = _seconds_from_numbers(_cast_matching(arr, _NUMERIC_RE, pa.float64()))
    # Check the calendar first, so the casts below fail (and bisect) only on oddities.
    parts = pc.extract_regex(arr, _ISO_RE)
    matched = parts.is_valid().to_numpy(zero_copy_only=False)

    def number(name: str) -> Any:
        text = pc.fill_null(pc.struct_field(parts, name), _EMPTY)
        text = pc.if_else(pc.equal(text, _EMPTY), _ZERO_TEXT, text)
        return pc.cast(text, pa.int32()).to_numpy(zero_copy_only=False)

    def given(name: str) -> Any:
        text = pc.fill_null(pc.struct_field(parts, name), _EMPTY)
        return pc.not_equal(text, _EMPTY).to_numpy(zero_copy_only=False)

    year, month, day = number("year"), number("month"), number("day")
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + ((month == 2) & leap)
    fraction, zoned = given("fraction"), given("zone")
    ok = (
        matched
        & (month >= 1)
        & (month <= 12)
        & (day >= 1)
        & (day <= days)
        & (number("hour") < 24)
        & (number("minute") < 60)
        & (number("second") < 60)
        & (~fraction | ((year >= _NS_YEARS[0]) & (year <= _NS_YEARS[1])))
    )
    for has_zone in (False, True):
        for has_fraction in (False, True):
            mask = ok & (zoned == has_zone) & (fraction == has_fraction)
            if not mask.any():
                continue
            to = pa.timestamp("ns" if has_fraction else "s", tz="UTC" if has_zone else None)
            seconds = _seconds_from_timestamps(_cast_or_null(arr.filter(mask), to))
            out = pc.replace_with_mask(out, pa.array(mask), seconds)
    return out


def _timestamps(arr: pa.Array) -> pa.Array:
    """Any timestamp column -> int64 Unix seconds, null where missing or bad."""
    t = arr.type
    if pa.types.is_timestamp(t):
        return _seconds_from_timestamps(arr)
    if pa.types.is_date(t):
        return _seconds_from_timestamps(pc.cast(arr, pa.timestamp("s")))
    if pa.types.is_integer(t):
        return _seconds_from_numbers(arr)
    if pa.types.is_floating(t):
        return _seconds_from_numbers(arr)
    arr = _to_string(arr)
    try:
        return _parse_time_strings(arr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _parse_time_strings_slowly(arr)


def _numbers(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Any quantity column -> (float64 values, given mask).

    Values are null where the cell is empty or not a finite number; ``given`` is true
    where the cell is not empty, so ``given & values.is_null()`` marks bad cells.
    """
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        arr = pc.cast(arr, pa.float64())
        given = arr.is_valid()
    else:
        arr = _to_string(arr)
        given = arr.is_valid()
        try:
            arr = pc.cast(arr, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            arr = _cast_matching(arr, _NUMERIC_RE, pa.float64())
    return pc.if_else(pc.is_finite(arr), arr, pa.scalar(None, pa.float64())), given


def _event_types(arr: pa.Array, default: EventType) -> tuple[pa.Array, pa.Array]:
    """Event type spellings -> canonical values; returns (values, bad mask). Empty = default."""
    arr = _to_string(arr)
    encoded = pc.dictionary_encode(arr)
    canonical = [
        _EVENT_ALIASES.get(re.sub(r"[\s-]+", "_", str(v).strip().lower()))
        for v in encoded.dictionary.to_pylist()
    ]
    spellings = encoded.dictionary.to_pylist()
    bad = pa.array(np.zeros(len(arr), dtype=bool))
    if arr.null_count == 0 and all(
        c is not None and c.value == v for c, v in zip(canonical, spellings, strict=True)
    ):
        return arr, bad  # the common case: already canonical, nothing to rewrite
    lookup = pa.array([c.value if c is not None else None for c in canonical], pa.string())
    values = lookup.take(encoded.indices)
    bad = pc.and_(arr.is_valid(), values.is_null())
    return pc.fill_null(values, pa.scalar(default.value, pa.string())), bad


def _booleans(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    """true/false, yes/no, 1/0 (any case) -> bool; returns (values, bad mask). Empty = true."""
    if pa.types.is_boolean(arr.type):
        return pc.fill_null(arr, _TRUE), pa.array(np.zeros(len(arr), dtype=bool))
    arr = _to_string(arr)
    encoded = pc.dictionary_encode(arr)
    lookup = pa.array(
        [_BOOLEANS.get(str(v).strip().lower()) for v in encoded.dictionary.to_pylist()],
        pa.bool_(),
    )
    values = lookup.take(encoded.indices)
    bad = pc.and_(arr.is_valid(), values.is_null())
    return pc.fill_null(values, _TRUE), bad


@dataclass
class _Check:
    """One kind of bad value in a batch: where (mask), which column, what was expected."""

    column: str
    bad: pa.Array
    expected: str
    raw: pa.Array


def _bad_rows(
    source: _Source, checks: list[_Check], first_line: int, skip: bool
) -> pa.Array | None:
    """Raise for the first bad row of the batch, or (skip) return the keep mask.

    Returns None when every row is good.
    """
    checks = [c for c in checks if pc.any(c.bad).as_py()]
    if not checks:
        return None
    if not skip:
        index, check = min(
            ((pc.index(c.bad, _TRUE).as_py(), c) for c in checks), key=lambda pair: pair[0]
        )
        got = check.raw[index].as_py()
        if isinstance(got, bytes):  # not UTF-8: its bytes, \x-escaped
            got = got.decode("utf-8", "backslashreplace")
        raise InputRowError(
            source.name,
            source.where(first_line, index),
            check.column,
            check.expected,
            "" if got is None else str(got),
        )
    bad = checks[0].bad
    for c in checks[1:]:
        bad = pc.or_(bad, c.bad)
    return pc.invert(bad)


def _missing(arr: pa.Array) -> pa.Array:
    return arr.is_null()


# --------------------------------------------------------------------------- layouts


@dataclass
class _Converted:
    """A converted batch: canonical arrays, bad-value checks and cleaning masks."""

    columns: dict[str, pa.Array]
    checks: list[_Check]
    removals: list[tuple[str, pa.Array]] = field(default_factory=list)


def _convert_events(
    batch: pa.RecordBatch, mapping: ColumnMapping, default_event_type: EventType
) -> _Converted:
    names = set(batch.schema.names)
    user_raw = batch.column(mapping.user_id)
    item_raw = batch.column(mapping.item_id)
    ts_raw = batch.column(mapping.timestamp)
    user = _to_string(user_raw)
    item = _to_string(item_raw)
    ts = _timestamps(ts_raw)
    basket = (
        _to_string(batch.column(mapping.basket_id))
        if mapping.basket_id is not None and mapping.basket_id in names
        else pa.nulls(batch.num_rows, pa.string())
    )
    # a guest's row (no user: an anonymous visit the server logged) needs its basket,
    # which groups the visit
    no_user = pc.and_(_missing(user), _missing(basket))
    checks = [
        _Check(mapping.user_id, no_user, "a non-empty user id (or a guest's basket id)", user_raw),
        _Check(mapping.item_id, _missing(item), "a non-empty item id", item_raw),
        _Check(mapping.timestamp, _missing(ts), _EXPECT_TIMESTAMP, ts_raw),
    ]
    columns = {"user_id": user, "item_id": item, "timestamp": ts}
    n = batch.num_rows
    if mapping.event_type is not None and mapping.event_type in names:
        raw = batch.column(mapping.event_type)
        values, bad = _event_types(raw, default_event_type)
        checks.append(_Check(mapping.event_type, bad, _EXPECT_EVENT_TYPE, raw))
        columns["event_type"] = values
    else:
        columns["event_type"] = pa.repeat(pa.scalar(default_event_type.value, pa.string()), n)
    if mapping.quantity is not None and mapping.quantity in names:
        raw = batch.column(mapping.quantity)
        q, given = _numbers(raw)
        # float32 is the output type: larger values would become inf.
        in_range = pc.and_(pc.greater(q, _ZERO), pc.less_equal(q, _MAX_FLOAT32))
        bad = pc.and_(given, pc.invert(pc.fill_null(in_range, _FALSE)))
        checks.append(_Check(mapping.quantity, bad, _EXPECT_QUANTITY, raw))
        columns["quantity"] = pc.fill_null(q, _ONE)
    else:
        columns["quantity"] = pa.array(np.ones(n, dtype=np.float64))
    columns["basket_id"] = basket
    if mapping.event_id is not None and mapping.event_id in names:
        # not a column of the table: it only decides which rows repeat an event
        columns["event_id"] = _to_string(batch.column(mapping.event_id))
    return _Converted(columns, checks)


def _convert_online_retail(batch: pa.RecordBatch) -> _Converted:
    invoice_raw = batch.column("Invoice")
    item_raw = batch.column("StockCode")
    qty_raw = batch.column("Quantity")
    ts_raw = batch.column("InvoiceDate")
    invoice = _to_string(invoice_raw)
    # The export spells some codes in two cases ("85123a", "85123A"): one product.
    item = pc.utf8_upper(_to_string(item_raw))
    qty, _ = _numbers(qty_raw)
    ts = _timestamps(ts_raw)
    # Some exports write Customer ID as a float ("13085.0"); ids are integers.
    user = pc.replace_substring_regex(
        _to_string(batch.column("Customer ID")), r"^(\d+)\.0*$", r"\1"
    )
    checks = [
        _Check("Invoice", _missing(invoice), "a non-empty invoice", invoice_raw),
        _Check("StockCode", _missing(item), "a non-empty stock code", item_raw),
        _Check("Quantity", _missing(qty), _EXPECT_NUMBER, qty_raw),
        _Check("InvoiceDate", _missing(ts), _EXPECT_TIMESTAMP, ts_raw),
    ]
    removals = [
        ("cancelled_invoice", pc.fill_null(pc.starts_with(invoice, "C", ignore_case=True), _FALSE)),
        ("return_or_zero_quantity", pc.fill_null(pc.less_equal(qty, _ZERO), _FALSE)),
        (
            "non_product",
            pc.fill_null(pc.match_substring_regex(item, NON_PRODUCT_STOCK_CODE), _FALSE),
        ),
    ]
    columns = {
        "user_id": user,
        "item_id": item,
        "timestamp": ts,
        "event_type": pa.repeat(pa.scalar(EventType.PURCHASE.value, pa.string()), batch.num_rows),
        "quantity": qty,
        "basket_id": invoice,
    }
    return _Converted(columns, checks, removals)


def _default_baskets(columns: dict[str, pa.Array]) -> pa.Array:
    """``f"{user_id}@{timestamp}"``: one basket per user and second."""
    # Joining three inputs with an empty separator is twice as fast as ("@" sep).
    return pc.binary_join_element_wise(
        columns["user_id"], _AT, pc.cast(columns["timestamp"], pa.string()), _EMPTY
    )


def _finish_batch(columns: dict[str, pa.Array], keep: pa.Array | None) -> pa.RecordBatch:
    """Filter, fill default baskets and cast to :data:`EVENT_SCHEMA`."""
    if keep is not None:
        columns = {k: v.filter(keep) for k, v in columns.items()}
    basket = columns["basket_id"]
    if basket.null_count == len(basket):
        columns["basket_id"] = _default_baskets(columns)
    elif basket.null_count:
        columns["basket_id"] = pc.coalesce(basket, _default_baskets(columns))
    arrays = [pc.cast(columns[name], EVENT_SCHEMA.field(name).type) for name in CANONICAL_COLUMNS]
    return pa.RecordBatch.from_arrays(arrays, schema=EVENT_SCHEMA)


_T = TypeVar("_T")


def _map_batches(
    source: _Source, include: list[str], process: Callable[[pa.RecordBatch, int], _T]
) -> list[_T]:
    """``process(batch, first_line)`` for every batch, in file order, on a thread pool.

    Arrow kernels release the GIL, so batch k is converted while the reader parses
    batch k+1. At most a few batches are in flight, so memory stays bounded. Errors
    surface in file order: a bad value in an earlier batch wins over one in a later
    batch and over a parse error found later by the reader.
    """
    workers = max(1, min(4, os.cpu_count() or 1))
    results: list[_T] = []
    pending: deque[Future[_T]] = deque()
    batches = source.batches(include)
    line = source.first_line
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="recsvc-load") as pool:
        try:
            while True:
                try:
                    batch = next(batches, None)
                except DataError:
                    while pending:  # a bad value in an earlier batch comes first
                        pending.popleft().result()
                    raise
                if batch is None:
                    break
                if batch.num_rows:
                    pending.append(pool.submit(process, batch, line))
                    line += batch.num_rows
                while len(pending) > 2 * workers:
                    results.append(pending.popleft().result())
            while pending:
                results.append(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()
    return results


# --------------------------------------------------------------------------- public API


def _drop_repeated(
    batches: list[pa.RecordBatch], event_ids: list[pa.Array | None], seen: set[str]
) -> tuple[list[pa.RecordBatch], int]:
    """``batches`` without the rows whose event id is in ``seen`` or came earlier (in
    file order); ``seen`` gains the ids kept. A set of ids costs ~100 bytes per logged
    event: event logs, not the bulk history (which has no ids), go through it."""
    kept, dropped = [], 0
    for batch, ids in zip(batches, event_ids, strict=True):
        if ids is None or ids.null_count == len(ids):
            kept.append(batch)
            continue
        keep = np.ones(len(ids), dtype=bool)
        for row, event_id in enumerate(ids.to_pylist()):
            if event_id is None:
                continue
            if event_id in seen:
                keep[row] = False
            else:
                seen.add(event_id)
        n = len(keep) - int(keep.sum())
        dropped += n
        kept.append(batch.filter(pa.array(keep)) if n else batch)
    return kept, dropped


def load_events(
    path: str | Path,
    *,
    format: Literal["events", "online-retail"] = "events",
    mapping: ColumnMapping | None = None,
    skip_bad_rows: bool = False,
    default_event_type: EventType = EventType.PURCHASE,
    seen_event_ids: set[str] | None = None,
) -> tuple[pa.Table, LoadSummary]:
    """Read an event file into the canonical event table (see :data:`EVENT_SCHEMA`).

    Args:
        path: CSV (plain or gzip, detected from the bytes) or Parquet file.
        format: the layout, ``"events"`` or ``"online-retail"`` (see the module doc).
        mapping: source column names for the ``events`` layout (default: canonical names).
        skip_bad_rows: drop rows with bad values (and malformed CSV rows) and count them
            as ``removed["bad_row"]`` instead of raising :class:`InputRowError`.
        default_event_type: the event type of rows without one (``events`` layout).
        seen_event_ids: event ids kept from earlier files, updated with this file's:
            a row whose ``event_id`` is in it (or earlier in this file) is dropped and
            counted as ``removed["repeated_event_id"]`` — a retried RecordEvents the
            event logs of two replicas hold. Rows without an id are never dropped.

    Returns:
        The table (chunked, one chunk per input batch, rows in file order) and a summary.

    Raises:
        InputRowError: a bad value (file, line or Parquet row, column, expectation).
        DataError: a missing file or column, an unreadable file, or no rows to keep.
        ConfigError: a mapping given with the ``online-retail`` layout.
    """
    started = time.perf_counter()
    if format not in ("events", "online-retail"):
        raise ConfigError(f"unknown event file format {format!r}; use 'events' or 'online-retail'")
    if format == "online-retail" and mapping is not None:
        raise ConfigError("a column mapping applies to format 'events' only")
    source = _Source(path, skip_bad_rows)
    convert: Callable[[pa.RecordBatch], _Converted]
    if format == "online-retail":
        source.require(list(_RETAIL_COLUMNS), "required by format 'online-retail'")
        include = list(_RETAIL_COLUMNS)
        removed = dict.fromkeys(
            ("bad_row", "cancelled_invoice", "return_or_zero_quantity", "non_product"), 0
        )
        convert = _convert_online_retail
    else:
        mapping = mapping or ColumnMapping()
        required = [mapping.user_id, mapping.item_id, mapping.timestamp]
        source.require(required, "required")
        defaults = ColumnMapping()
        include = list(dict.fromkeys(required))
        for name in ("event_type", "quantity", "basket_id", "event_id"):
            column = getattr(mapping, name)
            if column is None:
                continue
            if column in source.columns:
                include.append(column)
            elif column != getattr(defaults, name):
                source.require([column], f"mapped to {name}")
        include = list(dict.fromkeys(include))
        removed = {"bad_row": 0}
        if mapping.event_id is not None and mapping.event_id in source.columns:
            removed["repeated_event_id"] = 0
        convert = functools.partial(
            _convert_events, mapping=mapping, default_event_type=default_event_type
        )

    source.check_unique(include)
    source.check_types(include)

    def process(
        batch: pa.RecordBatch, line: int
    ) -> tuple[pa.RecordBatch, dict[str, int], pa.Array | None]:
        batch, undecodable = _decode(batch)
        converted = convert(batch)
        counts = dict.fromkeys(removed, 0)
        # first, so that a value that is not UTF-8 is reported as such, not as missing
        keep = _bad_rows(source, undecodable + converted.checks, line, skip_bad_rows)
        if keep is not None:
            counts["bad_row"] = batch.num_rows - pc.sum(keep).as_py()
        for reason, mask in converted.removals:
            hit = mask if keep is None else pc.and_(keep, mask)
            count = pc.sum(hit).as_py() or 0
            if count:
                counts[reason] = count
                keep = pc.invert(hit) if keep is None else pc.and_not(keep, hit)
        ids = converted.columns.get("event_id")
        if ids is not None and keep is not None:
            ids = ids.filter(keep)
        return _finish_batch(converted.columns, keep), counts, ids

    batches: list[pa.RecordBatch] = []
    event_ids: list[pa.Array | None] = []
    rows_read = 0
    for batch, counts, ids in _map_batches(source, include, process):
        batches.append(batch)
        event_ids.append(ids)
        rows_read += batch.num_rows
        for reason, count in counts.items():
            removed[reason] += count
            rows_read += count
    removed["bad_row"] += source.handler.skipped
    rows_read += source.handler.skipped

    if any(ids is not None for ids in event_ids):
        seen = set() if seen_event_ids is None else seen_event_ids
        batches, repeated = _drop_repeated(batches, event_ids, seen)
        removed["repeated_event_id"] += repeated
    table = pa.Table.from_batches(batches, schema=EVENT_SCHEMA)
    if rows_read == 0:
        raise DataError(f"{source.name}: no data rows (empty or header only)")
    if table.num_rows == 0 and not removed.get("repeated_event_id"):
        # (a log whose every row repeats an earlier file's is fine: nothing new in it)
        reasons = ", ".join(f"{k}={v}" for k, v in removed.items() if v)
        raise DataError(f"{source.name}: no rows left after cleaning {rows_read} rows ({reasons})")
    # Distinct counts hash every id (seconds at 10M rows): do users and items at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        users = pool.submit(pc.count_distinct, table["user_id"])
        items = pool.submit(pc.count_distinct, table["item_id"])
        users_count, items_count = users.result().as_py(), items.result().as_py()
    bounds = pc.min_max(table["timestamp"])
    summary = LoadSummary(
        path=source.name,
        format=format,
        file_format=source.kind,
        rows_read=rows_read,
        rows_kept=table.num_rows,
        removed=removed,
        guest_rows=table["user_id"].null_count,
        users=users_count,
        items=items_count,
        min_timestamp=bounds["min"].as_py(),
        max_timestamp=bounds["max"].as_py(),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "loaded %s: %d of %d rows kept, removed %s, %d users, %d items, %.1fs",
        summary.path,
        summary.rows_kept,
        summary.rows_read,
        summary.removed,
        summary.users,
        summary.items,
        summary.seconds,
    )
    return table, summary


def load_catalog(path: str | Path, *, skip_bad_rows: bool = False) -> Catalog:
    """Read the item catalogue (CSV, gzip CSV or Parquet).

    Columns: ``item_id`` (required), ``category``, ``available`` (true/false, yes/no,
    1/0, any case; empty or absent = true) and ``title`` (optional); any other column is
    kept in :attr:`Catalog.attributes`. A repeated item id is an error (a catalogue
    with two rows for one item is ambiguous about its availability); with
    ``skip_bad_rows=True`` the first row of the item wins and the rest are counted in
    :attr:`Catalog.skipped_rows`.

    Raises:
        InputRowError: an empty item id, a bad ``available`` value or a repeated item id.
        DataError: a missing file or ``item_id`` column, an unreadable or empty file.
    """
    source = _Source(path, skip_bad_rows)
    source.require(["item_id"], "required")
    source.check_unique(list(source.columns))
    source.check_types(
        [c for c in ("item_id", "category", "available", "title") if c in source.columns]
    )
    parts: dict[str, list[pa.Array]] = {name: [] for name in source.columns}
    parts["available"] = []
    skipped = 0
    rows_read = 0
    line = source.first_line
    for raw_batch in source.batches(list(source.columns)):
        n = raw_batch.num_rows
        if n == 0:
            continue
        batch, undecodable = _decode(raw_batch)
        columns = {name: batch.column(name) for name in source.columns}
        raw_item = columns["item_id"]
        columns["item_id"] = _to_string(raw_item)
        checks = [
            *undecodable,
            _Check("item_id", _missing(columns["item_id"]), "a non-empty item id", raw_item),
        ]
        if "available" in columns:
            raw = columns["available"]
            columns["available"], bad = _booleans(raw)
            checks.append(_Check("available", bad, _EXPECT_AVAILABLE, raw))
        else:
            columns["available"] = pa.array(np.ones(n, dtype=bool))
        for name in ("category", "title"):
            if name in columns:
                columns[name] = _to_string(columns[name])
        keep = _bad_rows(source, checks, line, skip_bad_rows)
        if keep is not None:
            skipped += n - pc.sum(keep).as_py()
            columns = {k: v.filter(keep) for k, v in columns.items()}
        for name, values in columns.items():
            parts[name].append(values)
        rows_read += n
        line += n
    skipped += source.handler.skipped
    if rows_read + source.handler.skipped == 0:
        raise DataError(f"{source.name}: no data rows (empty or header only)")

    def column(name: str) -> pa.Array:
        chunks = parts.get(name)
        return pa.chunked_array(chunks).combine_chunks() if chunks else None

    item_id = column("item_id")
    if item_id is None or len(item_id) == 0:
        raise DataError(f"{source.name}: no catalogue rows left after skipping {skipped} bad rows")
    # Dictionary codes are 0..k-1 in order of first appearance; first[code] is its row.
    codes = pc.dictionary_encode(item_id).indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    keep = None
    if len(first) < len(item_id):
        is_first = np.zeros(len(item_id), dtype=bool)
        is_first[first] = True
        if not skip_bad_rows:
            dup = int(np.argmin(is_first))
            earlier = source.where(source.first_line, int(first[codes[dup]]))
            raise InputRowError(
                source.name,
                source.where(source.first_line, dup),
                "item_id",
                f"a unique item id (first seen on {source.unit} {earlier})",
                item_id[dup].as_py(),
            )
        skipped += len(item_id) - len(first)
        keep = pa.array(is_first)

    def final(name: str) -> pa.Array:
        values = column(name)
        if values is None:
            values = pa.nulls(len(item_id), pa.string())
        return values.filter(keep) if keep is not None else values

    special = ("item_id", "category", "available", "title")
    return Catalog(
        item_id=final("item_id"),
        category=final("category"),
        available=final("available"),
        title=final("title"),
        attributes={name: final(name) for name in source.columns if name not in special},
        skipped_rows=skipped,
    )
