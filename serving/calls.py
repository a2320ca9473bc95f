"""The call types: what each RPC asks for and answers, in domain terms (no protobuf).

:mod:`.validation` turns requests into the inputs below, the :class:`~.engine.Engine`
answers with the outputs, and :mod:`.servicer` turns those into responses. Item and
user ids here are the client's strings; model positions never leave the engine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

from recsvc.catalog import AttributeFilter
from recsvc.config import RepeatPolicy, SimilarMode
from recsvc.consent import Consent
from recsvc.events import EventType, LiveEvent
from recsvc.ranking import Reason, Strategy
from recsvc.store import ForgetResult

__all__ = [
    "ConsentOutput",
    "EventInput",
    "FilterSpec",
    "ForgetOutput",
    "RecommendInput",
    "RecommendOutput",
    "RecordOutput",
    "ScoredItem",
    "SimilarInput",
]


@dataclass(frozen=True)
class FilterSpec:
    """What may be shown, as the client named it."""

    exclude_item_ids: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    in_stock_only: bool = False
    attributes: tuple[AttributeFilter, ...] = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    """The hash, computed once: the engine keys its built filters on the spec, and
    hashing the fields (the attribute filters' own dataclass hashes) at every request
    cost ~0.4 µs against ~0.1."""

    def __post_init__(self) -> None:
        fields = (
            self.exclude_item_ids,
            self.include_categories,
            self.exclude_categories,
            self.in_stock_only,
            self.attributes,
        )
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_empty(self) -> bool:
        return not (
            self.exclude_item_ids
            or self.include_categories
            or self.exclude_categories
            or self.in_stock_only
            or self.attributes
        )


NO_FILTERS = FilterSpec()
"""What a request without filters asks for (immutable, so shared)."""


@dataclass(frozen=True)
class RecommendInput:
    user_id: str
    """Customer id; empty for an anonymous visitor."""
    session_id: str
    """Live session id; may be empty."""
    session_events: tuple[LiveEvent, ...]
    """Events sent inline with the request, oldest first."""
    k: int
    filters: FilterSpec
    repeat_policy: RepeatPolicy | None
    """None = the model's default."""
    non_personalized: bool
    """Consent off: nothing tied to the shopper is read or written."""
    placement: str
    max_per_category: int = 0
    """Diversity cap; 0: the placement's setting."""
    explain: bool = False
    """Name, per item, the shopper's item that led to it."""
    paged: bool = False
    """Answer with a continuation (show more)."""
    continued: tuple[str, ...] = ()
    """Items earlier pages of this sequence returned (excluded from this one)."""
    variant: str = ""
    """QA: answer as this variant of the placement's experiment; empty: assigned."""


@dataclass(frozen=True)
class SimilarInput:
    item_ids: tuple[str, ...]
    k: int
    filters: FilterSpec
    placement: str
    max_per_category: int = 0
    """Diversity cap; 0: the placement's setting."""
    mode: SimilarMode | None = None
    """None: the placement's setting."""


class ScoredItem(NamedTuple):
    """One recommended item (a named tuple: tens of them are built per call)."""

    item_id: str
    score: float
    reason: Reason


@dataclass(frozen=True)
class RecommendOutput:
    items: list[ScoredItem]
    model_version: str
    recommendation_id: str
    strategy: Strategy
    fallback: bool
    degraded: bool
    """Made without the live state (Redis failed or was too slow)."""
    ignored_item_ids: list[str] = field(default_factory=list)
    """Inline session items (Recommend) or query items (SimilarItems) the model does
    not know."""
    item_rule_ids: list[tuple[str, ...]] | None = None
    """Per item, the merchandising rules that moved or placed it; None: no rule
    applied to the request."""
    applied_rule_ids: tuple[str, ...] = ()
    """Every rule that touched the answer."""
    because: list[str] | None = None
    """Per item, the shopper's item that led to it ('' = none; None: no explanations)."""
    continuation: str = ""
    """The next page's continuation ('' = none: not paged, or the sequence is full)."""
    mode: SimilarMode | None = None
    """SimilarItems: the mode that answered."""
    experiment: str = ""
    """Recommend: the experiment that split the placement ('' = none)."""
    variant: str = ""
    """Recommend: the shopper's variant of it."""


@dataclass(frozen=True)
class EventInput:
    user_id: str
    session_id: str
    item_id: str
    event_type: EventType
    timestamp: int
    quantity: float
    recommendation_id: str
    placement: str
    non_personalized: bool
    event_id: str = ""
    """The client's id of the event; empty: derived from its content (:attr:`key`)."""
    price: float | None = None
    """A purchase's unit price; None: the live catalogue's, if any."""

    @property
    def key(self) -> str:
        """The id that makes the event idempotent: the client's, else ``c:`` and a hash
        of everything the event says (so an exact repeat is applied once)."""
        if self.event_id:
            return self.event_id
        content = "\x1f".join(
            (
                self.user_id,
                self.session_id,
                self.item_id,
                self.event_type.value,
                str(self.timestamp),
                repr(float(self.quantity)),
                self.recommendation_id,
                self.placement,
            )
        )
        return "c:" + hashlib.blake2b(content.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True)
class RecordOutput:
    accepted: int
    ignored: list[tuple[int, str]]
    """(index in the batch, reason): reason "unknown_item" or "erased_user"."""


@dataclass(frozen=True)
class ConsentOutput:
    previous: Consent
    consent: Consent
    deleted: ForgetResult
    """What switching to a consent other than FULL deleted of the stored profile."""


@dataclass(frozen=True)
class ForgetOutput:
    deleted_vectors: int
    deleted_history_events: int
    deleted_sessions: int
    added_to_erasure_list: bool
    linked_ids: tuple[str, ...] = ()
    """Ids that were linked to the customer, erased with them."""
    complete: bool = False
    """Whether compaction removed the customer from the files too (else pending)."""
