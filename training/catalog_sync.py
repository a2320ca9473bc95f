"""``recsvc catalog load``: the shop's catalogue export into the live catalogue.

The file is read by :func:`.loading.load_catalog` (CSV, gzip CSV or Parquet; the same
errors as for events: one line naming the file, line and column). Columns:

==================  ============================================================
``item_id``         required
``category``        the category path, levels separated by ``>`` (``Home > Kitchen``)
``available``       true/false, yes/no, 1/0 (empty or absent: true)
``title``           the product's name
``price``           a number >= 0
``available_from``  ISO 8601 or Unix seconds: hidden before (optional)
``available_until`` ... hidden from (optional)
anything else       a numeric attribute when every value is a number, else a string
                    attribute (names lower_snake_case)
==================  ============================================================

Items go to a running server through ``UpsertItems`` in batches of 1000, each batch
validated whole by the server; an item not in the file is left as it is (withdraw it
with ``recsvc catalog withdraw``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recsvc.errors import DataError
from recsvc.v1 import recommender_pb2 as pb

from .loading import Catalog, _numbers, _timestamps, load_catalog

__all__ = ["BATCH", "catalog_messages", "read_catalog_file"]

BATCH = 1000
"""Items per UpsertItems call (the server's limit)."""

_SPECIAL = {"price", "available_from", "available_until"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def read_catalog_file(path: Path, *, skip_bad_rows: bool = False) -> Catalog:
    """The file, read and checked (DataError or InputRowError naming what is wrong)."""
    catalog = load_catalog(path, skip_bad_rows=skip_bad_rows)
    bad = sorted(n for n in catalog.attributes if n not in _SPECIAL and not _NAME.match(n))
    if bad:
        raise DataError(
            f"{path}: attribute columns must be named lower_snake_case (letters, digits, "
            f"'_'), got {', '.join(repr(b) for b in bad)}"
        )
    return catalog


def catalog_messages(catalog: Catalog, *, separator: str = ">") -> Iterator[list[pb.CatalogItem]]:
    """The catalogue as UpsertItems batches of :data:`BATCH` items."""
    columns: dict[str, list[Any]] = {
        "item_id": catalog.item_id.to_pylist(),
        "category": catalog.category.to_pylist(),
        "available": catalog.available.to_pylist(),
        "title": catalog.title.to_pylist(),
    }
    numbers: dict[str, list[Any]] = {}
    labels: dict[str, list[Any]] = {}
    stamps: dict[str, list[Any]] = {}
    for name, values in catalog.attributes.items():
        if name in ("available_from", "available_until"):
            stamps[name] = _timestamps(values).to_pylist()
            continue
        parsed, given = _numbers(values)
        all_numbers = pc.all(pc.or_(pc.invert(given), parsed.is_valid())).as_py()
        if name == "price" or all_numbers:
            numbers[name] = parsed.to_pylist()
        else:
            labels[name] = pc.cast(values, pa.string()).to_pylist()
    batch: list[pb.CatalogItem] = []
    for row, item_id in enumerate(columns["item_id"]):
        item = pb.CatalogItem(
            item_id=item_id,
            category_path=_path(columns["category"][row], separator),
            available=bool(columns["available"][row]),
            title=columns["title"][row] or "",
        )
        for name, values in numbers.items():
            value = values[row]
            if value is None or not math.isfinite(value):
                continue
            if name == "price":
                item.price = value
            else:
                item.numbers[name] = value
        for name, values in labels.items():
            if values[row]:
                item.labels[name] = values[row]
        for name, values in stamps.items():
            if values[row] is not None:
                getattr(item, name).FromSeconds(int(values[row]))
        batch.append(item)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _path(category: str | None, separator: str) -> list[str]:
    if not category:
        return []
    return [level.strip() for level in category.split(separator) if level.strip()]
