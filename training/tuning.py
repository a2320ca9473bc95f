"""``recsvc tune``: search ALS hyperparameters and the ranking blend on a validation
split, within a time budget, and write the best as a config file.

The validation split never touches the test data of the protocol being tuned for:

- ``time`` (``--cutoff C``): only events before ``C`` are read; the last
  ``evaluation.validation_share`` of that period is the validation window.
- ``last-basket``: each user's last basket (the test) is dropped first; the one
  before it is the validation target.
- ``session``: the last ``evaluation.validation_share`` of the training sessions
  become validation cases (every prefix → the next click).
- ``nbr``: the protocol's own validation users (8 %), seed 0.

The search: the first trial is the given settings; the others draw ALS parameters at
random (seeded) around them. Each fitted model is then scored with the blend found so
far and with a coordinate search over the blend's four weights (each tried at a few
values, two passes); a blend costs one scoring pass, a fit much more, so most of the
budget goes to fits. The objective is Recall@20 (holdout, nbr) or HR@20 (session),
of the ranking the server runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from recsvc.config import Settings
from recsvc.errors import DataError
from recsvc.model import Blend, Model
from recsvc.ranking import Ranker

from .evaluation import (
    Split,
    served_recommender,
    split_by_cutoff,
    split_last_basket,
    truth_positions,
)
from .nextbasket import NBRData, nbr_splits, training_table
from .nextclick import NextClickCases, score_next_item, served_next_click_ranking
from .pipeline import LoadedData, build_model

__all__ = [
    "HoldoutObjective",
    "NBRObjective",
    "Objective",
    "SessionObjective",
    "Trial",
    "TuneResult",
    "tune",
    "tuned_toml",
    "validation_split",
]

log = logging.getLogger(__name__)

#: Values tried for each blend weight (relative: the blend is scale-free).
_WEIGHT_STEPS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
_BLEND_FIELDS = ("cf", "repeat", "neighbors", "popularity")


class Objective(Protocol):
    """A validation split: fits a model, scores the served ranking on it."""

    name: str
    """The protocol, for the report."""
    metric: str
    """What :meth:`score` returns, e.g. ``recall@20``."""
    blend: str
    """Which blend of :class:`~recsvc.model.RankingDefaults` it exercises:
    ``user`` or ``session``."""

    def fit(self, settings: Settings) -> Model: ...

    def score(self, ranker: Ranker) -> float: ...


@dataclass(frozen=True)
class Trial:
    als: dict[str, Any]
    blend: dict[str, float]
    score: float
    fit_seconds: float
    blends_tried: int


@dataclass
class TuneResult:
    objective: str
    metric: str
    blend_kind: str
    best: Trial
    baseline: Trial
    """The first trial: the given settings, blend as the trainer would choose it."""
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "metric": self.metric,
            "blend": self.blend_kind,
            "best": asdict(self.best),
            "baseline": asdict(self.baseline),
            "trials": [asdict(t) for t in self.trials],
            "seconds": self.seconds,
        }


def _draw_als(rng: np.random.Generator, base: dict[str, Any]) -> dict[str, Any]:
    return {
        **base,
        "factors": int(rng.choice([32, 64, 128, 256])),
        "regularization": float(10 ** rng.uniform(-3, 0.5)),
        "alpha": float(10 ** rng.uniform(0, 1.7)),
        "iterations": int(rng.choice([10, 15, 20, 30])),
    }


def _with_blend(model: Model, kind: str, blend: Blend) -> None:
    if kind == "session":
        model.defaults = replace(model.defaults, session=blend)
    else:
        model.defaults = replace(model.defaults, user=blend)


def _search_blend(
    ranker: Ranker,
    objective: Objective,
    start: Blend,
    deadline: float,
) -> tuple[Blend, float, int]:
    """Coordinate search over the blend's weights from ``start``."""
    model = ranker.model
    _with_blend(model, objective.blend, start)
    best, best_score, tried = start, objective.score(ranker), 1
    for _ in range(2):
        improved = False
        for name in _BLEND_FIELDS:
            if name == "repeat" and objective.blend == "session":
                continue  # anonymous sessions have no purchases
            for value in _WEIGHT_STEPS:
                if time.monotonic() > deadline:
                    return best, best_score, tried
                candidate = replace(best, **{name: value})
                if candidate == best or sum(asdict(candidate).values()) == 0:
                    continue
                _with_blend(model, objective.blend, candidate)
                score = objective.score(ranker)
                tried += 1
                if score > best_score + 1e-6:
                    best, best_score, improved = candidate, score, True
        if not improved:
            break
    _with_blend(model, objective.blend, best)
    return best, best_score, tried


