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

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.config import Settings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Query, Ranker, training_user_query
from training import baselines
from training.pipeline import LoadedData, build_model

__all__ = [
    "EvalReport",
    "Split",
    "evaluate",
    "format_table",
    "split_by_cutoff",
    "split_last_basket",
]

log = logging.getLogger(__name__)

Recommender = Callable[[int], NDArray[np.int64]]
"""Training-user position → top-K item positions, best first."""


@dataclass(frozen=True)
class Split:
    """A train table and the held-out purchases per user (external ids)."""

    train: pa.Table
    truth: dict[str, set[str]]
    protocol: str


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


def _purchases(table: pa.Table) -> pa.Table:
    return table.filter(
        pc.and_(
            pc.equal(table["event_type"], EventType.PURCHASE.value),
            pc.is_valid(table["user_id"]),
        )
    )


def _truth_from(table: pa.Table) -> dict[str, set[str]]:
    truth: dict[str, set[str]] = {}
    for user, item in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist(), strict=True):
        truth.setdefault(user, set()).add(item)
    return truth


def split_by_cutoff(table: pa.Table, cutoff: datetime) -> Split:
    """Events before ``cutoff`` train; purchases at or after it, by users seen before, test."""
    ts = int(cutoff.replace(tzinfo=cutoff.tzinfo or UTC).timestamp())
    before = pc.less(table["timestamp"], ts)
    train = table.filter(before)
    test = _purchases(table.filter(pc.invert(before)))
    if train.num_rows == 0 or test.num_rows == 0:
        raise DataError(
            f"cut-off {cutoff.isoformat()} leaves {train.num_rows} training events and "
            f"{test.num_rows} test purchases; pick a date inside the data"
        )
    seen = pc.unique(train["user_id"].drop_null())
    test = test.filter(pc.is_in(test["user_id"], value_set=seen))
    return Split(train, _truth_from(test), f"time split at {cutoff.date().isoformat()}")


#: Events this close before a held-out basket belong to the visit that made it
#: (the views and cart adds that led to the purchase) and would leak it.
VISIT_GAP_SECONDS = 30 * 60


def split_last_basket(table: pa.Table) -> Split:
    """Each user's last purchase basket is the test; everything before its visit trains.

    Users with a single basket have nothing to learn from and are left out of the
    test (their events still train). A test user's events from
    :data:`VISIT_GAP_SECONDS` before the last basket on are removed from training.
    """
    purchases = _purchases(table)
    if purchases.num_rows == 0:
        raise DataError("no purchases with a user id: nothing to hold out")
    last = purchases.group_by("user_id").aggregate(
        [("timestamp", "max"), ("basket_id", "count_distinct")]
    )
    last = last.filter(pc.greater(last["basket_id_count_distinct"], 1))
    cut = dict(zip(last["user_id"].to_pylist(), last["timestamp_max"].to_pylist(), strict=True))
    users = table["user_id"].to_pylist()
    stamps = table["timestamp"].to_numpy()
    held = np.fromiter(
        (
            u is not None and u in cut and s >= cut[u] - VISIT_GAP_SECONDS
            for u, s in zip(users, stamps, strict=True)
        ),
        dtype=bool,
        count=table.num_rows,
    )
    test = _purchases(table.filter(pa.array(held)))
    # only the last basket is the target, not other purchases of the same visit
    stamps_test = test["timestamp"].to_numpy()
    users_test = test["user_id"].to_pylist()
    is_last = np.fromiter(
        (s >= cut[u] for u, s in zip(users_test, stamps_test, strict=True)),
        dtype=bool,
        count=test.num_rows,
    )
    test = test.filter(pa.array(is_last))
    return Split(table.filter(pa.array(~held)), _truth_from(test), "last basket per user")


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
    model = Model(built.artifact)
    ranker = Ranker(model, overfetch=settings.ranking.overfetch)
    inter = built.interactions

    users, truths = [], []
    for user, items in split.truth.items():
        u = model.user_position.get(user)
        if u is None:
            continue
        users.append(u)
        truths.append(np.array([model.item_position.get(i, -1) for i in items], dtype=np.int64))
    if not users:
        raise DataError("no held-out user has training history; nothing to evaluate")

    def served(u: int) -> NDArray[np.int64]:
        return ranker.recommend(training_user_query(model, u, top)).items.astype(np.int64)

    def als_alone(u: int) -> NDArray[np.int64]:
        query = Query(k=top, user_vector=model.artifact.user_factors[u], repeat_weight=0.0)
        return ranker.recommend(query).items.astype(np.int64)

    rankers: dict[str, Recommender] = {
        **baselines.make_baselines(inter.counts, top),
        "als": als_alone,
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
            "ranking": built.artifact.manifest["ranking"],
            "als": settings.als.model_dump(mode="json"),
            "items": model.n_items,
            "train_users": len(model.user_position),
        },
        seconds=seconds,
    )


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
) -> dict[str, float]:
    """Average the metrics of the module docstring over users."""
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
            ideal = discounts[: min(n_truth, k)].sum()
            ndcg.append(float((rel * discounts[: len(rel)]).sum() / ideal))
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


_COLUMNS = ("recall", "ndcg", "map", "phr", "coverage", "recall_repeat", "recall_new")


def format_table(report: EvalReport, style: Literal["text", "markdown"] = "text") -> str:
    """The metrics as an aligned text table (or Markdown)."""
    ks = sorted({int(key.split("@")[1]) for m in report.metrics.values() for key in m})
    headers = ["method"] + [f"{c}@{k}" for k in ks for c in _COLUMNS]
    rows = [
        [name] + [f"{m.get(h, float('nan')):.4f}" for h in headers[1:]]
        for name, m in report.metrics.items()
    ]
    if style == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *rows])
