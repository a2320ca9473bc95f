"""The gRPC servicer: protobuf ↔ domain, nothing else.

Every RPC validates its request into a domain input (:mod:`serving.validation`),
calls the :class:`~serving.engine.Engine`, and converts the result. Errors are
translated here, in one place: a :class:`~recsvc.errors.RecsvcError` becomes its
own status (INVALID_ARGUMENT carries a google.rpc.BadRequest detail, kept small
enough for any client to receive), a passed
deadline ends the call with DEADLINE_EXCEEDED, and anything else — a bug, never
something a client caused — is logged once with its traceback and reported as
INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Final, NoReturn, TypeVar, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from recsvc.config import RepeatPolicy, ServerSettings, SimilarMode
from recsvc.errors import FieldViolation, InvalidRequestError, RecsvcError
from recsvc.experiments import experiment_message
from recsvc.pseudonyms import Pseudonyms
from recsvc.ranking import Strategy
from recsvc.rules import Rule, RuleAction
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

from . import validation
from .calls import RecommendOutput
from .engine import Engine

__all__ = [
    "ERROR_BUDGET_BYTES",
    "MAX_VIOLATIONS_LISTED",
    "RecommenderServicer",
    "bad_request_status",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STRATEGY = {
    Strategy.PERSONALIZED: pb.STRATEGY_PERSONALIZED,
    Strategy.SESSION: pb.STRATEGY_SESSION,
    Strategy.POPULAR: pb.STRATEGY_POPULAR,
}
_IGNORE = {
    "unknown_item": pb.IGNORE_REASON_UNKNOWN_ITEM,
    "erased_user": pb.IGNORE_REASON_ERASED_USER,
}
_REPEAT = {
    RepeatPolicy.ALLOW: pb.REPEAT_POLICY_ALLOW_REPEATS,
    RepeatPolicy.EXCLUDE: pb.REPEAT_POLICY_EXCLUDE_PURCHASED,
}


MAX_VIOLATIONS_LISTED: Final = 20
"""Field violations an INVALID_ARGUMENT names one by one; the rest are counted in a
last one, ``... and 997 more``."""

ERROR_BUDGET_BYTES: Final = 8 * 1024
"""Most bytes an INVALID_ARGUMENT adds to the trailing metadata, as sent: the status
message (percent-encoded, in ``grpc-message``) and the google.rpc.Status that repeats
it with the BadRequest (base64, in ``grpc-status-details-bin``). A grpc client refuses
trailers past its metadata limit as RESOURCE_EXHAUSTED, which clients are told to retry:
a bad batch listing all of its 1,000 bad fields was retried forever (issue #14, defect
6). With grpcio 1.85's defaults, measured here over loopback, 40 of 40 calls got their
status with 10.7 KB of trailers, 6 of 40 were refused at 12 KB and half at 16 KB."""


async def _abort(context: grpc.aio.ServicerContext, exc: RecsvcError) -> None:
    if isinstance(exc, InvalidRequestError):
        code = exc.grpc_code.value[0]  # INVALID_ARGUMENT, or a subclass's own code
        status = bad_request_status(exc.violations, code)
        await context.abort_with_status(rpc_status.to_status(status))
    await context.abort(exc.grpc_code, str(exc))


def bad_request_status(
    violations: Sequence[FieldViolation], code: int = code_pb2.INVALID_ARGUMENT
) -> status_pb2.Status:
    """INVALID_ARGUMENT (or ``code``) with a google.rpc.BadRequest of ``violations``:
    the first :data:`MAX_VIOLATIONS_LISTED`, fewer if their text would pass
    :data:`ERROR_BUDGET_BYTES`, then one counting the rest. The message lists the same."""
    listed = min(len(violations), MAX_VIOLATIONS_LISTED)
    while True:
        status = _invalid_argument(violations, listed, code)
        if listed == 0 or _trailer_bytes(status) <= ERROR_BUDGET_BYTES:
            return status
        listed -= 1


def _invalid_argument(
    violations: Sequence[FieldViolation], listed: int, code: int
) -> status_pb2.Status:
    shown = [(v.field, v.description) for v in violations[:listed]]
    parts = [f"{field}: {description}" for field, description in shown]
    rest = violations[listed:]
    if rest:
        more = f"... and {len(rest)} more"
        # under the field they all belong to (events[3].item_id → events), if one
        tops = {v.field.partition(".")[0].partition("[")[0] for v in rest}
        shown.append((tops.pop() if len(tops) == 1 else "", more))
        parts.append(more)
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in shown
        ]
    )
    status = status_pb2.Status(code=code, message="; ".join(parts))
    status.details.add().Pack(detail)
    return status


def _trailer_bytes(status: status_pb2.Status) -> int:
    """Bytes ``status`` takes in the trailers: its message percent-encoded (every byte
    outside printable ASCII, and '%', as three) and the whole of it base64-encoded."""
    message = status.message.encode("utf-8")
    escaped = sum(1 for b in message if b < 0x20 or b > 0x7E or b == 0x25)
    size: int = status.ByteSize()
    return len(message) + 2 * escaped + 4 * -(-size // 3)


_SIMILAR_MODE_TO_PB = {
    SimilarMode.SIMILAR: pb.SIMILAR_MODE_SIMILAR,
    SimilarMode.BOUGHT_TOGETHER: pb.SIMILAR_MODE_BOUGHT_TOGETHER,
}
_DEADLINE = (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before work began")


def _expired(context: grpc.aio.ServicerContext) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _in_time(context: grpc.aio.ServicerContext) -> None:
    """Raise CancelledError if the deadline passed while the call was served: the
    client has gone, and an answer sent now fails inside grpc, which logs an
    ExecuteBatchError traceback per call. Cancelled, the call is counted as
    DEADLINE_EXCEEDED (serving/interceptors.py) and logged at debug level by grpc."""
    if _expired(context):
        raise asyncio.CancelledError


async def _fail(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> NoReturn:
    """End the call for ``exc`` (raised while serving ``method``): a recsvc error as its
    status, an abort as it is, anything else as INTERNAL, logged as a bug. Call it from
    the ``except`` block, so the log carries the traceback."""
    _in_time(context)
    if isinstance(exc, RecsvcError):
        await _abort(context, exc)
    elif not isinstance(exc, grpc.aio.AbortError):
        log.exception("bug while serving %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    raise exc  # abort raises first; this keeps the type checker and AbortError right


async def _guard(
    context: grpc.aio.ServicerContext,
    method: str,
    call: Callable[[R], Awaitable[T]],
    request: R,
) -> T:
    """``await call(request)``, its errors ended by :func:`_fail`. ``call`` is a method,
    never a closure over the request: a failed call's frames are cleared (the metrics
    interceptor does it, see its ``_release_frames``) but a closure's cells are not,
    and grpc keeps the failure, and so them, until the cycle collector runs."""
    if _expired(context):
        await context.abort(*_DEADLINE)
    try:
        response = await call(request)
    except Exception as exc:
        await _fail(context, exc, method)
    _in_time(context)
    return response


def _items(out: RecommendOutput) -> list[pb.RecommendedItem]:
    return [
        pb.RecommendedItem(item_id=i.item_id, score=i.score, reason=cast(pb.Reason, int(i.reason)))
        for i in out.items
    ]


def _recommend_response(out: RecommendOutput) -> pb.RecommendResponse:
    """The RecommendResponse of ``out``; the items appended in place (``items.add``),
    half the cost of building a RecommendedItem message each and copying them in."""
    response = pb.RecommendResponse(
        model_version=out.model_version,
        recommendation_id=out.recommendation_id,
        strategy=_STRATEGY[out.strategy],
        fallback=out.fallback,
        degraded=out.degraded,
        ignored_item_ids=out.ignored_item_ids,
        continuation=out.continuation,
        experiment=out.experiment,
        variant=out.variant,
    )
    add = response.items.add
    if out.item_rule_ids is None:
        for item_id, score, reason in out.items:
            add(item_id=item_id, score=score, reason=reason)
        _add_because(response, out.because)
        return response
    for (item_id, score, reason), rule_ids in zip(out.items, out.item_rule_ids, strict=True):
        if rule_ids:
            add(item_id=item_id, score=score, reason=reason, rule_ids=rule_ids)
        else:  # an empty list passed costs ~0.3 µs per item, most items have none
            add(item_id=item_id, score=score, reason=reason)
    response.applied_rule_ids.extend(out.applied_rule_ids)
    _add_because(response, out.because)
    return response


def _add_because(response: pb.RecommendResponse, because: list[str] | None) -> None:
    if because is not None:
        for item, source in zip(response.items, because, strict=True):
            if source:
                item.because_item_id = source


def _items_with_rules(out: RecommendOutput) -> list[pb.RecommendedItem]:
    items = _items(out)
    if out.item_rule_ids is not None:
        for item, rule_ids in zip(items, out.item_rule_ids, strict=True):
            item.rule_ids.extend(rule_ids)
    return items


_CONSENT_TO_PB = {consent: number for number, consent in validation.CONSENT_FROM_PB.items()}
_RULE_ACTION_TO_PB = {action: number for number, action in validation.RULE_ACTION_FROM_PB.items()}


def _rule(rule: Rule) -> pb.Rule:
    """The message of ``rule`` (ListRules)."""
    return pb.Rule(
        rule_id=rule.rule_id,
        action=cast(pb.RuleAction, _RULE_ACTION_TO_PB[rule.action]),
        item_ids=rule.item_ids,
        categories=rule.categories,
        attributes=[
            pb.AttributeFilter(name=a.name, values=pb.StringValues(values=a.values))
            if a.values
            else pb.AttributeFilter(name=a.name, range=pb.NumberRange(min=a.low, max=a.high))
            for a in rule.attributes
        ],
        weight=0.0 if rule.action is RuleAction.PIN else rule.weight,
        position=rule.position,
        placements=rule.placements,
        starts_at=_instant(rule.starts_at),
        ends_at=_instant(rule.ends_at),
    )


def _instant(seconds: float | None) -> Timestamp | None:
    """Unix ``seconds``, fraction kept, as a Timestamp."""
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _ts(value: datetime | float | int | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    if isinstance(value, datetime):
        ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    else:
        ts.FromSeconds(int(value))
    return ts


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """recsvc.v1.RecommenderService over an :class:`Engine`."""

    def __init__(
        self, engine: Engine, limits: ServerSettings, pseudonyms: Pseudonyms | None = None
    ) -> None:
        self.engine = engine
        self.limits = limits
        self._ids = pseudonyms
        """Customer ids to pseudonyms at the boundary (``[privacy]``); None: as given."""

    def _id(self, user_id: str) -> str:
        return user_id if self._ids is None else self._ids(user_id)

    async def Recommend(  # noqa: N802 (gRPC method names)
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        # _guard inlined: the hottest RPC saves a closure and a coroutine per call
        if _expired(context):
            await context.abort(*_DEADLINE)
        try:
            req = validation.recommend_input(request, self.limits)
            if self._ids is not None and req.user_id:
                req = replace(req, user_id=self._ids(req.user_id))
            out = await self.engine.recommend(req, context.time_remaining())
            response = _recommend_response(out)
        except Exception as exc:
            await _fail(context, exc, "Recommend")
        _in_time(context)
        return response

    async def SimilarItems(  # noqa: N802
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SimilarItemsResponse:
        # _guard inlined: the call needs the time left before its deadline
        if _expired(context):
            await context.abort(*_DEADLINE)
        try:
            response = await self._similar(request, context.time_remaining())
        except Exception as exc:
            await _fail(context, exc, "SimilarItems")
        _in_time(context)
        return response

    async def RecordEvents(  # noqa: N802
        self, request: pb.RecordEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordEventsResponse:
        return await _guard(context, "RecordEvents", self._record, request)

    async def ForgetUser(  # noqa: N802
        self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetUserResponse:
        return await _guard(context, "ForgetUser", self._forget, request)

    async def SetConsent(  # noqa: N802
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        return await _guard(context, "SetConsent", self._consent, request)

    async def ExportUser(  # noqa: N802
        self, request: pb.ExportUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExportUserResponse:
        return await _guard(context, "ExportUser", self._export, request)

    async def LinkIds(  # noqa: N802
        self, request: pb.LinkIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LinkIdsResponse:
        return await _guard(context, "LinkIds", self._link, request)

    async def UnlinkIds(  # noqa: N802
        self, request: pb.UnlinkIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnlinkIdsResponse:
        return await _guard(context, "UnlinkIds", self._unlink, request)

    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return await _guard(context, "GetModelInfo", self._model_info, request)

    async def UpsertItems(  # noqa: N802
        self, request: pb.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertItemsResponse:
        return await _guard(context, "UpsertItems", self._upsert, request)

    async def WithdrawItems(  # noqa: N802
        self, request: pb.WithdrawItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawItemsResponse:
        return await _guard(context, "WithdrawItems", self._withdraw, request)

    async def SetRules(  # noqa: N802
        self, request: pb.SetRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetRulesResponse:
        return await _guard(context, "SetRules", self._set_rules, request)

    async def DeleteRules(  # noqa: N802
        self, request: pb.DeleteRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteRulesResponse:
        return await _guard(context, "DeleteRules", self._delete_rules, request)

    async def ListRules(  # noqa: N802
        self, request: pb.ListRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRulesResponse:
        return await _guard(context, "ListRules", self._list_rules, request)

    async def SetExperiments(  # noqa: N802
        self, request: pb.SetExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetExperimentsResponse:
        return await _guard(context, "SetExperiments", self._set_experiments, request)

    async def ListExperiments(  # noqa: N802
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExperimentsResponse:
        return await _guard(context, "ListExperiments", self._list_experiments, request)

    async def _similar(
        self, request: pb.SimilarItemsRequest, time_left: float | None
    ) -> pb.SimilarItemsResponse:
        out = await self.engine.similar(validation.similar_input(request, self.limits), time_left)
        return pb.SimilarItemsResponse(
            items=_items_with_rules(out),
            model_version=out.model_version,
            ignored_item_ids=out.ignored_item_ids,
            recommendation_id=out.recommendation_id,
            applied_rule_ids=out.applied_rule_ids,
            mode=_SIMILAR_MODE_TO_PB[out.mode or SimilarMode.SIMILAR],
            degraded=out.degraded,
        )

    async def _record(self, request: pb.RecordEventsRequest) -> pb.RecordEventsResponse:
        events = validation.event_inputs(request, self.limits)
        if self._ids is not None:
            events = [replace(e, user_id=self._ids(e.user_id)) if e.user_id else e for e in events]
        out = await self.engine.record_events(events)
        return pb.RecordEventsResponse(
            accepted_count=out.accepted,
            ignored_events=[
                pb.IgnoredEvent(index=i, reason=_IGNORE[reason]) for i, reason in out.ignored
            ],
        )

    async def _consent(self, request: pb.SetConsentRequest) -> pb.SetConsentResponse:
        user, consent = validation.consent(request, self.limits)
        out = await self.engine.set_consent(self._id(user), consent)
        return pb.SetConsentResponse(
            previous=cast(pb.Consent, _CONSENT_TO_PB[out.previous]),
            consent=cast(pb.Consent, _CONSENT_TO_PB[out.consent]),
            deleted_vector_count=out.deleted.deleted_vectors,
            deleted_history_event_count=out.deleted.deleted_history_events,
            deleted_session_count=out.deleted.deleted_sessions,
        )

    async def _export(self, request: pb.ExportUserRequest) -> pb.ExportUserResponse:
        user = validation.export_user_id(request, self.limits)
        document = await self.engine.export_user(self._id(user))
        document["requested_id"] = user  # as asked (its pseudonym is in user_id)
        return pb.ExportUserResponse(document=json.dumps(document, ensure_ascii=False))

    async def _link(self, request: pb.LinkIdsRequest) -> pb.LinkIdsResponse:
        customer, ids = validation.linked_ids(request, self.limits)
        asked = {self._id(i): i for i in ids}  # the answer names the ids as sent
        out = await self.engine.link_ids(self._id(customer), list(asked))
        return pb.LinkIdsResponse(
            linked_ids=[asked[i] for i in out.linked],
            renewed_ids=[asked[i] for i in out.refreshed],
            moved_event_count=out.moved_events,
        )

    async def _unlink(self, request: pb.UnlinkIdsRequest) -> pb.UnlinkIdsResponse:
        customer, ids = validation.linked_ids(request, self.limits)
        asked = {self._id(i): i for i in ids}
        done = await self.engine.unlink_ids(self._id(customer), list(asked))
        return pb.UnlinkIdsResponse(unlinked_ids=[asked[i] for i in done])

    async def _forget(self, request: pb.ForgetUserRequest) -> pb.ForgetUserResponse:
        out = await self.engine.forget(self._id(validation.forget_user_id(request, self.limits)))
        return pb.ForgetUserResponse(
            deleted_vector_count=out.deleted_vectors,
            deleted_history_event_count=out.deleted_history_events,
            deleted_session_count=out.deleted_sessions,
            added_to_erasure_list=out.added_to_erasure_list,
            linked_ids=out.linked_ids,
            erasure_status=(
                pb.ERASURE_STATUS_COMPLETE if out.complete else pb.ERASURE_STATUS_PENDING
            ),
        )

    async def _model_info(self, request: pb.GetModelInfoRequest) -> pb.GetModelInfoResponse:
        loaded = self.engine.models.require()
        m = loaded.model.artifact.manifest
        catalog = self.engine.catalog
        rules = self.engine.rules
        return pb.GetModelInfoResponse(
            model_version=loaded.version,
            trained_at=_ts(loaded.trained_at),
            data_cutoff=_ts(m.data.cutoff_unix),
            loaded_at=_ts(loaded.loaded_at),
            metrics=m.metrics,
            item_count=loaded.model.n_items,
            user_count=len(loaded.model.user_position),
            factors=loaded.model.artifact.factors,
            index_type=m.index.kind,
            index_recall_at_k=m.index.recall,
            index_recall_k=m.index.recall_k,
            format_version=m.format_version,
            default_repeat_policy=_REPEAT[loaded.model.defaults.repeat_policy],
            catalog_version=catalog.version if catalog is not None else 0,
            catalog_item_count=len(catalog.items) if catalog is not None else 0,
            rules_version=rules.version if rules is not None else 0,
            live_rule_count=rules.live_count() if rules is not None else 0,
        )

    async def _upsert(self, request: pb.UpsertItemsRequest) -> pb.UpsertItemsResponse:
        items = validation.catalog_items(request, self.limits)
        return pb.UpsertItemsResponse(catalog_version=await self.engine.upsert_items(items))

    async def _set_rules(self, request: pb.SetRulesRequest) -> pb.SetRulesResponse:
        rules = validation.rules(request, self.limits)
        version = await self.engine.set_rules(rules, replace_all=request.replace_all)
        return pb.SetRulesResponse(rules_version=version)

    async def _delete_rules(self, request: pb.DeleteRulesRequest) -> pb.DeleteRulesResponse:
        ids = validation.deleted_rule_ids(request, self.limits)
        version, deleted = await self.engine.delete_rules(ids)
        return pb.DeleteRulesResponse(rules_version=version, deleted_count=deleted)

    async def _list_rules(self, request: pb.ListRulesRequest) -> pb.ListRulesResponse:
        rules, version = self.engine.list_rules()
        return pb.ListRulesResponse(rules=[_rule(r) for r in rules], rules_version=version)

    async def _set_experiments(
        self, request: pb.SetExperimentsRequest
    ) -> pb.SetExperimentsResponse:
        experiments = validation.experiments(request, self.limits)
        version = await self.engine.set_experiments(experiments)
        return pb.SetExperimentsResponse(experiments_version=version)

    async def _list_experiments(
        self, request: pb.ListExperimentsRequest
    ) -> pb.ListExperimentsResponse:
        experiments, version, model_bytes = self.engine.list_experiments()
        return pb.ListExperimentsResponse(
            experiments=[experiment_message(e) for e in experiments],
            experiments_version=version,
            model_bytes=model_bytes,
        )

    async def _withdraw(self, request: pb.WithdrawItemsRequest) -> pb.WithdrawItemsResponse:
        ids = validation.withdrawn_ids(request, self.limits)
        return pb.WithdrawItemsResponse(catalog_version=await self.engine.withdraw_items(ids))
