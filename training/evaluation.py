"""Offline evaluation: hold out by time, fit on the rest, score rankers on the held-out.

The ranking scored as ``served`` is :class:`recsvc.ranking.Ranker` with the model's
defaults, fed what the server feeds it (the user's vector and history), so the
number reported is the number shipped. The baselines live in
:mod:`training.baselines`; the strong ones (EASE, RP3beta, TIFU-KNN), tuned on a
validation split cut from the training events only, in
:mod:`training.strong_baselines` (:func:`strong_validation`).

Metrics per user, averaged over users with at least one held-out purchase:

- Recall@k = hits / |truth| (not capped at k, as in the NBR reality-check study);
- NDCG@k with binary gain, ideal DCG over min(|truth|, k) positions;
- MAP@k = Σ_{i≤k} precision@i · rel_i / min(|truth|, k);
- PHR@k = 1 when any hit;
- coverage@k = distinct items recommended to anyone / catalogue size;
- recall_repeat@k, recall_new@k: recall restricted to held-out items the user had
  (had not) bought in training, over users having such items.

:func:`trainer_holdout` and :func:`holdout_metrics` are the trainer's own, cheap
holdout that the publish gate reads (docs/evaluation.md, "The publish gate"): the
last ``evaluation.validation_share`` of the data's time span held out, the model
*not* refitted without it, each held-out customer folded in from what they did
before the cut.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from recsvc.artifact import ModelArtifact
from recsvc.config import RepeatPolicy, Settings, WeightingSettings
from recsvc.errors import DataError
from recsvc.model import Blend, Model
from recsvc.ranking import Filters, Popularity, Query, Ranker, training_user_query

from . import baselines, strong_baselines
from .interactions import (
    DEFAULT_POPULARITY_HALF_LIFE,
    Interactions,
    build_interactions,
    trending_popularity,
)
from .pipeline import LoadedData, build_model
from .splits import Split, split_by_cutoff, split_last_basket

__all__ = [
    "GATE_K",
    "HOLDOUT_MAX_USERS",
    "HOLDOUT_MIN_USERS",
    "HOLDOUT_SEED",
    "HOLDOUT_USERS",
    "EvalReport",
    "Holdout",
    "HoldoutCase",
    "HoldoutSplit",
    "Split",
    "StrongValidation",
    "als_recommender",
    "compared_keys",
    "evaluate",
    "format_table",
    "holdout_metrics",
    "holdout_of",
    "holdout_split",
    "served_recommender",
    "split_by_cutoff",
    "split_last_basket",
    "strong_validation",
    "trainer_holdout",
    "truth_positions",
]

log = logging.getLogger(__name__)

Recommender = Callable[[int], NDArray[np.int64]]
"""Training-user position → top-K item positions, best first."""


@dataclass
class EvalReport:
    dataset: str
    protocol: str
    users: int
    metrics: dict[str, dict[str, float]]
    model: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "users": self.users,
            "metrics": self.metrics,
            "model": self.model,
            "seconds": self.seconds,
        }


def evaluate(
    data: LoadedData,
    split: Split,
    settings: Settings,
    *,
    dataset: str,
    progress: bool = False,
    extra: Mapping[str, Recommender] | None = None,
    strong: bool = False,
) -> EvalReport:
    """Fit on ``split.train`` as ``recsvc train`` would, then score every ranker.

    ``strong``: also the strong baselines (:mod:`training.strong_baselines`), tuned on
    :func:`strong_validation` of ``split`` (its training events only) and refitted on
    ``split.train``; their parameters go to ``model["strong_baselines"]``.
    """
    ks = tuple(sorted(settings.evaluation.ks))
    top = max(ks)
    t = time.perf_counter()
    built = build_model(
        LoadedData(split.train, data.catalog, data.summaries, data.erased_events),
        settings,
        progress=progress,
    )
    fit_seconds = time.perf_counter() - t
    faiss.omp_set_num_threads(1)  # one query at a time, as the server searches
    model = Model(built.artifact)
    ranker = Ranker(model, overfetch=settings.ranking.overfetch)
    inter = built.interactions

    users, truths = truth_positions(model, split.truth)
    served = served_recommender(ranker, top)

    rankers: dict[str, Recommender] = {
        **baselines.make_baselines(inter.counts, top),
        "als": als_recommender(ranker, top),
        "served": served,
    }
    if extra:
        rankers.update(extra)

    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {"fit": fit_seconds}
    histories = _history_sets(inter.counts, users)
    for name, recommend in rankers.items():
        t = time.perf_counter()
        lists = [recommend(u) for u in users]
        seconds[name] = time.perf_counter() - t
        metrics[name] = score_lists(lists, truths, histories, ks, model.n_items)
        log.info("%s: recall@%d %.4f", name, top, metrics[name][f"recall@{top}"])
    strong_report: dict[str, Any] = {}
    if strong:
        allow = built.artifact.manifest.ranking.repeat_policy is RepeatPolicy.ALLOW
        t = time.perf_counter()
        try:
            fit_data = strong_baselines.FitData(
                inter.counts,
                strong_baselines.Baskets.from_table(
                    split.train, inter.user_ids.tolist(), inter.item_ids.tolist()
                ),
            )
            found = strong_validation(split, settings)
            result = strong_baselines.run(
                *found.data,
                fit_data,
                np.asarray(users, np.int64),
                k=top,
                allow_repeats=allow,
                tuned_on=found.described,
            )
        except DataError as exc:
            log.warning("strong baselines skipped: %s", exc)
            strong_report = {"skipped": str(exc)}
        else:
            strong_report = result.report
            seconds.update(result.seconds)
            scored = {
                name: score_lists(lists, truths, histories, ks, model.n_items)
                for name, lists in result.lists.items()
            }
            for name, m in scored.items():
                log.info("%s: recall@%d %.4f", name, top, m[f"recall@{top}"])
            metrics = _with_strong_rows(metrics, scored)
        seconds["strong_baselines"] = time.perf_counter() - t
    return EvalReport(
        dataset=dataset,
        protocol=split.protocol,
        users=len(users),
        metrics=metrics,
        model={
            "model_version": built.artifact.model_version,
            "ranking": built.artifact.manifest.ranking.as_json(),
            "als": settings.als.model_dump(mode="json"),
            "items": model.n_items,
            "train_users": len(model.user_position),
            **({"strong_baselines": strong_report} if strong else {}),
        },
        seconds=seconds,
    )


def _with_strong_rows(
    metrics: Mapping[str, dict[str, float]], strong: Mapping[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """The report's rows with the strong baselines after the weak ones, before ``als``
    and ``served`` (and anything after them)."""
    out: dict[str, dict[str, float]] = {}
    for name, values in metrics.items():
        if name in {"als", "served"}:
            out.update(strong)
            strong = {}
        out[name] = values
    out.update(strong)
    return out


@dataclass(frozen=True)
class StrongValidation:
    """The strong baselines' validation: what they are fitted on while tuned, the
    users scored and their truths (positions of ``data``'s items), and how it was cut."""

    data: tuple[strong_baselines.FitData, NDArray[np.int64], list[NDArray[np.int64]]]
    described: str


def strong_validation(split: Split, settings: Settings) -> StrongValidation:
    """The validation split the strong baselines are tuned on, cut from
    ``split.train`` alone (the held-out truth is never read).

    - a time split: :func:`training.tuning.validation_split` (``recsvc tune``'s) of the
      training events, its cut-off just after the last of them: the last
      ``evaluation.validation_share`` of the training period is the validation window;
    - a last-basket split: each training user's last basket of ``split.train``.

    Raises:
        DataError: when the training events leave no validation to tune on.
    """
    from .tuning import validation_split  # noqa: PLC0415 (tuning imports this module)

    train = split.train
    if split.protocol.startswith("time split"):
        end = int(pc.max(train["timestamp"]).as_py()) + 1
        share = settings.evaluation.validation_share
        inner = validation_split(train, "time", share, datetime.fromtimestamp(end, UTC))
        described = (
            f"{inner.protocol} of the training events (the last {share:.0%} of the "
            "training period held out), refitted on all training events"
        )
    else:
        inner = split_last_basket(train)
        described = (
            "each training user's last basket of the training events, refitted on all "
            "training events"
        )
    inter = build_interactions(inner.train, settings.weighting)
    user_ids, item_ids = inter.user_ids.tolist(), inter.item_ids.tolist()
    row = {str(u): r for r, u in enumerate(user_ids)}
    column = {str(i): c for c, i in enumerate(item_ids)}
    users, truths = [], []
    for user in sorted(inner.truth):
        r = row.get(user)
        if r is None:
            continue
        users.append(r)
        truths.append(np.array(sorted(column.get(i, -1) for i in inner.truth[user]), np.int64))
    if not users:
        raise DataError("the validation split has no user with training history")
    data = strong_baselines.FitData(
        inter.counts, strong_baselines.Baskets.from_table(inner.train, user_ids, item_ids)
    )
    return StrongValidation((data, np.asarray(users, np.int64), truths), described)


def truth_positions(
    model: Model, truth: Mapping[str, set[str]]
) -> tuple[list[int], list[NDArray[np.int64]]]:
    """Held-out users with training history (positions) and their items (positions;
    -1 for an item the model never saw, which no ranking can hit)."""
    users, truths = [], []
    for user, items in truth.items():
        u = model.user_position.get(user)
        if u is None:
            continue
        users.append(u)
        truths.append(np.array([model.item_position.get(i, -1) for i in items], dtype=np.int64))
    if not users:
        raise DataError("no held-out user has training history; nothing to evaluate")
    return users, truths


def served_recommender(ranker: Ranker, k: int) -> Recommender:
    """The server's ranking for a known customer with no live events: the trained
    vector, the full history and the purchases, the model's defaults."""

    def served(u: int) -> NDArray[np.int64]:
        query = training_user_query(ranker.model, u, k)
        return ranker.recommend(query).items.astype(np.int64)

    return served


def als_recommender(ranker: Ranker, k: int) -> Recommender:
    """ALS alone: the served ranking with every signal but CF weighed 0."""
    model = copy.copy(ranker.model)
    model.defaults = replace(model.defaults, user=Blend(cf=1.0))
    als = Ranker(model, overfetch=ranker.overfetch)

    def recommend(u: int) -> NDArray[np.int64]:
        query = Query(k=k, user_vector=model.artifact.user_factors[u])
        return als.recommend(query).items.astype(np.int64)

    return recommend


def _history_sets(weights: Any, users: Iterable[int]) -> list[NDArray[np.int64]]:
    return [
        weights.indices[weights.indptr[u] : weights.indptr[u + 1]].astype(np.int64) for u in users
    ]


def score_lists(
    lists: list[NDArray[np.int64]],
    truths: list[NDArray[np.int64]],
    histories: list[NDArray[np.int64]],
    ks: tuple[int, ...],
    n_items: int,
    *,
    ideal: Literal["k", "truth"] = "k",
    brief: bool = False,
) -> dict[str, float]:
    """Average the metrics of the module docstring over users.

    ``ideal="truth"`` takes NDCG's ideal DCG over the whole truth (every held-out
    item at the top, however many), as the NBR reality-check study does. ``brief``:
    Recall@k and NDCG@k only (the rest costs four more set operations per user).
    """
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        recall, ndcg, ap, phr = [], [], [], []
        rec_rep, rec_new = [], []
        covered: set[int] = set()
        for recs, truth, hist in zip(lists, truths, histories, strict=True):
            top = recs[:k]
            rel = np.isin(top, truth).astype(np.float64)
            n_truth = len(truth)
            hits = rel.sum()
            recall.append(hits / n_truth)
            if ideal == "truth":
                best = float((1.0 / np.log2(np.arange(2, n_truth + 2))).sum())
            else:
                best = float(discounts[: min(n_truth, k)].sum())
            ndcg.append(float((rel * discounts[: len(rel)]).sum() / best))
            if brief:
                continue
            covered.update(top.tolist())
            phr.append(float(hits > 0))
            precision_at = np.cumsum(rel) / np.arange(1, len(rel) + 1)
            ap.append(float((precision_at * rel).sum() / min(n_truth, k)))
            repeat_truth = truth[np.isin(truth, hist)]
            new_truth = truth[~np.isin(truth, hist)]
            if len(repeat_truth):
                rec_rep.append(np.isin(top, repeat_truth).sum() / len(repeat_truth))
            if len(new_truth):
                rec_new.append(np.isin(top, new_truth).sum() / len(new_truth))
        out[f"recall@{k}"] = float(np.mean(recall))
        out[f"ndcg@{k}"] = float(np.mean(ndcg))
        if brief:
            continue
        out[f"map@{k}"] = float(np.mean(ap))
        out[f"phr@{k}"] = float(np.mean(phr))
        out[f"coverage@{k}"] = len(covered) / n_items
        out[f"recall_repeat@{k}"] = float(np.mean(rec_rep)) if rec_rep else 0.0
        out[f"recall_new@{k}"] = float(np.mean(rec_new)) if rec_new else 0.0
    return out


_COLUMNS = ("recall", "ndcg", "map", "phr", "hr", "mrr", "coverage", "recall_repeat", "recall_new")


def format_table(
    metrics: Mapping[str, Mapping[str, float]], style: Literal["text", "markdown"] = "text"
) -> str:
    """``{method: {"metric@k": value}}`` as an aligned text table (or Markdown)."""
    present = {key for m in metrics.values() for key in m}
    ks = sorted({int(key.split("@")[1]) for key in present})
    headers = ["method"] + [f"{c}@{k}" for k in ks for c in _COLUMNS if f"{c}@{k}" in present]
    rows = [
        [name] + [f"{m.get(h, float('nan')):.4f}" for h in headers[1:]]
        for name, m in metrics.items()
    ]
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *rows])


