import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_IMPRESSION: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_NOT_INTERESTED: _ClassVar[EventType]
    EVENT_TYPE_RETURN: _ClassVar[EventType]

class RepeatPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPEAT_POLICY_UNSPECIFIED: _ClassVar[RepeatPolicy]
    REPEAT_POLICY_EXCLUDE_PURCHASED: _ClassVar[RepeatPolicy]
    REPEAT_POLICY_ALLOW_REPEATS: _ClassVar[RepeatPolicy]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_UNSPECIFIED: _ClassVar[Reason]
    REASON_CF: _ClassVar[Reason]
    REASON_SESSION: _ClassVar[Reason]
    REASON_BUY_AGAIN: _ClassVar[Reason]
    REASON_POPULAR: _ClassVar[Reason]
    REASON_SIMILAR: _ClassVar[Reason]
    REASON_PINNED: _ClassVar[Reason]
    REASON_BOUGHT_TOGETHER: _ClassVar[Reason]

class SimilarMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIMILAR_MODE_UNSPECIFIED: _ClassVar[SimilarMode]
    SIMILAR_MODE_SIMILAR: _ClassVar[SimilarMode]
    SIMILAR_MODE_BOUGHT_TOGETHER: _ClassVar[SimilarMode]

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_PERSONALIZED: _ClassVar[Strategy]
    STRATEGY_SESSION: _ClassVar[Strategy]
    STRATEGY_POPULAR: _ClassVar[Strategy]

class IgnoreReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IGNORE_REASON_UNSPECIFIED: _ClassVar[IgnoreReason]
    IGNORE_REASON_UNKNOWN_ITEM: _ClassVar[IgnoreReason]
    IGNORE_REASON_ERASED_USER: _ClassVar[IgnoreReason]

class ErasureStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERASURE_STATUS_UNSPECIFIED: _ClassVar[ErasureStatus]
    ERASURE_STATUS_PENDING: _ClassVar[ErasureStatus]
    ERASURE_STATUS_COMPLETE: _ClassVar[ErasureStatus]

class Consent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSENT_UNSPECIFIED: _ClassVar[Consent]
    CONSENT_FULL: _ClassVar[Consent]
    CONSENT_SESSION_ONLY: _ClassVar[Consent]
    CONSENT_OFF: _ClassVar[Consent]

class RuleAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RULE_ACTION_UNSPECIFIED: _ClassVar[RuleAction]
    RULE_ACTION_BOOST: _ClassVar[RuleAction]
    RULE_ACTION_BURY: _ClassVar[RuleAction]
    RULE_ACTION_PIN: _ClassVar[RuleAction]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_IMPRESSION: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_NOT_INTERESTED: EventType
EVENT_TYPE_RETURN: EventType
REPEAT_POLICY_UNSPECIFIED: RepeatPolicy
REPEAT_POLICY_EXCLUDE_PURCHASED: RepeatPolicy
REPEAT_POLICY_ALLOW_REPEATS: RepeatPolicy
REASON_UNSPECIFIED: Reason
REASON_CF: Reason
REASON_SESSION: Reason
REASON_BUY_AGAIN: Reason
REASON_POPULAR: Reason
REASON_SIMILAR: Reason
REASON_PINNED: Reason
REASON_BOUGHT_TOGETHER: Reason
SIMILAR_MODE_UNSPECIFIED: SimilarMode
SIMILAR_MODE_SIMILAR: SimilarMode
SIMILAR_MODE_BOUGHT_TOGETHER: SimilarMode
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_PERSONALIZED: Strategy
STRATEGY_SESSION: Strategy
STRATEGY_POPULAR: Strategy
IGNORE_REASON_UNSPECIFIED: IgnoreReason
IGNORE_REASON_UNKNOWN_ITEM: IgnoreReason
IGNORE_REASON_ERASED_USER: IgnoreReason
ERASURE_STATUS_UNSPECIFIED: ErasureStatus
ERASURE_STATUS_PENDING: ErasureStatus
ERASURE_STATUS_COMPLETE: ErasureStatus
CONSENT_UNSPECIFIED: Consent
CONSENT_FULL: Consent
CONSENT_SESSION_ONLY: Consent
CONSENT_OFF: Consent
RULE_ACTION_UNSPECIFIED: RuleAction
RULE_ACTION_BOOST: RuleAction
RULE_ACTION_BURY: RuleAction
RULE_ACTION_PIN: RuleAction

class Filters(_message.Message):
    __slots__ = ("exclude_item_ids", "include_categories", "exclude_categories", "in_stock_only", "attributes")
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    IN_STOCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    in_stock_only: bool
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    def __init__(self, exclude_item_ids: _Optional[_Iterable[str]] = ..., include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., in_stock_only: _Optional[bool] = ..., attributes: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ...) -> None: ...

