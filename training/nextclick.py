"""The session protocol of ``recsvc evaluate``: anonymous sessions, predict the next click.

Data is the SR-GNN preprocessing of Diginetica (``../shared/data/diginetica``):
``train_sessions.txt.gz`` (one session per line, item ids in click order, sessions in
time order) and ``test_cases.tsv.gz`` (``prefix<TAB>target``). Every test prefix is
sent through the server's session path: the items become a live session (weighted by
:func:`recsvc.weighting.session_weights`, as the server weighs them) in a
:class:`~recsvc.ranking.Query` with no user, ranked by :class:`~recsvc.ranking.Ranker`
with the model's defaults. HR@K is 1 when the target is in the top K, MRR@K is
1/rank (0 beyond K), both averaged over every case.

Training sessions enter the trainer as view events of pseudo-users (one per session,
``s<line>``), a basket per session and one minute between clicks, sessions
spread over time in file order: the ALS model learns item factors from co-viewed items, and the
item-neighbour model from the sessions themselves.
"""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from recsvc.config import Settings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Query, Ranker
from recsvc.weighting import EVENT_TYPES, session_weights

from .baselines import item_knn_similarity
from .loading import EVENT_SCHEMA
from .pipeline import LoadedData, build_model
from .session_baselines import (
    TuneResult,
    encode_items,
    rank_next_items,
    session_index_from_table,
    tune_session_knn,
)

__all__ = [
    "NextClickCases",
    "evaluate_next_click",
    "load_next_click_data",
    "score_next_item",
    "served_next_click_ranking",
    "tune_session_baselines",
    "validation_cases",
]

log = logging.getLogger(__name__)

#: Reference time of the synthetic clock: 2016-06-01 UTC (Diginetica's year).
_EPOCH = 1_464_739_200
_DAY = 86_400
_VIEW = EVENT_TYPES.index(EventType.VIEW)


@dataclass(frozen=True)
class NextClickCases:
    """Test cases in external ids: ``prefixes[i]`` (click order) then ``targets[i]``."""

    prefixes: list[list[str]]
    targets: list[str]


def _lines(path: Path) -> Iterator[str]:
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        yield from fh


def load_next_click_data(directory: Path) -> tuple[pa.Table, NextClickCases]:
    """Training sessions as an event table, and the test cases."""
    train_path = directory / "train_sessions.txt.gz"
    test_path = directory / "test_cases.tsv.gz"
    for path in (train_path, test_path):
        if not path.is_file():
            raise DataError(f"{path} not found (expected the SR-GNN Diginetica files)")
    users: list[str] = []
    items: list[str] = []
    stamps: list[int] = []
    n_sessions = 0
    for line_no, line in enumerate(_lines(train_path), start=1):
        clicks = line.split()
        if not clicks:
            continue
        start = _EPOCH - 400 * _DAY + n_sessions * (_DAY // 1000)
        users.extend([f"s{line_no}"] * len(clicks))
        items.extend(clicks)
        stamps.extend(start + 60 * i for i in range(len(clicks)))
        n_sessions += 1
    n = len(items)
    table = pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "timestamp": pa.array(stamps, pa.int64()),
            "event_type": pa.array([EventType.VIEW.value] * n, pa.string()),
            "quantity": pa.array(np.ones(n, np.float32)),
            "basket_id": pa.array(users, pa.string()),
        },
        schema=EVENT_SCHEMA,
    )
    prefixes, targets = [], []
    for line_no, line in enumerate(_lines(test_path), start=1):
        prefix, sep, target = line.rstrip("\n").partition("\t")
        if not sep or not target or not prefix.split():
            raise DataError(f"{test_path}:{line_no}: expected 'prefix<TAB>target'")
        prefixes.append(prefix.split())
        targets.append(target)
    log.info("%d training sessions (%d clicks), %d test cases", n_sessions, n, len(targets))
    return table, NextClickCases(prefixes, targets)


def served_next_click_ranking(
    ranker: Ranker, settings: Settings, k: int
) -> Callable[[NDArray[np.int32]], NDArray[np.int64]]:
    """The server's ranking for an anonymous visitor whose live session is the prefix
    (item positions, click order; -1 = unknown item, ignored as the server ignores
    it), with the model's defaults."""
    weighting = settings.weighting
    boost = settings.server.session_weight_boost

    def served(prefix: NDArray[np.int32]) -> NDArray[np.int64]:
        known = prefix[prefix >= 0]
        weights = session_weights([_VIEW] * len(known), [1.0] * len(known), weighting, boost)
        query = Query(k=k, session_items=known, session_weights=weights)
        return ranker.recommend(query).items.astype(np.int64)

    return served


