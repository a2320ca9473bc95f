"""The running A/B experiments as this replica sees them, and their variants' models.

The set is shared (:class:`recsvc.store.experiments.ExperimentStore`) and followed like
the rules are (:class:`serving.follow.Follower`); SetExperiments replaces it, and so
does a change of ``[server] experiments_file`` when one is watched. A variant naming a
model version gets it loaded beside the published one, in a worker thread; until every
model of an experiment is loaded the experiment does not split anyone (its answers
would otherwise carry a variant they were not computed by). A set that is not valid is
refused with every reason and the running one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from recsvc import artifact as art
from recsvc.errors import DataError, FieldViolation, InvalidRequestError, RecsvcError
from recsvc.experiments import Experiment, Variant, check_experiments, read_experiments
from recsvc.store.experiments import ExperimentStore

from .follow import Follower
from .metrics import ServingMetrics
from .newitems import NewItemLane, NewItems
from .placements import file_stamp
from .reload import LoadedModel, ModelHolder

__all__ = ["LiveExperiments"]

log = logging.getLogger(__name__)

MAX_EXPERIMENTS = 20
"""Experiments running at once at most."""
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class LiveExperiments(Follower[Experiment]):
    """This replica's copy of the experiments (see the module docstring)."""

    store: ExperimentStore

    def __init__(
        self,
        store: ExperimentStore,
        models: ModelHolder,
        metrics: ServingMetrics | None = None,
        path: Path | None = None,
    ) -> None:
        super().__init__(store)
        self.models = models
        self.metrics = metrics
        self.path = path
        self._by_placement: dict[str, Experiment | None] = {}
        self._variant_models: dict[str, LoadedModel] = {}
        self.model_bytes: dict[str, int] = {}
        """Resident bytes each variant model added when it was loaded, by version."""
        self._file_stamp: tuple[int, int] | None = None
        self._failed: dict[str, str] = {}
        """Versions that failed to load, with why (logged once each)."""
        self._wake = asyncio.Event()
        """Set when the set changed: the watch loop loads the models it names at once."""
        self.new_items: Callable[[], NewItems] | None = None
        """Makes the new-products lane of a variant model (None: variants get none)."""
        self._lanes: dict[str, tuple[NewItems, asyncio.Event, asyncio.Task[None]]] = {}
        """Per variant model, its new-products lane, refreshed by a task of its own."""
        self.on_models_changed: Callable[[], None] | None = None
        """Called when a variant model was loaded or dropped (the engine drops what it
        kept for models no longer served)."""
        self.known: set[tuple[str, str]] = set()
        """Every (experiment, variant) this replica has run: the label values events
        may carry back after an experiment ends."""

    # --- the set -------------------------------------------------------------------

    def running(self) -> list[Experiment]:
        """Every experiment not ended, by name."""
        return sorted((e for e in self.records.values() if not e.deleted), key=lambda e: e.name)

    def reloaded(self, now: float) -> None:
        self._changed()

    def changed(self, record: Experiment, now: float) -> None:
        self._changed()

    def _changed(self) -> None:
        self._by_placement = {}
        self._wake.set()
        for e in self.running():
            self.known.update((e.name, v.name) for v in e.variants)

    @property
    def rotating(self) -> bool:
        """Whether a running variant rotates (impressions then need counting)."""
        return any(v.rotate_after for e in self.running() for v in e.variants if v.rotate_after)

    def for_placement(self, placement: str) -> Experiment | None:
        """The experiment splitting ``placement``'s answers, if one does and its
        variants' models are loaded."""
        try:
            return self._by_placement[placement]
        except KeyError:
            pass
        found = next((e for e in self.running() if e.applies(placement)), None)
        if found is not None and not all(
            v.model is None or v.model in self._variant_models for v in found.variants
        ):
            return None  # not cached: asked again once the models are in
        if len(self._by_placement) < 1024:  # placements are a small set; guard anyway
            self._by_placement[placement] = found
        return found

    def model(self, variant: Variant) -> LoadedModel:
        """The model ``variant`` answers with (the published one when it names none)."""
        if variant.model is None:
            return self.models.require()
        loaded = self._variant_models.get(variant.model)
        return loaded if loaded is not None else self.models.require()

    @property
    def versions(self) -> set[str]:
        """The versions of the variant models loaded here."""
        return set(self._variant_models)

    def new_items_of(self, loaded: LoadedModel) -> NewItemLane | None:
        """The new products of a variant model (as :meth:`NewItems.of` is the published
        one's), None when it has none or is not a variant's."""
        entry = self._lanes.get(loaded.version)
        return entry[0].of(loaded.model) if entry is not None else None

    def _follow_new_items(self, loaded: LoadedModel) -> None:
        if self.new_items is None or loaded.version in self._lanes:
            return
        lane, stop = self.new_items(), asyncio.Event()
        model = loaded.model
        task = asyncio.get_running_loop().create_task(lane.follow(stop, lambda: model))
        self._lanes[loaded.version] = (lane, stop, task)

    def _stop_new_items(self, versions: set[str]) -> None:
        for version in versions & set(self._lanes):
            _, stop, task = self._lanes.pop(version)
            stop.set()
            task.cancel()

    def variant_models(self, unit: str) -> list[LoadedModel]:
        """The models of ``unit``'s variants that are not the published one (a
        customer's vector is kept up to date under each)."""
        found: dict[str, LoadedModel] = {}
        for e in self.running():
            v = e.assign(unit)
            if v.model is not None and v.model in self._variant_models:
                found[v.model] = self._variant_models[v.model]
        return list(found.values())

    def label(self, experiment: str, variant: str) -> tuple[str, str]:
        """Metric label values for a pair an event carried back: itself when this
        replica ran it, ``("other", "other")`` otherwise, ``("", "")`` for none."""
        if not experiment:
            return "", ""
        return (experiment, variant) if (experiment, variant) in self.known else ("other", "other")

    # --- changes ---------------------------------------------------------------------

    def check(self, experiments: Sequence[Experiment]) -> None:
        """InvalidRequestError naming every reason ``experiments`` cannot run."""
        bad = check_experiments(experiments, art.list_versions(self.models.root))
        if len(experiments) > MAX_EXPERIMENTS:
            bad.insert(
                0,
                FieldViolation("experiments", f"at most {MAX_EXPERIMENTS}, got {len(experiments)}"),
            )
        for i, e in enumerate(experiments):
            for j, v in enumerate(e.variants):
                if v.model is None or any(b.field.endswith(f"[{j}].model") for b in bad):
                    continue
                try:
                    art.resolve(self.models.root, v.model)
                except RecsvcError as exc:
                    bad.append(FieldViolation(f"experiments[{i}].variants[{j}].model", str(exc)))
        if bad:
            raise InvalidRequestError(bad)

    async def set(self, experiments: Sequence[Experiment]) -> int:
        """Check ``experiments`` and make them the shared set; its version. The models
        they name load on every replica (see :meth:`sync_models`)."""
        self.check(experiments)
        version = await self.store.replace(experiments)
        await self.load()  # this replica answers with the new set at once
        await self.sync_models()
        return version

    async def sync_models(self) -> None:
        """Load the variant models the running experiments name and drop the others."""
        wanted = {v.model for e in self.running() for v in e.variants if v.model is not None}
        had = set(self._variant_models)
        for version in sorted(wanted - had):
            before = _rss()
            try:
                loaded = await self.models.load_version(version)
            except (RecsvcError, OSError, ValueError, RuntimeError) as exc:
                if self._failed.get(version) != str(exc):
                    log.error("experiment model %s not loaded: %s", version, exc)
                self._failed[version] = str(exc)
                continue
            self._failed.pop(version, None)
            self._variant_models[version] = loaded
            self.model_bytes[version] = max(0, _rss() - before)
            if loaded is not self.models.current:
                self._follow_new_items(loaded)
            if self.metrics is not None:
                self.metrics.variant_model_bytes.labels(model_version=version).set(
                    self.model_bytes[version]
                )
                self.metrics.accept_model_version(version)
            self._by_placement = {}
            log.info(
                "loaded model %s for an experiment (+%.0f MiB resident)",
                version,
                self.model_bytes[version] / 2**20,
            )
        dropped = set(self._variant_models) - wanted
        self._stop_new_items(dropped)
        for version in dropped:
            del self._variant_models[version]
            self.model_bytes.pop(version, None)
            if self.metrics is not None:
                with contextlib.suppress(KeyError):
                    self.metrics.variant_model_bytes.remove(version)
            self._by_placement = {}
        if set(self._variant_models) != had and self.on_models_changed is not None:
            self.on_models_changed()

    # --- the file --------------------------------------------------------------------

    async def check_file(self) -> bool:
        """Set the watched file's experiments if it changed since last read; whether
        they were set. A file that is missing, malformed or invalid is logged and
        counted, and the running experiments stay."""
        if self.path is None:
            return False
        stamp = file_stamp(self.path)
        if stamp is None or stamp == self._file_stamp:
            return False
        self._file_stamp = stamp
        try:
            experiments = read_experiments(self.path)
            await self.set(experiments)
        except (DataError, InvalidRequestError) as exc:
            log.error("experiments file %s refused, the running ones stay: %s", self.path, exc)
            self._count_file("refused")
            return False
        except RecsvcError as exc:  # the store failed: try again next time
            self._file_stamp = None
            log.warning("experiments file %s not applied yet: %s", self.path, exc)
            return False
        log.info("experiments set from %s: %s", self.path, [e.name for e in experiments])
        self._count_file("applied")
        return True

    def _count_file(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.experiment_file_loads.labels(outcome=outcome).inc()

    async def watch(self, every: float, stop: asyncio.Event) -> None:
        """Until ``stop``: read the watched file when it changes, and keep the variant
        models loaded as the shared set changes (every ``every`` seconds)."""
        while not stop.is_set():
            self._wake.clear()
            with contextlib.suppress(RecsvcError):
                await self.check_file()
            await self.sync_models()
            stopping = asyncio.ensure_future(stop.wait())
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({stopping, woken}, timeout=every, return_when="FIRST_COMPLETED")
            finally:
                stopping.cancel()
                woken.cancel()
        self._stop_new_items(set(self._lanes))


def _rss() -> int:
    """This process's resident bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
