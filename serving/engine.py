"""What the server does, in domain terms (no protobuf here).

The servicer converts messages to the call types (:mod:`.calls`) and back; the engine
answers them on top of the ranking core (:mod:`recsvc.ranking`): who the shopper is
comes from :mod:`.profile`, the shared live state from :mod:`recsvc.store`, erasures
from :class:`recsvc.erasure.ErasureList`, accepted events go to the event log.

A Recommend reads as: profile -> query -> rank -> count -> answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from recsvc import artifact as art
from recsvc.catalog import CatalogItem
from recsvc.compaction import erasure_status
from recsvc.config import (
    PlacementSettings,
    RankingSettings,
    RepeatPolicy,
    Settings,
    SimilarMode,
    WeightingSettings,
)
from recsvc.consent import Consent
from recsvc.erasure import ErasureList
from recsvc.errors import (
    ConflictError,
    FieldViolation,
    InvalidRequestError,
    NotFoundError,
    PreconditionError,
    RecsvcError,
    StoreError,
)
from recsvc.events import EventType, LiveEvent
from recsvc.experiments import (
    Experiment,
    RecommendationId,
    Variant,
    parse_recommendation_id,
    recommendation_id,
)
from recsvc.model import Model
from recsvc.ranking import (
    Filters,
    Popularity,
    Query,
    Ranker,
    Ranking,
    Reason,
    ScoreWeights,
    Strategy,
)
from recsvc.rules import Rule
from recsvc.store import LinkRefused, LinkResult, LiveState, encode_event
from recsvc.store.cooccur import CoOccurrence
from recsvc.store.erasures import ErasureStore

from . import continuation
from .calls import (
    ConsentOutput,
    EventInput,
    FilterSpec,
    ForgetOutput,
    RecommendInput,
    RecommendOutput,
    RecordOutput,
    ScoredItem,
    SimilarInput,
)
from .catalog import CatalogView, LiveCatalog
from .eventlog import EventLog, EventRow
from .experiments import LiveExperiments
from .metrics import Children, ServingMetrics, placement_label
from .newitems import NEW_PER_ANSWER, NewItemLane, NewItems, merge_new
from .placements import Placements
from .popularity import LivePopularity, event_weight
from .profile import Profile, Profiles
from .reload import LoadedModel, ModelHolder
from .rotation import Demotion, Dissimilar, Weighed
from .rules import (
    NO_RULES,
    ActiveRules,
    LiveRules,
    Merchandised,
    Shown,
    Weighing,
    merchandise,
)

__all__ = ["Engine"]

log = logging.getLogger(__name__)

_REASONS: dict[int, Reason] = {int(r): r for r in Reason}
_FETCH_MORE = 300
"""At most this many candidates past k when rules or a cap reshape the list."""
_BASKET_PAIRS = 20
"""A basket's distinct items counted as pairs at most (a bulk order pairs little)."""
_LIVE_PARTNERS = 50
"""Partners read per item from the live co-purchase counts."""
_DEGRADED_LOG_SECONDS = 60.0
"""A degraded SimilarItems is logged at most once this often (each one is counted)."""
_FILTER_CACHE = 64
"""Filters kept built (each a catalogue-sized mask at most: 100 kB at 100k items)."""
_LOGINS = 10_000
"""(user, session) pairs RecordEvents remembers having merged (see record_events)."""
_ATTRIBUTED: Final = frozenset(
    {EventType.IMPRESSION, EventType.CLICK, EventType.ADD_TO_CART, EventType.PURCHASE}
)
"""Event types attributed to the recommendation whose id they carry."""
_ISSUE_SKEW = 300
"""Seconds an attributed event may seem to precede its answer (clocks differ)."""
_ROTATION_WEIGHT: Final = PlacementSettings().rotation_weight
_NO_FILTERS = Filters()
"""What an empty FilterSpec becomes (immutable, so shared by every request)."""