def validation_cases(
    table: pa.Table, share: float, *, max_cases: int = 10_000, seed: int = 0
) -> tuple[pa.Table, NextClickCases]:
    """The last ``share`` of the training sessions (by time) as validation cases, every
    prefix → the next click (a seeded sample of ``max_cases``); the rest as the
    training table."""
    stamps = table["timestamp"].to_numpy()
    users = table["user_id"].to_numpy(zero_copy_only=False)
    items = table["item_id"].to_numpy(zero_copy_only=False)
    split = np.quantile(stamps, 1.0 - share)
    late_users = set(users[stamps >= split].tolist())
    late = np.fromiter((u in late_users for u in users), dtype=bool, count=len(users))
    prefixes: list[list[str]] = []
    targets: list[str] = []
    order = np.lexsort((stamps[late], users[late]))
    late_users_sorted, late_items = users[late][order], items[late][order]
    starts = np.flatnonzero(np.r_[True, late_users_sorted[1:] != late_users_sorted[:-1]])
    for begin, end in zip(starts, [*starts[1:], len(order)], strict=True):
        clicks = late_items[begin:end].tolist()
        for i in range(1, len(clicks)):
            prefixes.append(clicks[:i])
            targets.append(clicks[i])
    if len(targets) > max_cases:
        pick = np.sort(np.random.default_rng(seed).choice(len(targets), max_cases, replace=False))
        prefixes = [prefixes[i] for i in pick]
        targets = [targets[i] for i in pick]
    return table.filter(pa.array(~late)), NextClickCases(prefixes, targets)


def score_next_item(
    ranked: list[NDArray[np.int64]], targets: NDArray[np.int64], ks: tuple[int, ...]
) -> dict[str, float]:
    """HR@K and MRR@K of ranked lists (best first) against one target each."""
    out: dict[str, float] = {}
    ranks = np.full(len(targets), np.iinfo(np.int64).max, dtype=np.int64)
    for i, (recs, target) in enumerate(zip(ranked, targets, strict=True)):
        where = np.flatnonzero(recs == target)
        if len(where):
            ranks[i] = int(where[0]) + 1
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / np.minimum(ranks, k + 1), 0.0).mean())
    return out


def _score_at_20(ranked: list[NDArray[np.int64]], targets: NDArray[np.int64]) -> dict[str, float]:
    return score_next_item(ranked, targets, (20,))


def tune_session_baselines(
    table: pa.Table, share: float
) -> tuple[dict[str, TuneResult], NextClickCases, float]:
    """SKNN, V-SKNN and STAN (:mod:`.session_baselines`) tuned on the validation cases
    of the training sessions (the last ``share`` of them, :func:`validation_cases`),
    over an index of the others: the test cases are never read. Returns the results,
    the validation cases and the mean length (clicks) of the sessions tuned on (the
    unit of STAN's λ1 and λ3 grids). ``DataError`` when no case can be held out."""
    train, cases = validation_cases(table, share)
    if train.num_rows == 0 or not cases.targets:
        raise DataError("too few training sessions to hold out validation cases")
    index, position = session_index_from_table(train)
    prefixes = encode_items(cases.prefixes, position)
    targets = np.array([position.get(t, -1) for t in cases.targets], dtype=np.int64)
    tuned = tune_session_knn(index, prefixes, targets, _score_at_20)
    return tuned, cases, index.mean_length


