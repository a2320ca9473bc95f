"""The live state every replica shares: the interface, and its Redis implementation.

:class:`LiveState` is what the server sees: user vectors per model version, each
customer's recent history, live sessions, and erasure of a customer's state. It is the
one seam for every shared-state backend: :class:`RedisLiveState` implements it on one
Redis node, the embedded one, and a Redis Cluster (the URL chooses:
:mod:`recsvc.store.clients`), because every multi-key operation below touches one
customer's keys only, which share a hash slot (:mod:`recsvc.store.keys`), and each is
one command or server-side script (no MULTI, no WATCH). The contract suite
(tests/serving/test_state.py) runs against every implementation and read path.

Keys are :class:`~recsvc.store.keys.KeyScheme`'s; values are encoded by
:mod:`recsvc.store.codec`. A session recorded with a user id is *tied* to that user
(its key carries the user's tag and its id goes into the user's ``sessions`` index),
which is how ForgetUser finds it without a SCAN. The index is a sorted set rather than a
plain set so ids of long-expired sessions can be pruned: a client that mints a new
session id per request would otherwise grow it without bound for as long as the user
stays active. Events are applied at most once each: their ids go into the customer's
(or anonymous session's) ``seen`` set in the same server-side script that appends them.
Lists are bounded (LTRIM to ``*_max_events``) and every write refreshes the TTL of the
keys it touches, so history expires ``history_ttl_seconds`` after the
user's last event and a session ``session_ttl_seconds`` after its last event.

Failure: every method is bounded by the client's timeouts and raises
:class:`~recsvc.errors.StoreError` for any Redis error (translated here, with ``raise
... from exc``), and ValueError for an argument no key can be built from. Error messages
name the operation, never a user or session id, so they are safe to log and to return.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, cast

import numpy as np
import redis
import redis.asyncio
from numpy.typing import NDArray

from recsvc.consent import Consent
from recsvc.errors import DataError, StoreError
from recsvc.events import LiveEvent
from recsvc.store.clients import REDIS_ERRORS, async_client_from_url, store_error, translated_errors
from recsvc.store.codec import decode_events, decode_vector, encode_event, encode_vector
from recsvc.store.keys import KeyScheme
from recsvc.store.reader import Command, PipelineReader, StateReader, open_reader

if TYPE_CHECKING:
    from recsvc.config import Settings

__all__ = [
    "ForgetResult",
    "LinkRefused",
    "LinkResult",
    "LiveState",
    "RedisLiveState",
    "StateLimits",
    "UserState",
    "open_live_state",
]

#: A single user's factors, shape ``(factors,)``, float32.
Vector = NDArray[np.float32]

log = logging.getLogger(__name__)


class UserState(NamedTuple):
    """What one request reads: the vector, history and session (newest first), and
    for a customer with a session id, the anonymous session of that id: what they did
    before logging in, to merge (:meth:`LiveState.merge_session`)."""

    vector: Vector | None
    history: list[LiveEvent]
    session: list[LiveEvent]
    anonymous: list[LiveEvent] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    consent: Consent = Consent.FULL
    """The customer's stored consent (FULL when none is stored, or no customer)."""
    overexposed: list[str] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    """With ``shown_after``: items shown that often with no engagement since."""
    dismissed: list[str] = []  # noqa: RUF012 (a NamedTuple default, never mutated)
    """Items the shopper turned down whose dismissal has not ended."""
    customer: str = ""
    """The customer the request's user id is linked to (:meth:`LiveState.link`), whose
    state this is; empty when the id is not linked (it is the customer)."""


_NOTHING: Final = UserState(None, [], [])


@dataclass(frozen=True)
class ForgetResult:
    """What :meth:`LiveState.forget` deleted."""

    deleted_vectors: int
    """Vector keys removed (at most one per model version asked for)."""
    deleted_history_events: int
    """Entries the user's history list held."""
    deleted_sessions: int
    """Sessions tied to the user that still existed."""
    linked_ids: tuple[str, ...] = ()
    """The ids that were linked to the customer, erased with them."""


@dataclass(frozen=True)
class LinkResult:
    """What :meth:`LiveState.link` did."""

    linked: tuple[str, ...]
    """Ids linked to the customer by this call."""
    refreshed: tuple[str, ...]
    """Ids that were linked to the customer already (their TTL starts again)."""
    moved_events: int
    """Events of the newly linked ids' own history and sessions that joined the
    customer's."""


