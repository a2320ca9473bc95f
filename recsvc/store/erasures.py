"""The erasure list in Redis: a shared record collection (:mod:`recsvc.store.records`)
of :class:`recsvc.erasure.Erasure`, under ``{prefix}:{erased}:*``.

ForgetUser writes the ids it erases here as well as to the replica's own erasure list
file (:mod:`recsvc.erasure`); every replica follows the collection and merges it into
its file (:class:`recsvc.serving.erasures.SharedErasures`), and the trainer and the
publisher read it beside their file (:func:`read_shared_erasures`), so replicas that
share no directory honour one erasure. Records are never removed: an erasure holds for
as long as the store does (run Redis with persistence; the files are the durable copy).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from recsvc.erasure import Erasure, read_erasure_list
from recsvc.store.clients import client_from_url, translated_errors
from recsvc.store.keys import KeyScheme
from recsvc.store.records import RecordLog

if TYPE_CHECKING:
    from recsvc.config import Settings

__all__ = ["ErasureStore", "erased_users", "read_shared_erasures"]


class ErasureStore(RecordLog[Erasure]):
    """The erasure list of one Redis. Raises StoreError for any Redis failure."""

    tag = "erased"
    what = "erasure list"
    decode = staticmethod(Erasure.from_record)

    async def add(self, user_ids: Iterable[str], now: int | None = None) -> int:
        """Erase ``user_ids`` (again: harmless) in one change; its version."""
        at = int(time.time()) if now is None else now
        return await self.write("erase", [Erasure(u, at) for u in dict.fromkeys(user_ids)])


def read_shared_erasures(url: str, keys: KeyScheme) -> frozenset[str]:
    """Every id of the shared erasure list at ``url`` (the trainer's and the
    publisher's read: a HSCAN, blocking). StoreError when Redis fails."""
    items, _, _ = keys.erasures()
    client = client_from_url(url, socket_timeout=10.0)
    ids: set[str] = set()
    try:
        with translated_errors("reading the shared erasure list"):
            for _, raw in client.hscan_iter(items, count=2_000):
                try:
                    ids.add(Erasure.from_record(json.loads(raw)).user_id)
                except ValueError:  # a newer record format: its id is still the key
                    continue
    finally:
        client.close()
    return frozenset(ids)


def erased_users(settings: Settings) -> frozenset[str]:
    """Everyone erased: the erasure list file, and with a Redis URL configured the shared
    list too (what replicas with no shared directory erased). StoreError when that Redis
    cannot be read: an erasure is never skipped silently."""
    erased = read_erasure_list(settings.erasure_path)
    if settings.redis.url is None:
        return erased
    return erased | read_shared_erasures(settings.redis.url, KeyScheme(settings.redis.prefix))
