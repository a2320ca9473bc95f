"""Properties of the events loader (issue #13, item 7).

Round trip: hypothesis draws a canonical event table (ids in any Unicode, with commas,
quotes and line breaks; timestamps anywhere from year 1 on; optional columns present
or absent, cells empty or given), writes it the ways a shop might (Unix seconds or
ISO 8601 in several spellings, event type aliases, quantities as integers, decimals
or exponents, renamed columns, CRLF, a byte-order mark, gzip or Parquet) and checks
that ``load_events`` gives back exactly the table.

Garbage: bytes that are not a valid events file (random, or a valid file with bytes
inserted, deleted or overwritten) give a clean load or a :class:`DataError`, never
another exception; with ``skip_bad_rows`` never an :class:`InputRowError` either.
"""

from __future__ import annotations

import gzip
import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from hypothesis import event, given, settings
from hypothesis import strategies as st

from recsvc.errors import DataError, InputRowError
from recsvc.events import EventType
from recsvc.training.loading import EVENT_SCHEMA, ColumnMapping, LoadSummary, load_events

#: Timestamps the loader reads: ISO 8601 from year 1 to 9999, Unix seconds below 1e11.
FIRST_ISO, LAST_ISO = -62_135_596_800, 253_402_300_799
MAX_UNIX = 10**11 - 1
#: Fractions of a second need nanoseconds, which cover 1678 to 2261 only.
FIRST_NS, LAST_NS = -9_214_560_000, 9_214_646_399

# Any Unicode but NUL (a CSV never holds one: the loader refuses such files as binary)
# and lone surrogates (not encodable); everything else, quotes, commas and line
# breaks included, must survive the trip.
CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
IDS = st.one_of(
    st.text(CHARACTERS, min_size=1, max_size=12),
    st.sampled_from(["007", "1.0", " padded ", 'say "hi"', "a,b", "line\nbreak", "é", "😀"]),
)
EVENT_SPELLINGS = {
    EventType.PURCHASE: ["purchase", "Purchase", "buy", "transaction"],
    EventType.ADD_TO_CART: ["add_to_cart", "add-to-cart", "ADDTOCART", "cart", "Add To Cart"],
    EventType.VIEW: ["view", "View"],
    EventType.CLICK: ["click", " click "],
    EventType.IMPRESSION: ["impression"],
    EventType.NOT_INTERESTED: ["not_interested", "Not Interested"],
    EventType.RETURN: ["return", "Return"],
}


@dataclass(frozen=True)
class Event:
    user: str
    item: str
    timestamp: int
    time_text: str
    event_type: EventType | None
    type_text: str
    quantity: float | None
    quantity_text: str
    basket: str | None