# --- the trainer's holdout (the publish gate) -----------------------------------------

#: The cut-off of the gate's metrics: Recall@20 and NDCG@20.
GATE_K = 20
#: Held-out customers the trainer scores at most: each ranking of one costs ~0.4 ms
#: (6,000-20,000 items), so scoring stays around a second per model.
HOLDOUT_MAX_USERS = 2000
#: Seed of the sample of held-out customers: fixed, so that two models trained on the
#: same data share their holdout whatever their own seeds.
HOLDOUT_SEED = 0
#: Fewer scored customers than this and the gate does not judge the model (the
#: metrics of a few dozen customers are noise); it passes, with a warning.
HOLDOUT_MIN_USERS = 50
#: ``manifest.metrics`` key: held-out customers scored.
HOLDOUT_USERS = "holdout_users"


@dataclass(frozen=True)
class HoldoutCase:
    """One held-out customer, in positions of :attr:`Holdout.item_ids`."""

    history_items: NDArray[np.int32]
    """What they did before the cut (every event type), for the fold-in."""
    history_weights: NDArray[np.float32]
    """Its weights, decayed to the cut."""
    purchased_items: NDArray[np.int32]
    """What they bought before the cut (buy-again, the repeat policy)."""
    purchased_weights: NDArray[np.float32]
    truth: NDArray[np.int64]
    """What they bought from the cut on; -1 for an item first seen after the cut
    (a miss for every ranking: nothing known at the cut could name it)."""