def evaluate_next_click(
    table: pa.Table,
    cases: NextClickCases,
    settings: Settings,
    *,
    dataset: str = "diginetica",
    limit: int | None = None,
) -> dict[str, Any]:
    """Fit on the training sessions, rank every test prefix as the server would.

    Returns the report: ``{"metrics": {method: {metric: value}}, ...}`` with the served
    ranking as ``served`` and the baselines ``popularity`` (POP), ``s_pop`` (S-POP:
    the session's most clicked items, then popular ones), ``item_knn`` (cosine
    neighbours of the last item, on session co-occurrence) and the session-kNN family
    ``sknn``, ``vsknn``, ``stan`` (:mod:`.session_baselines`), each tuned on the
    validation cases of the training sessions (:func:`tune_session_baselines`), then
    fitted on all of them; ``session_knn`` records the chosen parameters and their
    validation metrics, ``seconds`` what tuning and ranking took.
    """
    ks = tuple(sorted({*settings.evaluation.ks, 20}))
    top = max(ks)
    t = time.perf_counter()
    built = build_model(LoadedData(table, None, (), 0), settings)
    fit_seconds = time.perf_counter() - t
    faiss.omp_set_num_threads(1)  # one query at a time, as the server searches
    model = Model(built.artifact)
    ranker = Ranker(model, overfetch=settings.ranking.overfetch)

    n_cases = len(cases.targets) if limit is None else min(limit, len(cases.targets))
    position = model.item_position
    prefixes = [
        np.array([position.get(i, -1) for i in p], dtype=np.int32) for p in cases.prefixes[:n_cases]
    ]
    targets = np.array([position.get(i, -1) for i in cases.targets[:n_cases]], dtype=np.int64)
    unknown = int((targets < 0).sum())
    if unknown:
        log.warning("%d targets are not in the training sessions (always a miss)", unknown)
    served = served_next_click_ranking(ranker, settings, top)

    # views, not purchases: the baselines count sessions that clicked each item
    clicked = built.interactions.weights.copy()
    clicked.data = np.ones_like(clicked.data)
    popular = np.argsort(-np.asarray(clicked.sum(axis=0)).ravel(), kind="stable")
    similarity = item_knn_similarity(clicked, 100)

    def popularity(prefix: NDArray[np.int32]) -> NDArray[np.int64]:
        return popular[:top].astype(np.int64)

    def s_pop(prefix: NDArray[np.int32]) -> NDArray[np.int64]:
        known = prefix[prefix >= 0]
        items, counts = np.unique(known, return_counts=True)
        mine = items[np.argsort(-counts, kind="stable")][:top]
        head = popular[: top + len(mine)]
        return np.concatenate([mine, head[~np.isin(head, mine)]])[:top].astype(np.int64)

    def item_knn(prefix: NDArray[np.int32]) -> NDArray[np.int64]:
        known = prefix[prefix >= 0]
        if len(known) == 0:
            return popular[:top].astype(np.int64)
        last = int(known[-1])
        start, end = similarity.indptr[last], similarity.indptr[last + 1]
        cols, vals = similarity.indices[start:end], similarity.data[start:end]
        mine = cols[np.argsort(-vals, kind="stable")][:top]
        head = popular[: top + len(mine)]
        return np.concatenate([mine, head[~np.isin(head, mine)]])[:top].astype(np.int64)

    methods: dict[str, Callable[[NDArray[np.int32]], NDArray[np.int64]]] = {
        "popularity": popularity,
        "s_pop": s_pop,
        "item_knn": item_knn,
        "served": served,
    }
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {"fit": fit_seconds}
    latency: dict[str, float] = {}
    for name, method in methods.items():
        t = time.perf_counter()
        ranked = []
        per_call = np.empty(n_cases)
        for i, prefix in enumerate(prefixes):
            t0 = time.perf_counter()
            ranked.append(method(prefix))
            per_call[i] = time.perf_counter() - t0
        seconds[name] = time.perf_counter() - t
        metrics[name] = score_next_item(ranked, targets, ks)
        if name == "served":
            latency = {
                "p50_ms": float(np.percentile(per_call, 50) * 1e3),
                "p99_ms": float(np.percentile(per_call, 99) * 1e3),
            }
        log.info(
            "%s: hr@%d %.4f mrr@%d %.4f",
            name,
            top,
            metrics[name][f"hr@{top}"],
            top,
            metrics[name][f"mrr@{top}"],
        )
    # the session-kNN baselines: tuned on validation cases, then fitted on every
    # training session (the served model's item positions) and scored on the test
    share = settings.evaluation.validation_share
    t = time.perf_counter()
    try:
        tuned, validation, mean_length = tune_session_baselines(table, share)
    except DataError as exc:
        log.warning("session-kNN baselines left out: %s", exc)
        tuned, validation, mean_length = {}, NextClickCases([], []), 0.0
    seconds["session_knn_tuning"] = time.perf_counter() - t
    t = time.perf_counter()
    index, _ = session_index_from_table(table, position)
    wide = [p.astype(np.int64) for p in prefixes]
    seconds["session_knn_index"] = time.perf_counter() - t
    for name, result in tuned.items():
        t = time.perf_counter()
        ranked = rank_next_items(index, wide, result.params, top=top)
        seconds[name] = time.perf_counter() - t
        metrics[name] = score_next_item(ranked, targets, ks)
        log.info(
            "%s %s: hr@%d %.4f mrr@%d %.4f (validation %.4f / %.4f)",
            name,
            result.as_json()["params"],
            top,
            metrics[name][f"hr@{top}"],
            top,
            metrics[name][f"mrr@{top}"],
            result.metrics["hr@20"],
            result.metrics["mrr@20"],
        )
    order = ["popularity", "s_pop", "item_knn", *tuned, "served"]
    metrics = {name: metrics[name] for name in order}
    return {
        "dataset": dataset,
        "protocol": "session: next click of each test prefix, whole catalogue",
        "cases": n_cases,
        "metrics": metrics,
        "served_ranking_latency": latency,
        "model": {
            "model_version": built.artifact.model_version,
            "ranking": built.artifact.manifest.ranking.as_json(),
            "als": settings.als.model_dump(mode="json"),
            "items": model.n_items,
            "train_sessions": len(model.user_position),
        },
        "session_knn": {
            "tuned_on": (
                f"validation cases of the last {share:.0%} of the training sessions "
                "(never the test cases); objective hr@20 + mrr@20"
            ),
            "validation_cases": len(validation.targets),
            "mean_session_length": mean_length,
            **{name: result.as_json() for name, result in tuned.items()},
        },
        "seconds": seconds,
    }
