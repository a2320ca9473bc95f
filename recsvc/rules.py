"""Merchandising rules: the shop's say over an answer, applied after ranking.

A :class:`Rule` picks its items — a list of item ids, or a predicate over the live
catalogue (categories, attributes) — and does one thing to them:

- ``boost`` multiplies their ranked score by ``weight`` (> 1), so they climb among
  the ranked candidates;
- ``bury`` multiplies it by ``weight`` (in (0, 1)), so they sink;
- ``pin`` puts them at ``position`` (1 = first): a list's items from there on, in
  the list's order; a predicate's best-ranked match (or, when none was ranked, its most
  popular one).

A rule may be limited to placements (``home``, ``pdp``; none: every placement) and to a
window (``starts_at`` to ``ends_at``, Unix seconds): past its end it stops applying
with no one touching it. Filters and erasures always win: a rule never brings back an
item a filter, the live catalogue or the repeat policy hides. Each answer names the
rules that touched it.

Rules are stored once for every replica (:mod:`recsvc.store.rules`) and managed
through the rules RPCs or ``recsvc rules load FILE`` (a TOML file, see
:func:`recsvc.cli`). Records are compact JSON with a version, like the catalogue's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from recsvc.catalog import AttributeFilter

__all__ = ["RECORD_VERSION", "Rule", "RuleAction"]

RECORD_VERSION: Final = 1
"""Version of the stored JSON record; bump it when the layout changes."""


class RuleAction(StrEnum):
    """What a rule does to its items."""

    BOOST = "boost"
    BURY = "bury"
    PIN = "pin"


@dataclass(frozen=True)
class Rule:
    """One merchandising rule (validated at the API boundary, see the module docstring)."""

    rule_id: str
    action: RuleAction
    item_ids: tuple[str, ...] = ()
    """Its items by id (then ``categories`` and ``attributes`` are empty)."""
    categories: tuple[str, ...] = ()
    """Or: items in any of these categories (any level of their path) ..."""
    attributes: tuple[AttributeFilter, ...] = ()
    """... and matching every one of these attribute predicates."""
    weight: float = 1.0
    """Score multiplier of a boost (> 1) or bury (< 1); 1 for a pin."""
    position: int = 0
    """Where a pin puts its first item (1-based); 0 for boost and bury."""
    placements: tuple[str, ...] = ()
    """Placements it applies to; empty: all."""
    starts_at: float | None = None
    """Unix seconds before which it does not apply; None: no start."""
    ends_at: float | None = None
    """Unix seconds from which it no longer applies; None: no end."""
    deleted: bool = False
    """A tombstone: deleted through the API."""
    updated_at: int = 0
    """Unix seconds of the change that wrote this record."""

    def __post_init__(self) -> None:
        # a member, whatever it was given as ("pin", or a NumPy string): everything
        # that applies rules compares members by identity, and a plain string would
        # pass as neither action (ValueError for a value that is not one)
        if type(self.action) is not RuleAction:
            object.__setattr__(self, "action", RuleAction(self.action))

    @property
    def key(self) -> str:
        """Its key in the shared store (:class:`recsvc.store.records.RecordLog`)."""
        return self.rule_id

    def live(self, now: float) -> bool:
        """Whether it applies at ``now`` (not deleted, inside its window)."""
        if self.deleted:
            return False
        if self.starts_at is not None and now < self.starts_at:
            return False
        return self.ends_at is None or now < self.ends_at

    def applies(self, placement: str, now: float) -> bool:
        """Whether it applies to an answer for ``placement`` at ``now``."""
        return self.live(now) and (not self.placements or placement in self.placements)

    def to_json(self) -> str:
        """The stored record: compact JSON, keys that hold a default left out."""
        record: dict[str, Any] = {"v": RECORD_VERSION, "id": self.rule_id, "do": self.action}
        if self.item_ids:
            record["items"] = list(self.item_ids)
        if self.categories:
            record["cats"] = list(self.categories)
        if self.attributes:
            record["attrs"] = [a.to_record() for a in self.attributes]
        if self.weight != 1.0:
            record["w"] = self.weight
        if self.position:
            record["pos"] = self.position
        if self.placements:
            record["pl"] = list(self.placements)
        if self.starts_at is not None:
            record["from"] = self.starts_at
        if self.ends_at is not None:
            record["until"] = self.ends_at
        if self.deleted:
            record["del"] = True
        if self.updated_at:
            record["at"] = self.updated_at
        return json.dumps(record, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Rule:
        """Inverse of :meth:`to_json`. Raises ValueError for another record version or
        a malformed record."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed rule record: {exc}") from exc
        return cls.from_record(record)

    @classmethod
    def from_record(cls, record: Any) -> Rule:
        """The rule of a decoded record (see :meth:`from_json`)."""
        try:
            if record.get("v") != RECORD_VERSION:
                raise ValueError(f"unknown rule record version {record.get('v')!r}")
            return cls(
                rule_id=str(record["id"]),
                action=RuleAction(record["do"]),
                item_ids=tuple(str(i) for i in record.get("items", ())),
                categories=tuple(str(c) for c in record.get("cats", ())),
                attributes=tuple(AttributeFilter.from_record(a) for a in record.get("attrs", ())),
                weight=float(record.get("w", 1.0)),
                position=int(record.get("pos", 0)),
                placements=tuple(str(p) for p in record.get("pl", ())),
                starts_at=None if record.get("from") is None else float(record["from"]),
                ends_at=None if record.get("until") is None else float(record["until"]),
                deleted=bool(record.get("del", False)),
                updated_at=int(record.get("at", 0)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed rule record: {exc}") from exc

    @classmethod
    def tombstone(cls, rule_id: str, now: int) -> Rule:
        """The record a deletion writes."""
        return cls(rule_id, RuleAction.BOOST, deleted=True, updated_at=now)