@dataclass(frozen=True)
class Holdout:
    """The trainer's time-split holdout: the last ``evaluation.validation_share`` of
    the data's time span; each customer seen before the cut who bought in it is a case
    (at most :data:`HOLDOUT_MAX_USERS`, sampled with :data:`HOLDOUT_SEED`).

    Held as positions in the vocabulary of the events before the cut, so that any
    model (the new one, the current one) can be scored on it."""

    cut: int
    """Unix seconds: events before it are the customers' history, purchases from it on
    the truth."""
    before: pa.Table
    """The events before the cut."""
    interactions: Interactions
    """Their weights; ``interactions.item_ids`` is the holdout's item vocabulary."""
    cases: list[HoldoutCase]
    held_out_users: int
    """Customers held out before the sample was drawn."""
    baselines: dict[str, dict[str, float]]
    """``popularity`` (G-TopFreq) and ``buy_again`` (P-TopFreq) on the cases, from the
    events before the cut: ``{name: {"recall@20": ..., "ndcg@20": ...}}``."""
    _popularity: dict[str, NDArray[np.float32]] = field(default_factory=dict, repr=False)
    _positions: dict[str, NDArray[np.int64]] = field(default_factory=dict, repr=False)

    @property
    def item_ids(self) -> NDArray[np.str_]:
        return self.interactions.item_ids

    def popularity(self, model: Model) -> NDArray[np.float32]:
        """The items' trending popularity at the cut as ``model`` weighs it (its event
        weights and popularity half-life), scaled to [0, 1]: the prior the model's
        ranking would have had at the cut. Computed once per weighting."""
        weighting, half_life = _popularity_weighting(model)
        key = f"{weighting.model_dump_json()}/{half_life!r}"
        if key not in self._popularity:
            counted = trending_popularity(self.before, self.interactions, weighting, half_life)
            top = float(counted.max()) if len(counted) else 0.0
            scaled = counted / top if top > 0 else counted
            self._popularity[key] = scaled.astype(np.float32)
        return self._popularity[key]

    def positions_in(self, model: Model) -> NDArray[np.int64]:
        """Each item's position in ``model`` (-1: the model lacks it), computed once
        per model version."""
        if model.version not in self._positions:
            position = model.item_position
            self._positions[model.version] = np.array(
                [position.get(str(i), -1) for i in self.item_ids.tolist()], np.int64
            )
        return self._positions[model.version]


