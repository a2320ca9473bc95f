"""Held-out splits of an event table: by a time cut-off, or each user's last basket."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.errors import DataError
from recsvc.events import EventType

__all__ = [
    "VISIT_GAP_SECONDS",
    "Split",
    "last_basket_rows",
    "split_by_cutoff",
    "split_last_basket",
]


@dataclass(frozen=True)
class Split:
    """A train table and the held-out purchases per user (external ids)."""

    train: pa.Table
    truth: dict[str, set[str]]
    protocol: str


def _purchases(table: pa.Table) -> pa.Table:
    return table.filter(
        pc.and_(
            pc.equal(table["event_type"], EventType.PURCHASE.value),
            pc.is_valid(table["user_id"]),
        )
    )


def _truth_from(table: pa.Table) -> dict[str, set[str]]:
    truth: dict[str, set[str]] = {}
    for user, item in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True):
        truth.setdefault(user, set()).add(item)
    return truth


def split_by_cutoff(table: pa.Table, cutoff: datetime) -> Split:
    """Events before ``cutoff`` train; purchases at or after it, by users seen before, test."""
    ts = int(cutoff.replace(tzinfo=cutoff.tzinfo or UTC).timestamp())
    before = pc.less(table["timestamp"], ts)
    train = table.filter(before)
    test = _purchases(table.filter(pc.invert(before)))
    if train.num_rows == 0 or test.num_rows == 0:
        raise DataError(
            f"cut-off {cutoff.isoformat()} leaves {train.num_rows} training events and "
            f"{test.num_rows} test purchases; pick a date inside the data"
        )
    seen = pc.unique(train["user_id"].drop_null())
    test = test.filter(pc.is_in(test["user_id"], value_set=seen))
    return Split(train, _truth_from(test), f"time split at {cutoff.date().isoformat()}")


#: Events this close before a held-out basket belong to the visit that made it
#: (the views and cart adds that led to the purchase) and would leak it.
VISIT_GAP_SECONDS = 30 * 60


def split_last_basket(table: pa.Table) -> Split:
    """Each user's last purchase basket is the test; everything before its visit trains.

    Users with a single basket have nothing to learn from and are left out of the
    test (their events still train). A test user's events from
    :data:`VISIT_GAP_SECONDS` before the last basket on are removed from training.
    """
    held, truth = last_basket_rows(table)
    return Split(table.filter(pa.array(~held)), truth, "last basket per user")


def last_basket_rows(table: pa.Table) -> tuple[NDArray[np.bool_], dict[str, set[str]]]:
    """:func:`split_last_basket` as a row mask: ``(n,)`` True on the rows it keeps out
    of training, and the held-out purchases per user. Callers that need a few columns
    of the training rows take them with the mask instead of copying the whole table."""
    purchases = _purchases(table)
    if purchases.num_rows == 0:
        raise DataError("no purchases with a user id: nothing to hold out")
    last = purchases.group_by("user_id").aggregate(
        [("timestamp", "max"), ("basket_id", "count_distinct")]
    )
    last = last.filter(pc.greater(last["basket_id_count_distinct"], 1))
    # each row's user's last-basket time (rows of other users and guests: no cut)
    which = pc.index_in(table["user_id"], value_set=last["user_id"])
    has_cut = pc.is_valid(which).to_numpy(zero_copy_only=False)
    position = pc.fill_null(which, 0).to_numpy(zero_copy_only=False)
    cut = last["timestamp_max"].to_numpy()
    stamps = table["timestamp"].to_numpy()
    row_cut = cut[position] if len(cut) else np.zeros(len(stamps), dtype=stamps.dtype)
    held: NDArray[np.bool_] = has_cut & (stamps >= row_cut - VISIT_GAP_SECONDS)
    # only the last basket is the target, not other purchases of the same visit
    test = _purchases(table.filter(pa.array(held & (stamps >= row_cut))))
    return held, _truth_from(test)