class LinkRefused(Exception):  # noqa: N818 (a refusal, raised to the engine)
    """:meth:`LiveState.link` refused, and wrote nothing: ``reason`` is ``taken`` (an
    id is linked to another customer), ``chain`` (the customer is itself linked, or
    an id has ids linked to it) or ``full`` (the customer would hold more than
    ``link_max_ids``); ``index`` is the position of the id at fault, if one is."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


@dataclass(frozen=True)
class StateLimits:
    """How much live state is kept, and for how long (``[server]`` and ``[redis]``)."""

    history_max_events: int
    history_ttl_seconds: int
    session_max_events: int
    session_ttl_seconds: int
    vector_ttl_seconds: int
    dedupe_seconds: int = 24 * 3600
    """How long an applied event's id is remembered (retries within it apply once)."""
    dedupe_max_ids: int = 10_000
    """Most ids remembered per user or anonymous session (the oldest go first)."""
    shown_ttl_seconds: int = 24 * 3600
    """Impression counts expire this long after the shopper's last impression."""
    shown_max_items: int = 500
    """Items whose impressions are counted per shopper (the least shown go first)."""
    dismiss_seconds: int = 30 * 24 * 3600
    """How long a turned-down item stays away from the shopper."""
    dismissed_max_items: int = 200
    """Items whose dismissal is kept per shopper (the ones ending first go first)."""
    link_max_ids: int = 20
    """Most ids linked to one customer."""
    link_ttl_seconds: int = 180 * 24 * 3600
    """A link expires this long after it was last made (linking again renews it)."""

    def __post_init__(self) -> None:
        bad = [name for name, value in vars(self).items() if value <= 0]
        if bad:
            raise ValueError(f"{', '.join(bad)} must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> StateLimits:
        s = settings.server
        return cls(
            history_max_events=s.history_max_events,
            history_ttl_seconds=s.history_ttl_seconds,
            session_max_events=s.session_max_events,
            session_ttl_seconds=s.session_ttl_seconds,
            vector_ttl_seconds=settings.redis.vector_ttl_seconds,
            dedupe_seconds=s.event_dedupe_seconds,
            shown_ttl_seconds=s.shown_ttl_seconds,
            shown_max_items=s.shown_max_items,
            dismiss_seconds=s.dismiss_seconds,
            dismissed_max_items=s.dismissed_max_items,
            link_max_ids=s.link_max_ids,
            link_ttl_seconds=s.link_ttl_seconds,
        )


class LiveState(Protocol):
    """The shared live state, as the server uses it (see the module docstring)."""

    async def ping(self) -> None:
        """Check that the store answers (readiness)."""
        ...

    async def read_user(
        self,
        model_version: str,
        user_id: str,
        session_id: str,
        factors: int,
        shown_after: int = 0,
    ) -> UserState:
        """Vector, history and session of one request, in one round trip (and, with
        ``shown_after`` > 0, the items shown to the shopper that often: rotation).

        ``user_id`` may be empty (anonymous: no vector, no history, the anonymous
        session) and so may ``session_id`` (no session). The vector has shape
        ``(factors,)`` or is None.
        """
        ...

    async def get_vector(self, model_version: str, user_id: str, factors: int) -> Vector | None:
        """The user's factors under ``model_version``, or None."""
        ...

    async def set_vector(self, model_version: str, user_id: str, vector: Vector) -> None:
        """Keep a folded-in vector ``(factors,)``; DataError for NaN or infinity."""
        ...

    async def get_session(self, session_id: str, user_id: str = "") -> list[LiveEvent]:
        """A session's events, newest first (tied to ``user_id`` when given)."""
        ...

    async def record(
        self,
        user_id: str,
        session_id: str,
        events: Sequence[LiveEvent],
        event_ids: Sequence[str] | None = None,
    ) -> tuple[int, ...]:
        """Append ``events`` to the user's history and to the session, atomically, each
        at most once: an event whose id (``event_ids[i]`` for ``events[i]``; None: the
        session id and the encoded event) was applied within the dedupe window is
        skipped. Returns the positions (in ``events``) of those applied now."""
        ...

    async def customers(self, user_ids: Sequence[str]) -> dict[str, tuple[str, Consent]]:
        """Each of ``user_ids`` resolved: the customer it is linked to (itself when it
        is not linked) and that customer's stored consent (FULL where none is)."""
        ...

    async def link(
        self, customer: str, ids: Sequence[str], model_versions: Sequence[str]
    ) -> LinkResult:
        """Link ``ids`` to ``customer``: from now on every read and write made with one
        of them is the customer's. A newly linked id's own live history and sessions
        join the customer's (each event once) and its own profile (vectors under
        ``model_versions``) goes; a stricter consent it had stored passes to the
        customer. Raises :class:`LinkRefused`, having written nothing, when an id is
        linked to another customer, when the link would make a chain, or when the
        customer would hold more than ``link_max_ids``."""
        ...

    async def unlink(self, customer: str, ids: Sequence[str]) -> tuple[str, ...]:
        """Unlink those of ``ids`` linked to ``customer`` (the others are left alone);
        what they brought stays with the customer. The ids unlinked."""
        ...

    async def links(self, customer: str) -> list[str]:
        """The ids linked to ``customer`` (not expired)."""
        ...

    async def count_shown(
        self, user_id: str, session_id: str, shown: Sequence[str], engaged: Sequence[str]
    ) -> None:
        """Impressions of a customer (or, without ``user_id``, of an anonymous
        session): each of ``shown`` counted once more, each of ``engaged`` (clicked,
        carted, bought) forgotten."""
        ...

    async def overexposed(self, user_id: str, session_id: str, after: int) -> list[str]:
        """Items shown to the customer (or anonymous session) at least ``after`` times
        with no engagement since."""
        ...

    async def dismiss(self, user_id: str, session_id: str, items: Sequence[str]) -> None:
        """The customer (or, without ``user_id``, the anonymous session) turned
        ``items`` down: they stay away for ``dismiss_seconds`` (read back by
        :meth:`read_user` as :attr:`UserState.dismissed`)."""
        ...

    async def set_consent(
        self, user_id: str, consent: Consent, model_versions: Sequence[str]
    ) -> tuple[Consent, ForgetResult]:
        """Store ``consent`` (FULL: remove the stored one); anything but FULL deletes
        the stored profile (vectors under ``model_versions``, history, sessions) in
        the same transaction. The consent stored before, and what was deleted."""
        ...

    async def export(self, user_id: str) -> dict[str, Any]:
        """Everything the store holds of ``user_id`` (right of access): every key of
        theirs, and each decoded by kind (see :meth:`RedisLiveState.export`)."""
        ...

    async def merge_session(
        self, user_id: str, session_id: str, events: Sequence[LiveEvent]
    ) -> tuple[int, ...]:
        """Login: ``events`` (the anonymous session ``session_id`` as read, newest
        first) join ``user_id``'s history and their session, each exactly once however
        often and from however many replicas it is called; the anonymous session goes
        once nothing new arrived in it. Returns the positions of the events applied now.
        """
        ...

    async def forget(self, user_id: str, model_versions: Sequence[str]) -> ForgetResult:
        """Delete everything held for ``user_id`` at once (ForgetUser)."""
        ...

    async def aclose(self) -> None:
        """Release the connections."""
        ...


class RedisLiveState:
    """:class:`LiveState` in one Redis (a server, or the embedded one) or a Redis
    Cluster (``redis+cluster://``).

    Writes go through ``client`` (redis-py asyncio, or its ``RedisCluster``: every
    write is a single-slot command or server-side script, no MULTI or WATCH); the read
    of every Recommend through ``reader`` (:mod:`recsvc.store.reader`). Safe to share
    between the tasks of one event loop. Each method is one round trip (``forget``:
    one per id linked to the customer, plus theirs). If the reader keeps
    a client-side cache, every write here invalidates the keys it touched once it is
    done, so a Recommend after a RecordEvents of this process sees the event even
    before Redis's invalidation push arrives. ``aclose`` closes the client and the
    reader: this object owns both.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        keys: KeyScheme,
        limits: StateLimits,
        reader: StateReader | None = None,
    ) -> None:
        self._client = client
        self._reader: StateReader = reader if reader is not None else PipelineReader(client)
        self.keys = keys
        self.limits = limits
        self._record = client.register_script(_RECORD)
        self._drop_if_unchanged = client.register_script(_DROP_IF_UNCHANGED)
        self._count_shown = client.register_script(_COUNT_SHOWN)
        self._dismiss = client.register_script(_DISMISS)
        self._link_index = client.register_script(_LINK_INDEX)
        self._claim = client.register_script(_CLAIM)
        self._unlink_if = client.register_script(_UNLINK_IF)
        self._forget = client.register_script(_FORGET)

    @property
    def reader(self) -> StateReader:
        return self._reader

    async def aclose(self) -> None:
        await self._reader.aclose()
        await self._client.aclose()

    async def ping(self) -> None:
        with translated_errors("PING"):
            await self._client.ping()

    async def get_vector(self, model_version: str, user_id: str, factors: int) -> Vector | None:
        key = self.keys.vector(user_id, model_version)
        with translated_errors("reading a user vector"):
            raw = await self._client.get(key)
        return None if raw is None else _vector(raw, factors, model_version)

    async def set_vector(self, model_version: str, user_id: str, vector: Vector) -> None:
        key = self.keys.vector(user_id, model_version)
        if not np.isfinite(vector).all():
            raise DataError(f"vector for model {model_version} contains NaN or infinity")
        value = encode_vector(vector)
        try:
            with translated_errors("writing a user vector"):
                await self._client.set(key, value, ex=self.limits.vector_ttl_seconds)
        finally:
            self._written([key])

    async def read_user(
        self,
        model_version: str,
        user_id: str,
        session_id: str,
        factors: int,
        shown_after: int = 0,
    ) -> UserState:
        """One pipeline; the user id's ``linked`` key is in it, so an id that is not
        linked (nearly every one) costs nothing more, and a linked one a second read,
        of its customer's keys (a link never points to a linked id)."""
        state = await self._read_user(model_version, user_id, session_id, factors, shown_after)
        if not state.customer:
            return state
        customer = state.customer
        state = await self._read_user(
            model_version, customer, session_id, factors, shown_after, follow=False
        )
        return state._replace(customer=customer)

    async def _read_user(
        self,
        model_version: str,
        user_id: str,
        session_id: str,
        factors: int,
        shown_after: int,
        *,
        follow: bool = True,
    ) -> UserState:
        limits = self.limits
        commands: list[Command] = []
        if user_id:
            commands.append(("GET", self.keys.vector(user_id, model_version)))
            commands.append(
                ("LRANGE", self.keys.history(user_id), 0, limits.history_max_events - 1)
            )
            commands.append(("GET", self.keys.consent(user_id)))
            if follow:
                commands.append(("GET", self.keys.linked(user_id)))
        if session_id:
            key = self.keys.session(session_id, user_id)
            commands.append(("LRANGE", key, 0, limits.session_max_events - 1))
            if user_id:  # what this session did before the login (another hash slot)
                anonymous = self.keys.session(session_id)
                commands.append(("LRANGE", anonymous, 0, limits.session_max_events - 1))
        if not commands:
            return _NOTHING
        # dismissals ending within the hour still count: the argument changes hourly,
        # so the client-side cache keeps the answer like the rest
        hour = int(time.time()) // 3600 * 3600
        commands.append(("ZRANGEBYSCORE", self.keys.dismissed(user_id, session_id), hour, "+inf"))
        if shown_after > 0:
            shown = self.keys.shown(user_id, session_id)
            commands.append(("ZRANGEBYSCORE", shown, shown_after, "+inf"))
        try:  # translated_errors, inlined: a context manager per call costs ~2 µs
            replies = await self._reader.execute(commands)
        except REDIS_ERRORS as exc:
            raise store_error("reading user state", exc) from exc
        if shown_after > 0:
            overexposed = [m.decode() for m in replies[-1]]
            dismissed = [m.decode() for m in replies[-2]]
        else:
            overexposed, dismissed = [], [m.decode() for m in replies[-1]]
        if not user_id:
            return UserState(
                None,
                [],
                decode_events(replies[0], "session"),
                overexposed=overexposed,
                dismissed=dismissed,
            )
        raw, raw_history, raw_consent = replies[0], replies[1], replies[2]
        at = 3
        if follow:
            linked = replies[3]
            if linked is not None:
                return _NOTHING._replace(customer=linked.decode())
            at = 4
        return UserState(
            None if raw is None else _vector(raw, factors, model_version),
            decode_events(raw_history, "history") if raw_history else [],
            decode_events(replies[at], "session") if session_id else [],
            decode_events(replies[at + 1], "session") if session_id and replies[at + 1] else [],
            Consent.FULL if raw_consent is None else _consent(raw_consent),
            overexposed,
            dismissed,
        )

    async def count_shown(
        self, user_id: str, session_id: str, shown: Sequence[str], engaged: Sequence[str]
    ) -> None:
        if not (shown or engaged) or not (user_id or session_id):
            return
        key = self.keys.shown(user_id, session_id)
        limits = self.limits
        try:
            with translated_errors("counting impressions"):
                await self._count_shown(
                    keys=[key],
                    args=[limits.shown_ttl_seconds, limits.shown_max_items, len(shown),
                          *shown, *engaged],
                )  # fmt: skip
        finally:
            self._written([key])

    async def dismiss(self, user_id: str, session_id: str, items: Sequence[str]) -> None:
        if not items or not (user_id or session_id):
            return
        key = self.keys.dismissed(user_id, session_id)
        limits = self.limits
        try:
            with translated_errors("recording dismissed items"):
                await self._dismiss(
                    keys=[key],
                    args=[int(time.time()), limits.dismiss_seconds,
                          limits.dismissed_max_items, *items],
                )  # fmt: skip
        finally:
            self._written([key])

    async def overexposed(self, user_id: str, session_id: str, after: int) -> list[str]:
        if not (user_id or session_id) or after <= 0:
            return []
        key = self.keys.shown(user_id, session_id)
        try:
            (raw,) = await self._reader.execute([("ZRANGEBYSCORE", key, after, "+inf")])
        except REDIS_ERRORS as exc:
            raise store_error("reading impressions", exc) from exc
        return [m.decode() for m in raw]

    async def customers(self, user_ids: Sequence[str]) -> dict[str, tuple[str, Consent]]:
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        keys = self.keys
        commands: list[Command] = []
        for u in users:
            commands += [("GET", keys.linked(u)), ("GET", keys.consent(u))]
        try:
            replies = await self._reader.execute(commands)
            out: dict[str, tuple[str, Consent]] = {}
            linked: dict[str, str] = {}
            for i, u in enumerate(users):
                to, raw = replies[2 * i], replies[2 * i + 1]
                if to is None:
                    out[u] = (u, Consent.FULL if raw is None else _consent(raw))
                else:
                    linked[u] = to.decode()
            if linked:  # their customers' consents: a second read, for linked ids only
                customers = list(dict.fromkeys(linked.values()))
                raws = await self._reader.execute([("GET", keys.consent(c)) for c in customers])
                consent = {
                    c: Consent.FULL if raw is None else _consent(raw)
                    for c, raw in zip(customers, raws, strict=True)
                }
                for u, c in linked.items():
                    out[u] = (c, consent[c])
        except REDIS_ERRORS as exc:
            raise store_error("reading customers", exc) from exc
        return out

    async def links(self, customer: str) -> list[str]:
        key = self.keys.links(customer)
        since = int(time.time()) - self.limits.link_ttl_seconds
        with translated_errors("reading linked ids"):
            raw = cast("list[bytes]", await self._client.zrangebyscore(key, since, "+inf"))
        return [m.decode() for m in raw]

    async def link(
        self, customer: str, ids: Sequence[str], model_versions: Sequence[str]
    ) -> LinkResult:
        """Single-slot steps, so a Redis Cluster runs each on its node: the customer's
        index takes the ids (:data:`_LINK_INDEX`: refused if the customer is itself
        linked or would hold too many); then each id is claimed in its own slot
        (:data:`_CLAIM`: refused if it is linked elsewhere or has ids of its own). A
        refusal undoes what this call claimed and indexed. The index is written first so
        that a process dying half-way leaves at most an index entry without its link
        (harmless: ForgetUser deletes through it, ExportUser shows it), never a link
        that ForgetUser cannot find. Then each newly linked id's own state is moved."""
        keys, limits = self.keys, self.limits
        ids = list(dict.fromkeys(ids))
        index = keys.links(customer)
        now = int(time.time())
        try:
            with translated_errors("linking ids"):
                reply = await self._link_index(
                    keys=[keys.linked(customer), index],
                    args=[now, limits.link_ttl_seconds, limits.link_max_ids, *ids],
                )
        finally:
            self._written([index])
        status = int(reply[0])
        if status < 0:
            raise LinkRefused("chain" if status == -1 else "full")
        indexed = {m.decode() if isinstance(m, bytes) else str(m) for m in reply[1:]}
        claimed: list[str] = []
        refreshed: list[str] = []
        try:
            for i, alias in enumerate(ids):
                key = keys.linked(alias)
                try:
                    with translated_errors("linking ids"):
                        got = int(
                            await self._claim(
                                keys=[key, keys.links(alias)],
                                args=[customer, limits.link_ttl_seconds],
                            )
                        )
                finally:
                    self._written([key])
                if got <= 0:
                    raise LinkRefused("taken" if got == 0 else "chain", i)
                (claimed if got == 2 else refreshed).append(alias)
        except BaseException:
            await self._undo_link(customer, claimed, indexed)
            raise
        moved = 0
        for alias in claimed:
            moved += await self._adopt(customer, alias, model_versions)
        return LinkResult(tuple(claimed), tuple(refreshed), moved)

    async def _undo_link(self, customer: str, claimed: Sequence[str], indexed: set[str]) -> None:
        """Take back what a refused :meth:`link` wrote (best effort: a failure here
        leaves index entries without links, which are harmless)."""
        keys = self.keys
        try:
            for alias in claimed:
                await self._unlink_if(keys=[keys.linked(alias)], args=[customer])
            if indexed:
                await self._client.zrem(keys.links(customer), *indexed)
        except REDIS_ERRORS as exc:
            log.warning("undoing a refused link failed: %s", store_error("unlinking", exc))
        finally:
            self._written([keys.links(customer), *(keys.linked(a) for a in claimed)])

    async def _adopt(self, customer: str, alias: str, model_versions: Sequence[str]) -> int:
        """Move a newly linked id's own state to the customer: its sessions and history
        are recorded for the customer with ids of their own (``link|<id>|<event>``: a
        repeat applies nothing twice), a stricter consent it stored passes to the
        customer, then its profile is deleted. The events applied."""
        keys = self.keys
        with translated_errors("moving a linked id's state"):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.lrange(keys.history(alias), 0, -1)
                pipe.zrange(keys.user_sessions(alias), 0, -1)
                pipe.get(keys.consent(alias))
                raw_history, session_ids, raw_consent = await pipe.execute()
            sessions: dict[str, list[bytes]] = {}
            for raw_id in cast("list[bytes]", session_ids):
                sid = raw_id.decode()
                raws = await self._client.lrange(keys.session(sid, alias), 0, -1)
                sessions[sid] = cast("list[bytes]", raws)
        moved = 0

        def ids(events: Sequence[LiveEvent]) -> list[str]:
            return [f"link|{alias}|{encode_event(e).decode()}" for e in events]

        # sessions first: recording one also puts its events in the history, and the
        # history's copies of them are then skipped by their ids
        for session_id, entries in sessions.items():
            events = decode_events(entries, "session")
            moved += len(await self.record(customer, session_id, events, ids(events)))
        history = decode_events(cast("list[bytes]", raw_history), "history")
        moved += len(await self.record(customer, "", history, ids(history)))
        if raw_consent is not None:
            stricter = _consent(cast("bytes", raw_consent))
            (current,) = (await self.customers([customer])).values()
            if _STRICTNESS[stricter] > _STRICTNESS[current[1]]:
                await self.set_consent(customer, stricter, model_versions)
        await self._delete_profile(alias, model_versions, also=(keys.consent(alias),))
        return moved

    async def unlink(self, customer: str, ids: Sequence[str]) -> tuple[str, ...]:
        keys = self.keys
        done: list[str] = []
        for alias in dict.fromkeys(ids):
            key = keys.linked(alias)
            try:
                with translated_errors("unlinking ids"):
                    if int(await self._unlink_if(keys=[key], args=[customer])):
                        done.append(alias)
            finally:
                self._written([key])
        index = keys.links(customer)
        try:
            with translated_errors("unlinking ids"):
                await self._client.zrem(index, *ids)
        finally:
            self._written([index])
        return tuple(done)

    async def set_consent(
        self, user_id: str, consent: Consent, model_versions: Sequence[str]
    ) -> tuple[Consent, ForgetResult]:
        """The consent key is set (or deleted, for FULL) in the same script that
        deletes the profile (see :meth:`forget`), so no write of the customer can land
        between them; the record script refuses writes for a customer whose stored
        consent is not FULL."""
        key = self.keys.consent(user_id)
        with translated_errors("reading a consent"):
            raw = cast("bytes | None", await self._client.get(key))
        previous = Consent.FULL if raw is None else _consent(raw)
        if consent is Consent.FULL:
            try:
                with translated_errors("storing a consent"):
                    await self._client.delete(key)
            finally:
                self._written([key])
            return previous, ForgetResult(0, 0, 0)
        result = await self._delete_profile(
            user_id, model_versions, also=(key,), set_last=consent.value
        )
        return previous, result

    async def get_session(self, session_id: str, user_id: str = "") -> list[LiveEvent]:
        key = self.keys.session(session_id, user_id)
        with translated_errors("reading a session"):
            raws = await self._client.lrange(key, 0, self.limits.session_max_events - 1)
        return decode_events(raws, "session")

    async def record(
        self,
        user_id: str,
        session_id: str,
        events: Sequence[LiveEvent],
        event_ids: Sequence[str] | None = None,
    ) -> tuple[int, ...]:
        """Append ``events`` to the user's history and to the session, at most once each,
        in one server-side script (:data:`_RECORD`, atomic like a MULTI).

        Either id may be empty: no user = an anonymous session only; no session =
        history only. An event whose id is in the user's (or the anonymous session's)
        ``seen`` set is skipped: a retry after a lost answer applies nothing twice (with
        no ids, an event and its session are its id: an identical one is applied once). The
        set keeps ids for ``dedupe_seconds`` and at most ``dedupe_max_ids`` of them.
        Within a batch, events are ordered by timestamp, so the newest ends up first; a
        batch arriving later counts as newer whatever its timestamps. Lists are trimmed
        to their bounds and their TTLs refreshed. Returns the positions (in ``events``)
        of the events applied now.
        """
        if event_ids is not None and len(event_ids) != len(events):
            raise ValueError("one event id per event")
        if not events or not (user_id or session_id):
            return ()
        limits, keys = self.limits, self.keys
        order = sorted(range(len(events)), key=lambda i: events[i].timestamp)
        touched = [keys.seen(user_id, session_id)]
        if user_id:
            touched.append(keys.history(user_id))
        if session_id:
            touched.append(keys.session(session_id, user_id))
            if user_id:
                touched.append(keys.user_sessions(user_id))
        if user_id:
            touched.append(keys.consent(user_id))  # read by the script, never written
        args: list[Any] = [
            int(time.time()),
            limits.dedupe_seconds,
            limits.dedupe_max_ids,
            "1" if user_id else "0",
            "1" if session_id else "0",
            limits.history_max_events,
            limits.history_ttl_seconds,
            limits.session_max_events,
            limits.session_ttl_seconds,
            session_id,
        ]
        for i in order:
            encoded = encode_event(events[i])
            event_id = f"{session_id}|".encode() + encoded if event_ids is None else event_ids[i]
            args += [event_id, encoded]
        try:
            with translated_errors("recording events"):
                applied = await self._record(keys=touched, args=args)
        finally:
            self._written(touched)
        return tuple(order[int(i)] for i in applied)

    async def export(self, user_id: str) -> dict[str, Any]:
        """Every key of the customer, found by a SCAN of their keys' pattern (so a key
        of a kind or model version this replica does not know is listed too: one pass
        over the keyspace, an administrative call), then read by kind: ``vectors``
        (model version -> factors), ``history`` and ``sessions`` (events, newest
        first), ``session_index`` (session id -> last use), ``seen_event_ids``
        (event id -> when applied), ``consent``, ``shown`` (item -> impressions),
        ``dismissed`` (item -> when its dismissal ends), ``linked_to`` (the customer
        this id is linked to), ``linked_ids`` (id -> when
        linked to this customer); ``other``: the type of any other key."""
        tag, pattern = self.keys.user_pattern(user_id)
        out: dict[str, Any] = {
            "keys": [],
            "consent": Consent.FULL.value,
            "vectors": {},
            "history": [],
            "sessions": {},
            "session_index": {},
            "seen_event_ids": {},
            "shown": {},
            "dismissed": {},
            "linked_to": None,
            "linked_ids": {},
            "other": {},
        }
        client = self._client
        with translated_errors("exporting a user"):
            found = sorted(
                [
                    cast("bytes", k).decode()
                    async for k in client.scan_iter(match=pattern, count=1000)
                ]
            )
            out["keys"] = found
            for key in found:
                kind = key[len(tag) + 1 :]
                if kind.startswith("vec:"):
                    raw = cast("bytes | None", await client.get(key))
                    if raw is not None:
                        vector = np.frombuffer(raw, dtype="<f4").astype(float).tolist()
                        out["vectors"][kind[4:]] = vector
                elif kind == "hist" or kind.startswith("sess:"):
                    raws = cast("list[bytes]", await client.lrange(key, 0, -1))
                    events = [_event_json(e) for e in decode_events(raws, kind)]
                    if kind == "hist":
                        out["history"] = events
                    else:
                        out["sessions"][kind[5:]] = events
                elif kind in ("sessions", "seen"):
                    pairs = cast(
                        "list[tuple[bytes, float]]",
                        await client.zrange(key, 0, -1, withscores=True),
                    )
                    field = "session_index" if kind == "sessions" else "seen_event_ids"
                    out[field] = {m.decode(): int(score) for m, score in pairs}
                elif kind in ("shown", "links", "dismissed"):
                    pairs = cast(
                        "list[tuple[bytes, float]]",
                        await client.zrange(key, 0, -1, withscores=True),
                    )
                    field = {"shown": "shown", "links": "linked_ids"}.get(kind, kind)
                    out[field] = {m.decode(): int(score) for m, score in pairs}
                elif kind == "linked":
                    raw = cast("bytes | None", await client.get(key))
                    out["linked_to"] = None if raw is None else raw.decode()
                elif kind == "consent":
                    raw = cast("bytes | None", await client.get(key))
                    if raw is not None:
                        out["consent"] = _consent(raw).value
                else:
                    out["other"][kind] = cast("bytes", await client.type(key)).decode()
        return out

    async def merge_session(
        self, user_id: str, session_id: str, events: Sequence[LiveEvent]
    ) -> tuple[int, ...]:
        """Two single-slot steps (a Redis Cluster runs each on its node): the events are
        recorded for the customer with ids of their own (``login|<session>|<event>``),
        which the customer's ``seen`` set applies once; then the anonymous session is
        unlinked by :data:`_DROP_IF_UNCHANGED` only when it still holds exactly what was
        read (an event that arrived meanwhile keeps it for the next merge). Its ``seen``
        set stays until it expires, so an anonymous event retried later is not applied
        again."""
        if not (user_id and session_id and events):
            return ()
        ids = [f"login|{session_id}|{encode_event(e).decode()}" for e in events]
        applied = await self.record(user_id, session_id, events, ids)
        anonymous = self.keys.session(session_id)
        try:
            with translated_errors("dropping a merged session"):
                await self._drop_if_unchanged(
                    keys=[anonymous], args=[len(events), encode_event(events[0])]
                )
        finally:
            self._written([anonymous])
        return applied

    async def forget(self, user_id: str, model_versions: Sequence[str]) -> ForgetResult:
        """In one script (:data:`_FORGET`): the user's vector under each of
        ``model_versions``, the history and every session tied to the user, plus the
        session index, read and deleted in the same atomic step, so a session tied
        concurrently is never left behind. Anonymous sessions the user may have
        had before logging in carry no user id and are not touched. Then the same for
        every id linked to the customer, and their links (one script each: they live in
        other hash slots).
        """
        keys = self.keys
        linked = await self.links(user_id)
        result = await self._delete_profile(
            user_id,
            model_versions,
            also=(keys.consent(user_id), keys.links(user_id), keys.linked(user_id)),
        )
        vectors, history, sessions = (
            result.deleted_vectors,
            result.deleted_history_events,
            result.deleted_sessions,
        )
        for alias in linked:
            r = await self._delete_profile(
                alias, model_versions, also=(keys.consent(alias), keys.linked(alias))
            )
            vectors += r.deleted_vectors
            history += r.deleted_history_events
            sessions += r.deleted_sessions
        return ForgetResult(vectors, history, sessions, tuple(linked))

    async def _delete_profile(
        self,
        user_id: str,
        model_versions: Sequence[str],
        also: Sequence[str],
        set_last: str = "",
    ) -> ForgetResult:
        """Delete the customer's profile, and the keys ``also`` (more of theirs), in one
        script (:data:`_FORGET`): it reads the session index and deletes the sessions
        it names in the same atomic step, so a session tied concurrently is either
        deleted or tied after the erasure, never left behind; one hash slot, so a
        Redis Cluster runs it on the customer's node. ``set_last``: the last key of
        ``also`` is then set to it (a consent, stored in the same step)."""
        keys = self.keys
        vectors = [keys.vector(user_id, v) for v in dict.fromkeys(model_versions)]
        profile = [
            keys.history(user_id),
            keys.user_sessions(user_id),
            keys.seen(user_id),
            keys.shown(user_id),
            keys.dismissed(user_id),
        ]
        head = keys.tied_session_head(user_id)
        touched = [*profile, *vectors, *also]
        try:
            with translated_errors("forgetting a user"):
                reply = await self._forget(keys=touched, args=[len(vectors), head, set_last])
        except BaseException:
            self._reader.invalidate(None)  # which sessions went is unknown: every key
            raise
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in reply[3:]]
        self._written([*touched, *(head + i for i in ids)])
        return ForgetResult(int(reply[0]), int(reply[1]), int(reply[2]))

    def _written(self, keys: Iterable[str]) -> None:
        """After a write to ``keys`` (done, failed or unknown): a client-side cache must
        not answer from what it held for them."""
        self._reader.invalidate(keys)


