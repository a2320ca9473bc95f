"""The next-basket protocol (training/nextbasket.py): loader, splits, no leakage, real numbers."""

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsvc.errors import DataError
from recsvc.training import nextbasket as nbr
from recsvc.training.loading import EVENT_SCHEMA
from recsvc.training.nextbasket import (
    REFERENCE_TIME,
    evaluate_nbr,
    load_nbr_json,
    nbr_splits,
    training_table,
)

from factories import SHARED_DATA, small_settings

SHARED = SHARED_DATA / "tafeng"
DAY = 86_400
N_USERS = 50


def _write(path: Path, data: dict[str, list[list[int]]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(data, fh)
    return path


def _tiny(tmp_path: Path) -> tuple[Path, Path]:
    """50 users; user ``u`` has 2 + u % 3 history baskets of items 0-9 and a future
    basket holding item ``100 + u``, bought by no one else (a leak detector)."""
    history: dict[str, list[list[int]]] = {}
    future: dict[str, list[list[int]]] = {}
    for u in range(N_USERS):
        baskets = [[(u + j) % 10, (u + 2 * j + 1) % 10] for j in range(2 + u % 3)]
        history[str(u)] = [[-1], *baskets, [-1]]
        future[str(u)] = [[-1], [100 + u, u % 10], [-1]]
    return (
        _write(tmp_path / "history.json.gz", history),
        _write(tmp_path / "future.json.gz", future),
    )


def test_loader_builds_ordered_canonical_table(tmp_path: Path) -> None:
    data = load_nbr_json(*_tiny(tmp_path))
    table = data.table
    assert table.schema == EVENT_SCHEMA
    assert data.users == tuple(str(u) for u in range(N_USERS))
    n_history = sum(2 * (2 + u % 3) for u in range(N_USERS))
    assert table.num_rows == n_history + 2 * N_USERS
    assert int(data.is_future.sum()) == 2 * N_USERS
    assert set(table["event_type"].to_pylist()) == {"purchase"}
    assert -1 not in {int(i) for i in table["item_id"].to_pylist()}  # padding dropped

    user5 = table.filter(pa.compute.equal(table["user_id"], "5"))
    future5 = data.is_future[np.array(table["user_id"].to_pylist()) == "5"]
    # 2 + 5 % 3 = 4 history baskets, then the future: 5 baskets a day apart
    assert user5["basket_id"].to_pylist() == [f"5#{j}" for j in range(5) for _ in range(2)]
    stamps = user5["timestamp"].to_numpy()
    assert stamps[-1] == REFERENCE_TIME
    assert list(np.unique(stamps)) == [REFERENCE_TIME - d * DAY for d in range(4, -1, -1)]
    assert future5.tolist() == [False] * 8 + [True] * 2
    assert user5["item_id"].to_pylist()[-2:] == ["105", "5"]
    assert data.future_baskets()["5"] == {"105", "5"}


def test_loader_rejects_a_user_without_future(tmp_path: Path) -> None:
    hist = _write(tmp_path / "h.json.gz", {"a": [[-1], [1], [-1]], "b": [[-1], [2], [-1]]})
    fut = _write(tmp_path / "f.json.gz", {"a": [[-1], [1], [-1]]})
    with pytest.raises(DataError, match="future"):
        load_nbr_json(hist, fut)


def test_splits_sizes_disjoint_and_seeded() -> None:
    users = [f"u{i}" for i in range(1000)]
    split = nbr_splits(users, seed=3)
    assert (len(split.train), len(split.validation), len(split.test)) == (720, 80, 200)
    assert not split.train & split.validation
    assert not split.train & split.test
    assert not split.validation & split.test
    assert split.train | split.validation | split.test == set(users)
    assert nbr_splits(list(reversed(users)), seed=3) == split  # order of input irrelevant
    assert nbr_splits(users, seed=4).test != split.test


def test_future_baskets_of_held_out_users_never_reach_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_nbr_json(*_tiny(tmp_path))
    split = nbr_splits(data.users, seed=0)
    table = training_table(data, split)
    items = set(table["item_id"].to_pylist())
    for u in split.validation | split.test:
        assert str(100 + int(u)) not in items
    for u in split.train:
        assert str(100 + int(u)) in items  # train users' futures are training data
    assert table.num_rows == int((~data.is_future).sum()) + 2 * len(split.train)

    seen: list[pa.Table] = []
    build = nbr.build_model

    def spy(loaded: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(loaded.table)
        return build(loaded, *args, **kwargs)

    monkeypatch.setattr(nbr, "build_model", spy)
    report = evaluate_nbr(data, small_settings(tmp_path), seeds=(0, 1))
    assert len(seen) == 2
    for seed, fitted in zip((0, 1), seen, strict=True):
        held_out = nbr_splits(data.users, seed).test | nbr_splits(data.users, seed).validation
        fitted_items = set(fitted["item_id"].to_pylist())
        assert not {str(100 + int(u)) for u in held_out} & fitted_items
    assert report.users == N_USERS - N_USERS * 80 // 100
    assert set(report.metrics) >= {"served", "als", "g_topfreq", "p_topfreq", "gp_topfreq"}
    assert [s["seed"] for s in report.per_seed] == [0, 1]
    for name, m in report.metrics.items():
        runs = [s["metrics"][name]["recall@10"] for s in report.per_seed]
        assert m["recall@10"] == pytest.approx(float(np.mean(runs)))
    json.dumps(report.to_json())


def test_paper_topfreq_orders_by_count_then_first_appearance(tmp_path: Path) -> None:
    # user a: item 3 in two baskets, then 1 and 2 once each (1 seen first)
    history = {
        "a": [[-1], [1, 3], [2, 3], [-1]],
        **{f"x{i}": [[-1], [2], [2, 5], [-1]] for i in range(40)},
    }
    future = {u: [[-1], [9], [-1]] for u in history}
    data = load_nbr_json(
        _write(tmp_path / "h.json.gz", history), _write(tmp_path / "f.json.gz", future)
    )
    split = nbr.NBRSplit(
        0, frozenset(u for u in history if u != "a"), frozenset(), frozenset({"a"})
    )
    built = nbr.build_model(
        nbr.LoadedData(training_table(data, split), None, (), 0), small_settings(tmp_path)
    )
    model = nbr.Model(built.artifact)
    a = model.user_position["a"]
    lists = nbr._paper_topfreq(data, split, model, [a], 4)
    ids = model.artifact.item_ids
    assert ids[lists["p_topfreq"](a)].tolist() == ["3", "1", "2"]
    # popularity over history baskets only (9 is only in future baskets): 2, then 5
    assert ids[lists["g_topfreq"](a)].tolist()[:2] == ["2", "5"]
    assert ids[lists["gp_topfreq"](a)].tolist() == ["3", "1", "2", "5"]


@pytest.mark.slow
def test_tafeng_reproduces_the_published_gp_topfreq(tmp_path: Path) -> None:
    history, future = SHARED / "tafeng_history.json.gz", SHARED / "tafeng_future.json.gz"
    if not history.exists() or not future.exists():
        pytest.skip(f"{SHARED} not found: the shared datasets are not beside this checkout")
    data = load_nbr_json(history, future)
    assert len(data.users) == 13_858
    report = evaluate_nbr(data, small_settings(tmp_path, als={"factors": 64}), seeds=(0,))
    assert report.users == 13_858 - 13_858 * 80 // 100
    m = report.metrics
    assert m["gp_topfreq"]["recall@10"] == pytest.approx(0.1224, abs=0.01)
    assert m["g_topfreq"]["recall@10"] == pytest.approx(0.0790, abs=0.01)
    assert m["p_topfreq"]["recall@10"] == pytest.approx(0.1083, abs=0.01)
