"""Offline evaluation: hold out by time, fit on the rest, score rankers on the held-out.

The ranking scored as ``served`` is :class:`recsvc.ranking.Ranker` with the model's
defaults, fed what the server feeds it (the user's vector and history), so the
number reported is the number shipped. The baselines live in
:mod:`training.baselines`.

Metrics per user, averaged over users with at least one held-out purchase:

- Recall@k = hits / |truth| (not capped at k, as in the NBR reality-check study);
- NDCG@k with binary gain, ideal DCG over min(|truth|, k) positions;
- MAP@k = Σ_{i≤k} precision@i · rel_i / min(|truth|, k);
- PHR@k = 1 when any hit;
- coverage@k = distinct items recommended to anyone / catalogue size;
- recall_repeat@k, recall_new@k: recall restricted to held-out items the user had
  (had not) bought in training, over users having such items.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import faiss
import numpy as np
from numpy.typing import NDArray

from recsvc.config import Settings
from recsvc.errors import DataError
from recsvc.model import Blend, Model
from recsvc.ranking import Query, Ranker, training_user_query

from . import baselines
from .pipeline import LoadedData, build_model
from .splits import Split, split_by_cutoff, split_last_basket

__all__ = [
    "EvalReport",
    "Split",
    "als_recommender",
    "evaluate",
    "format_table",
    "served_recommender",
    "split_by_cutoff",
    "split_last_basket",
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
) -> EvalReport:
    """Fit on ``split.train`` as ``recsvc train`` would, then score every ranker."""
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
    for name, recommend in rankers.items():
        t = time.perf_counter()
        lists = [recommend(u) for u in users]
        seconds[name] = time.perf_counter() - t
        histories = _history_sets(inter.counts, users)
        metrics[name] = score_lists(lists, truths, histories, ks, model.n_items)
        log.info("%s: recall@%d %.4f", name, top, metrics[name][f"recall@{top}"])
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
        },
        seconds=seconds,
    )


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
) -> dict[str, float]:
    """Average the metrics of the module docstring over users.

    ``ideal="truth"`` takes NDCG's ideal DCG over the whole truth (every held-out
    item at the top, however many), as the NBR reality-check study does.
    """
    out: dict[str, float] = {}
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    for k in ks:
        recall, ndcg, ap, phr = [], [], [], []
        rec_rep, rec_new = [], []
        covered: set[int] = set()
        for recs, truth, hist in zip(lists, truths, histories, strict=True):
            top = recs[:k]
            covered.update(top.tolist())
            rel = np.isin(top, truth).astype(np.float64)
            n_truth = len(truth)
            hits = rel.sum()
            recall.append(hits / n_truth)
            phr.append(float(hits > 0))
            if ideal == "truth":
                best = float((1.0 / np.log2(np.arange(2, n_truth + 2))).sum())
            else:
                best = float(discounts[: min(n_truth, k)].sum())
            ndcg.append(float((rel * discounts[: len(rel)]).sum() / best))
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