class AttributeFilter(_message.Message):
    __slots__ = ("name", "values", "range")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: StringValues
    range: NumberRange
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Union[StringValues, _Mapping]] = ..., range: _Optional[_Union[NumberRange, _Mapping]] = ...) -> None: ...

class StringValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class NumberRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("item_id", "event_type", "event_time")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "session_id", "session_events", "k", "filters", "repeat_policy", "non_personalized", "placement", "max_per_category", "explain", "continuation", "paged", "variant")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_EVENTS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    REPEAT_POLICY_FIELD_NUMBER: _ClassVar[int]
    NON_PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    PAGED_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    session_events: _containers.RepeatedCompositeFieldContainer[SessionEvent]
    k: int
    filters: Filters
    repeat_policy: RepeatPolicy
    non_personalized: bool
    placement: str
    max_per_category: int
    explain: bool
    continuation: str
    paged: bool
    variant: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., session_events: _Optional[_Iterable[_Union[SessionEvent, _Mapping]]] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., repeat_policy: _Optional[_Union[RepeatPolicy, str]] = ..., non_personalized: _Optional[bool] = ..., placement: _Optional[str] = ..., max_per_category: _Optional[int] = ..., explain: _Optional[bool] = ..., continuation: _Optional[str] = ..., paged: _Optional[bool] = ..., variant: _Optional[str] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "reason", "rule_ids", "because_item_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reason: Reason
    rule_ids: _containers.RepeatedScalarFieldContainer[str]
    because_item_id: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reason: _Optional[_Union[Reason, str]] = ..., rule_ids: _Optional[_Iterable[str]] = ..., because_item_id: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "recommendation_id", "strategy", "fallback", "degraded", "ignored_item_ids", "applied_rule_ids", "continuation", "experiment", "variant")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    IGNORED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTINUATION_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    recommendation_id: str
    strategy: Strategy
    fallback: bool
    degraded: bool
    ignored_item_ids: _containers.RepeatedScalarFieldContainer[str]
    applied_rule_ids: _containers.RepeatedScalarFieldContainer[str]
    continuation: str
    experiment: str
    variant: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., recommendation_id: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., fallback: _Optional[bool] = ..., degraded: _Optional[bool] = ..., ignored_item_ids: _Optional[_Iterable[str]] = ..., applied_rule_ids: _Optional[_Iterable[str]] = ..., continuation: _Optional[str] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_ids", "k", "filters", "placement", "max_per_category", "mode")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    filters: Filters
    placement: str
    max_per_category: int
    mode: SimilarMode
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., filters: _Optional[_Union[Filters, _Mapping]] = ..., placement: _Optional[str] = ..., max_per_category: _Optional[int] = ..., mode: _Optional[_Union[SimilarMode, str]] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "model_version", "ignored_item_ids", "recommendation_id", "applied_rule_ids", "mode", "degraded")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IGNORED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    model_version: str
    ignored_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recommendation_id: str
    applied_rule_ids: _containers.RepeatedScalarFieldContainer[str]
    mode: SimilarMode
    degraded: bool
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., ignored_item_ids: _Optional[_Iterable[str]] = ..., recommendation_id: _Optional[str] = ..., applied_rule_ids: _Optional[_Iterable[str]] = ..., mode: _Optional[_Union[SimilarMode, str]] = ..., degraded: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("user_id", "session_id", "item_id", "event_type", "event_time", "quantity", "recommendation_id", "placement", "non_personalized", "event_id", "price")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    NON_PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    item_id: str
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    quantity: float
    recommendation_id: str
    placement: str
    non_personalized: bool
    event_id: str
    price: float
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[float] = ..., recommendation_id: _Optional[str] = ..., placement: _Optional[str] = ..., non_personalized: _Optional[bool] = ..., event_id: _Optional[str] = ..., price: _Optional[float] = ...) -> None: ...

class RecordEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class IgnoredEvent(_message.Message):
    __slots__ = ("index", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: IgnoreReason
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[_Union[IgnoreReason, str]] = ...) -> None: ...

