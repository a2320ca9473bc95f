"""The event vocabulary shared by training (files) and serving (RecordEvents).

Canonical event table columns (what every loader produces, what the trainer reads):

====================  ==========  =====================================================
column                arrow type  meaning
====================  ==========  =====================================================
``user_id``           string      customer id; null for guest lines (no customer)
``item_id``           string      product id (never null)
``timestamp``         int64       Unix seconds, UTC
``event_type``        string      one of :class:`EventType` values
``quantity``          float32     units (> 0); 1 when the source has none
``basket_id``         string      order / invoice; defaults to ``user_id@timestamp``
====================  ==========  =====================================================
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CANONICAL_COLUMNS", "EventType"]


class EventType(StrEnum):
    """What a shopper did with an item. Values are the spellings accepted in files."""

    PURCHASE = "purchase"
    ADD_TO_CART = "add_to_cart"
    VIEW = "view"
    CLICK = "click"
    IMPRESSION = "impression"


CANONICAL_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "timestamp",
    "event_type",
    "quantity",
    "basket_id",
)
