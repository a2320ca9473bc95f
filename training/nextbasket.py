"""The next-basket protocol of "A Next Basket Recommendation Reality Check".

Li, Jullien, Ariannezhad and de Rijke (ACM TOIS 2023) publish their preprocessed
data as two JSON files, ``{user_id: [[-1], basket, ..., basket, [-1]]}``: the
*history* (every basket but the last) and the *future* (the last basket, the
target). The protocol:

1. users are shuffled at random into 72% train, 8% validation and 20% test
   (:func:`nbr_splits`), repeated over several seeds and averaged;
2. the model trains on every user's history plus the future baskets of the train
   users (they are training users; validation and test futures stay hidden);
3. the future basket of each test user is predicted and scored with
   :func:`training.evaluation.score_lists` (Recall@K = hits / |basket|, not capped).

The JSON files carry no dates, so :func:`load_nbr_json` gives the baskets
**synthetic timestamps**: every user's baskets one day apart, each user's last
(future) basket on the common reference day :data:`REFERENCE_TIME`, the one
before it a day earlier, and so on. The trainer's exponential time decay then acts
as a per-basket decay: with ``weighting.half_life_days = h`` a basket ``n`` baskets
older than the user's newest weighs ``0.5 ** (n / h)``. Test users' newest visible
basket sits one day before the reference (their future basket is removed), which
scales all of their weights by the same factor and so changes no ranking of theirs.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.config import RepeatPolicy, Settings
from recsvc.errors import DataError
from recsvc.events import EventType
from recsvc.model import Model
from recsvc.ranking import Ranker

from . import baselines, strong_baselines
from .evaluation import als_recommender, score_lists, served_recommender
from .loading import EVENT_SCHEMA
from .pipeline import LoadedData, build_model

__all__ = [
    "PROTOCOL",
    "REFERENCE_TIME",
    "NBRData",
    "NBRReport",
    "NBRSplit",
    "evaluate_nbr",
    "load_nbr_dir",
    "load_nbr_json",
    "nbr_splits",
    "training_table",
]

log = logging.getLogger(__name__)

Recommender = Callable[[int], NDArray[np.int64]]
"""Training-user position → top-K item positions, best first."""

PROTOCOL = "nbr: 72/8/20 random user split, predict the future basket of test users"

REFERENCE_TIME = 978_307_200
"""2001-01-01T00:00:00Z, the day of every user's future basket (Unix seconds)."""

SECONDS_PER_DAY = 86_400

TRAIN_PERCENT = 72
VALIDATION_PERCENT = 8


@dataclass(frozen=True)
class NBRData:
    """The two JSON files as one canonical event table.

    ``table`` has :data:`training.loading.EVENT_SCHEMA`; one purchase row per
    (basket, item), quantity 1, ``basket_id = "<user>#<n>"`` with ``n`` the basket's
    position in the user's sequence (0 = oldest; the future basket is the last).
    Rows are ordered by user (in file order), then basket, then item as listed.
    """

    table: pa.Table
    is_future: NDArray[np.bool_]
    """``(table.num_rows,)`` True for rows of a future (target) basket."""
    users: tuple[str, ...]
    """Every user id, in file order."""

    def future_baskets(self) -> dict[str, set[str]]:
        """Each user's future basket as a set of item ids."""
        future = self.table.filter(pa.array(self.is_future))
        out: dict[str, set[str]] = {}
        for user, item in zip(
            future["user_id"].to_pylist(), future["item_id"].to_pylist(), strict=True
        ):
            out.setdefault(user, set()).add(item)
        return out


@dataclass(frozen=True)
class NBRSplit:
    """Disjoint user sets of one seed."""

    seed: int
    train: frozenset[str]
    validation: frozenset[str]
    test: frozenset[str]