class RecordEventsResponse(_message.Message):
    __slots__ = ("accepted_count", "ignored_events")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    IGNORED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    ignored_events: _containers.RepeatedCompositeFieldContainer[IgnoredEvent]
    def __init__(self, accepted_count: _Optional[int] = ..., ignored_events: _Optional[_Iterable[_Union[IgnoredEvent, _Mapping]]] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("deleted_vector_count", "deleted_history_event_count", "deleted_session_count", "added_to_erasure_list", "linked_ids", "erasure_status")
    DELETED_VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_HISTORY_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    ADDED_TO_ERASURE_LIST_FIELD_NUMBER: _ClassVar[int]
    LINKED_IDS_FIELD_NUMBER: _ClassVar[int]
    ERASURE_STATUS_FIELD_NUMBER: _ClassVar[int]
    deleted_vector_count: int
    deleted_history_event_count: int
    deleted_session_count: int
    added_to_erasure_list: bool
    linked_ids: _containers.RepeatedScalarFieldContainer[str]
    erasure_status: ErasureStatus
    def __init__(self, deleted_vector_count: _Optional[int] = ..., deleted_history_event_count: _Optional[int] = ..., deleted_session_count: _Optional[int] = ..., added_to_erasure_list: _Optional[bool] = ..., linked_ids: _Optional[_Iterable[str]] = ..., erasure_status: _Optional[_Union[ErasureStatus, str]] = ...) -> None: ...

class SetConsentRequest(_message.Message):
    __slots__ = ("user_id", "consent")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    consent: Consent
    def __init__(self, user_id: _Optional[str] = ..., consent: _Optional[_Union[Consent, str]] = ...) -> None: ...

class SetConsentResponse(_message.Message):
    __slots__ = ("previous", "consent", "deleted_vector_count", "deleted_history_event_count", "deleted_session_count")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    DELETED_VECTOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_HISTORY_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_SESSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    previous: Consent
    consent: Consent
    deleted_vector_count: int
    deleted_history_event_count: int
    deleted_session_count: int
    def __init__(self, previous: _Optional[_Union[Consent, str]] = ..., consent: _Optional[_Union[Consent, str]] = ..., deleted_vector_count: _Optional[int] = ..., deleted_history_event_count: _Optional[int] = ..., deleted_session_count: _Optional[int] = ...) -> None: ...

class LinkIdsRequest(_message.Message):
    __slots__ = ("customer_id", "ids")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customer_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LinkIdsResponse(_message.Message):
    __slots__ = ("linked_ids", "renewed_ids", "moved_event_count")
    LINKED_IDS_FIELD_NUMBER: _ClassVar[int]
    RENEWED_IDS_FIELD_NUMBER: _ClassVar[int]
    MOVED_EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    linked_ids: _containers.RepeatedScalarFieldContainer[str]
    renewed_ids: _containers.RepeatedScalarFieldContainer[str]
    moved_event_count: int
    def __init__(self, linked_ids: _Optional[_Iterable[str]] = ..., renewed_ids: _Optional[_Iterable[str]] = ..., moved_event_count: _Optional[int] = ...) -> None: ...

class UnlinkIdsRequest(_message.Message):
    __slots__ = ("customer_id", "ids")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, customer_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UnlinkIdsResponse(_message.Message):
    __slots__ = ("unlinked_ids",)
    UNLINKED_IDS_FIELD_NUMBER: _ClassVar[int]
    unlinked_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unlinked_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ExportUserResponse(_message.Message):
    __slots__ = ("document",)
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: str
    def __init__(self, document: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_version", "trained_at", "data_cutoff", "loaded_at", "metrics", "item_count", "user_count", "factors", "index_type", "index_recall_at_k", "index_recall_k", "format_version", "default_repeat_policy", "catalog_version", "catalog_item_count", "rules_version", "live_rule_count")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    DATA_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    FACTORS_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_AT_K_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_K_FIELD_NUMBER: _ClassVar[int]
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REPEAT_POLICY_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATALOG_ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIVE_RULE_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    trained_at: _timestamp_pb2.Timestamp
    data_cutoff: _timestamp_pb2.Timestamp
    loaded_at: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, float]
    item_count: int
    user_count: int
    factors: int
    index_type: str
    index_recall_at_k: float
    index_recall_k: int
    format_version: int
    default_repeat_policy: RepeatPolicy
    catalog_version: int
    catalog_item_count: int
    rules_version: int
    live_rule_count: int
    def __init__(self, model_version: _Optional[str] = ..., trained_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data_cutoff: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., loaded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., item_count: _Optional[int] = ..., user_count: _Optional[int] = ..., factors: _Optional[int] = ..., index_type: _Optional[str] = ..., index_recall_at_k: _Optional[float] = ..., index_recall_k: _Optional[int] = ..., format_version: _Optional[int] = ..., default_repeat_policy: _Optional[_Union[RepeatPolicy, str]] = ..., catalog_version: _Optional[int] = ..., catalog_item_count: _Optional[int] = ..., rules_version: _Optional[int] = ..., live_rule_count: _Optional[int] = ...) -> None: ...

class CatalogItem(_message.Message):
    __slots__ = ("item_id", "category_path", "available", "price", "title", "labels", "numbers", "available_from", "available_until")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NumbersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_PATH_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FROM_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    category_path: _containers.RepeatedScalarFieldContainer[str]
    available: bool
    price: float
    title: str
    labels: _containers.ScalarMap[str, str]
    numbers: _containers.ScalarMap[str, float]
    available_from: _timestamp_pb2.Timestamp
    available_until: _timestamp_pb2.Timestamp
    def __init__(self, item_id: _Optional[str] = ..., category_path: _Optional[_Iterable[str]] = ..., available: _Optional[bool] = ..., price: _Optional[float] = ..., title: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., numbers: _Optional[_Mapping[str, float]] = ..., available_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., available_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[CatalogItem]
    def __init__(self, items: _Optional[_Iterable[_Union[CatalogItem, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("catalog_version",)
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog_version: int
    def __init__(self, catalog_version: _Optional[int] = ...) -> None: ...

class WithdrawItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class WithdrawItemsResponse(_message.Message):
    __slots__ = ("catalog_version",)
    CATALOG_VERSION_FIELD_NUMBER: _ClassVar[int]
    catalog_version: int
    def __init__(self, catalog_version: _Optional[int] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("rule_id", "action", "item_ids", "categories", "attributes", "weight", "position", "placements", "starts_at", "ends_at")
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    ENDS_AT_FIELD_NUMBER: _ClassVar[int]
    rule_id: str
    action: RuleAction
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    weight: float
    position: int
    placements: _containers.RepeatedScalarFieldContainer[str]
    starts_at: _timestamp_pb2.Timestamp
    ends_at: _timestamp_pb2.Timestamp
    def __init__(self, rule_id: _Optional[str] = ..., action: _Optional[_Union[RuleAction, str]] = ..., item_ids: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ..., weight: _Optional[float] = ..., position: _Optional[int] = ..., placements: _Optional[_Iterable[str]] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ends_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetRulesRequest(_message.Message):
    __slots__ = ("rules", "replace_all")
    RULES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ALL_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    replace_all: bool
    def __init__(self, rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., replace_all: _Optional[bool] = ...) -> None: ...

class SetRulesResponse(_message.Message):
    __slots__ = ("rules_version",)
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    rules_version: int
    def __init__(self, rules_version: _Optional[int] = ...) -> None: ...

class DeleteRulesRequest(_message.Message):
    __slots__ = ("rule_ids",)
    RULE_IDS_FIELD_NUMBER: _ClassVar[int]
    rule_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rule_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRulesResponse(_message.Message):
    __slots__ = ("rules_version", "deleted_count")
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    rules_version: int
    deleted_count: int
    def __init__(self, rules_version: _Optional[int] = ..., deleted_count: _Optional[int] = ...) -> None: ...

class ListRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRulesResponse(_message.Message):
    __slots__ = ("rules", "rules_version")
    RULES_FIELD_NUMBER: _ClassVar[int]
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    rules_version: int
    def __init__(self, rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., rules_version: _Optional[int] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("name", "share", "model_version", "non_personalized", "without_rules", "rotate_after", "trending_weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NON_PERSONALIZED_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_RULES_FIELD_NUMBER: _ClassVar[int]
    ROTATE_AFTER_FIELD_NUMBER: _ClassVar[int]
    TRENDING_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    share: float
    model_version: str
    non_personalized: bool
    without_rules: bool
    rotate_after: int
    trending_weight: float
    def __init__(self, name: _Optional[str] = ..., share: _Optional[float] = ..., model_version: _Optional[str] = ..., non_personalized: _Optional[bool] = ..., without_rules: _Optional[bool] = ..., rotate_after: _Optional[int] = ..., trending_weight: _Optional[float] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "variants", "placements", "salt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    SALT_FIELD_NUMBER: _ClassVar[int]
    name: str
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    placements: _containers.RepeatedScalarFieldContainer[str]
    salt: str
    def __init__(self, name: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ..., placements: _Optional[_Iterable[str]] = ..., salt: _Optional[str] = ...) -> None: ...

class SetExperimentsRequest(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class SetExperimentsResponse(_message.Message):
    __slots__ = ("experiments_version",)
    EXPERIMENTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    experiments_version: int
    def __init__(self, experiments_version: _Optional[int] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments", "experiments_version", "model_bytes")
    class ModelBytesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENTS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    experiments_version: int
    model_bytes: _containers.ScalarMap[str, int]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ..., experiments_version: _Optional[int] = ..., model_bytes: _Optional[_Mapping[str, int]] = ...) -> None: ...
