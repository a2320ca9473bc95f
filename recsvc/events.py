"""The event vocabulary shared by training (files), serving (RecordEvents, live state)
and the wire contract — declared once, here.

Every event type has, in :data:`EVENT_SPECS`: its spelling in files and settings (the
enum value), its number in the proto's ``EventType`` enum, its one-letter code in live
state entries in Redis (``state_code``), its default weight in training, and whether it
says something about the shopper's taste (impressions do not: they are counted, never
stored in a history or a session), and whether it turns the item down (not interested,
a return). Every mapping elsewhere — request validation, the client's
keyword helpers, the Redis entry format, the weighting defaults, the CLI's choices — is
derived from it; a test checks that the proto agrees.

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

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "CANONICAL_COLUMNS",
    "EVENT_SPECS",
    "EventSpec",
    "EventType",
    "LiveEvent",
]


class EventType(StrEnum):
    """What a shopper did with an item. Values are the spellings accepted in files."""

    PURCHASE = "purchase"
    ADD_TO_CART = "add_to_cart"
    VIEW = "view"
    CLICK = "click"
    IMPRESSION = "impression"
    NOT_INTERESTED = "not_interested"
    RETURN = "return"

    @property
    def spec(self) -> EventSpec:
        return EVENT_SPECS[self]


@dataclass(frozen=True)
class EventSpec:
    """What recsvc knows about one event type."""

    proto_number: int
    """Its number in ``recsvc.v1.EventType`` (the wire contract)."""
    state_code: str
    """One letter in a live-state entry in Redis (part of the stored format)."""
    default_weight: float
    """Weight of one such event in training (``[weighting] event_weights``)."""
    taste: bool
    """Whether it tells what the shopper likes: kept in live history and sessions."""
    dismisses: bool = False
    """Whether the shopper turned the item down: it is not recommended to them again
    for ``[server] dismiss_seconds`` and items like it sink (serving), and training
    reads it as taking back what they did with it (see ``training/interactions.py``)."""


EVENT_SPECS: Final[dict[EventType, EventSpec]] = {
    EventType.PURCHASE: EventSpec(proto_number=3, state_code="p", default_weight=1.0, taste=True),
    EventType.ADD_TO_CART: EventSpec(
        proto_number=2, state_code="a", default_weight=0.5, taste=True
    ),
    EventType.VIEW: EventSpec(proto_number=1, state_code="v", default_weight=0.1, taste=True),
    EventType.CLICK: EventSpec(proto_number=5, state_code="c", default_weight=0.2, taste=True),
    EventType.IMPRESSION: EventSpec(
        proto_number=4, state_code="i", default_weight=0.0, taste=False
    ),
    EventType.NOT_INTERESTED: EventSpec(
        proto_number=6, state_code="n", default_weight=0.0, taste=False, dismisses=True
    ),
    EventType.RETURN: EventSpec(
        proto_number=7, state_code="r", default_weight=0.0, taste=False, dismisses=True
    ),
}

CANONICAL_COLUMNS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "timestamp",
    "event_type",
    "quantity",
    "basket_id",
)


@dataclass(frozen=True)
class LiveEvent:
    """One event of a live shopper: sent inline with a Recommend, recorded by
    RecordEvents, kept in a history or a session in the live state."""

    item_id: str
    """Product id (non-empty; may contain any character)."""
    event_type: EventType
    """What the shopper did."""
    timestamp: int
    """When, in Unix seconds (UTC)."""
    quantity: float = 1.0
    """Units (> 0, finite)."""
