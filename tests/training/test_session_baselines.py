"""The session-kNN baselines (training/session_baselines.py): SKNN, V-SKNN and STAN
rank tiny hand-made session sets as computed by hand, agree with a plain loop over the
published definitions on random sessions, and are tuned on validation cases only."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from numpy.typing import NDArray

from recsvc.training.loading import EVENT_SCHEMA
from recsvc.training.nextclick import NextClickCases, evaluate_next_click, score_next_item
from recsvc.training.session_baselines import (
    KNNParams,
    SessionIndex,
    SKNNParams,
    STANParams,
    VSKNNParams,
    evaluate_configs,
    rank_next_items,
    session_index_from_table,
)

from factories import small_settings

# four past sessions, oldest first, ages 3, 2, 1, 0 days
SESSIONS = [[0, 1, 2], [1, 3], [0, 4], [2, 5, 1]]
AGES = np.array([3.0, 2.0, 1.0, 0.0])


def _index(
    sessions: list[list[int]], n_items: int, ages: NDArray[np.float64] | None = None
) -> SessionIndex:
    indptr = np.r_[0, np.cumsum([len(s) for s in sessions])].astype(np.int64)
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sessions])
    return SessionIndex.build(indptr, items, n_items, ages)


def _rank(index: SessionIndex, prefix: list[int], params: KNNParams, top: int = 6) -> list[int]:
    [ranked] = rank_next_items(index, [np.array(prefix, dtype=np.int64)], params, top=top)
    return ranked.tolist()


def test_sknn_by_hand() -> None:
    """Session {0, 1}: cosine with S0 = 2/√6 = 0.816, S1 = 1/√4 = 0.5, S2 = 0.5,
    S3 = 1/√6 = 0.408. All four vote: 0 = 0.816 + 0.5 = 1.316, 1 = 0.816 + 0.5 +
    0.408 = 1.725, 2 = 1.225, 3 = 0.5, 4 = 0.5 (tie: lower item first), 5 = 0.408."""
    index = _index(SESSIONS, 6, AGES)
    assert _rank(index, [0, 1], SKNNParams(k=4, m=100)) == [1, 0, 2, 3, 4, 5]
    # k = 2: S0 and, of S1 and S2 (tied at 0.5), the newer S2: 0 = 1.316, 1 = 2 =
    # 0.816, 4 = 0.5; then the popular items not yet listed (1, 0, 2, 3, 4, 5 by
    # sessions holding them): 3, 5
    assert _rank(index, [0, 1], SKNNParams(k=2, m=100)) == [0, 1, 2, 4, 3, 5]
    # m = 2: only the two newest sessions sharing an item are candidates (S3, S2):
    # 0 = 4 = 0.5, 1 = 2 = 5 = 0.408, then 3 from popularity
    assert _rank(index, [0, 1], SKNNParams(k=4, m=2)) == [0, 4, 1, 2, 5, 3]


def test_vsknn_by_hand() -> None:
    """Harmonic decay: item 1 (last) weighs 1, item 0 (one click before) 1/2; the
    similarity is the dot product over |s| = 2: S0 = 0.75, S1 = 0.5, S2 = 0.25,
    S3 = 0.5. Votes scaled by 1/step of the most recent shared item: S2 shares only
    item 0 (step 2): 0.125. Items: 0 = 0.75 + 0.125 = 0.875, 1 = 0.75 + 0.5 + 0.5 =
    1.75, 2 = 1.25, 3 = 0.5, 4 = 0.125, 5 = 0.5."""
    index = _index(SESSIONS, 6, AGES)
    params = VSKNNParams(k=4, m=100, decay="harmonic", score_decay="harmonic")
    assert _rank(index, [0, 1], params) == [1, 2, 0, 3, 5, 4]
    # the position weights are what sets it apart from SKNN (which ranks 0 before 2)
    assert _rank(index, [0, 1], SKNNParams(k=4, m=100))[:3] == [1, 0, 2]


def test_stan_by_hand() -> None:
    """λ1 = 1: item 1 weighs 1, item 0 e^-1 (norm sqrt(1 + e^-2) = 1.0655). λ2 = 2
    days on ages 3, 2, 1, 0. Similarities: S0 = (1 + e^-1)/(1.0655·√3)·e^-1.5 =
    0.1654, S1 = 1/(1.0655·√2)·e^-1 = 0.2441, S2 = e^-1/(1.0655·√2)·e^-0.5 = 0.1481,
    S3 = 1/(1.0655·√3) = 0.5419. λ3 = 1 around the item of s most recently clicked
    (1 in S0, S1, S3; 0 in S2): 0 = 0.1654·e^-1 + 0.1481 = 0.2089, 1 = 0.1654 +
    0.2441 + 0.5419 = 0.9514, 2 = 0.1654·e^-1 + 0.5419·e^-2 = 0.1341, 3 = 0.2441·e^-1
    = 0.0898, 4 = 0.1481·e^-1 = 0.0545, 5 = 0.5419·e^-1 = 0.1994."""
    index = _index(SESSIONS, 6, AGES)
    params = STANParams(k=4, m=100, lambda1=1.0, lambda2=2.0, lambda3=1.0)
    assert _rank(index, [0, 1], params) == [1, 0, 5, 2, 3, 4]


def test_stan_anchors_at_the_item_clicked_last_in_the_session() -> None:
    """Garg et al.'s i*: of the shared items, the one clicked most recently in the
    current session (1 here), at its position in the neighbour (1st), not the shared
    item positioned last in the neighbour (0, 3rd; session-rec's shortcut). Votes
    e^-|p - 1|: 1 = 1, 2 = e^-1, 0 = e^-2, 3 = e^-3; then 4, 5 by popularity."""
    index = _index([[1, 2, 0, 3]], 6)
    params = STANParams(k=1, m=10, lambda1=1.0, lambda2=1.0, lambda3=1.0)
    assert _rank(index, [0, 1], params) == [1, 2, 0, 3, 4, 5]


def test_unknown_clicks_are_ignored_and_an_unknown_session_gets_popular_items() -> None:
    index = _index(SESSIONS, 6, AGES)
    for params in (SKNNParams(4, 100), VSKNNParams(4, 100), STANParams(4, 100)):
        assert _rank(index, [-1, 0, -1, 1], params) == _rank(index, [0, 1], params)
        assert _rank(index, [-1], params) == [1, 0, 2, 3, 4, 5]


def _reference(
    sessions: list[list[int]],
    ages: NDArray[np.float64],
    prefix: list[int],
    params: KNNParams,
) -> dict[int, float]:
    """Item scores by a plain loop over the definitions (session-rec's structure)."""
    s = [i for i in prefix if i >= 0]
    back = {i: len(s) - 1 - p for p, i in enumerate(s)}  # the latest click wins
    if isinstance(params, VSKNNParams):
        decay = {
            "linear": lambda d: max(1 - 0.1 * d, 0.0),
            "log": lambda d: 1 / math.log10(d + 1.7),
            "harmonic": lambda d: 1 / (d + 1),
        }[params.decay]
        w = {i: decay(d) for i, d in back.items()}
    elif isinstance(params, STANParams):
        w = {i: math.exp(-d / params.lambda1) for i, d in back.items()}
    else:
        w = dict.fromkeys(back, 1.0)
    shares = [j for j, n in enumerate(sessions) if set(n) & set(back)]
    candidates = sorted(shares)[-params.m :]
    sims = []
    for j in candidates:
        items = set(sessions[j])
        dot = sum(w[i] for i in items & set(back))
        if isinstance(params, SKNNParams):
            sim = len(items & set(back)) / math.sqrt(len(back) * len(items))
        elif isinstance(params, VSKNNParams):
            sim = dot / len(back)
        else:
            norm = math.sqrt(sum(v * v for v in w.values()))
            sim = dot / (norm * math.sqrt(len(items))) * math.exp(-ages[j] / params.lambda2)
        if sim > 1e-200:
            sims.append((sim, j))
    neighbours = sorted(sims, key=lambda x: (-x[0], -x[1]))[: params.k]
    scores: dict[int, float] = defaultdict(float)
    for sim, j in neighbours:
        last = {i: p + 1 for p, i in enumerate(sessions[j])}
        star = min(set(last) & set(back), key=lambda i: back[i])
        for i, p in last.items():
            vote = sim
            if isinstance(params, VSKNNParams) and params.score_decay == "harmonic":
                vote /= back[star] + 1
            if isinstance(params, STANParams):
                vote *= math.exp(-abs(p - last[star]) / params.lambda3)
            scores[i] += vote
    return scores


@pytest.mark.parametrize(
    "params",
    [
        SKNNParams(k=5, m=30),
        SKNNParams(k=50, m=1000),
        VSKNNParams(k=5, m=30, decay="linear", score_decay="same"),
        VSKNNParams(k=8, m=40, decay="log", score_decay="harmonic"),
        VSKNNParams(k=8, m=1000, decay="harmonic", score_decay="harmonic"),
        STANParams(k=5, m=30, lambda1=1.5, lambda2=3.0, lambda3=0.7),
        STANParams(k=10, m=50, lambda1=1e-5, lambda2=100.0, lambda3=1e-5),
    ],
)
def test_rankings_match_a_plain_loop_over_the_definitions(params: KNNParams) -> None:
    rng = np.random.default_rng(5)
    n_items = 40
    sessions = [rng.integers(0, n_items, int(rng.integers(1, 9))).tolist() for _ in range(300)]
    ages = np.sort(rng.uniform(0, 30, len(sessions)))[::-1].copy()
    index = _index(sessions, n_items, ages)
    prefixes = [rng.integers(-1, n_items, int(rng.integers(1, 14))).tolist() for _ in range(80)]
    ranked = rank_next_items(
        index, [np.array(p, dtype=np.int64) for p in prefixes], params, top=10, batch=7
    )
    popular = np.argsort(
        -np.bincount([i for s in sessions for i in set(s)], minlength=n_items), kind="stable"
    )
    for prefix, mine in zip(prefixes, ranked, strict=True):
        scores = _reference(sessions, ages, prefix, params)
        best = sorted((v for v in scores.values() if v > 0), reverse=True)[:10]
        got = [scores.get(int(i), 0.0) for i in mine]
        # the same scores in the same order (items tied within rounding may swap)
        assert got[: len(best)] == pytest.approx(best, rel=1e-9, abs=1e-300)
        fill = [int(i) for i in popular if int(i) not in set(mine[: len(best)].tolist())]
        assert mine[len(best) :].tolist() == fill[: 10 - len(best)]


def test_shared_neighbour_searches_score_as_separate_runs() -> None:
    rng = np.random.default_rng(9)
    sessions = [rng.integers(0, 30, int(rng.integers(1, 7))).tolist() for _ in range(200)]
    index = _index(sessions, 30, np.linspace(20, 0, 200))
    prefixes = [rng.integers(0, 30, int(rng.integers(1, 6))) for _ in range(60)]
    targets = rng.integers(0, 30, 60)
    configs: list[KNNParams] = [SKNNParams(k, m) for m in (5, 50) for k in (2, 10)] + [
        STANParams(k, 50, 1.0, 5.0, lam3) for k in (3, 20) for lam3 in (0.5, 2.0)
    ]

    def score(r: list[NDArray[np.int64]], t: NDArray[np.int64]) -> dict[str, float]:
        return score_next_item(r, t, (20,))

    together = evaluate_configs(index, prefixes, targets, configs, score, batch=16)
    for config, result in zip(configs, together, strict=True):
        assert result == score(rank_next_items(index, prefixes, config), targets)


def test_index_from_table_orders_sessions_by_their_first_click() -> None:
    # b starts first but its clicks interleave with a's; c is the newest
    table = pa.table(
        {
            "user_id": ["a", "b", "a", "b", "c"],
            "item_id": ["x", "y", "z", "x", "y"],
            "timestamp": [200, 100, 300, 86_400 + 100, 2 * 86_400 + 100],
            "event_type": ["view"] * 5,
            "quantity": np.ones(5, np.float32),
            "basket_id": ["a", "b", "a", "b", "c"],
        },
        schema=EVENT_SCHEMA,
    )
    index, position = session_index_from_table(table)
    assert position == {"x": 0, "y": 1, "z": 2}
    rows = [
        index.matrix.indices[index.matrix.indptr[s] : index.matrix.indptr[s + 1]].tolist()
        for s in range(3)
    ]
    assert rows == [[0, 1], [0, 2], [1]]  # b (y then x), a (x, z), c (y)
    assert index.last_position.tolist() == [2, 1, 1, 2, 1]
    assert index.age_days.tolist() == pytest.approx([1.0, 2 - 200 / 86_400, 0.0])
    assert index.mean_length == pytest.approx(5 / 3)
    # through a given item map (its unknown items dropped)
    index, _ = session_index_from_table(table, {"y": 0, "x": 1})
    assert index.n_items == 2 and index.matrix.nnz == 4


def _walk_table(rng: np.random.Generator, n: int) -> tuple[pa.Table, list[list[str]]]:
    """Sessions that mostly step to item + 1 within a block of 10 (as test_nextclick's)."""
    sessions = []
    for _ in range(n):
        item = int(rng.integers(60))
        walk = [item]
        for _ in range(int(rng.integers(2, 7))):
            block = item // 10 * 10
            item = block + (item + 1) % 10 if rng.random() < 0.8 else block + int(rng.integers(10))
            walk.append(item)
        sessions.append([str(i) for i in walk])
    users = [f"s{j}" for j, s in enumerate(sessions) for _ in s]
    items = [i for s in sessions for i in s]
    stamps = [1_000_000 + 86 * j + 60 * k for j, s in enumerate(sessions) for k in range(len(s))]
    table = pa.table(
        {
            "user_id": users,
            "item_id": items,
            "timestamp": stamps,
            "event_type": ["view"] * len(items),
            "quantity": np.ones(len(items), np.float32),
            "basket_id": users,
        },
        schema=EVENT_SCHEMA,
    )
    return table, sessions


def _knn_choices(report: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in ("sknn", "vsknn", "stan"):
        chosen = dict(report["session_knn"][name])
        chosen.pop("tune_seconds")
        out[name] = chosen
    return out


def test_tuning_reads_the_validation_cases_only(tmp_path: Path) -> None:
    """A poisoned test set (every target replaced by item 5 of the last click's
    block) changes the test metrics, not the parameters chosen."""
    rng = np.random.default_rng(11)
    table, _ = _walk_table(rng, 600)
    _, fresh = _walk_table(rng, 80)
    clean = NextClickCases(
        [s[:i] for s in fresh for i in range(1, len(s))],
        [s[i] for s in fresh for i in range(1, len(s))],
    )
    poisoned = NextClickCases(
        clean.prefixes, [str(int(p[-1]) // 10 * 10 + 5) for p in clean.prefixes]
    )
    settings = small_settings(tmp_path)
    a = evaluate_next_click(table, clean, settings)
    b = evaluate_next_click(table, poisoned, settings)
    assert _knn_choices(a) == _knn_choices(b)
    assert a["session_knn"]["validation_cases"] > 100
    for name in ("sknn", "vsknn", "stan"):
        assert a["metrics"][name] != b["metrics"][name]
        assert a["metrics"][name]["hr@20"] > 0.9  # the walk's successor is found
