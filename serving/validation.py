"""Requests in, domain inputs out — or InvalidRequestError naming every bad field.

Field paths follow the request (``session_events[2].event_time``), as
google.rpc.BadRequest expects. Limits come from :class:`recsvc.config.ServerSettings`.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from recsvc.catalog import ATTRIBUTE_NAME, AttributeFilter, CatalogItem
from recsvc.config import RepeatPolicy, ServerSettings, SimilarMode
from recsvc.consent import Consent
from recsvc.errors import FieldViolation, InvalidRequestError
from recsvc.events import EventType, LiveEvent
from recsvc.experiments import NAME_RE, Experiment, Variant
from recsvc.rules import Rule, RuleAction
from recsvc.v1 import recommender_pb2 as pb

from . import continuation
from .calls import (
    NO_FILTERS,
    EventInput,
    FilterSpec,
    RecommendInput,
    SimilarInput,
)

__all__ = [
    "RULE_ACTION_FROM_PB",
    "catalog_items",
    "consent",
    "deleted_rule_ids",
    "event_inputs",
    "experiments",
    "export_user_id",
    "forget_user_id",
    "recommend_input",
    "rules",
    "similar_input",
    "withdrawn_ids",
]

RULE_ACTION_FROM_PB: dict[int, RuleAction] = {
    pb.RULE_ACTION_BOOST: RuleAction.BOOST,
    pb.RULE_ACTION_BURY: RuleAction.BURY,
    pb.RULE_ACTION_PIN: RuleAction.PIN,
}
_MAX_BOOST = 100.0

_PLACEMENT = re.compile(r"^[a-z0-9_]{0,32}$")
_ATTRIBUTE = re.compile(ATTRIBUTE_NAME)
_MAX_ATTRIBUTE_FILTERS = 20
_MAX_FILTER_VALUES = 100
_MAX_CATEGORY_DEPTH = 8
_MAX_TITLE_BYTES = 1000
_ID_RULE = (
    "must be printable text: no control, format or line-separator characters, no spaces "
    "other than U+0020 and none at either end"
)
_MAX_FILTER_ITEMS = 1000
_MAX_FILTER_CATEGORIES = 100
_MAX_SIMILAR_ITEMS = 100
_FILTER_SPEC_CACHE = 256
_FILTER_SPECS: OrderedDict[tuple[int, bytes], FilterSpec] = OrderedDict()
"""Valid filters already checked, by (id byte limit, serialized message)."""

EVENT_TYPE_FROM_PB: dict[int, EventType] = {t.spec.proto_number: t for t in EventType}
SIMILAR_MODE_FROM_PB: dict[int, SimilarMode | None] = {
    pb.SIMILAR_MODE_UNSPECIFIED: None,
    pb.SIMILAR_MODE_SIMILAR: SimilarMode.SIMILAR,
    pb.SIMILAR_MODE_BOUGHT_TOGETHER: SimilarMode.BOUGHT_TOGETHER,
}
REPEAT_POLICY_FROM_PB: dict[int, RepeatPolicy | None] = {
    pb.REPEAT_POLICY_UNSPECIFIED: None,
    pb.REPEAT_POLICY_EXCLUDE_PURCHASED: RepeatPolicy.EXCLUDE,
    pb.REPEAT_POLICY_ALLOW_REPEATS: RepeatPolicy.ALLOW,
}


class _Checker:
    """Collects violations so one response names every bad field."""

    def __init__(self, limits: ServerSettings) -> None:
        self.limits = limits
        self.violations: list[FieldViolation] = []

    def bad(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidRequestError(self.violations)

    def id(self, path: str, value: str, *, required: bool) -> str:
        """An id is kept byte for byte (erasure, the event log and training match it
        exactly), so what could read back differently is refused here, once: control,
        format and separator characters, non-ASCII spaces (Python's ``isprintable``),
        and leading or trailing spaces."""
        if not value:
            if required:
                self.bad(path, "is required")
            return value
        if len(value.encode("utf-8")) > self.limits.max_id_bytes:
            self.bad(path, f"is longer than {self.limits.max_id_bytes} bytes")
        elif not value.isprintable() or value[0] == " " or value[-1] == " ":
            self.bad(path, _ID_RULE)
        return value

    def label(self, path: str, value: str, *, required: bool = False) -> str:
        """An experiment's or variant's name: a metric label and part of ids."""
        if not value:
            if required:
                self.bad(path, "is required")
        elif not NAME_RE.fullmatch(value):
            self.bad(path, f"must match {NAME_RE.pattern}")
        return value

    def price(self, path: str, e: pb.Event) -> float:
        if not (math.isfinite(e.price) and e.price >= 0):
            self.bad(path, "must be a finite number >= 0")
        elif e.event_type != pb.EVENT_TYPE_PURCHASE:
            self.bad(path, "only a purchase has a price")
        return float(e.price)

    def ids(self, path: str, values: Sequence[str], limit: int) -> tuple[str, ...]:
        if len(values) > limit:
            self.bad(path, f"has {len(values)} entries; at most {limit}")
        for i, v in enumerate(values[:limit]):
            self.id(f"{path}[{i}]", v, required=True)
        return tuple(values)

    def k(self, path: str, value: int) -> int:
        if value < 0 or value > self.limits.max_k:
            self.bad(
                path, f"must be between 0 and {self.limits.max_k} (0 = {self.limits.default_k})"
            )
        return value or self.limits.default_k

    def cap(self, path: str, value: int) -> int:
        if value < 0 or value > self.limits.max_k:
            self.bad(path, f"must be between 0 and {self.limits.max_k} (0 = the placement's)")
        return value

    def placement(self, path: str, value: str) -> str:
        if value and not _PLACEMENT.match(value):  # "" (none) is valid
            self.bad(path, "must be lower-case letters, digits and '_', at most 32 characters")
        return value

    def event_type(self, path: str, value: int) -> EventType:
        kind = EVENT_TYPE_FROM_PB.get(value)
        if kind is None:
            what = "is required" if value == pb.EVENT_TYPE_UNSPECIFIED else f"unknown value {value}"
            self.bad(path, what)
            return EventType.VIEW
        return kind

    def time(self, path: str, message: object, value: Timestamp, now: float) -> int:
        if not message.HasField("event_time"):  # type: ignore[attr-defined]
            return int(now)
        if not 0 <= value.nanos < 1_000_000_000 or not 0 <= value.seconds < 253_402_300_800:
            self.bad(path, "is not a valid timestamp")
            return int(now)
        if value.seconds > now + self.limits.clock_skew_seconds:
            self.bad(path, "lies in the future")
        return int(value.seconds)

    def filters(self, path: str, f: pb.Filters) -> FilterSpec:
        """``f`` checked; a valid one is kept (by its bytes) in a small LRU: a storefront
        sends the same few filters again and again, and checking an attribute filter
        costs ~15 µs against ~1 µs to serialize it."""
        key = (self.limits.max_id_bytes, f.SerializeToString(deterministic=True))
        spec = _FILTER_SPECS.get(key)
        if spec is not None:
            _FILTER_SPECS.move_to_end(key)
            return spec
        before = len(self.violations)
        spec = self._filters(path, f)
        if len(self.violations) == before:
            _FILTER_SPECS[key] = spec
            if len(_FILTER_SPECS) > _FILTER_SPEC_CACHE:
                _FILTER_SPECS.popitem(last=False)
        return spec

    def _filters(self, path: str, f: pb.Filters) -> FilterSpec:
        return FilterSpec(
            exclude_item_ids=self.ids(
                f"{path}.exclude_item_ids", f.exclude_item_ids, _MAX_FILTER_ITEMS
            ),
            include_categories=self.ids(
                f"{path}.include_categories", f.include_categories, _MAX_FILTER_CATEGORIES
            ),
            exclude_categories=self.ids(
                f"{path}.exclude_categories", f.exclude_categories, _MAX_FILTER_CATEGORIES
            ),
            in_stock_only=f.in_stock_only,
            attributes=self.attribute_filters(f"{path}.attributes", f.attributes),
        )

    def name(self, path: str, value: str) -> str:
        """An attribute name: lower_snake_case, at most 64 characters."""
        if not _ATTRIBUTE.match(value):
            self.bad(path, "must be lower_snake_case letters, digits and '_', at most 64")
        return value

    def number(self, path: str, value: float, *, minimum: float | None = None) -> float:
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            floor = "" if minimum is None else f" >= {minimum:g}"
            self.bad(path, f"must be a finite number{floor}")
        return float(value)

    def attribute_filters(
        self, path: str, filters: Sequence[pb.AttributeFilter]
    ) -> tuple[AttributeFilter, ...]:
        if len(filters) > _MAX_ATTRIBUTE_FILTERS:
            self.bad(path, f"has {len(filters)} entries; at most {_MAX_ATTRIBUTE_FILTERS}")
        out = []
        for i, f in enumerate(filters[:_MAX_ATTRIBUTE_FILTERS]):
            p = f"{path}[{i}]"
            name = self.name(f"{p}.name", f.name)
            which = f.WhichOneof("match")
            if which == "values":
                values = self.ids(f"{p}.values.values", f.values.values, _MAX_FILTER_VALUES)
                if not values:
                    self.bad(f"{p}.values.values", "is required: at least one value")
                out.append(AttributeFilter(name, values=values))
            elif which == "range":
                r = f.range
                low = self.number(f"{p}.range.min", r.min) if r.HasField("min") else None
                high = self.number(f"{p}.range.max", r.max) if r.HasField("max") else None
                if low is not None and high is not None and low > high:
                    self.bad(f"{p}.range", "min exceeds max")
                out.append(AttributeFilter(name, low=low, high=high))
            else:
                self.bad(p, "needs values or a range")
        return tuple(out)

    def stamp(self, path: str, message: Any, name: str) -> int | None:
        """The timestamp field ``name`` of ``message`` in whole Unix seconds."""
        exact = self.instant(path, message, name)
        return None if exact is None else int(exact)

    def instant(self, path: str, message: Any, name: str) -> float | None:
        """The timestamp field ``name`` of ``message`` in Unix seconds, fraction kept."""
        if not message.HasField(name):
            return None
        value = getattr(message, name)
        if not 0 <= value.nanos < 1_000_000_000 or not 0 <= value.seconds < 253_402_300_800:
            self.bad(f"{path}.{name}", "is not a valid timestamp")
            return None
        return float(value.seconds + value.nanos / 1e9)


def recommend_input(req: pb.RecommendRequest, limits: ServerSettings) -> RecommendInput:
    c = _Checker(limits)
    session_events = req.session_events
    events: list[LiveEvent] = []
    if session_events:
        now = time.time()
        n = len(session_events)
        if n > limits.max_session_events:
            c.bad("session_events", f"has {n} events; at most {limits.max_session_events}")
        for i, e in enumerate(session_events[: limits.max_session_events]):
            p = f"session_events[{i}]"
            item = c.id(f"{p}.item_id", e.item_id, required=True)
            kind = c.event_type(f"{p}.event_type", e.event_type)
            ts = c.time(f"{p}.event_time", e, e.event_time, now)
            events.append(LiveEvent(item, kind, ts, 1.0))
    repeat_policy = req.repeat_policy
    policy = REPEAT_POLICY_FROM_PB.get(repeat_policy)
    if repeat_policy not in REPEAT_POLICY_FROM_PB:
        c.bad("repeat_policy", f"unknown value {repeat_policy}")
    result = RecommendInput(
        user_id=c.id("user_id", req.user_id, required=False),
        session_id=c.id("session_id", req.session_id, required=False),
        session_events=tuple(events),
        k=c.k("k", req.k),
        filters=c.filters("filters", req.filters) if req.HasField("filters") else NO_FILTERS,
        repeat_policy=policy,
        non_personalized=req.non_personalized,
        placement=c.placement("placement", req.placement),
        max_per_category=c.cap("max_per_category", req.max_per_category),
        explain=req.explain,
        paged=req.paged or bool(req.continuation),
        continued=_continued(c, req.continuation),
        variant=c.label("variant", req.variant),
    )
    c.raise_if_any()
    if result.continued:  # what earlier pages returned is excluded from this one
        spec = result.filters
        excluded = tuple(dict.fromkeys((*spec.exclude_item_ids, *result.continued)))
        result = replace(result, filters=replace(spec, exclude_item_ids=excluded))
    return result


def _continued(c: _Checker, token: str) -> tuple[str, ...]:
    if not token:
        return ()
    try:
        return continuation.decode(token)
    except ValueError as exc:
        c.bad("continuation", str(exc))
        return ()


def similar_input(req: pb.SimilarItemsRequest, limits: ServerSettings) -> SimilarInput:
    c = _Checker(limits)
    if not req.item_ids:
        c.bad("item_ids", "is required: at least one item id")
    if req.mode not in SIMILAR_MODE_FROM_PB:
        c.bad("mode", f"unknown value {req.mode}")
    result = SimilarInput(
        mode=SIMILAR_MODE_FROM_PB.get(req.mode),
        item_ids=c.ids("item_ids", req.item_ids, _MAX_SIMILAR_ITEMS),
        k=c.k("k", req.k),
        filters=c.filters("filters", req.filters),
        placement=c.placement("placement", req.placement),
        max_per_category=c.cap("max_per_category", req.max_per_category),
    )
    c.raise_if_any()
    return result


def event_inputs(req: pb.RecordEventsRequest, limits: ServerSettings) -> list[EventInput]:
    c = _Checker(limits)
    now = time.time()
    n = len(req.events)
    if n > limits.max_batch_events:
        c.bad("events", f"has {n} events; at most {limits.max_batch_events}")
    out = []
    for i, e in enumerate(req.events[: limits.max_batch_events]):
        p = f"events[{i}]"
        if not math.isfinite(e.quantity) or e.quantity < 0:
            c.bad(f"{p}.quantity", "must be a finite number >= 0")
        out.append(
            EventInput(
                user_id=c.id(f"{p}.user_id", e.user_id, required=False),
                session_id=c.id(f"{p}.session_id", e.session_id, required=False),
                item_id=c.id(f"{p}.item_id", e.item_id, required=True),
                event_type=c.event_type(f"{p}.event_type", e.event_type),
                timestamp=c.time(f"{p}.event_time", e, e.event_time, now),
                quantity=float(e.quantity) or 1.0,
                recommendation_id=c.id(
                    f"{p}.recommendation_id", e.recommendation_id, required=False
                ),
                placement=c.placement(f"{p}.placement", e.placement),
                non_personalized=e.non_personalized,
                event_id=c.id(f"{p}.event_id", e.event_id, required=False),
                price=c.price(f"{p}.price", e) if e.HasField("price") else None,
            )
        )
    c.raise_if_any()
    return out


def catalog_items(req: pb.UpsertItemsRequest, limits: ServerSettings) -> list[CatalogItem]:
    """The items of an UpsertItems batch, stamped now; InvalidRequestError naming every
    bad field (the batch is then applied not at all)."""
    c = _Checker(limits)
    now = int(time.time())
    n = len(req.items)
    if n > limits.max_batch_events:
        c.bad("items", f"has {n} items; at most {limits.max_batch_events}")
    out = []
    for i, item in enumerate(req.items[: limits.max_batch_events]):
        p = f"items[{i}]"
        if len(item.category_path) > _MAX_CATEGORY_DEPTH:
            c.bad(f"{p}.category_path", f"has more than {_MAX_CATEGORY_DEPTH} levels")
        for field_name, mapping, limit in (
            ("labels", item.labels, 32),
            ("numbers", item.numbers, 32),
        ):
            if len(mapping) > limit:
                c.bad(f"{p}.{field_name}", f"has {len(mapping)} entries; at most {limit}")
        labels = {
            c.name(f"{p}.labels[{k!r}]", k): c.id(f"{p}.labels[{k!r}]", v, required=True)
            for k, v in item.labels.items()
        }
        numbers = {
            c.name(f"{p}.numbers[{k!r}]", k): c.number(f"{p}.numbers[{k!r}]", v)
            for k, v in item.numbers.items()
        }
        if "price" in numbers:
            c.bad(f"{p}.numbers['price']", "is the price field's: set price")
        if len(item.title.encode("utf-8")) > _MAX_TITLE_BYTES:
            c.bad(f"{p}.title", f"is longer than {_MAX_TITLE_BYTES} bytes")
        start = c.stamp(p, item, "available_from")
        end = c.stamp(p, item, "available_until")
        if start is not None and end is not None and start >= end:
            c.bad(f"{p}.available_until", "must lie after available_from")
        out.append(
            CatalogItem(
                item_id=c.id(f"{p}.item_id", item.item_id, required=True),
                category=c.ids(f"{p}.category_path", item.category_path, _MAX_CATEGORY_DEPTH),
                available=item.available if item.HasField("available") else True,
                price=c.number(f"{p}.price", item.price, minimum=0.0)
                if item.HasField("price")
                else None,
                title=item.title,
                labels=labels,
                numbers=numbers,
                available_from=start,
                available_until=end,
                updated_at=now,
            )
        )
    c.raise_if_any()
    return out


def _id_batch(path: str, what: str, values: Sequence[str], limits: ServerSettings) -> list[str]:
    """A batch of ids (``item_ids``, ``rule_ids``): at least one, at most a batch."""
    c = _Checker(limits)
    if not values:
        c.bad(path, f"is required: at least one {what} id")
    ids = c.ids(path, values, limits.max_batch_events)
    c.raise_if_any()
    return list(ids)


def withdrawn_ids(req: pb.WithdrawItemsRequest, limits: ServerSettings) -> list[str]:
    return _id_batch("item_ids", "item", req.item_ids, limits)


CONSENT_FROM_PB: dict[int, Consent] = {
    pb.CONSENT_FULL: Consent.FULL,
    pb.CONSENT_SESSION_ONLY: Consent.SESSION_ONLY,
    pb.CONSENT_OFF: Consent.OFF,
}


def consent(req: pb.SetConsentRequest, limits: ServerSettings) -> tuple[str, Consent]:
    c = _Checker(limits)
    user = c.id("user_id", req.user_id, required=True)
    stored = CONSENT_FROM_PB.get(req.consent)
    if stored is None:
        c.bad(
            "consent",
            f"must be CONSENT_FULL, CONSENT_SESSION_ONLY or CONSENT_OFF, got {req.consent}",
        )
    c.raise_if_any()
    assert stored is not None
    return user, stored


def export_user_id(req: pb.ExportUserRequest, limits: ServerSettings) -> str:
    c = _Checker(limits)
    user = c.id("user_id", req.user_id, required=True)
    c.raise_if_any()
    return user


def linked_ids(
    req: pb.LinkIdsRequest | pb.UnlinkIdsRequest, limits: ServerSettings
) -> tuple[str, list[str]]:
    """The customer and the ids of a LinkIds or UnlinkIds: 1 to ``link_max_ids`` ids,
    distinct, none the customer's own."""
    c = _Checker(limits)
    customer = c.id("customer_id", req.customer_id, required=True)
    if not req.ids:
        c.bad("ids", "is required: at least one id")
    ids = c.ids("ids", req.ids, limits.link_max_ids)
    seen: set[str] = set()
    for i, v in enumerate(ids[: limits.link_max_ids]):
        if v in seen:
            c.bad(f"ids[{i}]", "is repeated")
        elif v and v == customer:
            c.bad(f"ids[{i}]", "is the customer_id itself")
        seen.add(v)
    c.raise_if_any()
    return customer, list(ids)


def forget_user_id(req: pb.ForgetUserRequest, limits: ServerSettings) -> str:
    c = _Checker(limits)
    user = c.id("user_id", req.user_id, required=True)
    c.raise_if_any()
    return user


def rules(req: pb.SetRulesRequest, limits: ServerSettings) -> list[Rule]:
    """The rules of a SetRules batch, stamped now; InvalidRequestError naming every bad
    field (the batch is then applied not at all). Attribute names are checked against
    the live catalogue by the engine."""
    c = _Checker(limits)
    now = int(time.time())
    n = len(req.rules)
    if n > limits.max_batch_events:
        c.bad("rules", f"has {n} rules; at most {limits.max_batch_events}")
    if n == 0 and not req.replace_all:
        c.bad("rules", "is required: at least one rule (or replace_all to delete them all)")
    out: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(req.rules[: limits.max_batch_events]):
        p = f"rules[{i}]"
        rule_id = c.id(f"{p}.rule_id", r.rule_id, required=True)
        if rule_id in seen:
            c.bad(f"{p}.rule_id", f"repeats {rule_id!r}: one rule per id in a batch")
        seen.add(rule_id)
        action = RULE_ACTION_FROM_PB.get(r.action)
        if action is None:
            c.bad(f"{p}.action", "is required: BOOST, BURY or PIN")
        items = c.ids(f"{p}.item_ids", r.item_ids, limits.max_k)
        categories = c.ids(f"{p}.categories", r.categories, _MAX_FILTER_CATEGORIES)
        attributes = c.attribute_filters(f"{p}.attributes", r.attributes)
        if not items and not categories and not attributes:
            c.bad(p, "needs its items: item_ids, or categories and/or attributes")
        elif items and (categories or attributes):
            c.bad(f"{p}.item_ids", "is one kind of target; categories and attributes another")
        weight = r.weight
        if action is RuleAction.BOOST and not (1.0 < weight <= _MAX_BOOST):
            c.bad(f"{p}.weight", f"a boost multiplies scores: above 1, at most {_MAX_BOOST:g}")
        elif action is RuleAction.BURY and not (0.0 < weight < 1.0):
            c.bad(f"{p}.weight", "a bury multiplies scores: between 0 and 1, both excluded")
        elif action is RuleAction.PIN and weight != 0.0:
            c.bad(f"{p}.weight", "a pin has no weight: leave it unset")
        position = r.position
        if action is RuleAction.PIN:
            last = position + max(len(items), 1) - 1
            if position < 1:
                c.bad(f"{p}.position", "a pin needs a position, 1 or more")
            elif last > limits.max_k:
                c.bad(
                    f"{p}.position",
                    f"pins items up to position {last}; no answer holds more than {limits.max_k}",
                )
        elif position != 0:
            c.bad(f"{p}.position", "only a pin has a position: leave it unset")
        placements = []
        for j, name in enumerate(r.placements):
            if not name:
                c.bad(f"{p}.placements[{j}]", "is empty")
            placements.append(c.placement(f"{p}.placements[{j}]", name))
        start = c.instant(p, r, "starts_at")
        end = c.instant(p, r, "ends_at")
        if start is not None and end is not None and start >= end:
            c.bad(f"{p}.ends_at", "must lie after starts_at")
        if action is None:
            continue
        out.append(
            Rule(
                rule_id=rule_id,
                action=action,
                item_ids=items,
                categories=categories,
                attributes=attributes,
                weight=1.0 if action is RuleAction.PIN else float(weight),
                position=position if action is RuleAction.PIN else 0,
                placements=tuple(placements),
                starts_at=start,
                ends_at=end,
                updated_at=now,
            )
        )
    c.raise_if_any()
    return out


def experiments(req: pb.SetExperimentsRequest, limits: ServerSettings) -> list[Experiment]:
    """The experiments of a SetExperiments; InvalidRequestError naming every bad field.
    What needs the server (model versions, shares summing to 1, placements split
    twice) is checked by :func:`recsvc.experiments.check_experiments` after this."""
    c = _Checker(limits)
    out: list[Experiment] = []
    for i, e in enumerate(req.experiments):
        p = f"experiments[{i}]"
        variants = []
        for j, v in enumerate(e.variants):
            q = f"{p}.variants[{j}]"
            variants.append(
                Variant(
                    name=c.label(f"{q}.name", v.name, required=True),
                    share=v.share,
                    model=c.id(f"{q}.model_version", v.model_version, required=False) or None,
                    non_personalized=v.non_personalized,
                    rules=not v.without_rules,
                    rotate_after=v.rotate_after if v.HasField("rotate_after") else None,
                    trending_weight=(v.trending_weight if v.HasField("trending_weight") else None),
                )
            )
        placements = [
            c.placement(f"{p}.placements[{j}]", name) for j, name in enumerate(e.placements)
        ]
        out.append(
            Experiment(
                name=c.label(f"{p}.name", e.name, required=True),
                variants=tuple(variants),
                placements=tuple(placements),
                salt=c.id(f"{p}.salt", e.salt, required=False),
            )
        )
    c.raise_if_any()
    return out


def deleted_rule_ids(req: pb.DeleteRulesRequest, limits: ServerSettings) -> list[str]:
    return _id_batch("rule_ids", "rule", req.rule_ids, limits)
