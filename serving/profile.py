"""Who is this shopper, right now: one read that gives a request everything it knows.

:meth:`Profiles.read` turns a request's ids and inline events into a :class:`Profile`
in model positions — the user vector, the history (training + live) with its decayed
weights, what they bought, the live session — and :meth:`Profiles.refresh` keeps the
stored vector current after the shopper acts. Where a user vector comes from, first hit
wins:

1. the live state (Redis; the key carries the model version): the source of truth
   every replica shares, read in the same round trip as the live history and session;
2. the in-process LRU (short TTL; vectors this process folded in, or read a moment ago);
3. a fold-in of the history (training history from the artifact plus live history),
   written back to the live state and the LRU;
4. the artifact's trained vector;
5. none (the ranking then serves the session or popular items).

When the live state fails, or does not answer within the call's deadline less
``[server] degraded_reserve_seconds``, the profile is made from what the request and
the artifact hold (inline session, trained vector and history, the LRU's vector: the
last one this process saw beats the stale trained one), marked ``degraded`` and
counted. For ``[server] degraded_retry_seconds`` after that, calls answer degraded
without asking the store (an outage costs one wait, not one per call); then the next
call tries it again, so recovery needs nothing. Every layer's hits and
misses are counted in ``recsvc_user_vector_lookups_total``.

Weights: training weights were decayed from the data cut-off; they are aged on to now
by one factor per model and second (:class:`_Aging`); live events are weighted as the
trainer weighs events (:func:`recsvc.weighting.event_weights`), the session's by
position (:func:`recsvc.weighting.session_weights`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from numpy.typing import NDArray

from recsvc.config import RepeatPolicy, Settings
from recsvc.consent import Consent
from recsvc.errors import StoreError
from recsvc.events import EventType, LiveEvent
from recsvc.model import Model
from recsvc.ranking import Filters, Popularity, Query, ScoreWeights
from recsvc.store import LiveState, UserState
from recsvc.weighting import EVENT_TYPES, live_event_weights, session_weights

from .metrics import Children, ServingMetrics
from .reload import LoadedModel

__all__ = ["Profile", "Profiles"]

log = logging.getLogger(__name__)

IntArray = NDArray[np.int32]
FloatArray = NDArray[np.float32]
Vector = NDArray[np.float32]

_NO_INT: Final[IntArray] = np.zeros(0, np.int32)
_NO_FLOAT: Final[FloatArray] = np.zeros(0, np.float32)
_POSITION: Final = {t: i for i, t in enumerate(EVENT_TYPES)}
_RESTRICTED: Final = 100_000
"""Customers with a consent other than FULL remembered per process (for outages)."""
"""Each event type's position in the weighting's tables."""


@dataclass(frozen=True)
class Profile:
    """One request's shopper, in model positions (every array ``(n,)``)."""

    user_vector: Vector | None
    """``(factors,)``; None when nothing is known (anonymous, new, erased, no consent)."""
    history_items: IntArray
    """Items of the user's past events of any type (training, then live)."""
    history_weights: FloatArray
    """Their weights, decayed to now."""
    purchased_items: IntArray
    """Items the user bought (buy-again, EXCLUDE)."""
    purchased_weights: FloatArray
    """Their decayed weights (orders, not units)."""
    session_items: IntArray
    """Items of the live session (stored, then inline), oldest first."""
    session_weights: FloatArray
    """Their weights, by event type and position."""
    ignored_item_ids: list[str]
    """Inline session items the model does not know."""
    degraded: bool
    """Made without the live state."""
    merged: tuple[LiveEvent, ...] = ()
    """Events of the anonymous session of this session id that joined the customer's
    history in this call (a login, :meth:`Profiles.merge_login`): the caller logs them."""
    overexposed: IntArray = field(default_factory=lambda: _NO_INT)
    """Items shown to the shopper ``shown_after`` times with no engagement since
    (rotation; empty unless asked)."""
    dismissed: IntArray = field(default_factory=lambda: _NO_INT)
    """Items the shopper turned down lately (never recommended to them meanwhile)."""
    customer: str = ""
    """The customer the request's user id is linked to, whose profile this is (empty:
    the id is not linked)."""
    peer_items: IntArray = field(default_factory=lambda: _NO_INT)
    """The known customer's customers-like-you items (ascending; empty: none)."""
    peer_scores: FloatArray = field(default_factory=lambda: _NO_FLOAT)
    """Their scores, scaled to (0, 1]."""

    def query(
        self,
        k: int,
        filters: Filters,
        repeat_policy: RepeatPolicy | None,
        popularity: Popularity | None = None,
        headroom_k: int | None = None,
        popularity_weight: float | None = None,
        weights: ScoreWeights | None = None,
    ) -> Query:
        # whether what the shopper just looked at may be shown again is the ranker's
        # call: the shop's measured default, or the request's repeat policy
        return Query(
            k=k,
            user_vector=self.user_vector,
            history_items=self.history_items,
            history_weights=self.history_weights,
            purchased_items=self.purchased_items,
            purchased_weights=self.purchased_weights,
            session_items=self.session_items,
            session_weights=self.session_weights,
            filters=filters,
            repeat_policy=repeat_policy,
            popularity=popularity,
            headroom_k=headroom_k,
            popularity_weight=popularity_weight,
            weights=weights,
            peer_items=self.peer_items,
            peer_scores=self.peer_scores,
        )


