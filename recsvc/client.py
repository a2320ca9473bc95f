"""A typed Python client for recsvc.v1.RecommenderService.

Sensible defaults for a storefront backend: a deadline on every call (200 ms
unless told otherwise), and retries of UNAVAILABLE — the one status that means
"try again" (no model loaded yet, a replica restarting) — with exponential backoff,
done by gRPC's own retry policy so they respect the deadline::

    with RecommenderClient("localhost:50051") as client:
        response = client.recommend(user_id="u42", k=10)
        for item in response.items:
            print(item.item_id, item.score)

Several replicas: give a target that resolves to all of them (a headless Kubernetes
service ``dns:///recsvc.shop.svc:50051``, or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``) and
``balanced=True``: calls go round robin over the replicas whose health service says
SERVING, so one that drains (SIGTERM) or has no model yet leaves the rotation before it
stops answering. Leave it off behind an L4 load balancer (a ClusterIP service): the
only backend the client sees would then be taken out of rotation whole.

Requests and responses are the generated messages of :mod:`recsvc.v1`; keyword
helpers build the common requests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, cast

import grpc
from google.protobuf.json_format import MessageToDict

from recsvc.events import EventType
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

__all__ = ["EVENT_TYPES", "MAX_REQUEST_BYTES", "RULE_ACTIONS", "RecommenderClient", "to_json"]

_SERVICE = "recsvc.v1.RecommenderService"
_RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{"service": _SERVICE}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""The largest request a server takes (its ``grpc.max_receive_message_length``). grpc
answers a larger one RESOURCE_EXHAUSTED, the status that otherwise means "shedding
load, retry": the client refuses it before sending instead."""

RULE_ACTIONS: dict[str, int] = {
    "boost": pb.RULE_ACTION_BOOST,
    "bury": pb.RULE_ACTION_BURY,
    "pin": pb.RULE_ACTION_PIN,
}
"""The rule actions :meth:`RecommenderClient.rule` takes, with their numbers."""

EVENT_TYPES: dict[str, int] = {t.value: t.spec.proto_number for t in EventType}
"""The event type names the keyword helpers take (``"view"``, ``"purchase"``, ...),
with their ``recsvc.v1.EventType`` numbers."""


def _named(table: dict[str, int], name: str, what: str) -> int:
    """``table[name]``; ValueError naming the known names (but "") otherwise."""
    try:
        return table[name]
    except KeyError:
        known = ", ".join(n for n in table if n)
        raise ValueError(f"unknown {what} {name!r}; one of {known}") from None


def _event_type(name: str) -> pb.EventType:
    return cast(pb.EventType, _named(EVENT_TYPES, name, "event type"))


CONSENTS: dict[str, int] = {
    "full": pb.CONSENT_FULL,
    "session_only": pb.CONSENT_SESSION_ONLY,
    "off": pb.CONSENT_OFF,
}
"""SetConsent's consents by name."""


def _consent(name: str) -> pb.Consent:
    return cast(pb.Consent, _named(CONSENTS, name, "consent"))


SIMILAR_MODES: dict[str, int] = {
    "": pb.SIMILAR_MODE_UNSPECIFIED,
    "similar": pb.SIMILAR_MODE_SIMILAR,
    "bought_together": pb.SIMILAR_MODE_BOUGHT_TOGETHER,
}
"""SimilarItems' modes by name ("": the placement's setting)."""


def _similar_mode(name: str) -> pb.SimilarMode:
    return cast(pb.SimilarMode, _named(SIMILAR_MODES, name, "similar mode"))


