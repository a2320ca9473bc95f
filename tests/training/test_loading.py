"""training.loading: event and catalogue files in, canonical arrow tables out."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.errors import ConfigError, DataError, InputRowError
from recsvc.events import CANONICAL_COLUMNS, EventType
from recsvc.training import loading
from recsvc.training.loading import (
    EVENT_SCHEMA,
    ColumnMapping,
    LoadSummary,
    load_catalog,
    load_events,
)

from factories import SHARED_DATA

# 2021-03-04T05:06:07Z
T0 = 1614834367
DAY0 = 1614816000  # 2021-03-04T00:00:00Z


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def column(table: pa.Table, name: str) -> list[object]:
    values: list[object] = table.column(name).to_pylist()
    return values


def check_invariant(summary: LoadSummary) -> None:
    assert summary.rows_read == summary.rows_kept + sum(summary.removed.values())


# --------------------------------------------------------------------------- good input


def test_public_names() -> None:
    assert sorted(loading.__all__) == sorted(
        [
            "EVENT_SCHEMA",
            "NON_PRODUCT_STOCK_CODE",
            "Catalog",
            "ColumnMapping",
            "LoadSummary",
            "load_catalog",
            "load_events",
        ]
    )


def test_minimal_csv_gets_defaults_and_keeps_leading_zeros(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "events.csv",
        f"user_id,item_id,timestamp\nu1,00123,{T0}\nu1,0042,{T0}\nu2,00123,{T0 + 60}\n",
    )
    table, summary = load_events(path)
    assert table.schema == EVENT_SCHEMA
    assert tuple(table.column_names) == CANONICAL_COLUMNS
    assert column(table, "item_id") == ["00123", "0042", "00123"]
    assert column(table, "event_type") == ["purchase"] * 3
    assert column(table, "quantity") == [1.0, 1.0, 1.0]
    assert column(table, "basket_id") == [f"u1@{T0}", f"u1@{T0}", f"u2@{T0 + 60}"]
    assert summary == LoadSummary(
        path=str(path),
        format="events",
        file_format="csv",
        rows_read=3,
        rows_kept=3,
        removed={"bad_row": 0},
        guest_rows=0,
        users=2,
        items=2,
        min_timestamp=T0,
        max_timestamp=T0 + 60,
        seconds=summary.seconds,
    )


def test_all_columns_and_event_type_spellings(tmp_path: Path) -> None:
    rows = [
        ("Purchase", "2", "b1"),
        ("add-to-cart", "1.5", "b1"),
        ("ADDTOCART", "", ""),
        ("cart", "3", "b2"),
        ("transaction", "1", "b2"),
        ("buy", "1", "b2"),
        ("View", "1", "b3"),
        ("click", "1", "b3"),
        ("impression", "1", "b3"),
        ("", "1", "b3"),
    ]
    text = "user_id,item_id,timestamp,event_type,quantity,basket_id\n" + "".join(
        f"u,i,{T0},{e},{q},{b}\n" for e, q, b in rows
    )
    table, _ = load_events(write(tmp_path, "e.csv", text), default_event_type=EventType.VIEW)
    assert column(table, "event_type") == [
        "purchase",
        "add_to_cart",
        "add_to_cart",
        "add_to_cart",
        "purchase",
        "purchase",
        "view",
        "click",
        "impression",
        "view",  # empty -> default_event_type
    ]
    assert column(table, "quantity") == [2.0, 1.5, 1.0, 3.0, 1, 1, 1, 1, 1, 1]
    assert column(table, "basket_id")[:3] == ["b1", "b1", f"u@{T0}"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021-03-04", DAY0),
        ("2021-03-04 05:06:07", T0),
        ("2021-03-04T05:06:07", T0),
        ("2021-03-04T05:06", T0 - 7),
        ("2021-03-04T05:06:07.999", T0),
        ("2021-03-04T05:06:07Z", T0),
        ("2021-03-04T07:06:07+02:00", T0),
        ("2021-03-04T00:06:07.25-0500", T0),
        (str(T0), T0),
        (f"{T0}.75", T0),
        ("0", 0),
    ],
)
def test_timestamp_formats(tmp_path: Path, value: str, expected: int) -> None:
    path = write(tmp_path, "t.csv", f"user_id,item_id,timestamp\nu,i,{value}\n")
    table, _ = load_events(path)
    assert column(table, "timestamp") == [expected]


def test_mixed_timestamp_formats_in_one_file(tmp_path: Path) -> None:
    values = [
        "2021-03-04T05:06:07Z",
        str(T0),
        "2021-03-04 05:06:07",
        "2021-03-04T05:06:07.5",
        "2021-03-04T00:06:07.25-0500",
        "2021-02-29",  # not a leap year
        "2020-02-29T05:06:07",
        "2021-03-04T05:06:60",
    ]
    text = "user_id,item_id,timestamp\n" + "".join(f"u,i,{v}\n" for v in values)
    path = write(tmp_path, "t.csv", text)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.got) == (7, "2021-02-29")
    table, summary = load_events(path, skip_bad_rows=True)
    assert column(table, "timestamp") == [T0] * 5 + [1582952767]
    assert summary.removed == {"bad_row": 2}


@pytest.mark.parametrize("name", ["events.csv.gz", "events.csv"])
def test_gzip_csv_by_extension_or_by_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(f"user_id,item_id,timestamp\nu,007,{T0}\n".encode()))
    table, summary = load_events(path)
    assert summary.file_format == "csv+gzip"
    assert column(table, "item_id") == ["007"]


def test_parquet_with_native_types(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([13085.0, 13085.0, 7.0]),
                "item_id": pa.array(["00123", "A", "A"]),
                "timestamp": pa.array([T0 * 1000, T0 * 1000 + 999, 0], pa.timestamp("ms", "UTC")),
                "event_type": pa.array(["view", "purchase", "view"]).dictionary_encode(),
                "quantity": pa.array([1, 2, 3], pa.int32()),
            }
        ),
        path,
    )
    table, summary = load_events(path)
    assert summary.file_format == "parquet"
    assert table.schema == EVENT_SCHEMA
    assert column(table, "user_id") == ["13085", "13085", "7"]
    assert column(table, "timestamp") == [T0, T0, 0]
    assert column(table, "event_type") == ["view", "purchase", "view"]
    assert column(table, "quantity") == [1.0, 2.0, 3.0]
    assert summary.users == 2


def test_parquet_string_timestamps_and_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.pq"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u", "u", "u"],
                "item_id": ["i", "i", "i"],
                "timestamp": ["2021-03-04T05:06:07Z", "2021-03-04", "soon"],
            }
        ),
        path,
    )
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert str(info.value) == (
        f"{path}:3: column 'timestamp': expected an ISO 8601 date/time or Unix seconds, got 'soon'"
    )


def test_column_mapping(tmp_path: Path) -> None:
    text = f"Customer,SKU,ts,Action,Units,Order\nc9,0001,{T0},cart,2,o1\n"
    mapping = ColumnMapping.parse(
        "user_id=Customer, item_id=SKU,timestamp=ts,event_type=Action,quantity=Units,"
        "basket_id=Order"
    )
    table, _ = load_events(write(tmp_path, "m.csv", text), mapping=mapping)
    assert table.to_pylist() == [
        {
            "user_id": "c9",
            "item_id": "0001",
            "timestamp": T0,
            "event_type": "add_to_cart",
            "quantity": 2.0,
            "basket_id": "o1",
        }
    ]


def test_mapping_to_none_ignores_a_column(tmp_path: Path) -> None:
    text = f"user_id,item_id,timestamp,quantity\nu,i,{T0},not-a-number\n"
    table, _ = load_events(write(tmp_path, "m.csv", text), mapping=ColumnMapping.parse("quantity="))
    assert column(table, "quantity") == [1.0]


def test_mapping_parse() -> None:
    assert ColumnMapping.parse("") == ColumnMapping()
    assert ColumnMapping.parse("item_id=SKU,basket_id=-") == ColumnMapping(
        item_id="SKU", basket_id=None
    )
    with pytest.raises(ConfigError, match="'colour=red'"):
        ColumnMapping.parse("colour=red")
    with pytest.raises(ConfigError, match="user_id is required"):
        ColumnMapping.parse("user_id=")
    with pytest.raises(ConfigError, match="item_id given twice"):
        ColumnMapping.parse("item_id=a,item_id=b")
    with pytest.raises(ConfigError, match="'SKU'"):
        ColumnMapping.parse("SKU")


def test_rows_spanning_many_batches_keep_order_and_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_CSV_BLOCK_BYTES", 256)
    rows = [f"u{i},i{i % 7},{T0 + i}\n" for i in range(300)]
    path = write(tmp_path, "many.csv", "user_id,item_id,timestamp\n" + "".join(rows))
    table, summary = load_events(path)
    assert table.num_rows == 300 and table.column("timestamp").num_chunks > 10
    assert column(table, "timestamp") == [T0 + i for i in range(300)]
    assert summary.items == 7

    rows[250] = f"u250,i1,{T0}000\n"  # milliseconds
    path = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\n" + "".join(rows))
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column, info.value.got) == (252, "timestamp", f"{T0}000")

    # The first bad row in file order wins, whichever batch finishes first.
    rows[20] = f"u20,,{T0}\n"
    rows[40] = "u40,i1,never\n"  # a few batches later, converted at the same time
    rows[280] = "u280\n"  # a malformed row, found by the reader itself
    path = write(tmp_path, "bad.csv", "user_id,item_id,timestamp\n" + "".join(rows))
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column) == (22, "item_id")

    _, summary = load_events(path, skip_bad_rows=True)
    assert summary.removed == {"bad_row": 4}
    assert summary.rows_read == 300


# --------------------------------------------------------------------------- bad input

HEADER = "user_id,item_id,timestamp,event_type,quantity\n"
WHEN = "an ISO 8601 date/time or Unix seconds"
GOOD = f"u1,i1,{T0},view,1\n"


@pytest.mark.parametrize(
    ("bad_row", "column_name", "expected", "got"),
    [
        ("u2,i2,,view,1", "timestamp", WHEN, ""),
        (
            "u2,i2,yesterday,view,1",
            "timestamp",
            "an ISO 8601 date/time or Unix seconds",
            "yesterday",
        ),
        (
            "u2,i2,2021-02-30,view,1",
            "timestamp",
            "an ISO 8601 date/time or Unix seconds",
            "2021-02-30",
        ),
        ("u2,i2,nan,view,1", "timestamp", WHEN, "nan"),
        ("u2,,2021-03-04,view,1", "item_id", "a non-empty item id", ""),
        (",i2,2021-03-04,view,1", "user_id", "a non-empty user id (or a guest's basket id)", ""),
        ("u2,i2,2021-03-04,view,two", "quantity", "a number > 0", "two"),
        ("u2,i2,2021-03-04,view,0", "quantity", "a number > 0", "0"),
        ("u2,i2,2021-03-04,view,-1", "quantity", "a number > 0", "-1"),
        ("u2,i2,2021-03-04,view,inf", "quantity", "a number > 0", "inf"),
        (
            "u2,i2,2021-03-04,teleport,1",
            "event_type",
            "one of purchase, add_to_cart, view, click, impression, not_interested, return",
            "teleport",
        ),
    ],
)
def test_bad_value_names_file_line_column(
    tmp_path: Path, bad_row: str, column_name: str, expected: str, got: str
) -> None:
    path = write(tmp_path, "bad.csv", HEADER + GOOD + bad_row + "\n" + GOOD)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert str(info.value) == f"{path}:3: column {column_name!r}: expected {expected}, got {got!r}"


def test_first_bad_row_wins_across_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", HEADER + GOOD + "u,i,2021-03-04,view,0\n,i,x,view,1\n")
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column) == (3, "quantity")


def test_malformed_csv_row_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", HEADER + GOOD + GOOD + "u1,i1\n")
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert info.value.line == 4
    assert "expected 5 comma-separated fields" in str(info.value)


def test_skip_bad_rows_counts_them(tmp_path: Path) -> None:
    text = (
        HEADER
        + GOOD
        + "u2,,2021-03-04,view,1\n"
        + "u3,i3,never,view,1\n"
        + "u4,i4,2021-03-04,view,-2\n"
        + "u5,i5,2021-03-04,fly,1\n"
        + "u6,i6\n"
        + "u7,i7,2021-03-04,click,2\n"
    )
    table, summary = load_events(write(tmp_path, "bad.csv", text), skip_bad_rows=True)
    assert column(table, "user_id") == ["u1", "u7"]
    assert summary.removed == {"bad_row": 5}
    assert (summary.rows_read, summary.rows_kept) == (7, 2)
    check_invariant(summary)


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", f"user,item_id,timestamp\nu,i,{T0}\n")
    with pytest.raises(DataError) as info:
        load_events(path)
    message = str(info.value)
    assert str(path) in message
    assert "missing column 'user_id'" in message
    assert "columns found: 'user', 'item_id', 'timestamp'" in message


def test_explicitly_mapped_optional_column_must_exist(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", f"user_id,item_id,timestamp\nu,i,{T0}\n")
    with pytest.raises(DataError, match="missing column 'Units' \\(mapped to quantity\\)"):
        load_events(path, mapping=ColumnMapping(quantity="Units"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("\n\r\n", "empty file"),
        ("user_id,item_id,timestamp\n", "no data rows"),
        ("user_id,item_id,timestamp", r"no data rows \(one line, no line break\)"),
        ("x" * (2 << 20), "no line break in the first MB; not a CSV file"),
    ],
)
def test_empty_input(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_events(write(tmp_path, "e.csv", text))


def test_nothing_left_after_skipping(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,item_id,timestamp\nu,,1\nu,i,\n")
    with pytest.raises(DataError, match=r"no rows left after cleaning 2 rows \(bad_row=2\)"):
        load_events(path, skip_bad_rows=True)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_events(tmp_path / "nope.csv")


def test_parquet_extension_without_parquet_bytes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a Parquet file"):
        load_events(write(tmp_path, "e.parquet", f"user_id,item_id,timestamp\nu,i,{T0}\n"))


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "e.csv.gz"
    path.write_bytes(gzip.compress(b"user_id,item_id,timestamp\n" + b"u,i,1\n" * 1000)[:60])
    with pytest.raises(DataError, match=r"e\.csv\.gz"):
        load_events(path)


# --------------------------------------------------------------------------- bad files
# Issue #14, defect 10: every file that cannot be used stops the load with one line
# naming the file (and the line and column where there is one); never a traceback.


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def one_line(exc: pytest.ExceptionInfo[DataError], path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz"])
@pytest.mark.parametrize("skip", [False, True])
def test_a_binary_file_is_refused_even_when_skipping(tmp_path: Path, name: str, skip: bool) -> None:
    # a spreadsheet saved under the wrong name: zip bytes, NULs within the first KB
    data = b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 8
    path = write_bytes(tmp_path, name, data)
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=skip)
    assert "binary content (a NUL byte at byte 5" in one_line(info, path)


def test_utf16_text_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "e.csv", f"user_id,item_id,timestamp\nu,i,{T0}\n".encode("utf-16"))
    with pytest.raises(DataError) as info:
        load_events(path)
    assert "UTF-16 text; events files must be UTF-8" in one_line(info, path)


def test_a_header_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "e.csv", b"user_id,item_id,timestamp,pr\xe9f\nu,i,1\n")
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=True)
    assert ":1: the header is not UTF-8 text" in one_line(info, path)


LATIN1 = b"user_id,item_id,timestamp\nu1,i1,1\nu2,caf\xe9,2\nu3,i3,3\n"


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz"])
def test_a_value_that_is_not_utf8_names_its_line_and_column(tmp_path: Path, name: str) -> None:
    path = write_bytes(tmp_path, name, LATIN1)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column) == (3, "item_id")
    assert "expected UTF-8 text" in one_line(info, path)
    assert info.value.got == "caf\\xe9"  # the bytes, escaped


def test_skip_bad_rows_drops_and_counts_rows_that_are_not_utf8(tmp_path: Path) -> None:
    # CSV's separators are ASCII, and no byte of a multi-byte UTF-8 character is: a
    # bad byte stays within its value, and the other rows read as they are
    table, summary = load_events(write_bytes(tmp_path, "e.csv", LATIN1), skip_bad_rows=True)
    assert column(table, "item_id") == ["i1", "i3"]
    assert summary.removed == {"bad_row": 1}
    check_invariant(summary)


def test_a_malformed_row_that_is_not_utf8_is_one_line_and_not_skipped(tmp_path: Path) -> None:
    # pyarrow decodes a malformed row's text before it calls the skipping callback; it
    # printed the UnicodeDecodeError as "Exception ignored" (an error under pytest)
    data = b"user_id,item_id,timestamp\nu1,i1,1\nu1,i2,2\n\xff\xfe,2\nu4,i5,6\n"
    path = write_bytes(tmp_path, "e.csv", data)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.got) == (4, "2 fields: \\xff\\xfe,2")
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=True)
    assert ":4: a malformed row (2 fields, expected 3) that is not UTF-8 cannot be skipped" in (
        one_line(info, path)
    )


def test_parquet_strings_that_are_not_utf8_are_bad_values(tmp_path: Path) -> None:
    # Parquet's reader takes a string column's bytes as they are
    path = tmp_path / "e.parquet"
    ids = pa.array([b"a", b"\x80b", b"c"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"user_id": ids, "item_id": ids, "timestamp": [T0] * 3}), path)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column, info.value.got) == (2, "user_id", "\\x80b")
    table, _ = load_events(path, skip_bad_rows=True)
    assert column(table, "user_id") == ["a", "c"]


def test_a_corrupt_parquet_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": [T0]}), path)
    data = bytearray(path.read_bytes())
    data[4] = 0xFF  # the first page header: pyarrow's message takes two lines
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=True)
    assert "cannot read parquet: " in one_line(info, path)


def test_a_repeated_header_column_is_refused(tmp_path: Path) -> None:
    text = f"user_id,item_id,timestamp,item_id\nu,i,{T0},j\n"
    path = write(tmp_path, "e.csv", text)
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=True)
    assert ":1: column 'item_id' appears 2 times (columns 2, 4)" in one_line(info, path)
    # a repeated column that is not read is no ambiguity
    text = f"user_id,item_id,timestamp,note,note\nu,i,{T0},a,b\n"
    assert load_events(write(tmp_path, "e2.csv", text))[0].num_rows == 1


def test_a_parquet_column_of_lists_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": [["i", "j"]], "timestamp": [T0]}), path)
    with pytest.raises(DataError) as info:
        load_events(path)
    assert "column 'item_id' holds list<element: string> values" in one_line(info, path)


def test_parquet_bytes_that_are_not_utf8_are_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    ids = pa.array([b"a", b"\xff\xfe", b"c"], pa.binary())
    pq.write_table(pa.table({"user_id": ids, "item_id": ids, "timestamp": [T0] * 3}), path)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert (info.value.line, info.value.column) == (2, "user_id")
    table, summary = load_events(path, skip_bad_rows=True)
    assert column(table, "item_id") == ["a", "c"] and summary.removed == {"bad_row": 1}


def test_bom_crlf_and_quoted_line_breaks_read_as_they_should(tmp_path: Path) -> None:
    text = f'user_id,item_id,timestamp\r\n"u\r\n1",i1,{T0}\r\n"u2","i,2",{T0}\r\n'
    table, _ = load_events(write_bytes(tmp_path, "e.csv", b"\xef\xbb\xbf" + text.encode()))
    assert column(table, "user_id") == ["u\r\n1", "u2"]
    assert column(table, "item_id") == ["i1", "i,2"]


def test_quoted_line_breaks_across_read_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "_CSV_BLOCK_BYTES", 1 << 10)
    rows = "".join(f'u{n},"line\nbreak",{T0 + n}\n' for n in range(500))
    table, _ = load_events(write(tmp_path, "e.csv", "user_id,item_id,timestamp\n" + rows))
    assert table.num_rows == 500 and set(column(table, "item_id")) == {"line\nbreak"}


def test_lines_count_quoted_line_breaks_and_blank_lines(tmp_path: Path) -> None:
    text = f'user_id,item_id,timestamp\n"u\n1",i1,{T0}\n\nu2,i2,{T0}\nu3,,{T0}\n'
    path = write(tmp_path, "e.csv", text)
    with pytest.raises(InputRowError) as info:
        load_events(path)
    assert info.value.line == 6  # records 4, lines 6: "u\n1" takes two, one is blank
    with pytest.raises(InputRowError) as info:
        load_events(write(tmp_path, "m.csv", text.replace(",,", ",")))
    assert info.value.line == 6  # the reader's malformed row, counted the same way


def test_a_truncated_gzip_is_one_line_even_when_skipping(tmp_path: Path) -> None:
    data = b"user_id,item_id,timestamp\n" + b"".join(b"u%d,i,%d\n" % (n, n) for n in range(9000))
    path = tmp_path / "e.csv.gz"
    path.write_bytes(gzip.compress(data)[:4000])
    with pytest.raises(DataError) as info:
        load_events(path, skip_bad_rows=True)
    assert "cannot read csv+gzip" in one_line(info, path)


# --------------------------------------------------------------------------- online retail

RETAIL = """\
Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country
489434,85048,LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom
489434,79323P,PINK LIGHTS,6,2009-12-01 07:45:00,6.75,13085.0,United Kingdom
489435,85123a,HEART,1,2009-12-01 08:00:00,2.55,13086,United Kingdom
489436,85123A,HEART,2,2009-12-01 09:00:00,2.55,,United Kingdom
C489437,85048,LIGHTS,-12,2009-12-01 10:00:00,6.95,13085.0,United Kingdom
489438,22041,FRAME,-3,2009-12-01 11:00:00,2.1,,United Kingdom
489439,22042,FRAME,0,2009-12-01 11:00:00,2.1,13085,United Kingdom
489440,POST,POSTAGE,1,2009-12-01 12:00:00,18.0,13085,France
489440,gift_0001_20,Voucher,1,2009-12-01 12:00:00,20.0,13085,France
"""


def test_online_retail_cleaning(tmp_path: Path) -> None:
    table, summary = load_events(write(tmp_path, "retail.csv", RETAIL), format="online-retail")
    assert column(table, "user_id") == ["13085", "13085", "13086", None]
    assert column(table, "item_id") == ["85048", "79323P", "85123A", "85123A"]
    assert column(table, "basket_id") == ["489434", "489434", "489435", "489436"]
    assert column(table, "quantity") == [12.0, 6.0, 1.0, 2.0]
    assert column(table, "event_type") == ["purchase"] * 4
    assert column(table, "timestamp")[0] == 1259653500  # 2009-12-01T07:45:00Z
    assert summary.removed == {
        "bad_row": 0,
        "cancelled_invoice": 1,
        "return_or_zero_quantity": 2,
        "non_product": 2,
    }
    assert (summary.guest_rows, summary.users, summary.items) == (1, 2, 3)
    assert summary.format == "online-retail"
    check_invariant(summary)


def test_online_retail_bad_quantity(tmp_path: Path) -> None:
    text = RETAIL.replace(",6,2009-12-01 07:45:00,", ",six,2009-12-01 07:45:00,")
    path = write(tmp_path, "retail.csv", text)
    with pytest.raises(InputRowError) as info:
        load_events(path, format="online-retail")
    assert str(info.value) == f"{path}:3: column 'Quantity': expected a number, got 'six'"
    _, summary = load_events(path, format="online-retail", skip_bad_rows=True)
    assert summary.removed["bad_row"] == 1 and summary.rows_kept == 3


def test_online_retail_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "retail.csv", RETAIL.replace("Customer ID", "CustomerID"))
    with pytest.raises(DataError, match="missing column 'Customer ID'"):
        load_events(path, format="online-retail")


def test_online_retail_takes_no_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_events(
            write(tmp_path, "retail.csv", RETAIL), format="online-retail", mapping=ColumnMapping()
        )


@pytest.mark.slow
def test_real_online_retail_file() -> None:
    path = SHARED_DATA / "online_retail_ii.csv.gz"
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see ../shared/data/README.md)")
    table, summary = load_events(path, format="online-retail")
    check_invariant(summary)
    assert summary.rows_read == 1_034_220
    assert summary.removed["bad_row"] == 0
    assert 9_000 < summary.removed["cancelled_invoice"] < 11_000
    assert summary.removed["return_or_zero_quantity"] > 0
    assert summary.removed["non_product"] > 0
    assert 5_700 < summary.users < 6_000
    # 5,296 raw stock codes; 5,123 after case folding; fewer once cleaned
    assert 4_500 < summary.items < 5_300
    assert 0.15 < summary.guest_rows / summary.rows_kept < 0.30
    assert summary.min_timestamp == 1259653500  # 2009-12-01 07:45:00
    assert summary.max_timestamp is not None and summary.max_timestamp < 1323475200  # 2011-12-10
    assert table.num_rows == summary.rows_kept


# --------------------------------------------------------------------------- catalogue


def test_catalog(tmp_path: Path) -> None:
    text = (
        "item_id,category,available,title,colour\n"
        "00123,toys,yes,Ball,red\n"
        "00124,,No,Kite,\n"
        "00125,garden,,Spade,green\n"
        "00126,garden,0,Rake,green\n"
        "00127,garden,TRUE,Hoe,green\n"
    )
    catalog = load_catalog(write(tmp_path, "catalog.csv", text))
    assert len(catalog) == 5
    assert catalog.item_id.to_pylist() == ["00123", "00124", "00125", "00126", "00127"]
    assert catalog.category.to_pylist() == ["toys", None, "garden", "garden", "garden"]
    assert catalog.available.to_pylist() == [True, False, True, False, True]
    assert catalog.title.to_pylist()[0] == "Ball"
    assert list(catalog.attributes) == ["colour"]
    assert catalog.attributes["colour"].to_pylist() == ["red", None, "green", "green", "green"]


def test_catalog_with_only_ids(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, "catalog.csv.gz", "item_id\na\nb\n"))
    assert catalog.available.to_pylist() == [True, True]
    assert catalog.category.to_pylist() == [None, None]
    assert catalog.attributes == {}


def test_catalog_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "catalog.csv", "item_id,available\na,1\nb,1\na,0\nc,1\n")
    with pytest.raises(InputRowError) as info:
        load_catalog(path)
    assert str(info.value) == (
        f"{path}:4: column 'item_id': expected a unique item id (first seen on line 2), got 'a'"
    )
    catalog = load_catalog(path, skip_bad_rows=True)
    assert catalog.item_id.to_pylist() == ["a", "b", "c"]
    assert catalog.available.to_pylist() == [True, True, True]  # the first row wins
    assert catalog.skipped_rows == 1


def test_catalog_bad_values(tmp_path: Path) -> None:
    path = write(tmp_path, "catalog.csv", "item_id,available\na,1\nb,maybe\n,1\nd,no\n")
    with pytest.raises(InputRowError) as info:
        load_catalog(path)
    assert str(info.value) == (
        f"{path}:3: column 'available': expected true/false, yes/no or 1/0, got 'maybe'"
    )
    catalog = load_catalog(path, skip_bad_rows=True)
    assert catalog.item_id.to_pylist() == ["a", "d"]
    assert catalog.skipped_rows == 2


def test_catalog_missing_column_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing column 'item_id'.*'sku'"):
        load_catalog(write(tmp_path, "c.csv", "sku\na\n"))
    with pytest.raises(DataError, match="no data rows"):
        load_catalog(write(tmp_path, "c2.csv", "item_id,title\n"))
    with pytest.raises(
        DataError, match=r"c3\.csv:1: column 'title' appears 2 times \(columns 2, 3\)"
    ):
        load_catalog(write(tmp_path, "c3.csv", "item_id,title,title\na,x,y\n"))