class Engine:
    """The server's behaviour; one per process, shared by all calls."""

    def __init__(
        self,
        settings: Settings,
        models: ModelHolder,
        state: LiveState,
        event_log: EventLog,
        metrics: ServingMetrics,
        catalog: LiveCatalog | None = None,
        popularity: LivePopularity | None = None,
        rules: LiveRules | None = None,
        new_items: NewItems | None = None,
        co_purchases: CoOccurrence | None = None,
        experiments: LiveExperiments | None = None,
        erasure_store: ErasureStore | None = None,
    ) -> None:
        self.settings = settings
        self.server = settings.server
        self.models = models
        self.state = state
        self.event_log = event_log
        self.metrics = metrics
        self.profiles = Profiles(settings, state, metrics)
        self.catalog = catalog
        self.popularity = popularity
        self.rules = rules
        self.new_items = new_items
        self.co_purchases = co_purchases
        """Trained items bought together since training (kind "b"), shared."""
        self.experiments = experiments
        if experiments is not None:
            experiments.on_models_changed = self.retain_models
        self._degraded_logged = -math.inf
        self.erasures = ErasureList(settings.erasure_path)
        self.erasure_store = erasure_store
        """The shared erasure list every replica follows (None: the file only)."""
        self.placements = Placements(settings)
        self._recommended = Children(metrics.recommendations)
        self._fallbacks = Children(metrics.fallbacks)
        self._index_seconds = metrics.index_search_seconds
        self._recommended_items = metrics.recommended_items
        self._applications = metrics.rule_applications
        self._new_recommended = Children(metrics.new_items_recommended)
        self._filter_cache: OrderedDict[tuple[object, ...], Filters] = OrderedDict()
        self._logins: OrderedDict[tuple[str, str], None] = OrderedDict()
        """(user, session) pairs whose anonymous session RecordEvents merged or found
        empty lately."""

    def retain_models(self) -> None:
        """Drop what the per-model caches keep for models no longer served (neither
        the current one nor an experiment's variant's): a model reloaded away is
        freed at once."""
        current = self.models.current
        versions = {current.version} if current is not None else set()
        if self.experiments is not None:
            versions |= self.experiments.versions
        for cache in (self.catalog, self.popularity, self.rules):
            if cache is not None:
                cache.retain(versions)

    def refresh_erasures(self) -> None:
        """Pick up erasures other replicas appended to the shared erasure list."""
        for user in self.erasures.refresh():
            self.profiles.forget(user)

    def _filters(self, model: Model, spec: FilterSpec, view: CatalogView | None) -> Filters:
        """The ranking's filters of ``spec``, with the live catalogue's ``view``: items
        it hides are never shown, and categories are matched on live category paths.
        Built once per view state and filter (a storefront sends a few filters again
        and again): a small LRU of the results."""
        shown = view.shown if view is not None else None
        if spec.is_empty and shown is None:
            return _NO_FILTERS
        key = (
            model.version,
            view.serial if view is not None else -1,
            view.revision if view is not None else 0,
            view.flips if view is not None else 0,
            spec,
        )
        cached = self._filter_cache.get(key)
        if cached is not None:
            self._filter_cache.move_to_end(key)
            return cached
        built = self._build_filters(model, spec, view)
        self._filter_cache[key] = built
        if len(self._filter_cache) > _FILTER_CACHE:
            self._filter_cache.popitem(last=False)
        return built

    def _build_filters(self, model: Model, spec: FilterSpec, view: CatalogView | None) -> Filters:
        shown = view.shown if view is not None else None
        items, categories = model.item_position, model.category_position
        include_categories = (
            np.array([categories[c] for c in spec.include_categories if c in categories], np.int32)
            if spec.include_categories
            else None
        )
        exclude_categories = np.array(
            [categories[c] for c in spec.exclude_categories if c in categories], np.int32
        )
        if view is not None and (view.live or spec.attributes):
            mask = np.ones(model.n_items, dtype=bool) if shown is None else shown.copy()
            if view.live and spec.include_categories:
                mask &= view.categories(spec.include_categories)
                include_categories = None
            if view.live and spec.exclude_categories:
                mask &= ~view.categories(spec.exclude_categories)
                exclude_categories = np.zeros(0, np.int32)
            if spec.attributes:
                mask &= view.matching(spec.attributes)
            shown = mask
        elif spec.attributes:  # no live catalogue: no item has an attribute
            raise InvalidRequestError(
                [
                    FieldViolation(
                        f"filters.attributes[{i}].name", f"no item has attribute {f.name!r}"
                    )
                    for i, f in enumerate(spec.attributes)
                ]
            )
        return Filters(
            exclude_items=np.array(
                [items[i] for i in spec.exclude_item_ids if i in items], np.int32
            ),
            include_categories=include_categories,
            exclude_categories=exclude_categories,
            in_stock_only=spec.in_stock_only,
            shown=shown,
        )

    # --- Recommend ------------------------------------------------------------------

    async def recommend(
        self, req: RecommendInput, time_left: float | None = None
    ) -> RecommendOutput:
        """The answer to ``req``; ``time_left``: seconds until the call's deadline (None:
        no deadline), which bounds the wait for the live state."""
        experiment, variant = self._variant(req)
        loaded = self.models.require() if variant is None else self.experiments_model(variant)
        model = loaded.model
        consent = not req.non_personalized and not (variant and variant.non_personalized)
        user = req.user_id if consent and req.user_id not in self.erasures else ""
        placement_settings = self.placements.get(req.placement)
        rotate = placement_settings.rotate_after if placement_settings is not None else 0
        trending = placement_settings.trending_weight if placement_settings is not None else None
        if variant is not None:
            rotate = rotate if variant.rotate_after is None else variant.rotate_after
            trending = trending if variant.trending_weight is None else variant.trending_weight
        profile = await self.profiles.read(
            loaded,
            user,
            req.session_id if consent else "",
            req.session_events,
            time_left,
            shown_after=rotate,
        )
        if profile.customer and profile.customer in self.erasures:
            # an id still linked to a customer erased meanwhile (another replica): a visitor
            profile = await self.profiles.read(
                loaded, "", req.session_id if consent else "", req.session_events, time_left
            )
        if profile.merged:
            await self._log_merged(profile.customer or user, req.session_id, profile.merged)
        live = self.popularity.of(model, loaded.ranker) if self.popularity is not None else None
        view = self.catalog.view(model) if self.catalog is not None else None
        filters = self._filters(model, req.filters, view)
        rules = (
            self._rules(model, view, req.placement)
            if variant is None or variant.rules
            else NO_RULES
        )
        cap = req.max_per_category or self._cap(req.placement)
        # boosts and buries weigh the ranking's candidates as they are scored (one
        # ranking, no over-fetch for them); pins and the cap reshape its list after
        weights = rules.weights if rules else None
        weighing = Weighing(weights) if weights is not None else None
        parts: list[ScoreWeights] = [] if weighing is None else [weighing]
        if len(profile.overexposed):
            # rotation: what the shopper was shown again and again sinks
            weight = (
                placement_settings.rotation_weight
                if placement_settings is not None
                else _ROTATION_WEIGHT
            )
            parts.append(Demotion(profile.overexposed, weight))
        if len(profile.dismissed):
            # negative feedback: what the shopper turned down is never shown (the
            # filter), and what is like it sinks
            filters = replace(
                filters, exclude_items=np.union1d(filters.exclude_items, profile.dismissed)
            )
            server = self.server
            if server.dismiss_similar_cosine < 1.0 and server.dismiss_similar_weight < 1.0:
                parts.append(
                    Dissimilar(
                        model.artifact.item_factors,
                        profile.dismissed,
                        server.dismiss_similar_cosine,
                        server.dismiss_similar_weight,
                    )
                )
        scored: ScoreWeights | None = (
            None if not parts else parts[0] if len(parts) == 1 else Weighed(*parts)
        )
        k = _fetch(req.k, rules, cap, weighed=True) if rules or cap else req.k
        query = profile.query(
            k,
            filters,
            req.repeat_policy,
            live,
            headroom_k=req.k if k > req.k else None,
            popularity_weight=trending,
            weights=scored,
        )
        t = time.perf_counter()
        ranking = loaded.ranker.recommend(query)
        self._index_seconds.observe(time.perf_counter() - t)
        placement = placement_label(req.placement, self.server.placements)
        in_experiment = (experiment.name, variant.name) if experiment and variant else ("", "")
        self._recommended(ranking.strategy.value, placement, *in_experiment).inc()
        if ranking.fallback:
            self._fallbacks("store_unavailable" if profile.degraded else "no_signal").inc()
        rule_ids: list[tuple[str, ...]] | None = None
        applied: tuple[str, ...] = ()
        if rules or cap:
            ranker = loaded.ranker

            def rank(fetch: int) -> Ranking:
                return ranker.recommend(replace(query, k=fetch))

            items, rule_ids, applied = self._merchandised(
                loaded, ranking, k, req.k, rules, cap, view,
                # the mask the ranking just made (kept: no cost), so the pins' pass
                # need not stop to ask for it when a pinned item was not ranked
                allowed=ranker.allowed(query),
                popularity=query.popularity or ranker.popularity,
                rank=rank,
                weighed=weighing,
            )  # fmt: skip
        else:
            items = _ranked(model, ranking)
        out = RecommendOutput(
            items=items,
            model_version=loaded.version,
            recommendation_id=_recommendation_id(
                loaded.version,
                *in_experiment,
                owner=profile.customer or req.user_id or req.session_id,
            ),
            strategy=ranking.strategy,
            fallback=ranking.fallback,
            degraded=profile.degraded,
            ignored_item_ids=profile.ignored_item_ids,
            item_rule_ids=rule_ids,
            applied_rule_ids=applied,
            experiment=in_experiment[0],
            variant=in_experiment[1],
        )
        lane = self.new_items.of(model) if self.new_items is not None else None
        if lane is None and variant is not None and variant.model is not None:
            assert self.experiments is not None
            lane = self.experiments.new_items_of(loaded)
        if lane is not None and ranking.popularity_weight > 0:
            new = lane.popular(req.filters, time.time(), req.k, ranking.popularity_weight)
            out = self._with_new(out, new, req.k, cap, view, lane, "Recommend")
        self._recommended_items.observe(len(out.items))
        if req.explain:
            out = replace(out, because=_because(loaded, profile, out.items))
        if req.paged:
            returned = [*req.continued, *(i.item_id for i in out.items)]
            out = replace(out, continuation=continuation.encode(returned))
        return out

    def _variant(self, req: RecommendInput) -> tuple[Experiment | None, Variant | None]:
        """The experiment splitting ``req``'s placement and the shopper's variant: the
        one the request forces, else the one their user id (else session id) hashes
        to; (None, None) outside experiments and for a shopper with neither id."""
        live = self.experiments
        experiment = live.for_placement(req.placement) if live is not None else None
        if experiment is None:
            if req.variant:
                raise InvalidRequestError(
                    [
                        FieldViolation(
                            "variant",
                            f"no experiment splits placement {req.placement!r} "
                            "(or its variants' models are still loading)",
                        )
                    ]
                )
            return None, None
        if req.variant:
            forced = experiment.variant(req.variant)
            if forced is None:
                names = ", ".join(v.name for v in experiment.variants)
                raise InvalidRequestError(
                    [
                        FieldViolation(
                            "variant",
                            f"experiment {experiment.name!r} has no variant "
                            f"{req.variant!r} (it has {names})",
                        )
                    ]
                )
            return experiment, forced
        unit = req.user_id or req.session_id
        if not unit:
            return None, None
        return experiment, experiment.assign(unit)

    def experiments_model(self, variant: Variant) -> LoadedModel:
        """The model ``variant`` answers with."""
        assert self.experiments is not None
        return self.experiments.model(variant)

    # --- SimilarItems ---------------------------------------------------------------

    async def similar(self, req: SimilarInput, time_left: float | None = None) -> RecommendOutput:
        """The answer to ``req``; ``time_left``: seconds until the call's deadline (None:
        no deadline), which bounds the wait for live co-purchases."""
        loaded = self.models.require()
        model = loaded.model
        mode = req.mode or self._similar_mode(req.placement)
        if mode is SimilarMode.BOUGHT_TOGETHER and model.bought_together is None:
            mode = SimilarMode.SIMILAR  # a model trained before co-purchases were counted
        lane = self.new_items.of(model) if self.new_items is not None else None
        known = [model.item_position[i] for i in req.item_ids if i in model.item_position]
        # new products with a place in the model's space count as known
        new_rows = [] if lane is None else [
            lane.position[i] for i in req.item_ids
            if i in lane.position and lane.placed[lane.position[i]]
        ]  # fmt: skip
        placed = {lane.records[r].item_id for r in new_rows} if lane is not None else set()
        ignored = [i for i in req.item_ids if i not in model.item_position and i not in placed]
        if not known and not new_rows:
            raise NotFoundError(
                f"none of the {len(req.item_ids)} item ids is in the model or a new "
                "product the live catalogue can place"
            )
        view = self.catalog.view(model) if self.catalog is not None else None
        filters = self._filters(model, req.filters, view)
        rules = self._rules(model, view, req.placement)
        cap = req.max_per_category or self._cap(req.placement)
        k = _fetch(req.k, rules, cap) if rules or cap else req.k
        ranker = loaded.ranker
        given = np.array(known, np.int32)
        direction = (
            ranker.direction(given, lane.vectors[new_rows])
            if lane is not None and (new_rows or len(lane.met))
            else None
        )
        degraded = False
        if mode is SimilarMode.BOUGHT_TOGETHER and len(given):
            bought, degraded = await self._live_co_purchases(model, given, time_left)

            def rank(fetch: int) -> Ranking:
                return self._bought_together(ranker, given, fetch, filters, direction, bought)

            lane = None  # new products' meetings are not co-purchase counts
        else:
            mode = SimilarMode.SIMILAR

            def rank(fetch: int) -> Ranking:
                return ranker.similar(given, fetch, filters, direction)

        ranking = rank(k)
        rule_ids: list[tuple[str, ...]] | None = None
        applied: tuple[str, ...] = ()
        if rules or cap:

            def allowed() -> NDArray[np.bool_]:
                query = Query(k=req.k, filters=filters, repeat_policy=RepeatPolicy.ALLOW)
                mask = ranker.allowed(query)
                mask = np.ones(model.n_items, dtype=bool) if mask is None else mask.copy()
                mask[given] = False
                return mask

            live = self.popularity.of(model, ranker) if self.popularity is not None else None
            items, rule_ids, applied = self._merchandised(
                loaded, ranking, k, req.k, rules, cap, view,
                allowed=allowed,
                popularity=live or ranker.popularity,
                rank=rank,
            )  # fmt: skip
        else:
            items = _ranked(model, ranking)
        out = RecommendOutput(
            items=items,
            model_version=loaded.version,
            recommendation_id=_recommendation_id(loaded.version),
            strategy=ranking.strategy,
            fallback=False,
            degraded=degraded,
            ignored_item_ids=ignored,
            item_rule_ids=rule_ids,
            applied_rule_ids=applied,
            mode=mode,
        )
        return self._similar_new(out, req, cap, view, lane, direction)

    # --- bought together -----------------------------------------------------------------

    def _similar_mode(self, placement: str) -> SimilarMode:
        settings = self.placements.get(placement)
        return settings.similar_mode if settings is not None else SimilarMode.SIMILAR

    async def _live_co_purchases(
        self, model: Model, given: NDArray[np.int32], time_left: float | None
    ) -> tuple[dict[int, dict[int, float]], bool]:
        """What ``given`` were bought with since training (positions), and whether that
        could not be read in time (then: nothing, degraded)."""
        if self.co_purchases is None:
            return {}, False
        budget = self.settings.redis.socket_timeout_seconds
        if time_left is not None:
            budget = min(budget, 0.5 * time_left)
        ids = [model.item_names[i] for i in given.tolist()]
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                met = await self.co_purchases.read(ids, limit=_LIVE_PARTNERS)
        except (TimeoutError, StoreError) as exc:
            self.metrics.degraded_responses.labels(rpc="SimilarItems").inc()
            self._log_degraded(exc)
            return {}, True
        position = model.item_position
        return {
            position[item]: {position[o]: n for o, n in partners if o in position}
            for item, partners in met.items()
            if item in position
        }, False

    def _log_degraded(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._degraded_logged > _DEGRADED_LOG_SECONDS:
            self._degraded_logged = now
            log.warning("SimilarItems answered without live co-purchases: %r", exc)

    def _bought_together(
        self,
        ranker: Ranker,
        given: NDArray[np.int32],
        k: int,
        filters: Filters,
        direction: NDArray[np.float32] | None,
        live: dict[int, dict[int, float]],
    ) -> Ranking:
        """The ``k`` items bought with ``given`` that ``filters`` allow, best first;
        similar items fill a list too few co-purchases leave short, scored below."""
        model = ranker.model
        assert model.bought_together is not None
        items, scores = model.bought_together.score(given, live)
        allowed = ranker.allowed(Query(k=k, filters=filters, repeat_policy=RepeatPolicy.ALLOW))
        if allowed is not None:
            keep = allowed[items]
            items, scores = items[keep], scores[keep]
        items, scores = items[:k], scores[:k]
        reasons = np.full(len(items), Reason.BOUGHT_TOGETHER, dtype=np.int8)
        if len(items) < k:
            fill = ranker.similar(given, k + len(items), filters, direction)
            extra = ~np.isin(fill.items, items)
            more, more_scores = fill.items[extra][: k - len(items)], fill.scores[extra]
            floor = float(scores[-1]) if len(scores) else 1.0
            top = float(more_scores[0]) if len(more_scores) and more_scores[0] > 0 else 1.0
            squeezed = 0.5 * floor * np.maximum(more_scores[: len(more)], 0.0) / top
            items = np.concatenate([items, more]).astype(np.int32)
            scores = np.concatenate([scores, squeezed]).astype(np.float32)
            reasons = np.concatenate([reasons, fill.reasons[extra][: len(more)]])
        return Ranking(items, scores.astype(np.float32), reasons, Strategy.SESSION, False)

    # --- new products ------------------------------------------------------------------

    def _similar_new(
        self,
        out: RecommendOutput,
        req: SimilarInput,
        cap: int,
        view: CatalogView | None,
        lane: NewItemLane | None,
        direction: NDArray[np.float32] | None,
    ) -> RecommendOutput:
        """``out`` with the new products shoppers put near ``direction``."""
        if lane is None or direction is None:
            return out
        unit = direction / max(float(np.linalg.norm(direction)), 1e-12)
        most = max(1, req.k * NEW_PER_ANSWER // 10)
        new = lane.similar(unit, req.filters, time.time(), most, set(req.item_ids))
        return self._with_new(out, new, req.k, cap, view, lane, "SimilarItems")

    def _with_new(
        self,
        out: RecommendOutput,
        new: list[ScoredItem],
        k: int,
        cap: int,
        view: CatalogView | None,
        lane: NewItemLane,
        rpc: str,
    ) -> RecommendOutput:
        """``out`` with the new products ``new`` merged in by score (pins stay, the
        cap holds)."""
        if not new:
            return out
        category = None
        if cap and view is not None:
            model = view.model
            ids = [it.item_id for it in out.items]
            names = view.leaf_names([model.item_position[i] for i in ids])
            category = dict(zip(ids, names, strict=True))
            category.update((it.item_id, lane.leaf[lane.position[it.item_id]]) for it in new)
        items, origin = merge_new(out.items, new, k, category=category, cap=cap)
        taken = sum(1 for o in origin if o < 0)
        if taken:
            self._new_recommended(rpc).inc(taken)
        rule_ids = out.item_rule_ids
        if rule_ids is not None:
            rule_ids = [rule_ids[o] if o >= 0 else () for o in origin]
        return replace(out, items=items, item_rule_ids=rule_ids)

    # --- merchandising rules and the diversity cap ------------------------------------

    def _rules(self, model: Model, view: CatalogView | None, placement: str) -> ActiveRules:
        if self.rules is None or not self.rules.records:
            return NO_RULES
        return self.rules.active(model, view, placement, time.time())

    def _cap(self, placement: str) -> int:
        settings = self.placements.get(placement)
        return settings.max_per_category if settings is not None else 0

    def _merchandised(
        self,
        loaded: LoadedModel,
        ranking: Ranking,
        fetched: int,
        k: int,
        rules: ActiveRules,
        cap: int,
        view: CatalogView | None,
        *,
        allowed: NDArray[np.bool_] | Shown | None,
        popularity: Popularity,
        rank: Callable[[int], Ranking],
        weighed: Weighing | None = None,
    ) -> tuple[list[ScoredItem], list[tuple[str, ...]], tuple[str, ...]]:
        """The items of ``ranking`` (``fetched`` asked for) after the rules and the cap,
        ``k`` of them, the rules that moved or placed each and every rule that touched
        them; the ranking widens once if the cap left too few. ``weighed``: the
        ranking's candidates already carry the boosts and buries (see merchandise)."""
        model = loaded.model
        category = None
        if cap:
            category = (
                view.leaf_categories()
                if view is not None and view.live
                else model.artifact.item_category
            )

        def shaped(r: Ranking) -> Merchandised:
            return merchandise(
                r.items, r.scores, r.reasons, k, rules,
                allowed=allowed, popular=popularity.order, category=category, cap=cap,
                weighed=weighed,
            )  # fmt: skip

        m = shaped(ranking)
        if cap and len(m.items) < k and len(ranking.items) >= fetched < model.n_items:
            m = shaped(rank(min(model.n_items, fetched * 4)))
        if m.applied:
            self._applications.add(rules.tally(m.applied))
        items = _scored(model.item_names, m.items, m.scores, m.reasons)
        return items, m.rule_ids, m.applied

    async def set_rules(self, rules: Sequence[Rule], *, replace_all: bool) -> int:
        """Write ``rules`` (``replace_all``: and delete every other); their version.
        InvalidRequestError for a predicate naming an attribute no item has."""
        live = self._live_rules()
        bad: list[FieldViolation] = []
        model = self.models.require().model
        view = self.catalog.view(model) if self.catalog is not None else None
        for i, rule in enumerate(rules):
            if not rule.attributes:
                continue
            path = f"rules[{i}].attributes"
            if view is None:
                bad.append(FieldViolation(path, "this server has no live catalogue"))
                continue
            try:
                view.matching(rule.attributes, path)
            except InvalidRequestError as exc:
                bad.extend(exc.violations)
        if bad:
            raise InvalidRequestError(bad)
        return await live.store.put(rules, replace_all=replace_all)

    async def delete_rules(self, rule_ids: Sequence[str]) -> tuple[int, int]:
        """Delete ``rule_ids``; the rules' version and how many were rules."""
        return await self._live_rules().store.delete(rule_ids)

    def list_rules(self) -> tuple[list[Rule], int]:
        """This replica's rules (deleted ones left out) and their version."""
        live = self._live_rules()
        return live.rules(), live.version

    # --- experiments ----------------------------------------------------------------

    async def set_experiments(self, experiments: Sequence[Experiment]) -> int:
        """Make ``experiments`` the shared set (checked first: InvalidRequestError
        naming every reason, and the running set stays); its version."""
        return await self._live_experiments().set(experiments)

    def list_experiments(self) -> tuple[list[Experiment], int, dict[str, int]]:
        """The running experiments, their version, and the bytes each variant model
        loaded here added."""
        live = self._live_experiments()
        return live.running(), live.version, dict(live.model_bytes)

    def _live_experiments(self) -> LiveExperiments:
        if self.experiments is None:
            raise StoreError("this server runs without experiments")
        return self.experiments

    def _live_rules(self) -> LiveRules:
        if self.rules is None:
            raise StoreError("this server runs without merchandising rules")
        return self.rules

    # --- RecordEvents ---------------------------------------------------------------

    async def record_events(self, events: Sequence[EventInput]) -> RecordOutput:
        loaded = self.models.require()
        model = loaded.model
        metrics = self.metrics
        ignored: list[tuple[int, str]] = []
        log_rows: list[EventRow] = []
        live: dict[tuple[str, str], tuple[list[LiveEvent], list[str]]] = {}
        # live popularity: events whose live state dedupes them count once applied (by
        # position in their group), the others at once (popularity is approximate)
        trend = _Trend(self.settings.weighting, self.settings.ranking)
        # new products: which trained items each session put them with
        new_items = self.new_items
        meetings: dict[str, tuple[list[str], list[str], EventInput]] = {}
        together: dict[str, list[str]] = {}
        # rotation: impressions counted per shopper, engagement starting a count again
        rotating = self.placements.rotating or (
            self.experiments is not None and self.experiments.rotating
        )
        shown: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        # negative feedback: items each shopper turned down
        dismissed: dict[tuple[str, str], list[str]] = {}
        # linked ids act as their customer; stored consents: OFF keeps nothing of the
        # customer, SESSION_ONLY keeps the visit as a visitor's session (one read for
        # the batch's customers)
        customers = await self.state.customers(
            [e.user_id for e in events if e.user_id and not e.non_personalized]
        )
        # attribution: events carrying a recommendation id, counted once applied
        attributions: dict[tuple[str, str], dict[int, tuple[_Attribution, EventType]]] = {}
        for index, e in enumerate(events):
            anonymous = not e.user_id  # a visitor's: logged without any id but the visit's
            named = e.user_id
            consent = Consent.FULL
            if e.user_id in customers:
                customer, consent = customers[e.user_id]
                if customer != e.user_id:
                    e = replace(e, user_id=customer)  # noqa: PLW2901
            if consent is Consent.SESSION_ONLY:
                e = replace(e, user_id="", non_personalized=not e.session_id)  # noqa: PLW2901
            elif consent is Consent.OFF:
                e = replace(e, non_personalized=True)  # noqa: PLW2901
            placement = placement_label(e.placement, self.server.placements)
            rid = parse_recommendation_id(e.recommendation_id) if e.recommendation_id else None
            if e.event_type in (EventType.IMPRESSION, EventType.CLICK):
                version = metrics.model_version_label(rid.model_version if rid else "")
                counter = (
                    metrics.impressions if e.event_type is EventType.IMPRESSION else metrics.clicks
                )
                counter.labels(placement=placement, model_version=version).inc()
            if e.user_id and e.user_id in self.erasures:
                ignored.append((index, "erased_user"))
                metrics.events_ignored.labels(reason="erased_user").inc()
                continue
            attribution = (
                self._attribute(e, rid, named, placement)
                if e.recommendation_id and e.event_type in _ATTRIBUTED
                else None
            )
            if e.non_personalized:
                # aggregate counters only: nothing tied to the shopper is kept
                metrics.events.labels(event_type=e.event_type.value).inc()
                trend.add(e)
                if attribution is not None:
                    self._count_attribution(attribution, e.event_type)
                continue
            key = e.key
            if e.user_id or (anonymous and e.session_id):
                # training reads customers' events, and visitors' as guests' visits (the
                # session model learns from live traffic); a session-only customer's visit
                # is kept in the store only, as they allowed
                log_rows.append(_log_row(e.user_id, e.session_id, e, key, attribution))
            if e.item_id not in model.item_position:
                # a new product: it counts towards live popularity from its first sale,
                # and is placed by the trained items of its session
                ignored.append((index, "unknown_item"))
                metrics.events_ignored.labels(reason="unknown_item").inc()
                trend.add(e)
                if new_items is not None and new_items.is_new(model, e.item_id):
                    meetings.setdefault(e.session_id or f"u:{e.user_id}", ([], [], e))[0].append(
                        e.item_id
                    )
                if attribution is not None:
                    self._count_attribution(attribution, e.event_type)
                continue
            together.setdefault(e.session_id or f"u:{e.user_id}", []).append(e.item_id)
            metrics.events.labels(event_type=e.event_type.value).inc()
            if e.event_type.spec.dismisses and (e.user_id or e.session_id):
                dismissed.setdefault((e.user_id, e.session_id), []).append(e.item_id)
            if rotating and (e.user_id or e.session_id):
                counts = shown.setdefault((e.user_id, e.session_id), ([], []))
                if e.event_type is EventType.IMPRESSION:
                    counts[0].append(e.item_id)
                elif e.event_type.spec.taste:
                    counts[1].append(e.item_id)
            if e.event_type.spec.taste and (e.user_id or e.session_id):
                batch, keys = live.setdefault((e.user_id, e.session_id), ([], []))
                if attribution is not None:  # counted if the live state applies it
                    pending = attributions.setdefault((e.user_id, e.session_id), {})
                    pending[len(batch)] = (attribution, e.event_type)
                batch.append(LiveEvent(e.item_id, e.event_type, e.timestamp, e.quantity))
                keys.append(key)
                trend.pending(e.user_id, e.session_id, e)
            else:
                trend.add(e)
                if attribution is not None:
                    self._count_attribution(attribution, e.event_type)
        # Acknowledged = durable and applied once. The live state applies each event at
        # most once (its id), so a retry after any failure below (UNAVAILABLE) applies
        # nothing twice and completes what the first attempt left undone; the log may
        # then hold a row twice, and the loader keeps the first row of an id.
        baskets: list[list[str]] = []
        for (user_id, session_id), (batch, keys) in live.items():
            if user_id and session_id and (user_id, session_id) not in self._logins:
                # a login: the session's anonymous events join the customer first (the
                # pair is remembered a while; Recommend checks on every call anyway)
                self._logins[(user_id, session_id)] = None
                if len(self._logins) > _LOGINS:
                    self._logins.popitem(last=False)
                merged = await self.profiles.merge_login(user_id, session_id)
                if merged:
                    await self._log_merged(user_id, session_id, merged)
            applied = await self.state.record(user_id, session_id, batch, keys)
            if len(applied) < len(batch):
                metrics.events_ignored.labels(reason="duplicate").inc(len(batch) - len(applied))
            trend.applied(user_id, session_id, applied)
            attributed = attributions.get((user_id, session_id))
            if attributed:
                for i in applied:
                    if i in attributed:
                        self._count_attribution(*attributed[i])
            # bought together: the purchases a session (or a user's batch) applied now,
            # so a retried batch counts nothing twice
            bought = [
                batch[i].item_id for i in applied if batch[i].event_type is EventType.PURCHASE
            ]
            if len(set(bought)) > 1:
                baskets.append(bought)
        if log_rows:
            # off the event loop: the log's periodic fsync can take milliseconds
            await asyncio.to_thread(self.event_log.append, log_rows)
        # the next Recommend on any replica reflects what the shopper just did
        for user_id in dict.fromkeys(u for u, _ in live if u):
            await self.profiles.refresh(loaded, user_id)
            if self.experiments is not None:  # and under the model of their variant
                for other in self.experiments.variant_models(user_id):
                    if other.version != loaded.version:
                        await self.profiles.refresh(other, user_id)
        for (user_id, session_id), items in dismissed.items():
            # the shopper's state, not an approximate counter: a failure fails the call
            # (retried, it applies again: a dismissal is idempotent)
            await self.state.dismiss(user_id, session_id, items)
        for (user_id, session_id), (seen, engaged) in shown.items():
            try:
                await self.state.count_shown(user_id, session_id, seen, engaged)
            except StoreError as exc:  # rotation is a nudge: the events themselves are in
                log.warning("counting impressions failed: %s", exc)
        if meetings and new_items is not None:
            await self._count_meetings(model, new_items, meetings, together)
        if baskets and self.co_purchases is not None:
            try:
                await self.co_purchases.add(_pairs(baskets))
            except StoreError as exc:  # approximate counts, like live popularity
                log.warning("counting co-purchases failed: %s", exc)
        if self.popularity is not None and trend.weights:
            try:
                await self.popularity.count(trend.weights)
            except StoreError as exc:  # approximate counters: the events themselves are in
                log.warning("counting live popularity failed: %s", exc)
        return RecordOutput(accepted=len(events) - len(ignored), ignored=ignored)

    def _attribute(
        self, e: EventInput, rid: RecommendationId | None, named: str, placement: str
    ) -> _Attribution | None:
        """The attribution of ``e`` (carrying the recommendation id ``rid`` says) to the
        answer that led to it, or None (counted by reason): an id of this server,
        issued to the event's shopper (``named``: the user id the event named,
        ``e.user_id``: its customer) or to nobody (SimilarItems), within the
        attribution window."""
        refused = self.metrics.attribution_refused
        if rid is None or not rid.issued_at:
            refused.labels(reason="unknown").inc()
            return None
        if rid.owner and not rid.owned_by(named, e.user_id, e.session_id):
            refused.labels(reason="foreign").inc()
            return None
        window = self.server.attribution_window_seconds
        if not rid.issued_at - _ISSUE_SKEW <= e.timestamp <= rid.issued_at + window:
            refused.labels(reason="expired").inc()
            return None
        if self.experiments is not None:
            experiment, variant = self.experiments.label(rid.experiment, rid.variant)
        else:
            experiment, variant = ("other", "other") if rid.experiment else ("", "")
        revenue: float | None = None
        if e.event_type is EventType.PURCHASE:
            price = e.price
            if price is None and self.catalog is not None:
                item = self.catalog.records.get(e.item_id)
                price = item.price if item is not None else None
            revenue = None if price is None else price * e.quantity
        return _Attribution(e.recommendation_id, experiment, variant, placement, revenue)

    def _count_attribution(self, a: _Attribution, event_type: EventType) -> None:
        metrics = self.metrics
        metrics.attributed_events.labels(
            experiment=a.experiment,
            variant=a.variant,
            placement=a.placement,
            event_type=event_type.value,
        ).inc()
        if a.revenue:
            metrics.attributed_revenue.labels(
                experiment=a.experiment, variant=a.variant, placement=a.placement
            ).inc(a.revenue)

    async def _log_merged(self, user_id: str, session_id: str, events: Sequence[LiveEvent]) -> None:
        """Log the events a login merged, under the customer: training reads them as
        theirs (with the ids the live state applied them by)."""
        rows = [
            _log_row(user_id, session_id, e, f"login|{session_id}|{encode_event(e).decode()}")
            for e in events
        ]
        await asyncio.to_thread(self.event_log.append, rows)

    async def _count_meetings(
        self,
        model: Model,
        new_items: NewItems,
        meetings: dict[str, tuple[list[str], list[str], EventInput]],
        together: dict[str, list[str]],
    ) -> None:
        """Count each session's new products with its trained items: the session's
        stored ones (read once per session holding a new product) and this batch's."""
        sessions: dict[str, tuple[list[str], list[str]]] = {}
        try:
            for group, (new, others, e) in meetings.items():
                if e.session_id:
                    stored = await self.state.get_session(e.session_id, e.user_id)
                    others.extend(ev.item_id for ev in reversed(stored))  # oldest first
                others.extend(together.get(group, ()))
                sessions[group] = (new, others)
            await new_items.count(model, sessions)
        except StoreError as exc:  # approximate counts, like live popularity
            log.warning("counting new products' meetings failed: %s", exc)

    # --- the live catalogue ------------------------------------------------------------

    async def upsert_items(self, items: Sequence[CatalogItem]) -> int:
        """Write ``items`` into the live catalogue; its version (StoreError when the
        store cannot take them; a retry is harmless)."""
        return await self._catalog().store.upsert(items)

    async def withdraw_items(self, item_ids: Sequence[str]) -> int:
        """Withdraw ``item_ids`` from the live catalogue; its version."""
        return await self._catalog().store.withdraw(item_ids)

    def _catalog(self) -> LiveCatalog:
        if self.catalog is None:
            raise StoreError("this server runs without a live catalogue")
        return self.catalog

    # --- ForgetUser -----------------------------------------------------------------

    async def set_consent(self, user_id: str, consent: Consent) -> ConsentOutput:
        """Store ``consent`` for ``user_id``'s customer (SetConsent); anything but FULL
        deletes their stored profile at once."""
        user_id = await self._customer(user_id)
        versions = self._versions()
        self.profiles.consented(user_id, consent)
        previous, deleted = await self.state.set_consent(user_id, consent, versions)
        self.profiles.consented(user_id, consent)  # a call in flight may have cached it
        self.metrics.consent_changes.labels(consent=consent.value).inc()
        return ConsentOutput(previous, consent, deleted)

    async def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything held about ``user_id`` (ExportUser; see the proto): about their
        customer when the id is linked, and about every id linked to the customer."""
        customer = await self._customer(user_id)
        held = await self.state.export(customer)
        linked = sorted(held["linked_ids"])
        ids = [customer, *linked]
        rows = await asyncio.to_thread(self.event_log.rows_of, *ids)
        versions = await asyncio.to_thread(_versions_with, self.models.root, ids)
        return {
            "user_id": customer,
            "requested_id": user_id,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "erased": customer in self.erasures,
            "state_store": held,
            "linked_ids": {alias: await self.state.export(alias) for alias in linked},
            "event_log": {"replica": socket.gethostname(), "rows": rows},
            "model_versions": versions,
        }

    async def forget(self, user_id: str) -> ForgetOutput:
        """Erase ``user_id``'s customer and every id linked to them (ForgetUser): on
        the erasure list first, then out of the live state."""
        customer = await self._customer(user_id)
        ids = list(dict.fromkeys([user_id, customer, *await self.state.links(customer)]))
        versions = self._versions()
        added = False
        for i in ids:
            self.profiles.forget(i)
            added = self.erasures.add(i) or added
        result = await self.state.forget(customer, versions)
        for i in (*ids, *result.linked_ids):
            self.profiles.forget(i)  # a call in flight may have cached it meanwhile
            added = self.erasures.add(i) or added
        if self.erasure_store is not None:  # every replica's list: each retry writes it
            await self.erasure_store.add((*ids, *result.linked_ids))
        status = await asyncio.to_thread(erasure_status, self.settings.erasure_path, customer)
        return ForgetOutput(
            deleted_vectors=result.deleted_vectors,
            deleted_history_events=result.deleted_history_events,
            deleted_sessions=result.deleted_sessions,
            added_to_erasure_list=added,
            complete=status == "complete",
            linked_ids=tuple(i for i in dict.fromkeys((*ids, *result.linked_ids)) if i != user_id),
        )

    # --- identity links ----------------------------------------------------------------

    async def link_ids(self, customer: str, ids: Sequence[str]) -> LinkResult:
        """Link ``ids`` to ``customer`` (LinkIds); raises InvalidRequestError naming the
        id at fault when the store refuses (nothing is then written)."""
        outcome = self.metrics.identity_links
        erased = [i for i, x in enumerate(ids) if x in self.erasures]
        if customer in self.erasures or erased:
            outcome.labels(outcome="refused").inc()
            field = "customer_id" if customer in self.erasures else f"ids[{erased[0]}]"
            raise PreconditionError(
                [FieldViolation(field, "is on the erasure list (ForgetUser): it cannot be linked")]
            )
        try:
            result = await self.state.link(customer, ids, self._versions())
        except LinkRefused as exc:
            outcome.labels(outcome="refused").inc()
            raise _link_error(exc, ids) from None
        outcome.labels(outcome="linked").inc(len(result.linked))
        outcome.labels(outcome="renewed").inc(len(result.refreshed))
        for alias in result.linked:
            self.profiles.forget(alias)
        if result.moved_events:
            await self.profiles.refresh(self.models.require(), customer)
        return result

    async def unlink_ids(self, customer: str, ids: Sequence[str]) -> tuple[str, ...]:
        """Unlink ``ids`` from ``customer`` (UnlinkIds); those that were linked to them."""
        done = await self.state.unlink(customer, ids)
        self.metrics.identity_links.labels(outcome="unlinked").inc(len(done))
        return done

    async def _customer(self, user_id: str) -> str:
        """The customer ``user_id`` is linked to, or ``user_id``."""
        ((customer, _),) = (await self.state.customers([user_id])).values()
        return customer

    def _versions(self) -> list[str]:
        """Every model version a customer's vector may be stored under."""
        return sorted({*self.models.loaded_versions, *art.list_versions(self.models.root)})


# --- helpers ------------------------------------------------------------------------


class _Trend:
    """The live-popularity weights of one RecordEvents batch, by item."""

    def __init__(self, weighting: WeightingSettings, ranking: RankingSettings) -> None:
        self._weighting = weighting
        self._half_life = ranking.live_popularity_half_life_hours * 3600.0
        self._now = time.time()
        self._pending: dict[tuple[str, str], list[EventInput]] = {}
        self.weights: dict[str, float] = {}

    def add(self, e: EventInput) -> None:
        w = event_weight(
            e.event_type, e.quantity, e.timestamp, self._now, self._weighting, self._half_life
        )
        if w > 0:
            self.weights[e.item_id] = self.weights.get(e.item_id, 0.0) + w

    def pending(self, user_id: str, session_id: str, e: EventInput) -> None:
        self._pending.setdefault((user_id, session_id), []).append(e)

    def applied(self, user_id: str, session_id: str, positions: Sequence[int]) -> None:
        group = self._pending.get((user_id, session_id), [])
        for i in positions:
            self.add(group[i])


_random_bits = random.getrandbits


def _pairs(baskets: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Each item's partners in ``baskets``, each pair counted once per basket (a basket's
    first 20 distinct items)."""
    counts: dict[str, dict[str, float]] = {}
    for basket in baskets:
        items = list(dict.fromkeys(basket))[:_BASKET_PAIRS]
        for a in items:
            row = counts.setdefault(a, {})
            for b in items:
                if a != b:
                    row[b] = row.get(b, 0.0) + 1.0
    return counts


@dataclass(frozen=True)
class _Attribution:
    """An event attributed to the answer whose id it carries."""

    recommendation_id: str
    experiment: str
    """Metric label: the experiment (one this replica ran, "other", or "")."""
    variant: str
    placement: str
    """Metric label (see :func:`serving.metrics.placement_label`)."""
    revenue: float | None
    """A purchase's price x quantity, when the price is known."""


def _log_row(
    user_id: str,
    session_id: str,
    e: LiveEvent | EventInput,
    event_id: str,
    attribution: _Attribution | None = None,
) -> EventRow:
    """The event log's row of ``e`` by ``user_id``: a purchase's basket is its session's
    (or the customer's) at its second, as the loader groups orders; a visitor's row (no
    ``user_id``) has its visit, ``visit:<session>``, as the basket. An attributed
    event's row carries its recommendation id, placement and revenue (the report's
    input)."""
    purchase = e.event_type is EventType.PURCHASE
    if not user_id:  # a visitor's: the visit is the basket the loader groups it by
        basket = f"visit:{session_id}"
    else:
        basket = f"{session_id or user_id}@{e.timestamp}" if purchase else ""
    return EventRow(
        user_id=user_id,
        item_id=e.item_id,
        timestamp=e.timestamp,
        event_type=e.event_type.value,
        quantity=e.quantity,
        basket_id=basket,
        event_id=event_id,
        recommendation_id=attribution.recommendation_id if attribution else "",
        placement=attribution.placement if attribution else "",
        revenue=attribution.revenue if attribution else None,
    )


_EXPLAINED: Final = frozenset({Reason.CF, Reason.SESSION})
_SOURCES: Final = 20
"""A shopper's items an explanation is looked for among: the heaviest of their history
and the newest of their session, this many of each at most."""


def _because(
    loaded: LoadedModel, profile: Profile, items: Sequence[ScoredItem]
) -> list[str] | None:
    """Per item, the shopper's item that led to it (see RecommendedItem.because_item_id);
    None when no item has a reason one can explain."""
    because = [""] * len(items)
    rows: list[int] = []
    positions: list[int] = []
    position = loaded.model.item_position
    for row, item in enumerate(items):
        if item.reason is Reason.BUY_AGAIN:
            because[row] = item.item_id
        elif item.reason in _EXPLAINED and (p := position.get(item.item_id)) is not None:
            rows.append(row)
            positions.append(p)
    if not rows:
        return because if any(because) else None
    history, session = profile.history_items, profile.session_items[-_SOURCES:]
    if len(history) > _SOURCES:
        history = history[np.argpartition(-profile.history_weights, _SOURCES)[:_SOURCES]]
    sources = np.concatenate([history, session]) if len(session) else history
    if not len(sources):
        return because
    y = loaded.model.artifact.item_factors
    at = np.array(positions, dtype=np.int64)
    # cosine up to each row's constant: the argmax and the sign are the same
    similar = y[at] @ (y[sources] / loaded.ranker.item_norms[sources][:, None]).T
    similar[at[:, None] == sources[None, :]] = -np.inf  # never the item itself
    if len(session):
        # a session item is explained by the session (the history is not what led to it)
        for i, row in enumerate(rows):
            if items[row].reason is Reason.SESSION:
                similar[i, : len(history)] = -np.inf
    best = similar.argmax(axis=1)
    scores = similar[np.arange(len(at)), best]
    ids = loaded.model.artifact.item_ids
    for row, j, score in zip(rows, best.tolist(), scores.tolist(), strict=True):
        if score > 0:
            because[row] = str(ids[sources[j]])
    return because


def _versions_with(root: Path, user_ids: Sequence[str]) -> list[str]:
    """The model versions under ``root`` whose training data held any of ``user_ids``."""
    wanted = np.array(user_ids)
    found = []
    for version in art.list_versions(root):
        try:
            ids = np.load(root / version / "user_ids.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            continue  # being written or removed: not one to report
        if bool(np.isin(ids, wanted).any()):
            found.append(version)
    return found


def _link_error(exc: LinkRefused, ids: Sequence[str]) -> RecsvcError:
    """The status a refused link answers with, naming the field at fault."""
    if exc.reason == "full":
        return PreconditionError(
            [FieldViolation("ids", "would link more ids to the customer than link_max_ids")]
        )
    if exc.reason == "taken" and exc.index is not None:
        return ConflictError(
            [FieldViolation(f"ids[{exc.index}]", "is linked to another customer: unlink it first")]
        )
    if exc.index is not None:
        return PreconditionError(
            [FieldViolation(f"ids[{exc.index}]", "has ids linked to it: a customer, not an id")]
        )
    return PreconditionError(
        [FieldViolation("customer_id", "is itself linked to another customer: link to that one")]
    )


def _fetch(k: int, rules: ActiveRules, cap: int, *, weighed: bool = False) -> int:
    """Candidates to rank for an answer of ``k`` that ``rules`` and ``cap`` reshape:
    room for the cap to skip and for boosted items to climb (3k, at least k + 20), or
    for the pins' items alone. ``weighed``: the ranking applies the boosts and buries
    itself (and makes room for them), so only the cap and the pins need more."""
    if cap or (not weighed and rules.weighed):
        return k + min(max(2 * k, 20), _FETCH_MORE)
    return k + len(rules.pins) if weighed else k + len(rules)


def _recommendation_id(
    model_version: str, experiment: str = "", variant: str = "", *, owner: str = ""
) -> str:
    """The id of an answer (:func:`recsvc.experiments.recommendation_id`): its model,
    experiment and variant, when and to whom (``owner``) it was issued."""
    # 64 random bits: an id needs to be unique, not unguessable, so the seeded
    # generator (re-seeded from os.urandom in every process, forked ones included)
    # instead of a getrandom call
    return recommendation_id(
        model_version, experiment, variant, int(time.time()), owner, _random_bits(64)
    )


def _scored(
    names: list[str], items: list[int], scores: list[float], reasons: list[int]
) -> list[ScoredItem]:
    """The answer's items by id (``names``: :attr:`Model.item_names`), from parallel
    lists (a :class:`Merchandised`'s, or :func:`_ranked`'s)."""
    return [
        ScoredItem(names[i], s, _REASONS[r]) for i, s, r in zip(items, scores, reasons, strict=True)
    ]


def _ranked(model: Model, ranking: Ranking) -> list[ScoredItem]:
    """``ranking``'s items as they are (no rules, no cap)."""
    return _scored(
        model.item_names, ranking.items.tolist(), ranking.scores.tolist(),
        ranking.reasons.tolist(),
    )  # fmt: skip