def _popularity_weighting(model: Model) -> tuple[WeightingSettings, float]:
    """The event weights and the popularity half-life (days) of ``model``'s trained
    popularity, as :func:`training.pipeline.build_model` chose them."""
    manifest = model.artifact.manifest
    weighting = manifest.config.weighting
    fit = manifest.ranking.user_blend_fit
    if fit is not None:
        return weighting, fit.popularity_half_life_days
    half_life = weighting.popularity_half_life_days
    return weighting, DEFAULT_POPULARITY_HALF_LIFE if half_life is None else half_life


def trainer_holdout(data: LoadedData, settings: Settings) -> Holdout | None:
    """The holdout of :class:`Holdout`; None when there is none (every purchase
    before the cut or after it, no customer seen on both sides, nothing to weigh)."""
    part = holdout_split(data.table, settings)
    return holdout_of(part, settings) if part is not None else None


@dataclass(frozen=True)
class HoldoutSplit:
    """The events :func:`holdout_of` reads: the trainer's time split at ``cut``.

    Apart so that a caller can let go of the whole event table before the holdout's
    weights are built beside this copy of the events before the cut."""

    cut: int
    split: Split


def holdout_split(table: pa.Table, settings: Settings) -> HoldoutSplit | None:
    """The first half of :func:`trainer_holdout`: the split; None when there is none."""
    if table.num_rows == 0:
        return None
    # the time protocol's validation split (training.tuning.validation_split) with
    # the whole data before its cut-off
    start = int(pc.min(table["timestamp"]).as_py())
    end = int(pc.max(table["timestamp"]).as_py()) + 1
    cut = int(end - settings.evaluation.validation_share * (end - start))
    try:
        split = split_by_cutoff(table, datetime.fromtimestamp(cut, UTC))
    except DataError as exc:
        log.info("no holdout for the publish gate: %s", exc)
        return None
    return HoldoutSplit(cut, split)