def open_live_state(url: str, settings: Settings) -> RedisLiveState:
    """The live state at ``url`` as ``settings`` configure it: the request path's client
    (``[redis] socket_timeout_seconds``), the read path ``[redis] read_client`` with the
    ``[server] state_cache_*`` client-side cache, key prefix and limits. Nothing is sent
    until the first call. Raises ConfigError for a URL or settings that cannot work."""
    r, s = settings.redis, settings.server
    client = async_client_from_url(url, socket_timeout=r.socket_timeout_seconds)
    reader = open_reader(
        url,
        client,
        r.read_client,
        socket_timeout=r.socket_timeout_seconds,
        cache_entries=s.state_cache_size,
        cache_seconds=s.state_cache_seconds,
    )
    return RedisLiveState(
        client,
        keys=KeyScheme(r.prefix),
        limits=StateLimits.from_settings(settings),
        reader=reader,
    )


_STRICTNESS: Final = {Consent.FULL: 0, Consent.SESSION_ONLY: 1, Consent.OFF: 2}

_LINK_INDEX: Final = """
-- KEYS: the customer's linked key, their index of linked ids (one hash slot).
-- ARGV: now, ttl, most ids, the ids. Returns {-1}: the customer is itself linked;
-- {-2}: too many ids; else {1, the ids not in the index before (now in it)}.
if redis.call("EXISTS", KEYS[1]) == 1 then return {-1} end
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. (now - ttl))
local new = {}
for i = 4, #ARGV do
  if not redis.call("ZSCORE", KEYS[2], ARGV[i]) then new[#new + 1] = ARGV[i] end
end
if redis.call("ZCARD", KEYS[2]) + #new > tonumber(ARGV[3]) then return {-2} end
for i = 4, #ARGV do redis.call("ZADD", KEYS[2], now, ARGV[i]) end
redis.call("EXPIRE", KEYS[2], ttl)
return {1, unpack(new)}
"""

