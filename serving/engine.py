"""What the server does, in domain terms (no protobuf here).

The servicer converts messages to the inputs below and back; everything between —
where a user's vector comes from, how the live session shapes the answer, what an
event changes, what erasure deletes — is here, on top of the ranking core
(:mod:`recsvc.ranking`) and the live state (:mod:`serving.state`).

User vector layers, first hit wins: Redis (key carries the model version; the
source of truth all replicas share, read in the same round trip as the live history
and session) → in-process LRU (short TTL; vectors this process folded in) → fold-in
of the user's history (training history from the artifact plus live history from
Redis; written back to Redis and the LRU) → the artifact's trained vector → none.
When Redis is down the LRU stands in, so a shopper seen a moment ago keeps a fresh
profile.

When Redis fails or is slow, Recommend still answers from what the request and the
artifact hold (inline session, trained vector and history, popularity), marks the
answer degraded and counts it; the next call tries Redis again, so recovery needs
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from recsvc import artifact as art
from recsvc.config import RepeatPolicy, Settings
from recsvc.erasure import append_erasure, read_erasure_list
from recsvc.errors import NotFoundError, StoreError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Filters, Query, Reason, Strategy
from recsvc.weighting import EVENT_TYPES, event_weights, session_weights

from .eventlog import EventLog, EventRow
from .metrics import ServingMetrics, placement_label
from .reload import LoadedModel, ModelHolder
from .state import LiveState, StoredEvent

__all__ = [
    "Engine",
    "EventInput",
    "FilterSpec",
    "ForgetOutput",
    "RecommendInput",
    "RecommendOutput",
    "RecordOutput",
    "ScoredItem",
    "SimilarInput",
]

log = logging.getLogger(__name__)

_TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}
_REASONS: dict[int, Reason] = {int(r): r for r in Reason}
_NO_INT: NDArray[np.int32] = np.zeros(0, np.int32)
_NO_FLOAT: NDArray[np.float32] = np.zeros(0, np.float32)
_NO_FILTERS = Filters()
"""What an empty FilterSpec becomes (immutable, so shared by every request)."""
_STORED_TYPES = frozenset(
    {EventType.VIEW, EventType.ADD_TO_CART, EventType.PURCHASE, EventType.CLICK}
)
"""Event types that say something about the shopper's taste (impressions do not)."""


@dataclass(frozen=True)
class FilterSpec:
    exclude_item_ids: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    in_stock_only: bool = False


@dataclass(frozen=True)
class RecommendInput:
    user_id: str
    session_id: str
    session_events: tuple[StoredEvent, ...]
    k: int
    filters: FilterSpec
    repeat_policy: RepeatPolicy | None
    non_personalized: bool
    placement: str


@dataclass(frozen=True)
class SimilarInput:
    item_ids: tuple[str, ...]
    k: int
    filters: FilterSpec
    placement: str


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
    ignored_item_ids: list[str] = field(default_factory=list)


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


@dataclass(frozen=True)
class RecordOutput:
    accepted: int
    ignored: list[tuple[int, str]]
    """(index in the batch, reason): reason "unknown_item" or "erased_user"."""


@dataclass(frozen=True)
class ForgetOutput:
    deleted_vectors: int
    deleted_history_events: int
    deleted_sessions: int
    added_to_erasure_list: bool