def holdout_of(part: HoldoutSplit, settings: Settings) -> Holdout | None:
    """The second half of :func:`trainer_holdout`: the cases of ``part``."""
    cut, split = part.cut, part.split
    try:
        before = build_interactions(split.train, settings.weighting)
    except DataError as exc:
        log.info("no holdout for the publish gate: %s", exc)
        return None
    users = sorted(split.truth)
    if not users:
        return None
    held_out = len(users)
    if held_out > HOLDOUT_MAX_USERS:
        rng = np.random.default_rng(HOLDOUT_SEED)
        users = sorted(rng.choice(users, size=HOLDOUT_MAX_USERS, replace=False).tolist())
    row = {str(u): r for r, u in enumerate(before.user_ids.tolist())}
    position = {str(i): p for p, i in enumerate(before.item_ids.tolist())}
    ranked = baselines.make_baselines(before.counts, GATE_K)
    cases: list[HoldoutCase] = []
    lists: dict[str, list[NDArray[np.int64]]] = {"popularity": [], "buy_again": []}
    for user in users:
        r = row[user]  # split_by_cutoff keeps customers seen before the cut only
        items, weights = _csr_row(before.weights, r)
        bought, bought_weights = _csr_row(before.purchases, r)
        truth = np.array(sorted(position.get(i, -1) for i in split.truth[user]), np.int64)
        cases.append(HoldoutCase(items, weights, bought, bought_weights, truth))
        for name, ranked_lists in lists.items():
            ranked_lists.append(ranked[name](r))
    scored = {
        name: _gate_scores(ranked_lists, cases, len(before.item_ids))
        for name, ranked_lists in lists.items()
    }
    return Holdout(
        cut=cut,
        before=split.train,
        interactions=before,
        cases=cases,
        held_out_users=held_out,
        baselines=scored,
    )