_CLAIM: Final = """
-- KEYS: an id's linked key, its own index of linked ids (one hash slot).
-- ARGV: the customer, ttl. Returns -1: ids are linked to this id (a chain);
-- 0: linked to another customer; 1: linked to this one already (renewed); 2: linked.
if redis.call("ZCARD", KEYS[2]) > 0 then return -1 end
local current = redis.call("GET", KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call("SET", KEYS[1], ARGV[1], "EX", tonumber(ARGV[2]))
if current then return 1 end
return 2
"""

_UNLINK_IF: Final = """
-- KEYS: an id's linked key. ARGV: the customer. Deletes the link only if it is theirs.
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0
"""

_DISMISS: Final = """
-- KEYS: a shopper's dismissed items. ARGV: now, seconds, most items, the items.
-- Each is dismissed until now + seconds; ended ones go, then the soonest to end.
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #ARGV do redis.call("ZADD", KEYS[1], now + ttl, ARGV[i]) end
redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", "(" .. now)
if redis.call("ZCARD", KEYS[1]) > tonumber(ARGV[3]) then
  redis.call("ZREMRANGEBYRANK", KEYS[1], 0, -tonumber(ARGV[3]) - 1)
end
redis.call("EXPIRE", KEYS[1], ttl)
return 0
"""