class RecommenderClient:
    """Blocking client; one channel, safe to share between threads."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 0.2,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        balanced: bool = False,
    ) -> None:
        config: dict[str, Any] = dict(_RETRY_POLICY)
        if balanced:
            config["loadBalancingConfig"] = [{"round_robin": {}}]
            config["healthCheckConfig"] = {"serviceName": _SERVICE}
        options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
        self.channel = (
            grpc.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(target, options=options)
        )
        self.stub = pb_grpc.RecommenderServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            raise ValueError(
                f"{type(request).__name__} is {size:,} bytes; a server takes at most "
                f"{MAX_REQUEST_BYTES:,}: send it in smaller batches"
            )
        return method(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def recommend(
        self,
        user_id: str = "",
        *,
        k: int = 0,
        session_id: str = "",
        session_items: Sequence[str] = (),
        session_event_type: str = "view",
        exclude_item_ids: Sequence[str] = (),
        include_categories: Sequence[str] = (),
        exclude_categories: Sequence[str] = (),
        in_stock_only: bool = False,
        attributes: Sequence[pb.AttributeFilter] = (),
        repeat_policy: pb.RepeatPolicy = pb.REPEAT_POLICY_UNSPECIFIED,
        non_personalized: bool = False,
        placement: str = "",
        max_per_category: int = 0,
        explain: bool = False,
        paged: bool = False,
        continuation: str = "",
        variant: str = "",
        timeout: float | None = None,
    ) -> pb.RecommendResponse:
        """Recommendations; ``session_items`` become inline session events, oldest first;
        ``attributes`` filter on the live catalogue (:meth:`attribute_in`,
        :meth:`attribute_range`)."""
        request = pb.RecommendRequest(
            user_id=user_id,
            session_id=session_id,
            session_events=[
                pb.SessionEvent(item_id=i, event_type=_event_type(session_event_type))
                for i in session_items
            ],
            k=k,
            filters=pb.Filters(
                exclude_item_ids=exclude_item_ids,
                include_categories=include_categories,
                exclude_categories=exclude_categories,
                in_stock_only=in_stock_only,
                attributes=attributes,
            ),
            repeat_policy=repeat_policy,
            non_personalized=non_personalized,
            placement=placement,
            max_per_category=max_per_category,
            explain=explain,
            paged=paged,
            continuation=continuation,
            variant=variant,
        )
        return self._call(self.stub.Recommend, request, timeout)  # type: ignore[no-any-return]

    def similar(
        self,
        item_ids: Sequence[str],
        *,
        k: int = 0,
        in_stock_only: bool = False,
        attributes: Sequence[pb.AttributeFilter] = (),
        placement: str = "",
        max_per_category: int = 0,
        mode: str = "",
        timeout: float | None = None,
    ) -> pb.SimilarItemsResponse:
        """Items like ``item_ids`` (``mode="similar"``) or bought with them
        (``mode="bought_together"``); empty: the placement's setting."""
        request = pb.SimilarItemsRequest(
            item_ids=item_ids,
            k=k,
            filters=pb.Filters(in_stock_only=in_stock_only, attributes=attributes),
            placement=placement,
            max_per_category=max_per_category,
            mode=_similar_mode(mode),
        )
        return self._call(self.stub.SimilarItems, request, timeout)  # type: ignore[no-any-return]

    def upsert_items(
        self, items: Iterable[pb.CatalogItem], *, timeout: float | None = None
    ) -> pb.UpsertItemsResponse:
        """Add or replace live catalogue items (at most 1000 per call; :meth:`item`)."""
        request = pb.UpsertItemsRequest(items=list(items))
        return self._call(self.stub.UpsertItems, request, timeout)  # type: ignore[no-any-return]

    def withdraw_items(
        self, item_ids: Sequence[str], *, timeout: float | None = None
    ) -> pb.WithdrawItemsResponse:
        """Withdraw items from the live catalogue (at most 1000 per call)."""
        request = pb.WithdrawItemsRequest(item_ids=item_ids)
        return self._call(self.stub.WithdrawItems, request, timeout)  # type: ignore[no-any-return]

    @staticmethod
    def item(
        item_id: str,
        *,
        category_path: Sequence[str] = (),
        available: bool = True,
        price: float | None = None,
        title: str = "",
        labels: dict[str, str] | None = None,
        numbers: dict[str, float] | None = None,
    ) -> pb.CatalogItem:
        """Build one live catalogue item for :meth:`upsert_items`."""
        item = pb.CatalogItem(
            item_id=item_id,
            category_path=category_path,
            available=available,
            title=title,
            labels=labels or {},
            numbers=numbers or {},
        )
        if price is not None:
            item.price = price
        return item

    def set_rules(
        self,
        rules: Iterable[pb.Rule],
        *,
        replace_all: bool = False,
        timeout: float | None = None,
    ) -> pb.SetRulesResponse:
        """Add or replace merchandising rules (:meth:`rule`); ``replace_all``: delete
        every other rule in the same change."""
        request = pb.SetRulesRequest(rules=list(rules), replace_all=replace_all)
        return self._call(self.stub.SetRules, request, timeout)  # type: ignore[no-any-return]

    def delete_rules(
        self, rule_ids: Sequence[str], *, timeout: float | None = None
    ) -> pb.DeleteRulesResponse:
        request = pb.DeleteRulesRequest(rule_ids=rule_ids)
        return self._call(self.stub.DeleteRules, request, timeout)  # type: ignore[no-any-return]

    def list_rules(self, *, timeout: float | None = None) -> pb.ListRulesResponse:
        request = pb.ListRulesRequest()
        return self._call(self.stub.ListRules, request, timeout)  # type: ignore[no-any-return]

    def set_experiments(
        self, experiments: Iterable[pb.Experiment], *, timeout: float | None = None
    ) -> pb.SetExperimentsResponse:
        """Make ``experiments`` the whole set of A/B experiments (SetExperiments)."""
        request = pb.SetExperimentsRequest(experiments=list(experiments))
        return self._call(self.stub.SetExperiments, request, timeout)  # type: ignore[no-any-return]

    def list_experiments(self, *, timeout: float | None = None) -> pb.ListExperimentsResponse:
        request = pb.ListExperimentsRequest()
        return self._call(self.stub.ListExperiments, request, timeout)  # type: ignore[no-any-return]

    @staticmethod
    def rule(
        rule_id: str,
        action: str,
        *,
        item_ids: Sequence[str] = (),
        categories: Sequence[str] = (),
        attributes: Sequence[pb.AttributeFilter] = (),
        weight: float = 0.0,
        position: int = 0,
        placements: Sequence[str] = (),
        starts_at: float | None = None,
        ends_at: float | None = None,
    ) -> pb.Rule:
        """Build one merchandising rule for :meth:`set_rules`: ``action`` is ``boost``
        or ``bury`` (with a ``weight``) or ``pin`` (with a ``position``, 1 = first);
        its items are ``item_ids``, or ``categories`` and/or ``attributes``; times are
        Unix seconds."""
        number = _named(RULE_ACTIONS, action, "rule action")
        rule = pb.Rule(
            rule_id=rule_id,
            action=cast(pb.RuleAction, number),
            item_ids=item_ids,
            categories=categories,
            attributes=attributes,
            weight=weight,
            position=position,
            placements=placements,
        )
        if starts_at is not None:
            rule.starts_at.FromNanoseconds(int(starts_at * 1e9))
        if ends_at is not None:
            rule.ends_at.FromNanoseconds(int(ends_at * 1e9))
        return rule

    @staticmethod
    def attribute_in(name: str, values: Sequence[str]) -> pb.AttributeFilter:
        """A filter: the string attribute ``name`` equals one of ``values``."""
        return pb.AttributeFilter(name=name, values=pb.StringValues(values=values))

    @staticmethod
    def attribute_range(
        name: str, low: float | None = None, high: float | None = None
    ) -> pb.AttributeFilter:
        """A filter: the numeric attribute ``name`` (``price`` too) in [low, high]."""
        bounds = pb.NumberRange()
        if low is not None:
            bounds.min = low
        if high is not None:
            bounds.max = high
        return pb.AttributeFilter(name=name, range=bounds)

    def record_events(
        self, events: Iterable[pb.Event], *, timeout: float | None = None
    ) -> pb.RecordEventsResponse:
        request = pb.RecordEventsRequest(events=list(events))
        return self._call(self.stub.RecordEvents, request, timeout)  # type: ignore[no-any-return]

    def event(
        self,
        item_id: str,
        event_type: str = "view",
        *,
        user_id: str = "",
        session_id: str = "",
        quantity: float = 0.0,
        recommendation_id: str = "",
        placement: str = "",
        non_personalized: bool = False,
        price: float | None = None,
        event_id: str = "",
    ) -> pb.Event:
        """Build one event for :meth:`record_events`; ``price``: a purchase's unit
        price (revenue attribution)."""
        return pb.Event(
            user_id=user_id,
            session_id=session_id,
            item_id=item_id,
            event_type=_event_type(event_type),
            quantity=quantity,
            recommendation_id=recommendation_id,
            placement=placement,
            non_personalized=non_personalized,
            price=price,
            event_id=event_id,
        )

    def forget_user(self, user_id: str, *, timeout: float | None = None) -> pb.ForgetUserResponse:
        request = pb.ForgetUserRequest(user_id=user_id)
        return self._call(self.stub.ForgetUser, request, timeout)  # type: ignore[no-any-return]

    def set_consent(
        self, user_id: str, consent: str, *, timeout: float | None = None
    ) -> pb.SetConsentResponse:
        """Store a customer's consent: ``"full"``, ``"session_only"`` (this visit only) or
        ``"off"`` (SetConsent); the last two delete their stored profile."""
        request = pb.SetConsentRequest(user_id=user_id, consent=_consent(consent))
        return self._call(self.stub.SetConsent, request, timeout)  # type: ignore[no-any-return]

    def export_user(self, user_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Everything held about a customer (ExportUser), as the decoded JSON document."""
        request = pb.ExportUserRequest(user_id=user_id)
        response = self._call(self.stub.ExportUser, request, timeout)
        document: dict[str, Any] = json.loads(response.document)
        return document

    def link_ids(
        self, customer_id: str, ids: Sequence[str], *, timeout: float | None = None
    ) -> pb.LinkIdsResponse:
        """Link external ids (device, card, app id, hashed e-mail) to a customer
        (LinkIds): every call made with one of them is then the customer's."""
        request = pb.LinkIdsRequest(customer_id=customer_id, ids=list(ids))
        return self._call(self.stub.LinkIds, request, timeout)  # type: ignore[no-any-return]

    def unlink_ids(
        self, customer_id: str, ids: Sequence[str], *, timeout: float | None = None
    ) -> pb.UnlinkIdsResponse:
        """Unlink ids from a customer (UnlinkIds)."""
        request = pb.UnlinkIdsRequest(customer_id=customer_id, ids=list(ids))
        return self._call(self.stub.UnlinkIds, request, timeout)  # type: ignore[no-any-return]

    def model_info(self, *, timeout: float | None = None) -> pb.GetModelInfoResponse:
        return self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout)  # type: ignore[no-any-return]


_ENUM_FIELDS = {
    "reason": "REASON_",  # also IgnoredEvent.reason: IGNORE_REASON_ is stripped first
    "strategy": "STRATEGY_",
    "default_repeat_policy": "REPEAT_POLICY_",
    "event_type": "EVENT_TYPE_",
    "action": "RULE_ACTION_",
    "mode": "SIMILAR_MODE_",
    "previous": "CONSENT_",
    "consent": "CONSENT_",
    "erasure_status": "ERASURE_STATUS_",
}


def to_json(message: Any) -> dict[str, Any]:
    """A response as plain JSON: snake_case fields, defaults included, enums as short
    lower-case names (``"reason": "cf"``, ``"strategy": "personalized"``)."""
    data = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _short_enums(data)  # type: ignore[no-any-return]


def _short_enums(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _short_enums(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_short_enums(v, key) for v in value]
    prefix = _ENUM_FIELDS.get(key)
    if prefix and isinstance(value, str):
        return value.removeprefix("IGNORE_REASON_").removeprefix(prefix).lower()
    return value
