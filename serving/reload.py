"""The model being served, and hot reload.

A :class:`LoadedModel` is immutable once built. A request takes the current one at
its start and uses it to the end, so a swap never changes a model under a call in
flight: old calls finish on the old model, new calls get the new one. Loading
(reading, verifying checksums, building lookups) runs in a worker thread so the
event loop keeps serving meanwhile; a broken artifact is refused and the old model
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from recsvc import artifact as art
from recsvc.errors import ModelNotLoadedError, RecsvcError
from recsvc.model import Model
from recsvc.ranking import Ranker

__all__ = ["LoadedModel", "ModelHolder", "ReloadOutcome"]

log = logging.getLogger(__name__)


class ReloadOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class LoadedModel:
    model: Model
    ranker: Ranker
    path: Path
    loaded_at: datetime

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def trained_at(self) -> datetime:
        """When the trainer built the model (the manifest's ``created_at``)."""
        return self.model.artifact.manifest.created_at


class ModelHolder:
    """Holds the served model; :meth:`reload` follows the artifact root's CURRENT."""

    def __init__(
        self,
        root: Path,
        *,
        overfetch: int,
        on_reload: Callable[[ReloadOutcome, LoadedModel | None], None] | None = None,
    ) -> None:
        self.root = root
        self.overfetch = overfetch
        self._current: LoadedModel | None = None
        self._on_reload = on_reload
        self._lock = asyncio.Lock()
        self.loaded_versions: list[str] = []
        """Every version this process has served, oldest first (for ForgetUser)."""
        self._refusal: str | None = None
        """The last refusal logged: CURRENT is polled every few seconds, and the same
        refusal is logged once (each attempt still counts as a failure)."""

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def _load(self, version: str) -> LoadedModel:
        path = art.resolve(self.root, version)
        artifact = art.read_artifact(path, verify_checksums=True)
        model = Model(artifact)
        return LoadedModel(model, Ranker(model, self.overfetch), path, datetime.now(UTC))

    async def load_version(self, version: str) -> LoadedModel:
        """Load ``version`` beside the served one (an experiment's variant), verified as
        a reload is, in a worker thread; the current model if it is that version.
        Raises what loading raises (RecsvcError, OSError, ValueError)."""
        current = self._current
        if current is not None and current.version == version:
            return current
        loaded = await asyncio.to_thread(self._load, version)
        if version not in self.loaded_versions:
            self.loaded_versions.append(version)
        return loaded

    async def reload(self) -> ReloadOutcome:
        """Load CURRENT if it names another version than the one served."""
        async with self._lock:
            try:
                version = art.current_version(self.root)
            except OSError as exc:
                return self._finish(ReloadOutcome.FAILURE, None, f"cannot read CURRENT: {exc}")
            if version is None:
                return self._finish(ReloadOutcome.UNCHANGED, None, None)
            if self._current is not None and self._current.version == version:
                return self._finish(ReloadOutcome.UNCHANGED, None, None)
            try:
                loaded = await asyncio.to_thread(self._load, version)
            except (RecsvcError, OSError, ValueError, RuntimeError) as exc:
                # keep serving the old model; the artifact is broken or half-copied
                return self._finish(ReloadOutcome.FAILURE, None, f"refused {version}: {exc}")
            previous = self._current
            self._current = loaded
            if version not in self.loaded_versions:
                self.loaded_versions.append(version)
            log.info("serving model %s (was %s)", version, previous.version if previous else "none")
            return self._finish(ReloadOutcome.SUCCESS, loaded, None)

    def _finish(
        self, outcome: ReloadOutcome, loaded: LoadedModel | None, error: str | None
    ) -> ReloadOutcome:
        if error and error != self._refusal:
            log.error("model reload failed: %s", error)
        if outcome is not ReloadOutcome.UNCHANGED:
            self._refusal = error
        if self._on_reload is not None:
            self._on_reload(outcome, loaded)
        return outcome

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Poll CURRENT every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                await self.reload()

    def require(self) -> LoadedModel:
        """The current model, or ModelNotLoadedError."""
        current = self._current
        if current is None:
            raise ModelNotLoadedError("no model loaded yet; publish one with `recsvc publish`")
        return current