def tune(
    objective: Objective,
    settings: Settings,
    *,
    budget_seconds: float,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search until the budget is spent (the first trial always completes)."""
    say = progress or log.info
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    deadline = t0 + budget_seconds
    base_als = settings.als.model_dump(mode="json")
    trials: list[Trial] = []
    best_blend: Blend | None = None
    als = base_als
    while True:
        t = time.monotonic()
        model = objective.fit(settings.model_copy(update={"als": type(settings.als)(**als)}))
        fit_seconds = time.monotonic() - t
        ranker = Ranker(model, overfetch=settings.ranking.overfetch)
        trained = getattr(model.defaults, objective.blend)
        if best_blend is None:  # the first trial: score the trainer's own choice too
            _with_blend(model, objective.blend, trained)
            baseline = Trial(als, asdict(trained), objective.score(ranker), fit_seconds, 1)
            say(f"baseline {objective.metric} {baseline.score:.4f} (blend {baseline.blend})")
        start = best_blend or trained
        blend, score, tried = _search_blend(ranker, objective, start, max(deadline, t + 60))
        trial = Trial(als, asdict(blend), score, fit_seconds, tried)
        trials.append(trial)
        say(
            f"trial {len(trials)}: {objective.metric} {score:.4f} factors {als['factors']} "
            f"regularization {als['regularization']:.4g} alpha {als['alpha']:.3g} "
            f"iterations {als['iterations']} blend {trial.blend} ({fit_seconds:.0f} s fit)"
        )
        best = max(trials, key=lambda x: x.score)
        best_blend = Blend(**best.blend)
        # the next fit must fit in what is left, judged by the last one
        if time.monotonic() + fit_seconds * 1.5 > deadline:
            break
        als = _draw_als(rng, base_als)
    return TuneResult(
        objective=objective.name,
        metric=objective.metric,
        blend_kind=objective.blend,
        best=best,
        baseline=baseline,
        trials=trials,
        seconds=time.monotonic() - t0,
    )


def tuned_toml(result: TuneResult) -> str:
    """The best trial as a config file for ``recsvc train --config``."""
    best = result.best
    lines = [
        f"# written by recsvc tune: {result.objective}, validation {result.metric} "
        f"{best.score:.4f} (the given settings: {result.baseline.score:.4f})",
        "",
        "[als]",
    ]
    for name in ("factors", "regularization", "alpha", "iterations"):
        lines.append(f"{name} = {best.als[name]!r}")
    lines += ["", f"[ranking.{result.blend_kind}_blend]"]
    lines += [f"{name} = {float(best.blend[name])!r}" for name in _BLEND_FIELDS]
    return "\n".join(lines) + "\n"


# --- objectives -----------------------------------------------------------------------


def validation_split(
    table: pa.Table, protocol: str, share: float, cutoff: datetime | None = None
) -> Split:
    """The validation split of a holdout protocol (see the module docstring)."""
    if protocol == "time":
        if cutoff is None:
            raise DataError("the time protocol needs a cut-off")
        end = int(cutoff.replace(tzinfo=cutoff.tzinfo or UTC).timestamp())
        before = table.filter(pc.less(table["timestamp"], end))
        if before.num_rows == 0:
            raise DataError(f"no events before {cutoff.isoformat()}")
        start = int(pc.min(before["timestamp"]).as_py())
        inner = datetime.fromtimestamp(end - share * (end - start), UTC)
        return split_by_cutoff(before, inner)
    return split_last_basket(split_last_basket(table).train)


@dataclass
class HoldoutObjective:
    """Recall@20 of the served ranking for the held-out users of ``split``."""

    data: LoadedData
    split: Split
    name: str = "holdout"
    metric: str = "recall@20"
    blend: str = "user"
    _users: list[int] = field(default_factory=list)
    _truths: list[NDArray[np.int64]] = field(default_factory=list)

    def fit(self, settings: Settings) -> Model:
        d = self.data
        built = build_model(LoadedData(self.split.train, d.catalog, d.summaries, 0), settings)
        model = Model(built.artifact)
        self._users, self._truths = truth_positions(model, self.split.truth)
        return model

    def score(self, ranker: Ranker) -> float:
        return _served_recall(ranker, self._users, self._truths)


@dataclass
class SessionObjective:
    """HR@20 of the served session ranking on validation cases."""

    train: pa.Table
    cases: NextClickCases
    settings: Settings
    name: str = "session"
    metric: str = "hr@20"
    blend: str = "session"
    _rank: Callable[[NDArray[np.int32]], NDArray[np.int64]] | None = None
    _prefixes: list[NDArray[np.int32]] = field(default_factory=list)
    _targets: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    def fit(self, settings: Settings) -> Model:
        model = Model(build_model(LoadedData(self.train, None, (), 0), settings).artifact)
        position = model.item_position
        self._prefixes = [
            np.array([position.get(i, -1) for i in p], dtype=np.int32) for p in self.cases.prefixes
        ]
        self._targets = np.array([position.get(t, -1) for t in self.cases.targets], np.int64)
        return model

    def score(self, ranker: Ranker) -> float:
        rank = served_next_click_ranking(ranker, self.settings, 20)
        ranked = [rank(p) for p in self._prefixes]
        return score_next_item(ranked, self._targets, (20,))["hr@20"]


@dataclass
class NBRObjective:
    """Recall@20 of the served ranking for the NBR protocol's validation users (seed 0:
    72% train / 8% validation / 20% test; the test users' baskets are never scored)."""

    data: NBRData
    seed: int = 0
    name: str = "nbr validation"
    metric: str = "recall@20"
    blend: str = "user"
    _users: list[int] = field(default_factory=list)
    _truths: list[NDArray[np.int64]] = field(default_factory=list)

    def fit(self, settings: Settings) -> Model:
        split = nbr_splits(self.data.users, self.seed)
        table = training_table(self.data, split)
        model = Model(build_model(LoadedData(table, None, (), 0), settings).artifact)
        future = self.data.future_baskets()
        self._users, self._truths = truth_positions(
            model, {u: future[u] for u in sorted(split.validation)}
        )
        return model

    def score(self, ranker: Ranker) -> float:
        return _served_recall(ranker, self._users, self._truths)


def _served_recall(ranker: Ranker, users: list[int], truths: list[NDArray[np.int64]]) -> float:
    """Mean Recall@20 of the served ranking (hits / |truth|, as reported)."""
    served = served_recommender(ranker, 20)
    recall = [
        np.isin(served(u)[:20], truth).sum() / len(truth)
        for u, truth in zip(users, truths, strict=True)
    ]
    return float(np.mean(recall))