_COUNT_SHOWN: Final = """
-- KEYS: a shopper's impression counts. ARGV: ttl, most items, how many shown,
-- the shown items, then the engaged ones (their counts start again).
local n = tonumber(ARGV[3])
for i = 4, 3 + n do redis.call("ZINCRBY", KEYS[1], 1, ARGV[i]) end
for i = 4 + n, #ARGV do redis.call("ZREM", KEYS[1], ARGV[i]) end
if redis.call("ZCARD", KEYS[1]) > tonumber(ARGV[2]) then
  redis.call("ZREMRANGEBYRANK", KEYS[1], 0, -tonumber(ARGV[2]) - 1)
end
if n > 0 then redis.call("EXPIRE", KEYS[1], tonumber(ARGV[1])) end
return 0
"""

_FORGET: Final = """
-- KEYS: history, session index, seen, shown, dismissed, the vectors, more keys of the
-- customer (one hash slot: theirs). ARGV: how many vectors, the head of their tied
-- sessions' keys (head .. session id), a value to set the last key to ("": none).
-- Returns {vectors, history events, sessions deleted, the index's session ids...}.
-- The tied sessions' keys are built here from the index, in the customer's slot: read
-- and deleted in one atomic step.
local n_vectors = tonumber(ARGV[1])
local history = redis.call("LLEN", KEYS[1])
local ids = redis.call("ZRANGE", KEYS[2], 0, -1)
local sessions = 0
for _, id in ipairs(ids) do sessions = sessions + redis.call("UNLINK", ARGV[2] .. id) end
local vectors = 0
for i = 6, 5 + n_vectors do vectors = vectors + redis.call("UNLINK", KEYS[i]) end
for i = 1, 5 do redis.call("UNLINK", KEYS[i]) end
for i = 6 + n_vectors, #KEYS do redis.call("UNLINK", KEYS[i]) end
if ARGV[3] ~= "" then redis.call("SET", KEYS[#KEYS], ARGV[3]) end
return {vectors, history, sessions, unpack(ids)}
"""