class _VectorCache:
    """Small LRU of user vectors with a TTL, keyed by (model version, user)."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._data: OrderedDict[tuple[str, str], tuple[float, Vector]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Vector | None:
        hit = self._data.get(key)
        if hit is None:
            return None
        stamp, vector = hit
        if time.monotonic() - stamp > self.ttl:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return vector

    def put(self, key: tuple[str, str], vector: Vector) -> None:
        if self.size == 0:
            return
        self._data[key] = (time.monotonic(), vector)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop_user(self, user_id: str) -> None:
        for key in [k for k in self._data if k[1] == user_id]:
            del self._data[key]


class _Aging:
    """The factor that ages training weights (decayed from the data cut-off) on to now:
    ``0.5 ** (age / half_life)``; None without decay. Once per model and second."""

    def __init__(self, half_life_days: float) -> None:
        self._half_life = half_life_days * 86_400.0
        self._last: tuple[str, int, np.float32 | None] = ("", -1, None)

    def factor(self, model: Model, now: int) -> np.float32 | None:
        version, second, factor = self._last
        if second == now and version == model.version:
            return factor
        age = max(0, now - model.artifact.manifest.data.cutoff_unix)
        factor = np.float32(np.exp2(-age / self._half_life)) if self._half_life > 0 else None
        self._last = (model.version, now, factor)
        return factor


class Profiles:
    """Builds request profiles and keeps stored vectors current (module docstring)."""

    def __init__(self, settings: Settings, state: LiveState, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.state = state
        self.metrics = metrics
        server = settings.server
        self._cache = _VectorCache(server.lru_size, server.lru_ttl_seconds)
        self._aging = _Aging(settings.weighting.half_life_days)
        self._boost = server.session_weight_boost
        self._weighting = settings.weighting
        self._lookups = Children(metrics.user_vector_lookups)
        self._foldin_seconds = metrics.foldin_seconds
        self._degraded = metrics.degraded_responses.labels(rpc="Recommend")
        self._reserve = server.degraded_reserve_seconds
        self._retry_after = server.degraded_retry_seconds
        self._store_down_until = 0.0
        """Monotonic time before which the store is not asked (it just failed)."""
        self._warned_at = -1e9
        self._restricted: OrderedDict[str, Consent] = OrderedDict()
        """Customers whose stored consent was not FULL when last read (most recent
        last): honoured when the store is down."""

    # --- the read of every Recommend ----------------------------------------------------

    async def read(
        self,
        loaded: LoadedModel,
        user_id: str,
        session_id: str,
        inline: Sequence[LiveEvent],
        time_left: float | None = None,
        shown_after: int = 0,
    ) -> Profile:
        """The shopper of one request. ``user_id`` empty = anonymous (no profile is
        read or written for them; the caller passes "" when consent is off or the
        customer was erased); ``session_id`` empty = no stored session (with consent
        off the caller passes "" too); ``time_left``: seconds to the call's deadline;
        ``shown_after`` > 0: the items shown to the shopper that often are read too
        (rotation, :attr:`Profile.overexposed`)."""
        model = loaded.model
        now = int(time.time())
        vector: Vector | None = None
        live: list[LiveEvent] = []
        stored_session: list[LiveEvent] = []
        anonymous: list[LiveEvent] = []
        merged: list[LiveEvent] = []
        consent = Consent.FULL
        overexposed: list[str] = []
        dismissed: list[str] = []
        customer = ""
        degraded = False
        if user_id or session_id:
            try:
                vector, state = await self._read_state(
                    loaded, user_id, session_id, time_left, shown_after
                )
                live, stored_session, anonymous = state.history, state.session, state.anonymous
                consent, overexposed = state.consent, state.overexposed
                dismissed = state.dismissed
                if state.customer:  # a linked id: from here on, the customer
                    user_id = customer = state.customer
            except StoreError as exc:
                degraded = True
                self._degraded.inc()
                if user_id:
                    self._lookups("redis", "error").inc()
                    # the last vector this process saw beats the stale trained one
                    vector = self._cache.get((loaded.version, user_id))
                    self._lookups("lru", "hit" if vector is not None else "miss").inc()
                self._warn(exc)
                # the last consent this process read stands in for the stored one
                consent = self._restricted.get(user_id, Consent.FULL)
        if user_id:
            if consent is Consent.FULL:
                self._restricted.pop(user_id, None)
            else:
                self._restricted[user_id] = consent
                if len(self._restricted) > _RESTRICTED:
                    self._restricted.popitem(last=False)
        if consent is Consent.OFF:
            # as non_personalized: nothing of the customer (inline events still count)
            vector, live, stored_session, anonymous, user_id = None, [], [], [], ""
            overexposed, dismissed = [], []
        elif consent is Consent.SESSION_ONLY:
            # this visit, kept as a visitor's session is: no history, no vector, no merge
            vector, live, user_id = None, [], ""
            stored_session, anonymous = anonymous, []
        if anonymous:
            # a login: what the session did anonymously joins the customer, once
            merged = await self.merge_login(user_id, session_id, anonymous)
            live = _newest_first([*live, *merged])
            stored_session = _newest_first([*stored_session, *merged])

        if (
            user_id
            and live
            and stored_session
            and user_id not in model.user_position
            and _within(live, stored_session)
        ):
            # a new customer whose whole history is this session (just logged in, say):
            # the session model answers, as it does for a visitor
            vector, live, user_id = None, [], ""
        items, weights, bought, bought_weights = self._history(model, user_id, live, now)
        if merged and user_id and len(items):
            # the customer's vector now holds the visit, on every replica
            vector = self._fold_in(model, items, weights)
            await self._write_back(loaded, user_id, vector)
        elif user_id and vector is None:
            vector = self._vector_from_history(model, user_id, live, items, weights)
            if vector is not None and live and not degraded:
                await self._write_back(loaded, user_id, vector)

        ignored: list[str] = []
        s_items, s_weights = _NO_INT, _NO_FLOAT
        if stored_session or inline:
            # stored sessions come newest first; oldest first keeps ties in arrival order
            known = []
            for e in (*reversed(stored_session), *inline):
                if e.item_id in model.item_position:
                    known.append(e)
                elif e in inline:
                    ignored.append(e.item_id)
            s_items, s_weights = self._session(model, known)
        # the trained customer's list: one row of the artifact (no search)
        u = model.user_position.get(user_id) if user_id and model.peers is not None else None
        peer_items, peer_scores = model.user_peers(u) if u is not None else (_NO_INT, _NO_FLOAT)
        return Profile(
            user_vector=vector,
            history_items=items,
            history_weights=weights,
            purchased_items=bought,
            purchased_weights=bought_weights,
            session_items=s_items,
            session_weights=s_weights,
            ignored_item_ids=ignored,
            degraded=degraded,
            merged=tuple(merged),
            overexposed=_positions_of(model, overexposed),
            dismissed=_positions_of(model, dismissed),
            customer=customer,
            peer_items=peer_items,
            peer_scores=peer_scores,
        )

    async def merge_login(
        self,
        user_id: str,
        session_id: str,
        anonymous: Sequence[LiveEvent] | None = None,
    ) -> list[LiveEvent]:
        """A login: the anonymous session ``session_id`` (``anonymous``, as read with
        the request; None: read it now) joins ``user_id``'s history and session, once
        (:meth:`LiveState.merge_session`). The events applied by this call; none when
        the store fails (logged and counted: the next call merges)."""
        if not (user_id and session_id):
            return []
        merges = self.metrics.session_merges
        try:
            if anonymous is None:
                anonymous = await self.state.get_session(session_id)
            if not anonymous:
                return []
            applied = await self.state.merge_session(user_id, session_id, anonymous)
        except StoreError as exc:
            merges.labels(outcome="failed").inc()
            log.warning("merging an anonymous session at login failed: %s", exc)
            return []
        merges.labels(outcome="merged" if applied else "repeat").inc()
        return [anonymous[i] for i in applied]

    async def _read_state(
        self,
        loaded: LoadedModel,
        user_id: str,
        session_id: str,
        time_left: float | None,
        shown_after: int = 0,
    ) -> tuple[Vector | None, UserState]:
        """Vector, live history and stored session in one round trip, within the
        call's deadline (StoreError otherwise). The store's vector wins over the LRU:
        an event recorded through another replica a moment ago shows here at once. The
        LRU stands in when the store has no vector (one this process folded in)."""
        if time.monotonic() < self._store_down_until:
            raise StoreError("the live state failed a moment ago; not asked until it may be back")
        version, factors = loaded.version, loaded.model.artifact.factors
        read = self.state.read_user(version, user_id, session_id, factors, shown_after)
        try:
            if time_left is None:
                state = await read
            else:
                async with asyncio.timeout(max(0.0, time_left - self._reserve)):
                    state = await read
        except TimeoutError as exc:
            self._store_down_until = time.monotonic() + self._retry_after
            raise StoreError("the live state did not answer within the call's deadline") from exc
        except StoreError:
            self._store_down_until = time.monotonic() + self._retry_after
            raise
        vector = state.vector
        if not user_id:
            return None, state
        user_id = state.customer or user_id
        self._lookups("redis", "hit" if vector is not None else "miss").inc()
        if vector is not None:
            self._cache.put((version, user_id), vector)
            return vector, state
        cached = self._cache.get((version, user_id))
        self._lookups("lru", "hit" if cached is not None else "miss").inc()
        return cached, state

    def _history(
        self, model: Model, user_id: str, live: Sequence[LiveEvent], now: int
    ) -> tuple[IntArray, FloatArray, IntArray, FloatArray]:
        """Every event (the fold-in's input) and the purchases ("bought before") of the
        user, training history first then live, as positions and weights decayed to
        ``now``."""
        u = model.user_position.get(user_id) if user_id else None
        if u is None and not live:
            return _NO_INT, _NO_FLOAT, _NO_INT, _NO_FLOAT
        factor = self._aging.factor(model, now)
        every: list[tuple[IntArray, FloatArray]] = []
        bought: list[tuple[IntArray, FloatArray]] = []
        if u is not None:
            for rows, part in ((model.user_history(u), every), (model.user_purchases(u), bought)):
                items, weights = rows
                part.append((items, weights * factor if factor is not None else weights))
        if live:
            known = [e for e in live if e.item_id in model.item_position]
            if known:
                weights = live_event_weights(known, now, self._weighting)
                every.append((_positions(model, known), weights))
                purchases = [e for e in known if e.event_type is EventType.PURCHASE]
                if purchases:
                    # buy-again counts orders, not units (as the trainer's purchases do)
                    weights = live_event_weights(purchases, now, self._weighting, units=False)
                    bought.append((_positions(model, purchases), weights))
        return (*_joined(every), *_joined(bought))

    def _session(self, model: Model, session: Sequence[LiveEvent]) -> tuple[IntArray, FloatArray]:
        if not session:
            return _NO_INT, _NO_FLOAT
        ordered = sorted(session, key=lambda e: e.timestamp)
        weights = session_weights(
            [_POSITION[e.event_type] for e in ordered],
            [e.quantity for e in ordered],
            self.settings.weighting,
            self._boost,
        )
        return _positions(model, ordered), weights

    def _vector_from_history(
        self,
        model: Model,
        user_id: str,
        live: Sequence[LiveEvent],
        items: IntArray,
        weights: FloatArray,
    ) -> Vector | None:
        if live and len(items):
            self._lookups("foldin", "hit").inc()
            return self._fold_in(model, items, weights)
        u = model.user_position.get(user_id)
        if u is not None:
            self._lookups("artifact", "hit").inc()
            trained: Vector = model.artifact.user_factors[u]
            return trained
        self._lookups("artifact", "miss").inc()
        return None

    def _fold_in(self, model: Model, items: IntArray, weights: FloatArray) -> Vector:
        t = time.perf_counter()
        vector = model.foldin.user_vector(items, weights)
        self._foldin_seconds.observe(time.perf_counter() - t)
        return vector

    async def _write_back(self, loaded: LoadedModel, user_id: str, vector: Vector) -> None:
        self._cache.put((loaded.version, user_id), vector)
        try:
            await self.state.set_vector(loaded.version, user_id, vector)
        except StoreError as exc:
            log.warning("could not cache the folded-in vector: %s", exc)

    def _warn(self, exc: StoreError) -> None:
        """One warning per ``degraded_retry_seconds`` at most (every degraded answer is
        counted in ``recsvc_degraded_responses_total``): an outage must not flood the
        log with a line per call."""
        now = time.monotonic()
        if now - self._warned_at >= self._retry_after:
            self._warned_at = now
            log.warning("Recommend answers degraded: %s", exc)

    # --- after the shopper acted, and after erasure --------------------------------------

    async def refresh(self, loaded: LoadedModel, user_id: str) -> None:
        """Fold the user in again from their whole history, so the next Recommend on
        any replica reflects what they just did. Raises StoreError."""
        state = await self.state.read_user(
            loaded.version, user_id, "", loaded.model.artifact.factors
        )
        live = state.history
        if state.consent is not Consent.FULL:
            return  # switched off meanwhile: nothing is kept
        items, weights, _, _ = self._history(loaded.model, user_id, live, int(time.time()))
        if len(items) == 0:
            return
        vector = self._fold_in(loaded.model, items, weights)
        self._cache.put((loaded.version, user_id), vector)
        await self.state.set_vector(loaded.version, user_id, vector)

    def forget(self, user_id: str) -> None:
        """Drop what this process holds of ``user_id``."""
        self._cache.drop_user(user_id)

    def consented(self, user_id: str, consent: Consent) -> None:
        """``user_id`` stored ``consent`` through this process: honour it at once (and
        when the store is down), and drop their vector unless it is FULL."""
        if consent is Consent.FULL:
            self._restricted.pop(user_id, None)
            return
        self._restricted[user_id] = consent
        self._cache.drop_user(user_id)


def _within(history: Sequence[LiveEvent], session: Sequence[LiveEvent]) -> bool:
    """Whether every event of ``history`` is one of ``session``'s (as many times)."""
    if len(history) > len(session):
        return False
    left = Counter(session)
    left.subtract(history)
    return min(left.values()) >= 0


def _positions_of(model: Model, item_ids: Sequence[str]) -> IntArray:
    if not item_ids:
        return _NO_INT
    position = model.item_position
    return np.array([position[i] for i in item_ids if i in position], np.int32)


def _newest_first(events: list[LiveEvent]) -> list[LiveEvent]:
    return sorted(events, key=lambda e: e.timestamp, reverse=True)


def _positions(model: Model, events: Sequence[LiveEvent]) -> IntArray:
    position = model.item_position
    return np.array([position[e.item_id] for e in events], np.int32)


def _joined(parts: list[tuple[IntArray, FloatArray]]) -> tuple[IntArray, FloatArray]:
    if not parts:
        return _NO_INT, _NO_FLOAT
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
