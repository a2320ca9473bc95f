"""Following the shared erasure list (:mod:`recsvc.store.erasures`).

:class:`SharedErasures` is this replica's follower of the ids erased through any
replica: at start-up and at every change it merges them into the replica's own erasure
list (:meth:`recsvc.erasure.ErasureList.merge`: the file, durably, so this replica's
compaction removes their rows and the trainer reading its file drops them) and forgets
them from the in-process profiles. A change reaches it within a blocking read (well
under a second), like the catalogue's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from recsvc.erasure import Erasure, ErasureList
from recsvc.errors import StoreError
from recsvc.store.erasures import ErasureStore

from .follow import Follower

__all__ = ["SharedErasures"]

log = logging.getLogger(__name__)


class SharedErasures(Follower[Erasure]):
    """The shared erasure list, merged into ``erasures``; ``forget`` is called with
    every id new to this replica."""

    def __init__(
        self, store: ErasureStore, erasures: ErasureList, forget: Callable[[str], None]
    ) -> None:
        super().__init__(store)
        self.erasures = erasures
        self._forget = forget
        self._arrived: list[str] = []

    def reloaded(self, now: float) -> None:
        self._merge(list(self.records))

    def changed(self, record: Erasure, now: float) -> None:
        self._arrived.append(record.user_id)

    def tick(self) -> None:
        """After each read: the ids that arrived, merged in one append."""
        if self._arrived:
            arrived, self._arrived = self._arrived, []
            self._merge(arrived)

    def _merge(self, ids: list[str]) -> None:
        try:
            fresh = self.erasures.merge(ids)
        except (OSError, StoreError) as exc:  # the file: retried at the next reload
            log.error(
                "merging %d shared erasures into %s failed: %s", len(ids), self.erasures.path, exc
            )
            self._loaded = False
            raise StoreError(f"cannot write the erasure list: {exc}") from exc
        for user in fresh:
            self._forget(user)