@st.composite
def times(draw: st.DrawFn) -> tuple[int, str]:
    """A timestamp (Unix seconds) and a spelling of it the loader reads."""
    how = draw(st.sampled_from(["unix", "unix-fraction", "iso", "iso-zoned", "date", "ns"]))
    if how == "unix":
        seconds = draw(st.integers(-MAX_UNIX, MAX_UNIX))
        return seconds, str(seconds)
    if how == "unix-fraction":  # floored: -5.25 is -6
        whole = draw(st.integers(-MAX_UNIX + 1, MAX_UNIX - 1))
        text = f"{whole}.{draw(st.integers(0, 999)):03d}"
        return math.floor(float(text)), text
    if how == "date":
        day = draw(st.integers(FIRST_ISO // 86_400, LAST_ISO // 86_400))
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
        return day * 86_400, f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if how == "ns":  # a fraction, floored; only where nanoseconds reach
        seconds = draw(st.integers(FIRST_NS, LAST_NS))
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        digits = draw(st.integers(1, 9))
        fraction = draw(st.integers(0, 10**digits - 1))
        return seconds, f"{_iso(moment)}.{fraction:0{digits}d}Z"
    if how == "iso-zoned":
        # an offset of whole minutes, as ISO 8601 writes them
        minutes = draw(st.integers(-14 * 60, 14 * 60))
        seconds = draw(st.integers(FIRST_ISO + 86_400, LAST_ISO - 86_400))
        zone = timezone(timedelta(minutes=minutes))
        local = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
        local = local.astimezone(zone)
        sign = "-" if minutes < 0 else "+"
        colon = draw(st.sampled_from([":", ""]))
        offset = f"{sign}{abs(minutes) // 60:02d}{colon}{abs(minutes) % 60:02d}"
        return seconds, f"{_iso(local)}{offset}"
    seconds = draw(st.integers(FIRST_ISO, LAST_ISO))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    separator = draw(st.sampled_from(["T", " "]))
    zulu = draw(st.sampled_from(["", "Z"]))
    return seconds, _iso(moment, separator) + zulu


def _iso(moment: datetime, separator: str = "T") -> str:
    # isoformat() writes years below 1000 with fewer digits on some platforms
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{separator}"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )


@st.composite
def quantities(draw: st.DrawFn) -> tuple[float | None, str]:
    """A quantity (> 0, a float32) and a spelling of it; None for an empty cell."""
    how = draw(st.sampled_from(["empty", "integer", "decimal", "exponent", "float"]))
    if how == "empty":
        return None, ""
    if how == "integer":
        n = draw(st.integers(1, 10**6))
        return float(n), draw(st.sampled_from([str(n), f"+{n}", f"{n}.0"]))
    if how == "decimal":
        text = f"{draw(st.integers(0, 999))}.{draw(st.integers(1, 999)):03d}"
        return float(text), text
    if how == "exponent":
        text = f"{draw(st.integers(1, 9))}e{draw(st.integers(-30, 37))}"
        return float(text), text
    value = draw(st.floats(min_value=1e-30, max_value=3.0e38, allow_nan=False))
    return value, repr(value)


@st.composite
def events(draw: st.DrawFn) -> Event:
    timestamp, time_text = draw(times())
    event_type = draw(st.none() | st.sampled_from(list(EventType)))
    type_text = "" if event_type is None else draw(st.sampled_from(EVENT_SPELLINGS[event_type]))
    quantity, quantity_text = draw(quantities())
    return Event(
        user=draw(IDS),
        item=draw(IDS),
        timestamp=timestamp,
        time_text=time_text,
        event_type=event_type,
        type_text=type_text,
        quantity=quantity,
        quantity_text=quantity_text,
        basket=draw(st.none() | IDS),
    )


@dataclass(frozen=True)
class EventFile:
    events: list[Event]
    optional: tuple[str, ...]
    """The optional columns the file has."""
    names: dict[str, str]
    """Source column name of each canonical column."""
    order: list[str]
    """Canonical columns (and "note", a column the loader ignores) in file order."""
    storage: str
    """``csv``, ``csv.gz`` or ``parquet``."""
    crlf: bool
    bom: bool
    quote_all: bool

    @property
    def mapping(self) -> ColumnMapping | None:
        if all(self.names[c] == c for c in self.order if c != "note"):
            return None
        return ColumnMapping(**{c: self.names[c] for c in self.order if c != "note"})

    def cells(self, event: Event) -> dict[str, str]:
        return {
            "user_id": event.user,
            "item_id": event.item,
            "timestamp": event.time_text,
            "event_type": event.type_text,
            "quantity": event.quantity_text,
            "basket_id": event.basket or "",
            "note": 'ignored, "quoted"',
        }

    def _quoted(self, value: str) -> str:
        # RFC 4180: a value holding a separator, a quote or a line break is quoted
        # (Python's csv writer leaves a lone CR unquoted in a file of LF lines)
        if self.quote_all or any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value

    def write(self, directory: Path) -> Path:
        header = [self.names.get(c, c) for c in self.order]
        rows = [[self.cells(e)[c] for c in self.order] for e in self.events]
        if self.storage == "parquet":
            path = directory / "events.parquet"
            columns = {
                name: pa.array([row[k] or None for row in rows], pa.string())
                for k, name in enumerate(header)
            }
            pq.write_table(pa.table(columns), path)
            return path
        end = "\r\n" if self.crlf else "\n"
        text = "".join(",".join(self._quoted(v) for v in row) + end for row in [header, *rows])
        data = ("\ufeff" if self.bom else "").encode() + text.encode()
        path = directory / f"events.{self.storage}"
        path.write_bytes(gzip.compress(data, mtime=0) if self.storage == "csv.gz" else data)
        return path

    def expected(self) -> pa.Table:
        present = set(self.optional)
        types = [
            (e.event_type or EventType.PURCHASE) if "event_type" in present else EventType.PURCHASE
            for e in self.events
        ]
        quantity = [
            (e.quantity if e.quantity is not None else 1.0) if "quantity" in present else 1.0
            for e in self.events
        ]
        baskets = [
            e.basket if "basket_id" in present and e.basket else f"{e.user}@{e.timestamp}"
            for e in self.events
        ]
        return pa.table(
            {
                "user_id": [e.user for e in self.events],
                "item_id": [e.item for e in self.events],
                "timestamp": [e.timestamp for e in self.events],
                "event_type": [t.value for t in types],
                "quantity": np.array(quantity, dtype=np.float32),
                "basket_id": baskets,
            },
            schema=EVENT_SCHEMA,
        )


OPTIONAL = ("event_type", "quantity", "basket_id")
RENAMED = {"user_id": "Customer ID", "item_id": "SKU", "timestamp": "ts", "event_type": "kind",
           "quantity": "Units", "basket_id": "Order"}  # fmt: skip


@st.composite
def event_files(draw: st.DrawFn) -> EventFile:
    optional = tuple(c for c in OPTIONAL if draw(st.booleans()))
    columns = ["user_id", "item_id", "timestamp", *optional]
    if draw(st.booleans()):
        columns.append("note")
    order = draw(st.permutations(columns))
    renamed = draw(st.booleans())
    names = {c: (RENAMED[c] if renamed else c) for c in columns if c != "note"}
    return EventFile(
        events=draw(st.lists(events(), min_size=1, max_size=25)),
        optional=optional,
        names=names,
        order=list(order),
        storage=draw(st.sampled_from(["csv", "csv.gz", "parquet"])),
        crlf=draw(st.booleans()),
        bom=draw(st.booleans()),
        quote_all=draw(st.booleans()),
    )


@settings()  # the profile's examples (tests/conftest.py)
@given(event_files())
def test_load_events_gives_back_the_table_it_was_written_from(file: EventFile) -> None:
    with tempfile.TemporaryDirectory(prefix="events-") as directory:
        path = file.write(Path(directory))
        table, summary = load_events(path, mapping=file.mapping)
    expected = file.expected()
    assert table.schema == EVENT_SCHEMA
    for name in EVENT_SCHEMA.names:
        got, want = table[name].to_pylist(), expected[name].to_pylist()
        assert got == want, (name, got, want)
    assert (summary.rows_read, summary.rows_kept, summary.removed) == (
        len(file.events),
        len(file.events),
        {"bad_row": 0},
    )


def check_clean(table: pa.Table, summary: LoadSummary) -> None:
    """What every successful load promises, however odd its input."""
    assert table.schema == EVENT_SCHEMA
    assert table.num_rows == summary.rows_kept > 0
    assert summary.rows_read == summary.rows_kept + sum(summary.removed.values())
    for name in ("item_id", "timestamp", "event_type", "quantity", "basket_id"):
        assert table[name].null_count == 0, name
    # a row without a user is a guest's, kept only with its basket (its visit)
    assert table["user_id"].null_count == summary.guest_rows
    assert pc.all(pc.greater(table["quantity"], 0)).as_py()
    assert all(math.isfinite(q) for q in table["quantity"].to_pylist())


def load_or_refuse(data: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory(prefix="garbage-") as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        for skip in (False, True):
            mode = "skipping" if skip else "strict"
            try:
                table, summary = load_events(path, skip_bad_rows=skip)
            except InputRowError as exc:
                assert not skip, f"skip_bad_rows raised {exc}"
                assert "\n" not in str(exc) and str(exc).startswith(str(path))
                if not data.startswith((b"PAR1", b"\x1f\x8b")):  # a line of the file
                    assert 2 <= exc.line <= data.count(b"\n") + 1, exc
                event(f"{mode}: a bad row")
            except DataError as exc:
                assert "\n" not in str(exc) and str(exc).startswith(str(path)), str(exc)
                event(f"{mode}: refused")
            else:
                check_clean(table, summary)
                event(f"{mode}: loaded")


VALID = (
    b"user_id,item_id,timestamp,event_type,quantity,basket_id\n"
    b'u1,i1,1700000000,view,1,b1\nu2,"i,2",2023-11-14T22:13:20Z,purchase,2.5,\n'
    b"u3,i3,2023-11-14,cart,,b3\n"
)


def _parquet(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pacsv.read_csv(pa.BufferReader(data)), sink)
    return bytes(sink.getvalue().to_pybytes())


VALID_FORMS = [VALID, gzip.compress(VALID, mtime=0), _parquet(VALID)]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes inserted, deleted or overwritten."""
    data = bytearray(draw(st.sampled_from(VALID_FORMS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if what == "insert":
            data[at:at] = chunk
        elif what == "delete":
            del data[at : at + len(chunk)]
        else:
            data[at : at + len(chunk)] = chunk
    return bytes(data)


HEADER_END = VALID.index(b"\n") + 1

#: What a hand-edited or mis-exported CSV gets wrong: separators, quotes, line
#: breaks, accents in UTF-8 or in Latin-1, missing and extra cells.
EDITS = st.lists(
    st.sampled_from([b",", b'"', b"\n", b"\r\n", b"\n\n", b"x", b"7", b"-", b" ", "é".encode(),
                     "é".encode("latin-1"), b"2023-13-01", b"1e99", b"purchase"]),
    min_size=1, max_size=4,
).map(b"".join)  # fmt: skip


@st.composite
def edited(draw: st.DrawFn) -> bytes:
    """The valid CSV with a few edits of the kind people make."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(HEADER_END, len(data)))  # the header stays
        if draw(st.booleans()):
            data[at:at] = draw(EDITS)
        else:
            del data[at : at + draw(st.integers(1, 6))]
    return bytes(data)


@settings()
@given(
    st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda b: VALID[:HEADER_END] + b),  # a header, then junk
        st.binary(max_size=512).map(lambda b: b"PAR1" + b),
        mangled(),
        edited(),
    ),
    st.sampled_from(["e.csv", "e.csv.gz", "e.parquet", "e.txt"]),
)
def test_garbage_loads_cleanly_or_is_refused_in_one_line(data: bytes, name: str) -> None:
    load_or_refuse(data, name)
