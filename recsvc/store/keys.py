"""Every Redis key recsvc reads or writes, built here and nowhere else.

The scheme (pinned by a golden test; change it only with a migration)::

    {prefix}:{u:<user>}:vec:<V>          STRING  user factors of model version V     (TTL)
    {prefix}:{u:<user>}:hist             LIST    the user's recent events, newest first
    {prefix}:{u:<user>}:sess:<session>   LIST    a known user's live session, newest first
    {prefix}:{u:<user>}:sessions         ZSET    the user's session ids, scored by last use
    {prefix}:{u:<user>}:seen             ZSET    event ids applied, scored by when (dedupe)
    {prefix}:{u:<user>}:consent          STRING  stored consent: "session" or "off" (none: full)
    {prefix}:{u:<user>}:shown            ZSET    impressions per item since its last engagement
    {prefix}:{u:<id>}:linked             STRING  the customer this id is linked to      (TTL)
    {prefix}:{u:<user>}:links            ZSET    the ids linked to the customer, by when (TTL)
    {prefix}:{s:<session>}:shown         ZSET    the same for an anonymous session
    {prefix}:{u:<user>}:dismissed        ZSET    items turned down, scored by when that ends
    {prefix}:{s:<session>}:dismissed     ZSET    the same for an anonymous session
    {prefix}:{s:<session>}:items         LIST    an anonymous live session, newest first
    {prefix}:{s:<session>}:seen          ZSET    an anonymous session's applied event ids
    {prefix}:{cat}:items                 HASH    the live catalogue: item id -> record
    {prefix}:{cat}:log                   STREAM  its changes, for replicas to follow
    {prefix}:{cat}:seq                   STRING  the number of the last change
    {prefix}:{erased}:items              HASH    the shared erasure list: id -> record
    {prefix}:{erased}:log / :seq         STREAM, STRING  its changes (as the catalogue's)
    {prefix}:{trend}:items               ZSET    live popularity, forward-decayed scores
    {prefix}:{trend}:epoch               STRING  the epoch of those scores (Unix seconds)

``prefix`` defaults to ``recsvc``. ``{u:<user>}`` and ``{s:<session>}`` are Redis Cluster
*hash tags*: Cluster hashes only the text between the first ``{`` and the next ``}``, so
every key of one user lands in one slot, and every multi-key operation of one user
(record, read, ForgetUser) is a single-slot MULTI or pipeline. That is also why the
prefix may not contain braces (the tag would move into the prefix and put every user in
one slot). A user id that itself contains ``}`` still works: the tag ends early, but
identically for all of that user's keys. Versions may hold no ``:`` (``vec:<V>`` stays
the last segment, so one version's SCAN pattern never matches another's key) and
neither part holds glob metacharacters.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["DEFAULT_PREFIX", "KeyScheme", "checked_version"]

DEFAULT_PREFIX: Final = "recsvc"

_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9._:-]+")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def checked_version(model_version: str) -> str:
    """``model_version`` if it can be part of a key, else ValueError."""
    if not _VERSION_RE.fullmatch(model_version):
        raise ValueError(f"model_version must match {_VERSION_RE.pattern}, got {model_version!r}")
    return model_version


class KeyScheme:
    """The keys under one ``prefix`` (validated once, here).

    Builders raise ValueError for a part no key can be made of: an empty user or
    session id, a malformed model version. They are on the request path, so the checks
    are the cheap ones above and nothing else.
    """

    __slots__ = ("_checked_versions", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"key prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        self.prefix = prefix
        self._checked_versions: set[str] = set()

    def _user(self, user_id: str) -> str:
        if not user_id:
            raise ValueError("user_id must be a non-empty string (anonymous users have no keys)")
        return f"{self.prefix}:{{u:{user_id}}}"

    def _version(self, model_version: str) -> str:
        # checked once per version: this runs on every Recommend
        if model_version not in self._checked_versions:
            checked_version(model_version)
            self._checked_versions.add(model_version)
        return model_version

    def vector(self, user_id: str, model_version: str) -> str:
        """The user's factors under ``model_version``: ``{prefix}:{u:<id>}:vec:<V>``."""
        return f"{self._user(user_id)}:vec:{self._version(model_version)}"

    def history(self, user_id: str) -> str:
        """The user's recent events: ``{prefix}:{u:<id>}:hist``."""
        return f"{self._user(user_id)}:hist"

    def session(self, session_id: str, user_id: str = "") -> str:
        """A live session's events: tied to ``user_id`` when given
        (``{prefix}:{u:<user>}:sess:<id>``, in the user's slot, found by ForgetUser
        through :meth:`user_sessions`), anonymous otherwise (``{prefix}:{s:<id>}:items``)."""
        if not session_id:
            raise ValueError("session_id must be a non-empty string")
        if user_id:
            return f"{self._user(user_id)}:sess:{session_id}"
        return f"{self.prefix}:{{s:{session_id}}}:items"

    def tied_session_head(self, user_id: str) -> str:
        """``head`` with ``head + session_id == session(session_id, user_id)``: how a
        server-side script (ForgetUser) builds the keys of the sessions the index names."""
        return f"{self._user(user_id)}:sess:"

    def user_sessions(self, user_id: str) -> str:
        """The index of the user's session ids: ``{prefix}:{u:<id>}:sessions``."""
        return f"{self._user(user_id)}:sessions"

    def user_pattern(self, user_id: str) -> tuple[str, str]:
        """``(prefix, pattern)``: every key of the customer starts with ``prefix + ":"``;
        ``pattern`` matches exactly those in a SCAN (glob characters of the id escaped)."""
        tag = self._user(user_id)
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in tag)
        return tag, f"{escaped}:*"

    def shown(self, user_id: str = "", session_id: str = "") -> str:
        """Impression counts per item (rotation) of the customer, or without one of
        the anonymous session: ``{prefix}:{u:<user>}:shown`` or
        ``{prefix}:{s:<session>}:shown``."""
        if user_id:
            return f"{self._user(user_id)}:shown"
        if not session_id:
            raise ValueError("a user_id or a session_id is required")
        return f"{self.prefix}:{{s:{session_id}}}:shown"

    def dismissed(self, user_id: str = "", session_id: str = "") -> str:
        """Items the customer (or, without one, the anonymous session) turned down (not
        interested, returned), scored by the Unix time their dismissal ends:
        ``{prefix}:{u:<user>}:dismissed`` or ``{prefix}:{s:<session>}:dismissed``."""
        if user_id:
            return f"{self._user(user_id)}:dismissed"
        if not session_id:
            raise ValueError("a user_id or a session_id is required")
        return f"{self.prefix}:{{s:{session_id}}}:dismissed"

    def consent(self, user_id: str) -> str:
        """The customer's stored consent (:class:`recsvc.consent.Consent`; no key:
        full): ``{prefix}:{u:<id>}:consent``."""
        return f"{self._user(user_id)}:consent"

    def linked(self, user_id: str) -> str:
        """The customer an external id (device, card, app id) is linked to
        (:meth:`recsvc.store.LiveState.link`): ``{prefix}:{u:<id>}:linked``, in the id's
        own slot, so the read of every request made with it finds it in its pipeline."""
        return f"{self._user(user_id)}:linked"

    def links(self, user_id: str) -> str:
        """The ids linked to the customer, scored by when they were (re)linked:
        ``{prefix}:{u:<id>}:links`` (ForgetUser and ExportUser follow it)."""
        return f"{self._user(user_id)}:links"

    def seen(self, user_id: str = "", session_id: str = "") -> str:
        """The ids of the events applied to the user (or, for an anonymous visitor, to
        the session) lately, so a retried event is applied once:
        ``{prefix}:{u:<user>}:seen`` or ``{prefix}:{s:<session>}:seen``."""
        if user_id:
            return f"{self._user(user_id)}:seen"
        if not session_id:
            raise ValueError("a user_id or a session_id is required")
        return f"{self.prefix}:{{s:{session_id}}}:seen"

    def records(self, tag: str) -> tuple[str, str, str]:
        """A shared record collection's keys (:mod:`recsvc.store.records`): its
        records, its change stream and its change counter, all in one hash slot
        (``{<tag>}``) so a change and its announcement are one atomic script."""
        slot = f"{self.prefix}:{{{tag}}}"
        return f"{slot}:items", f"{slot}:log", f"{slot}:seq"

    def catalog(self) -> tuple[str, str, str]:
        """The live catalogue's keys: :meth:`records` of ``cat``
        (:class:`recsvc.store.catalog.CatalogStore`)."""
        return self.records("cat")

    def rules(self) -> tuple[str, str, str]:
        """The merchandising rules' keys: :meth:`records` of ``rules``
        (:class:`recsvc.store.rules.RuleStore`)."""
        return self.records("rules")

    def erasures(self) -> tuple[str, str, str]:
        """The shared erasure list's keys: :meth:`records` of ``erased``
        (:class:`recsvc.store.erasures.ErasureStore`)."""
        return self.records("erased")

    def trending(self) -> tuple[str, str]:
        """Live popularity's keys: its scores and their epoch, in one hash slot."""
        tag = f"{self.prefix}:{{trend}}"
        return f"{tag}:items", f"{tag}:epoch"

    def cooccurrence(self, item_id: str, kind: str = "n") -> str:
        """What an item met (:mod:`recsvc.store.cooccur`), one sorted set per item:
        ``{prefix}:{n:<item>}:co`` what a new product was viewed or bought with,
        ``{prefix}:{b:<item>}:co`` what a trained item was bought with since
        training."""
        return f"{self.prefix}:{{{kind}:{item_id}}}:co"

    def cooccurrence_touched(self, kind: str = "n") -> str:
        """When each item's meetings of ``kind`` last changed
        (:mod:`recsvc.store.cooccur`): ``{prefix}:{n}:touched``, scored by Unix
        seconds."""
        return f"{self.prefix}:{{{kind}}}:touched"

    def vector_pattern(self, model_version: str) -> str:
        """SCAN MATCH pattern of every user's vector under ``model_version`` (both parts
        are validated to hold no glob metacharacters, so nothing needs escaping)."""
        return f"{self.prefix}:{{u:*}}:vec:{checked_version(model_version)}"

    def vector_parts(self, model_version: str) -> tuple[str, str]:
        """``(head, tail)`` with ``head + user_id + tail == vector(user_id, version)``:
        for writing millions of keys without a call per key (publish)."""
        return f"{self.prefix}:{{u:", f"}}:vec:{checked_version(model_version)}"
