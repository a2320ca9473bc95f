"""The live catalogue: what the shop sells right now, changed between two trainings.

A :class:`CatalogItem` is one product as the shop describes it today: where it sits in
the category tree, whether it can be bought, its price and title, free string and
numeric attributes (brand, colour, rating), and an optional window of availability (a
promotion's start and end). Items are upserted and withdrawn through the catalogue
RPCs or ``recsvc catalog load``; every replica follows the changes
(:mod:`recsvc.store.catalog`), and the trainer reads the same catalogue.

An item is *shown* (may be recommended) when it is not withdrawn, is available, and
``now`` lies inside its window. Items the live catalogue does not know keep what the
trained model says about them (they are shown).

Records travel and are stored as compact JSON (:meth:`CatalogItem.to_json`), the
format's version first, so a replica reading a newer record it does not understand
skips it loudly instead of guessing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "ATTRIBUTE_NAME",
    "RECORD_VERSION",
    "AttributeFilter",
    "CatalogItem",
]

RECORD_VERSION: Final = 1
"""Version of the stored JSON record; bump it when the layout changes."""

ATTRIBUTE_NAME: Final = r"^[a-z][a-z0-9_]{0,63}$"
"""What an attribute name may be: lower-case snake case, at most 64 characters
(``price`` is the numeric attribute the price is filtered by)."""


@dataclass(frozen=True)
class AttributeFilter:
    """One attribute predicate (of a request's filters or a rule's target): ``values``
    (a string attribute equal to one of them) or a ``low``/``high`` range (a numeric
    attribute, bounds included, None = open). Items without the attribute never
    match."""

    name: str
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def numeric(self) -> bool:
        return not self.values

    def to_record(self) -> dict[str, Any]:
        if self.values:
            return {"name": self.name, "values": list(self.values)}
        return {"name": self.name, "min": self.low, "max": self.high}

    @classmethod
    def from_record(cls, record: Any) -> AttributeFilter:
        """Inverse of :meth:`to_record`; KeyError, TypeError or ValueError if malformed."""
        if "values" in record:
            return cls(str(record["name"]), values=tuple(str(v) for v in record["values"]))
        low, high = record.get("min"), record.get("max")
        return cls(
            str(record["name"]),
            low=None if low is None else float(low),
            high=None if high is None else float(high),
        )


@dataclass(frozen=True)
class CatalogItem:
    """One product of the live catalogue (validated at the API boundary)."""

    item_id: str
    """The shop's product id (the ids of events and recommendations)."""
    category: tuple[str, ...] = ()
    """Its path in the category tree, most general first (``("home", "kitchen")``);
    a category filter matches any level. Empty: none."""
    available: bool = True
    """Whether it can be bought now (in stock); False hides it."""
    price: float | None = None
    """Its price (filtered as the numeric attribute ``price``); None: unknown."""
    title: str = ""
    """Its name as the shop shows it."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """String attributes (``brand``, ``colour``): equality and set filters."""
    numbers: Mapping[str, float] = field(default_factory=dict)
    """Numeric attributes (``rating``): range filters."""
    available_from: int | None = None
    """Unix seconds before which it is hidden (a launch); None: no start."""
    available_until: int | None = None
    """Unix seconds from which it is hidden (a promotion's end); None: no end."""
    withdrawn: bool = False
    """Withdrawn by the shop: never returned by any RPC, dropped from training."""
    updated_at: int = 0
    """Unix seconds of the change that wrote this record."""

    @property
    def key(self) -> str:
        """Its key in the shared store (:class:`recsvc.store.records.RecordLog`)."""
        return self.item_id

    def shown(self, now: float) -> bool:
        """Whether it may be recommended at ``now`` (Unix seconds)."""
        if self.withdrawn or not self.available:
            return False
        if self.available_from is not None and now < self.available_from:
            return False
        return self.available_until is None or now < self.available_until

    def number(self, name: str) -> float:
        """The numeric attribute ``name`` (``price`` included), NaN when it has none."""
        if name == "price":
            return math.nan if self.price is None else self.price
        return self.numbers.get(name, math.nan)

    def to_json(self) -> str:
        """The stored record: compact JSON, keys that hold a default left out."""
        record: dict[str, Any] = {"v": RECORD_VERSION, "id": self.item_id}
        if self.category:
            record["c"] = list(self.category)
        if not self.available:
            record["a"] = False
        if self.price is not None:
            record["p"] = self.price
        if self.title:
            record["t"] = self.title
        if self.labels:
            record["l"] = dict(self.labels)
        if self.numbers:
            record["n"] = dict(self.numbers)
        if self.available_from is not None:
            record["f"] = self.available_from
        if self.available_until is not None:
            record["u"] = self.available_until
        if self.withdrawn:
            record["w"] = True
        record["at"] = self.updated_at
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CatalogItem:
        """Inverse of :meth:`to_json`. Raises ValueError for another record version or
        a malformed record."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed catalogue record: {exc}") from exc
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Any) -> CatalogItem:
        """The item of a decoded record (see :meth:`from_json`)."""
        try:
            if record.get("v") != RECORD_VERSION:
                raise ValueError(f"unknown catalogue record version {record.get('v')!r}")
            return cls(
                item_id=str(record["id"]),
                category=tuple(str(c) for c in record.get("c", ())),
                available=bool(record.get("a", True)),
                price=None if record.get("p") is None else float(record["p"]),
                title=str(record.get("t", "")),
                labels={str(k): str(v) for k, v in record.get("l", {}).items()},
                numbers={str(k): float(v) for k, v in record.get("n", {}).items()},
                available_from=record.get("f"),
                available_until=record.get("u"),
                withdrawn=bool(record.get("w", False)),
                updated_at=int(record.get("at", 0)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed catalogue record: {exc}") from exc