_DROP_IF_UNCHANGED: Final = """
-- KEYS: an anonymous session's list. ARGV: its length and newest entry when read.
-- Unlinks it only if nothing was added since (a push changes the newest entry).
if redis.call('LLEN', KEYS[1]) == tonumber(ARGV[1])
    and redis.call('LINDEX', KEYS[1], 0) == ARGV[2] then
  return redis.call('UNLINK', KEYS[1])
end
return 0
"""

_RECORD: Final = """
-- KEYS: seen, [history], [session, [sessions index]], [consent]  (one hash slot: the
-- user's or the anonymous session's tag)
-- ARGV: now, dedupe seconds, dedupe max ids, has history, has session,
--       history max, history ttl, session max, session ttl, session id,
--       then (event id, encoded event) pairs, oldest first
local now = tonumber(ARGV[1])
local seen = KEYS[1]
local at = 2
local history, session, index
if ARGV[4] == "1" then history = KEYS[at]; at = at + 1 end
if ARGV[5] == "1" then session = KEYS[at]; at = at + 1 end
if history and session then index = KEYS[at]; at = at + 1 end
-- a customer whose stored consent is not full keeps nothing (SetConsent raced this)
if history and redis.call("EXISTS", KEYS[at]) == 1 then return {} end
redis.call("ZREMRANGEBYSCORE", seen, "-inf", "(" .. (now - tonumber(ARGV[2])))
local fresh = {}
local applied = {}
for i = 11, #ARGV, 2 do
  if redis.call("ZADD", seen, "NX", now, ARGV[i]) == 1 then
    fresh[#fresh + 1] = ARGV[i + 1]
    applied[#applied + 1] = (i - 11) / 2
  end
end
redis.call("ZREMRANGEBYRANK", seen, 0, -tonumber(ARGV[3]) - 1)
redis.call("EXPIRE", seen, tonumber(ARGV[2]))
if #fresh == 0 then return applied end
local function push(key, max, ttl)
  redis.call("LPUSH", key, unpack(fresh))
  redis.call("LTRIM", key, 0, max - 1)
  redis.call("EXPIRE", key, ttl)
end
if history then push(history, tonumber(ARGV[6]), tonumber(ARGV[7])) end
if session then
  local ttl = tonumber(ARGV[9])
  push(session, tonumber(ARGV[8]), ttl)
  if index then
    -- ids idle for two TTLs expired long ago, clock skew between replicas allowed
    -- for; pruning one whose key still lived would hide it from ForgetUser
    redis.call("ZADD", index, now, ARGV[10])
    redis.call("ZREMRANGEBYSCORE", index, "-inf", "(" .. (now - 2 * ttl))
    redis.call("EXPIRE", index, ttl)
  end
end
return applied
"""
"""Apply a batch of events at most once each (:meth:`RedisLiveState.record`)."""


def _event_json(e: LiveEvent) -> dict[str, Any]:
    return {
        "item_id": e.item_id,
        "event_type": e.event_type.value,
        "timestamp": e.timestamp,
        "quantity": e.quantity,
    }


def _consent(raw: bytes) -> Consent:
    """A stored consent; an unknown value (a newer replica's) counts as OFF: when in
    doubt, personalise nothing."""
    try:
        return Consent(raw.decode())
    except (ValueError, UnicodeDecodeError):
        return Consent.OFF


def _vector(raw: Any, factors: int, model_version: str) -> Vector:
    if not isinstance(raw, bytes):
        raise StoreError("got text, not bytes, from Redis: the client must not decode responses")
    try:
        return decode_vector(raw, factors)
    except StoreError as exc:
        raise StoreError(f"user vector of model {model_version}: {exc}") from exc