def _read_json(path: Path) -> dict[str, list[list[int]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object {{user_id: [basket, ...]}}")
    return data


def _baskets(raw: Any, path: Path, user: str) -> list[list[int]]:
    """The real baskets of one user: padding ``[-1]`` entries and empty lists dropped."""
    if not isinstance(raw, list):
        raise DataError(f"{path}: user {user!r} has {type(raw).__name__}, expected a list")
    out = []
    for basket in raw:
        if not isinstance(basket, list):
            raise DataError(f"{path}: user {user!r} has a basket that is not a list")
        items = [int(i) for i in basket if int(i) >= 0]
        if items:
            out.append(items)
    return out


def load_nbr_json(history: Path, future: Path) -> NBRData:
    """Read the history and future files into the canonical event table.

    Every basket of a user gets timestamp ``REFERENCE_TIME - (n_baskets - 1 - j)``
    days for its position ``j`` (future basket last, on the reference day). Items
    listed twice in one basket are kept as listed (the basket counts them once).

    Raises:
        DataError: on a malformed file, or when a user has no future basket.
    """
    hist = _read_json(history)
    fut = _read_json(future)
    users: list[str] = []
    user_col: list[str] = []
    item_col: list[int] = []
    stamp_col: list[int] = []
    basket_col: list[str] = []
    future_col: list[bool] = []
    for user, raw in hist.items():
        past = _baskets(raw, history, user)
        target = _baskets(fut.get(user, []), future, user)
        if len(target) != 1:
            raise DataError(f"{future}: user {user!r} has {len(target)} future baskets, need 1")
        sequence = [*past, *target]
        n = len(sequence)
        users.append(user)
        for j, basket in enumerate(sequence):
            stamp = REFERENCE_TIME - (n - 1 - j) * SECONDS_PER_DAY
            bid = f"{user}#{j}"
            for item in basket:
                user_col.append(user)
                item_col.append(item)
                stamp_col.append(stamp)
                basket_col.append(bid)
                future_col.append(j == n - 1)
    missing = set(fut) - set(hist)
    if missing:
        raise DataError(f"{future}: {len(missing)} users have no history, e.g. {min(missing)!r}")
    if not users:
        raise DataError(f"{history}: no users")
    n_rows = len(user_col)
    table = pa.Table.from_arrays(
        [
            pa.array(user_col, pa.string()),
            pc.cast(pa.array(item_col, pa.int64()), pa.string()),
            pa.array(stamp_col, pa.int64()),
            pa.array([EventType.PURCHASE.value] * n_rows, pa.string()),
            pa.array(np.ones(n_rows, dtype=np.float32)),
            pa.array(basket_col, pa.string()),
        ],
        schema=EVENT_SCHEMA,
    )
    return NBRData(table, np.asarray(future_col, dtype=bool), tuple(users))


def load_nbr_dir(directory: Path) -> NBRData:
    """The two files of the reality-check layout in ``directory`` (Ta-Feng's names)."""
    history = directory / "tafeng_history.json.gz"
    future = directory / "tafeng_future.json.gz"
    for path in (history, future):
        if not path.is_file():
            raise DataError(f"{path} not found (expected the NBR reality-check files)")
    return load_nbr_json(history, future)


def nbr_splits(users: Sequence[str], seed: int) -> NBRSplit:
    """Shuffle ``users`` with ``numpy.random.default_rng(seed)`` into 72/8/20 sets.

    The result depends on the set of users and the seed only (users are sorted
    before shuffling). Sizes: ``⌊72·n/100⌋`` train, ``⌊80·n/100⌋`` minus that
    validation, the rest (about 20%) test.
    """
    ordered = sorted(set(users))
    n = len(ordered)
    order = np.random.default_rng(seed).permutation(n)
    n_train = n * TRAIN_PERCENT // 100
    n_seen = n * (TRAIN_PERCENT + VALIDATION_PERCENT) // 100
    shuffled = [ordered[i] for i in order]
    return NBRSplit(
        seed=seed,
        train=frozenset(shuffled[:n_train]),
        validation=frozenset(shuffled[n_train:n_seen]),
        test=frozenset(shuffled[n_seen:]),
    )


def training_table(data: NBRData, split: NBRSplit) -> pa.Table:
    """Every history row plus the future rows of ``split.train`` users."""
    train_users = pa.array(sorted(split.train), pa.string())
    of_train = pc.is_in(data.table["user_id"], value_set=train_users).to_numpy(zero_copy_only=False)
    keep = ~data.is_future | of_train
    return data.table.filter(pa.array(keep))


@dataclass
class NBRReport:
    """Per-seed and mean metrics; ``metrics`` is ``{ranker: {metric: value}}``."""

    dataset: str
    seeds: tuple[int, ...]
    metrics: dict[str, dict[str, float]]
    """Mean over seeds."""
    per_seed: list[dict[str, Any]]
    """One ``{"seed", "users", "metrics", "seconds"}`` per seed, in ``seeds`` order."""
    model: dict[str, Any] = field(default_factory=dict)
    protocol: str = PROTOCOL

    @property
    def users(self) -> int:
        """Test users of the first seed (every seed has the same count)."""
        return int(self.per_seed[0]["users"]) if self.per_seed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "users": self.users,
            "seeds": list(self.seeds),
            "metrics": self.metrics,
            "per_seed": self.per_seed,
            "model": self.model,
        }


def evaluate_nbr(
    data: NBRData,
    settings: Settings,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    *,
    dataset: str = "tafeng",
    users: str = "test",
    progress: bool = False,
    strong: bool = False,
) -> NBRReport:
    """Run the protocol once per seed and average.

    For each seed: :func:`nbr_splits`, :func:`training_table`,
    :func:`training.pipeline.build_model`, then every ranker predicts the future
    basket of each ``users`` (``"test"``, or ``"validation"`` to tune) user:

    - ``served``: ``Ranker(model).recommend(training_user_query(model, u, K))``,
      the server's path for a known customer;
    - ``als``: the same ranker with ``repeat_weight=0`` (ALS alone);
    - ``g_topfreq``, ``p_topfreq``, ``gp_topfreq``: the study's G-, P- and
      GP-TopFreq (popularity over history baskets only, own items tied by first
      appearance; see :func:`_paper_topfreq`), which reproduce its table;
    - ``popularity``, ``buy_again``, ``blend``: the same three from
      :mod:`training.baselines` on :attr:`Interactions.counts` (popularity counts
      the train users' future baskets too, own items tied by popularity): stronger;
    - with ``strong``, the strong baselines of :mod:`training.strong_baselines`
      (EASE, RP3beta, TIFU-KNN and their repeat-aware rows), tuned per seed on that
      seed's validation users (their future baskets, which no fit sees) with the same
      training data as the test, their chosen parameters in the seed's
      ``strong_baselines``.

    ``K = max(settings.evaluation.ks)``. NDCG is the study's: the ideal DCG is over
    the whole basket (``score_lists(..., ideal="truth")``).
    """
    if users not in ("test", "validation"):
        raise ValueError(f"users must be 'test' or 'validation', got {users!r}")
    if not seeds:
        raise ValueError("need at least one seed")
    ks = tuple(sorted(settings.evaluation.ks))
    top = max(ks)
    truth_by_user = data.future_baskets()
    per_seed: list[dict[str, Any]] = []
    model_info: dict[str, Any] = {}
    for seed in seeds:
        split = nbr_splits(data.users, seed)
        t = time.perf_counter()
        train_table = training_table(data, split)
        built = build_model(LoadedData(train_table, None, (), 0), settings, progress=progress)
        seconds = {"fit": time.perf_counter() - t}
        model = Model(built.artifact)
        counts = built.interactions.counts
        targets = sorted(split.test if users == "test" else split.validation)
        positions: list[int] = []
        truths: list[NDArray[np.int64]] = []
        for user in targets:
            u = model.user_position.get(user)
            if u is None:  # every user has a history basket in these files
                continue
            positions.append(u)
            truths.append(
                np.array(
                    [model.item_position.get(i, -1) for i in sorted(truth_by_user[user])],
                    dtype=np.int64,
                )
            )
        histories = [
            counts.indices[counts.indptr[u] : counts.indptr[u + 1]].astype(np.int64)
            for u in positions
        ]

        paper = _paper_topfreq(data, split, model, positions, top)
        base = baselines.make_baselines(counts, top)
        rankers = {
            **_served_rankers(model, settings.ranking.overfetch, top),
            **paper,
            "popularity": base["popularity"],
            "buy_again": base["buy_again"],
            "blend": base["blend"],
        }
        metrics: dict[str, dict[str, float]] = {}
        for name, recommend in rankers.items():
            t = time.perf_counter()
            lists = [recommend(u) for u in positions]
            seconds[name] = time.perf_counter() - t
            metrics[name] = score_lists(lists, truths, histories, ks, model.n_items, ideal="truth")
            log.info("seed %d %s: recall@%d %.4f", seed, name, top, metrics[name][f"recall@{top}"])
        record: dict[str, Any] = {"seed": seed, "users": len(positions)}
        if strong:
            t = time.perf_counter()
            allow = built.artifact.manifest.ranking.repeat_policy is RepeatPolicy.ALLOW
            result = _strong_rows(
                split, model, counts, train_table, positions, truth_by_user, top, allow
            )
            for name, lists in result.lists.items():
                metrics[name] = score_lists(
                    lists, truths, histories, ks, model.n_items, ideal="truth"
                )
                log.info(
                    "seed %d %s: recall@%d %.4f", seed, name, top, metrics[name][f"recall@{top}"]
                )
            seconds.update(result.seconds)
            seconds["strong_baselines"] = time.perf_counter() - t
            record["strong_baselines"] = result.report
        record.update(metrics=metrics, seconds=seconds)
        per_seed.append(record)
        model_info = {
            "ranking": built.artifact.manifest.ranking.as_json(),
            "als": settings.als.model_dump(mode="json"),
            "weighting": settings.weighting.model_dump(mode="json"),
            "items": model.n_items,
            "train_users": len(model.user_position),
        }
    if strong:
        model_info["strong_baselines"] = _strong_summary(per_seed)
    return NBRReport(
        dataset=dataset,
        seeds=tuple(seeds),
        metrics=_mean_metrics([s["metrics"] for s in per_seed]),
        per_seed=per_seed,
        model=model_info,
        protocol=f"{PROTOCOL} ({users} users)",
    )


def _strong_rows(
    split: NBRSplit,
    model: Model,
    counts: Any,
    train_table: pa.Table,
    positions: Sequence[int],
    truth_by_user: Mapping[str, set[str]],
    k: int,
    allow_repeats: bool,
) -> strong_baselines.StrongBaselines:
    """The strong baselines of one seed: fitted on the seed's training data (every
    history, the train users' futures), tuned on its validation users' futures, then
    ranked for ``positions``. Validation and test users share the fit, so the models
    chosen on validation are the ones that rank the test users."""
    fit = strong_baselines.FitData(
        counts,
        strong_baselines.Baskets.from_table(
            train_table, model.artifact.user_ids.tolist(), model.artifact.item_ids.tolist()
        ),
    )
    users, truths = [], []
    for user in sorted(split.validation):
        u = model.user_position.get(user)
        if u is None:
            continue
        users.append(u)
        truths.append(
            np.array(
                [model.item_position.get(i, -1) for i in sorted(truth_by_user[user])],
                dtype=np.int64,
            )
        )
    return strong_baselines.run(
        fit,
        np.asarray(users, np.int64),
        truths,
        fit,
        np.asarray(positions, np.int64),
        k=k,
        allow_repeats=allow_repeats,
        tuned_on=f"seed {split.seed}'s validation users ({len(users)}, their future "
        "baskets), fitted on the seed's training data",
    )


def _strong_summary(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the strong baselines were tuned on and each row's chosen parameters, seed
    by seed."""
    first = per_seed[0]["strong_baselines"]
    rows: dict[str, list[Any]] = {}
    for run in per_seed:
        for name, chosen in run["strong_baselines"]["rows"].items():
            rows.setdefault(name, []).append(chosen.get("params", chosen.get("skipped")))
    return {
        "tuned_on": "each seed's validation users (8%), their future baskets; the same "
        "training data as the test",
        "metric": first["metric"],
        "input": first["input"],
        "repeats": first["repeats"],
        "params_by_seed": rows,
    }


def _served_rankers(model: Model, overfetch: int, k: int) -> dict[str, Recommender]:
    """``served`` (the server's query for a known customer) and ``als`` (ALS alone)."""
    ranker = Ranker(model, overfetch=overfetch)
    return {"served": served_recommender(ranker, k), "als": als_recommender(ranker, k)}


def _paper_topfreq(
    data: NBRData, split: NBRSplit, model: Model, positions: Sequence[int], k: int
) -> dict[str, Recommender]:
    """G-, P- and GP-TopFreq as the reality-check study computes them.

    - popularity: the number of history baskets holding the item, over every user
      (the train users' future baskets are not counted);
    - a user's own items: by the number of the user's training baskets holding the
      item, ties by first appearance (the order of Python's ``Counter.most_common``);
    - GP-TopFreq: the own items, then the most popular items not among them.

    Returns recommenders over the training-user ``positions`` (model rows).
    """
    table = data.table
    hist = table.filter(pa.array(~data.is_future))
    items = np.array(
        [model.item_position.get(i, -1) for i in hist["item_id"].to_pylist()], dtype=np.int64
    )
    baskets = pc.dictionary_encode(hist["basket_id"]).combine_chunks().indices
    b = baskets.to_numpy(zero_copy_only=False).astype(np.int64)
    pairs = np.unique(np.stack([b, items])[:, items >= 0], axis=1)
    totals = np.bincount(pairs[1], minlength=model.n_items)
    popular = np.argsort(-totals, kind="stable").astype(np.int64)

    train = training_table(data, split)
    user_pos = np.array(
        [model.user_position.get(u, -1) for u in train["user_id"].to_pylist()], dtype=np.int64
    )
    item_pos = np.array(
        [model.item_position[i] for i in train["item_id"].to_pylist()], dtype=np.int64
    )
    tb = pc.dictionary_encode(train["basket_id"]).combine_chunks().indices
    basket = tb.to_numpy(zero_copy_only=False).astype(np.int64)
    wanted = np.isin(user_pos, np.asarray(positions, dtype=np.int64))
    rows = np.flatnonzero(wanted)  # table order: by user, then basket, then item
    # one count per (user, item, basket); first row of each (user, item)
    key = user_pos[rows] * (model.n_items + 1) + item_pos[rows]
    _, first = np.unique(key, return_index=True)
    order_key, first_row = key[first], rows[first]
    triples = np.unique(np.stack([key, basket[rows]]), axis=1)
    pair_keys, n_baskets = np.unique(triples[0], return_counts=True)
    assert np.array_equal(pair_keys, order_key)
    users_of = order_key // (model.n_items + 1)
    items_of = order_key % (model.n_items + 1)
    ranked = np.lexsort((first_row, -n_baskets, users_of))
    own_lists: dict[int, NDArray[np.int64]] = {}
    bounds = np.flatnonzero(np.diff(users_of[ranked])) + 1
    for chunk in np.split(ranked, bounds):
        if len(chunk):
            own_lists[int(users_of[chunk[0]])] = items_of[chunk][:k].astype(np.int64)
    empty = np.zeros(0, dtype=np.int64)

    def g_topfreq(u: int) -> NDArray[np.int64]:
        return popular[:k]

    def p_topfreq(u: int) -> NDArray[np.int64]:
        return own_lists.get(u, empty)

    def gp_topfreq(u: int) -> NDArray[np.int64]:
        mine = own_lists.get(u, empty)
        head = popular[: k + len(mine)]
        return np.concatenate([mine, head[~np.isin(head, mine)]])[:k]

    return {"g_topfreq": g_topfreq, "p_topfreq": p_topfreq, "gp_topfreq": gp_topfreq}


def _mean_metrics(
    runs: Sequence[Mapping[str, Mapping[str, float]]],
) -> dict[str, dict[str, float]]:
    """Metric-wise mean of ``{ranker: {metric: value}}`` dicts with the same keys."""
    return {
        name: {key: float(np.mean([run[name][key] for run in runs])) for key in runs[0][name]}
        for name in runs[0]
    }