def _csr_row(m: Any, r: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    start, end = m.indptr[r], m.indptr[r + 1]
    return m.indices[start:end].astype(np.int32), m.data[start:end].astype(np.float32)


def _gate_scores(
    lists: list[NDArray[np.int64]], cases: list[HoldoutCase], n_items: int
) -> dict[str, float]:
    """Recall@20 and NDCG@20 of ``lists`` (positions of the holdout's items)."""
    truths = [c.truth for c in cases]
    histories = [c.history_items.astype(np.int64) for c in cases]
    return score_lists(lists, truths, histories, (GATE_K,), n_items, brief=True)


def compared_keys(version: str) -> dict[str, str]:
    """The ``manifest.metrics`` keys of the comparison with ``version`` (the model
    that was CURRENT when this one was trained), by role: ``users`` (held-out
    customers both were scored on; 0 = no comparison could be made), ``recall`` and
    ``ndcg`` (this model on them), ``current_recall`` and ``current_ndcg`` (``version``
    on them)."""
    return {
        "users": f"compared_users@{version}",
        "recall": f"compared_recall_at_{GATE_K}@{version}",
        "ndcg": f"compared_ndcg_at_{GATE_K}@{version}",
        "current_recall": f"current_recall_at_{GATE_K}@{version}",
        "current_ndcg": f"current_ndcg_at_{GATE_K}@{version}",
    }


@threadpool_limits.wrap(limits=1, user_api="blas")  # type: ignore[untyped-decorator]
def holdout_metrics(
    holdout: Holdout | None,
    artifact: ModelArtifact,
    settings: Settings,
    current: Model | None = None,
    current_version: str | None = None,
) -> dict[str, float]:
    """The gate's ``manifest.metrics`` of ``artifact`` on ``holdout``, through the
    served ranking: ``holdout_users``; ``holdout_``, ``popularity_`` and ``buy_again_``
    ``recall_at_20`` and ``ndcg_at_20``; and, with ``current_version`` (the model
    CURRENT names; ``current`` None when it could not be read), the keys of
    :func:`compared_keys`: both models on the cases restricted to the items both know.
    """
    if holdout is None or not holdout.cases:
        return {HOLDOUT_USERS: 0.0}
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query at a time, as the server searches
    try:
        model = Model(artifact)
        metrics: dict[str, float] = {HOLDOUT_USERS: float(len(holdout.cases))}
        lists = _served_lists(model, holdout, holdout.cases, settings)
        ranked = {"holdout": _gate_scores(lists, holdout.cases, len(holdout.item_ids))}
        ranked.update(holdout.baselines)
        for name, scores in ranked.items():
            for measure in ("recall", "ndcg"):
                metrics[f"{name}_{measure}_at_{GATE_K}"] = scores[f"{measure}@{GATE_K}"]
        if current_version is not None:
            metrics.update(_compare(model, current, current_version, holdout, settings, lists))
    finally:
        faiss.omp_set_num_threads(threads)
    return metrics


def _compare(
    model: Model,
    current: Model | None,
    version: str,
    holdout: Holdout,
    settings: Settings,
    lists: list[NDArray[np.int64]],
) -> dict[str, float]:
    """This model and ``current`` on the holdout's customers, each's history and truth
    cut to the items both models know (customers left without either dropped).
    ``lists``: this model's on every case, reused when both know every item."""
    keys = compared_keys(version)
    if current is None:
        return {keys["users"]: 0.0}
    known = (holdout.positions_in(model) >= 0) & (holdout.positions_in(current) >= 0)
    cases, kept = [], []
    for at, case in enumerate(holdout.cases):
        history = known[case.history_items]
        truth = case.truth[(case.truth >= 0) & known[np.maximum(case.truth, 0)]]
        if not history.any() or len(truth) == 0:
            continue
        bought = known[case.purchased_items]
        cases.append(
            HoldoutCase(
                case.history_items[history],
                case.history_weights[history],
                case.purchased_items[bought],
                case.purchased_weights[bought],
                truth,
            )
        )
        kept.append(at)
    if not cases:
        return {keys["users"]: 0.0}
    n = len(holdout.item_ids)
    if known.all():  # the same queries as on the whole holdout: the same answers
        mine_lists = [lists[at] for at in kept]
    else:
        mine_lists = _served_lists(model, holdout, cases, settings, known)
    mine = _gate_scores(mine_lists, cases, n)
    theirs = _gate_scores(_served_lists(current, holdout, cases, settings, known), cases, n)
    return {
        keys["users"]: float(len(cases)),
        keys["recall"]: mine[f"recall@{GATE_K}"],
        keys["ndcg"]: mine[f"ndcg@{GATE_K}"],
        keys["current_recall"]: theirs[f"recall@{GATE_K}"],
        keys["current_ndcg"]: theirs[f"ndcg@{GATE_K}"],
    }


def _served_lists(
    model: Model,
    holdout: Holdout,
    cases: list[HoldoutCase],
    settings: Settings,
    allowed: NDArray[np.bool_] | None = None,
) -> list[NDArray[np.int64]]:
    """The served ranking's top 20 for each case (positions of the holdout's items).

    The query is what the server builds for a customer it holds no vector for: the
    history, folded in, and the purchases; the popularity prior is the one at the cut,
    and only items known at the cut (and ``allowed``) may be shown."""
    to_model = holdout.positions_in(model)
    usable = to_model >= 0
    if allowed is not None:
        usable &= allowed
    shown = np.zeros(model.n_items, dtype=bool)
    shown[to_model[usable]] = True
    back = np.full(model.n_items, -1, dtype=np.int64)
    back[to_model[usable]] = np.flatnonzero(usable)
    prior = np.zeros(model.n_items, dtype=np.float32)
    prior[to_model[usable]] = holdout.popularity(model)[usable]
    popularity = Popularity(prior, np.argsort(-prior, kind="stable").astype(np.int32))
    filters = Filters() if shown.all() else Filters(shown=shown)
    ranker = Ranker(model, overfetch=settings.ranking.overfetch)
    lists = []
    for case in cases:
        history = usable[case.history_items]
        bought = usable[case.purchased_items]
        query = Query(
            k=GATE_K,
            history_items=to_model[case.history_items[history]].astype(np.int32),
            history_weights=case.history_weights[history],
            purchased_items=to_model[case.purchased_items[bought]].astype(np.int32),
            purchased_weights=case.purchased_weights[bought],
            filters=filters,
            popularity=popularity,
        )
        items = back[ranker.recommend(query).items]
        lists.append(items[items >= 0])  # (only shown items come back)
    return lists