class _VectorCache:
    """Small LRU of user vectors with a TTL, keyed by (model version, user)."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._data: OrderedDict[tuple[str, str], tuple[float, NDArray[np.float32]]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> NDArray[np.float32] | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        stamp, vector = hit
        if time.monotonic() - stamp > self.ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return vector

    def put(self, key: tuple[str, str], vector: NDArray[np.float32]) -> None:
        if self.size == 0:
            return
        self._data[key] = (time.monotonic(), vector)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop_user(self, user_id: str) -> None:
        for key in [k for k in self._data if k[1] == user_id]:
            del self._data[key]


class Engine:
    """The server's behaviour; one per process, shared by all calls."""

    def __init__(
        self,
        settings: Settings,
        models: ModelHolder,
        state: LiveState,
        event_log: EventLog,
        metrics: ServingMetrics,
    ) -> None:
        self.settings = settings
        self.server = settings.server
        self.models = models
        self.state = state
        self.event_log = event_log
        self.metrics = metrics
        self.cache = _VectorCache(self.server.lru_size, self.server.lru_ttl_seconds)
        # labelled children resolved once: .labels() costs microseconds per call
        self._lookups: dict[tuple[str, str], Any] = {}
        self._recommended: dict[tuple[str, str], Any] = {}
        self.erasure_path = settings.erasure_path
        self.erased: set[str] = set(read_erasure_list(self.erasure_path))
        self._erasure_stamp = _stamp(self.erasure_path)
        # the training weights' decay factor of one (model version, second)
        self._decay: tuple[str, int, np.float32 | None] = ("", -1, None)
        self._index_seconds = metrics.index_search_seconds
        self._recommended_items = metrics.recommended_items

    def _lookup(self, layer: str, result: str) -> None:
        """Count one user-vector lookup (``recsvc_user_vector_lookups_total``)."""
        child = self._lookups.get((layer, result))
        if child is None:
            child = self.metrics.user_vector_lookups.labels(layer=layer, result=result)
            self._lookups[(layer, result)] = child
        child.inc()

    def _count_recommendation(self, strategy: str, placement: str) -> None:
        child = self._recommended.get((strategy, placement))
        if child is None:
            child = self.metrics.recommendations.labels(strategy=strategy, placement=placement)
            self._recommended[(strategy, placement)] = child
        child.inc()

    def refresh_erasures(self) -> None:
        """Pick up erasures other replicas appended to the shared erasure list."""
        stamp = _stamp(self.erasure_path)
        if stamp != self._erasure_stamp:
            self._erasure_stamp = stamp
            fresh = read_erasure_list(self.erasure_path) - self.erased
            for user in fresh:
                self.cache.drop_user(user)
            self.erased |= fresh

    # --- Recommend ------------------------------------------------------------------

    async def recommend(self, req: RecommendInput) -> RecommendOutput:
        loaded = self.models.require()
        model = loaded.model
        now = int(time.time())
        degraded = False
        user_vector: NDArray[np.float32] | None = None
        live_history: list[StoredEvent] = []
        stored_session: list[StoredEvent] = []
        personal = not req.non_personalized and bool(req.user_id) and req.user_id not in self.erased
        if not req.non_personalized and (personal or req.session_id):
            try:
                user_vector, live_history, stored_session = await self._read_state(
                    loaded, req.user_id if personal else "", req.session_id
                )
            except StoreError as exc:
                degraded = True
                self.metrics.degraded_responses.labels(rpc="Recommend").inc()
                if personal:
                    self._lookup("redis", "error")
                    # the last vector this process saw beats the stale trained one
                    user_vector = self.cache.get((loaded.version, req.user_id))
                    self._lookup("lru", "hit" if user_vector is not None else "miss")
                log.warning("Recommend degraded: %s", exc)

        user = req.user_id if personal else ""
        hist_items, hist_weights, bought, bought_weights = self._histories(
            loaded, user, live_history, now
        )
        if personal and user_vector is None:
            user_vector = self._vector_from_history(
                loaded, req.user_id, live_history, hist_items, hist_weights
            )
            if user_vector is not None and live_history and not degraded:
                await self._write_back(loaded, req.user_id, user_vector)

        # stored sessions come newest first; oldest first keeps ties in arrival order
        if stored_session or req.session_events:
            session, ignored = _known_items(
                model.item_position, [*reversed(stored_session), *req.session_events]
            )
            s_items, s_weights = self._session_weights(model, session)
        else:
            ignored, s_items, s_weights = [], _NO_INT, _NO_FLOAT
        # whether what the shopper just looked at may be shown again is the ranker's
        # call: the shop's measured default, or the request's repeat policy
        query = Query(
            k=req.k,
            user_vector=user_vector,
            history_items=hist_items,
            history_weights=hist_weights,
            purchased_items=bought,
            purchased_weights=bought_weights,
            session_items=s_items,
            session_weights=s_weights,
            filters=_filters(model.item_position, model.category_position, req.filters),
            repeat_policy=req.repeat_policy,
        )
        t = time.perf_counter()
        ranking = loaded.ranker.recommend(query)
        self._index_seconds.observe(time.perf_counter() - t)
        placement = placement_label(req.placement, self.server.placements)
        self._count_recommendation(ranking.strategy.value, placement)
        if ranking.fallback:
            reason = "store_unavailable" if degraded else "no_signal"
            self.metrics.fallbacks.labels(reason=reason).inc()
        items = _scored(model.artifact.item_ids, ranking.items, ranking.scores, ranking.reasons)
        self._recommended_items.observe(len(items))
        return RecommendOutput(
            items=items,
            model_version=loaded.version,
            recommendation_id=_recommendation_id(loaded.version),
            strategy=ranking.strategy,
            fallback=ranking.fallback,
            degraded=degraded,
            ignored_item_ids=[e.item_id for e in ignored if e in req.session_events]
            if ignored
            else [],
        )

    async def _read_state(
        self, loaded: LoadedModel, user_id: str, session_id: str
    ) -> tuple[NDArray[np.float32] | None, list[StoredEvent], list[StoredEvent]]:
        """Vector, live history and stored session in one Redis round trip.

        Redis is the source of truth, shared by every replica: its vector wins, so an
        event recorded through another replica a moment ago shows here at once. The
        in-process LRU only stands in when Redis has no vector (one this process
        folded in) — and when Redis is down (see :meth:`recommend`).
        """
        version, factors = loaded.version, loaded.model.artifact.factors
        vector, history, session = await self.state.get_user_state(
            version, user_id, session_id, factors
        )
        if not user_id:
            return None, history, session
        self._lookup("redis", "hit" if vector is not None else "miss")
        if vector is not None:
            self.cache.put((version, user_id), vector)
            return vector, history, session
        cached = self.cache.get((version, user_id))
        self._lookup("lru", "hit" if cached is not None else "miss")
        return cached, history, session

    def _training_decay(self, model: Model, now: int) -> np.float32 | None:
        """The factor that ages the training weights (decayed from the data cut-off)
        on to ``now``; None without decay. Computed once per model and second."""
        version, second, factor = self._decay
        if second == now and version == model.version:
            return factor
        age = max(0, now - model.artifact.manifest.data.cutoff_unix)
        half_life = self.settings.weighting.half_life_days * 86_400.0
        factor = np.float32(np.exp2(-age / half_life)) if half_life > 0 else None
        self._decay = (model.version, now, factor)
        return factor

    def _histories(
        self, loaded: LoadedModel, user_id: str, live: Sequence[StoredEvent], now: int
    ) -> tuple[NDArray[np.int32], NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]]:
        """:meth:`_history` of every event type, then of purchases only, in one pass:
        the same arrays, without looking the user and the decay up twice."""
        model = loaded.model
        u = model.user_position.get(user_id) if user_id else None
        if u is None and not live:
            return _NO_INT, _NO_FLOAT, _NO_INT, _NO_FLOAT
        if live:
            items, weights = self._history(loaded, user_id, live, now)
            bought, bought_weights = self._history(loaded, user_id, live, now, purchases_only=True)
            return items, weights, bought, bought_weights
        assert u is not None
        factor = self._training_decay(model, now)
        items, weights = model.user_history(u)
        bought, bought_weights = model.user_purchases(u)
        if factor is not None:
            weights = weights * factor
            bought_weights = bought_weights * factor
        return items, weights, bought, bought_weights

    def _history(
        self,
        loaded: LoadedModel,
        user_id: str,
        live: Sequence[StoredEvent],
        now: int,
        *,
        purchases_only: bool = False,
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Training history (artifact) plus live history, as positions and weights:
        every event type (the fold-in's input) or purchases only ("bought before")."""
        model = loaded.model
        items: list[NDArray[np.int32]] = []
        weights: list[NDArray[np.float32]] = []
        u = model.user_position.get(user_id) if user_id else None
        if purchases_only:
            live = [e for e in live if e.event_type is EventType.PURCHASE]
        if u is not None:
            ti, tw = model.user_purchases(u) if purchases_only else model.user_history(u)
            # training weights decay from the data cut-off; age them on to now
            age = max(0, now - model.artifact.manifest.data.cutoff_unix)
            half_life = self.settings.weighting.half_life_days * 86_400.0
            items.append(ti)
            weights.append(tw * np.float32(np.exp2(-age / half_life)) if half_life > 0 else tw)
        if live:
            known = [e for e in live if e.item_id in model.item_position]
            if known:
                items.append(np.array([model.item_position[e.item_id] for e in known], np.int32))
                # buy-again counts orders, not units (as the trainer's purchases do)
                weights.append(_weights(known, now, self.settings, units=not purchases_only))
        if not items:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        return np.concatenate(items), np.concatenate(weights)

    def _vector_from_history(
        self,
        loaded: LoadedModel,
        user_id: str,
        live: Sequence[StoredEvent],
        items: NDArray[np.int32],
        weights: NDArray[np.float32],
    ) -> NDArray[np.float32] | None:
        model = loaded.model
        if live and len(items):
            t = time.perf_counter()
            vector = model.foldin.user_vector(items, weights)
            self.metrics.foldin_seconds.observe(time.perf_counter() - t)
            self._lookup("foldin", "hit")
            return vector
        u = model.user_position.get(user_id)
        if u is not None:
            self._lookup("artifact", "hit")
            trained: NDArray[np.float32] = model.artifact.user_factors[u]
            return trained
        self._lookup("artifact", "miss")
        return None

    async def _write_back(
        self, loaded: LoadedModel, user_id: str, vector: NDArray[np.float32]
    ) -> None:
        self.cache.put((loaded.version, user_id), vector)
        try:
            await self.state.set_vector(loaded.version, user_id, vector)
        except StoreError as exc:
            log.warning("could not cache the folded-in vector: %s", exc)

    def _session_weights(
        self, model: Model, session: Sequence[StoredEvent]
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        if not session:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        ordered = sorted(session, key=lambda e: e.timestamp)
        items = np.array([model.item_position[e.item_id] for e in ordered], np.int32)
        weights = session_weights(
            [_TYPE_CODE[e.event_type] for e in ordered],
            [e.quantity for e in ordered],
            self.settings.weighting,
            self.server.session_weight_boost,
        )
        return items, weights

    # --- SimilarItems ---------------------------------------------------------------

    def similar(self, req: SimilarInput) -> RecommendOutput:
        loaded = self.models.require()
        model = loaded.model
        known = [model.item_position[i] for i in req.item_ids if i in model.item_position]
        ignored = [i for i in req.item_ids if i not in model.item_position]
        if not known:
            raise NotFoundError(f"none of the {len(req.item_ids)} item ids is in the model")
        ranking = loaded.ranker.similar(
            np.array(known, np.int32),
            req.k,
            _filters(model.item_position, model.category_position, req.filters),
        )
        return RecommendOutput(
            items=_scored(model.artifact.item_ids, ranking.items, ranking.scores, ranking.reasons),
            model_version=loaded.version,
            recommendation_id=_recommendation_id(loaded.version),
            strategy=ranking.strategy,
            fallback=False,
            degraded=False,
            ignored_item_ids=ignored,
        )

    # --- RecordEvents ---------------------------------------------------------------

    async def record_events(self, events: Sequence[EventInput]) -> RecordOutput:
        loaded = self.models.require()
        model = loaded.model
        ignored: list[tuple[int, str]] = []
        log_rows: list[EventRow] = []
        live: dict[tuple[str, str], list[StoredEvent]] = {}
        for index, e in enumerate(events):
            placement = placement_label(e.placement, self.server.placements)
            if e.event_type in (EventType.IMPRESSION, EventType.CLICK):
                version = self.metrics.model_version_label(e.recommendation_id.rpartition(".")[0])
                counter = (
                    self.metrics.impressions
                    if e.event_type is EventType.IMPRESSION
                    else self.metrics.clicks
                )
                counter.labels(placement=placement, model_version=version).inc()
            if e.user_id and e.user_id in self.erased:
                ignored.append((index, "erased_user"))
                self.metrics.events_ignored.labels(reason="erased_user").inc()
                continue
            if e.non_personalized:
                # aggregate counters only: nothing tied to the shopper is kept
                self.metrics.events.labels(event_type=e.event_type.value).inc()
                continue
            log_rows.append(
                EventRow(
                    user_id=e.user_id,
                    item_id=e.item_id,
                    timestamp=e.timestamp,
                    event_type=e.event_type.value,
                    quantity=e.quantity,
                    basket_id=f"{e.session_id or e.user_id}@{e.timestamp}"
                    if e.event_type is EventType.PURCHASE
                    else "",
                )
            )
            if e.item_id not in model.item_position:
                ignored.append((index, "unknown_item"))
                self.metrics.events_ignored.labels(reason="unknown_item").inc()
                continue
            self.metrics.events.labels(event_type=e.event_type.value).inc()
            if e.event_type in _STORED_TYPES and (e.user_id or e.session_id):
                stored = StoredEvent(e.item_id, e.event_type, e.timestamp, e.quantity)
                live.setdefault((e.user_id, e.session_id), []).append(stored)
        # Live state first: if Redis cannot take the batch, StoreError (UNAVAILABLE)
        # reaches the client before anything is logged, so a retry does not log twice.
        for (user_id, session_id), batch in live.items():
            await self.state.record(user_id, session_id, batch)
            if user_id:
                await self._refresh_vector(loaded, user_id)
        # Training reads user events only; anonymous-session events live in Redis.
        rows = [r for r in log_rows if r.user_id]
        if rows:
            # off the event loop: the log's periodic fsync can take milliseconds
            await asyncio.to_thread(self.event_log.append, rows)
        return RecordOutput(accepted=len(events) - len(ignored), ignored=ignored)

    async def _refresh_vector(self, loaded: LoadedModel, user_id: str) -> None:
        """Fold the user in again so the next Recommend reflects what they just did."""
        _, history, _ = await self.state.get_user_state(
            loaded.version, user_id, "", loaded.model.artifact.factors
        )
        items, weights = self._history(loaded, user_id, history, int(time.time()))
        if len(items) == 0:
            return
        t = time.perf_counter()
        vector = loaded.model.foldin.user_vector(items, weights)
        self.metrics.foldin_seconds.observe(time.perf_counter() - t)
        self.cache.put((loaded.version, user_id), vector)
        await self.state.set_vector(loaded.version, user_id, vector)

    # --- ForgetUser -----------------------------------------------------------------

    async def forget(self, user_id: str) -> ForgetOutput:
        versions = sorted({*self.models.loaded_versions, *art.list_versions(self.models.root)})
        self.cache.drop_user(user_id)
        added = user_id not in self.erased
        if added:
            append_erasure(self.erasure_path, user_id)
            self.erased.add(user_id)
        result = await self.state.forget(user_id, versions)
        self.cache.drop_user(user_id)  # a call in flight may have cached it meanwhile
        return ForgetOutput(
            deleted_vectors=result.deleted_vectors,
            deleted_history_events=result.deleted_history_events,
            deleted_sessions=result.deleted_sessions,
            added_to_erasure_list=added,
        )


# --- helpers ------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


_random_bits = random.getrandbits


def _recommendation_id(model_version: str) -> str:
    """``<model version>.<random>``: clicks carry the model that made the list."""
    # 128 random bits as 32 hex digits, like uuid4().hex, at a fraction of its cost: an
    # id needs to be unique, not unguessable, so the seeded generator (re-seeded from
    # os.urandom in every process, forked ones included) instead of a getrandom call
    return f"{model_version}.{_random_bits(128):032x}"


def _known_items(
    positions: dict[str, int], events: Sequence[StoredEvent]
) -> tuple[list[StoredEvent], list[StoredEvent]]:
    known: list[StoredEvent] = []
    unknown: list[StoredEvent] = []
    for e in events:
        (known if e.item_id in positions else unknown).append(e)
    return known, unknown


def _weights(
    events: Sequence[StoredEvent], now: int, settings: Settings, *, units: bool = True
) -> NDArray[np.float32]:
    return event_weights(
        [_TYPE_CODE[e.event_type] for e in events],
        [e.quantity if units else 1.0 for e in events],
        [e.timestamp for e in events],
        now,
        settings.weighting,
    )


def _filters(items: dict[str, int], categories: dict[str, int], spec: FilterSpec) -> Filters:
    if not (
        spec.exclude_item_ids
        or spec.include_categories
        or spec.exclude_categories
        or spec.in_stock_only
    ):
        return _NO_FILTERS
    exclude = np.array([items[i] for i in spec.exclude_item_ids if i in items], np.int32)
    include = (
        np.array([categories[c] for c in spec.include_categories if c in categories], np.int32)
        if spec.include_categories
        else None
    )
    exclude_c = np.array(
        [categories[c] for c in spec.exclude_categories if c in categories], np.int32
    )
    return Filters(
        exclude_items=exclude,
        include_categories=include,
        exclude_categories=exclude_c,
        in_stock_only=spec.in_stock_only,
    )


def _scored(
    item_ids: NDArray[np.str_],
    items: NDArray[np.int32],
    scores: NDArray[np.float32],
    reasons: NDArray[np.int8],
) -> list[ScoredItem]:
    ids: list[str] = item_ids[items].tolist()
    return [
        ScoredItem(i, s, _REASONS[r])
        for i, s, r in zip(ids, scores.tolist(), reasons.tolist(), strict=True)
    ]
