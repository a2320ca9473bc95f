"""The session protocol (``recsvc evaluate --protocol session``) and its quality floor."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsvc.errors import DataError
from recsvc.training.nextclick import (
    evaluate_next_click,
    load_next_click_data,
    score_next_item,
    validation_cases,
)

from factories import SHARED_DATA, small_settings

SHARED = SHARED_DATA


def _walks(rng: np.random.Generator, n: int, n_items: int = 60) -> list[list[int]]:
    """Sessions that mostly step to a fixed successor of the current item (item + 1
    within a block of 10), sometimes jump to a random item of the block."""
    sessions = []
    for _ in range(n):
        item = int(rng.integers(n_items))
        walk = [item]
        for _ in range(int(rng.integers(2, 7))):
            block = item // 10 * 10
            item = block + (item + 1) % 10 if rng.random() < 0.8 else block + int(rng.integers(10))
            walk.append(item)
        sessions.append(walk)
    return sessions


def _write(tmp_path: Path, train: list[list[int]], cases: list[tuple[list[int], int]]) -> Path:
    folder = tmp_path / "sessions"
    folder.mkdir()
    with gzip.open(folder / "train_sessions.txt.gz", "wt") as fh:
        fh.writelines(" ".join(map(str, s)) + "\n" for s in train)
    with gzip.open(folder / "test_cases.tsv.gz", "wt") as fh:
        fh.writelines(" ".join(map(str, p)) + f"\t{t}\n" for p, t in cases)
    return folder


@pytest.fixture
def walk_data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    train = _walks(rng, 1500)
    cases = [(s[:i], s[i]) for s in _walks(rng, 200) for i in range(1, len(s))]
    return _write(tmp_path, train, cases)


def test_loader_reads_sessions_as_ordered_views_of_pseudo_users(walk_data: Path) -> None:
    table, cases = load_next_click_data(walk_data)
    assert set(table["event_type"].to_pylist()) == {"view"}
    first = table.slice(0, 3).to_pydict()
    assert first["user_id"][0] == first["basket_id"][0] == "s1"
    assert first["timestamp"][0] < first["timestamp"][1]  # click order is time order
    assert len(cases.prefixes) == len(cases.targets) > 500
    assert all(len(p) >= 1 for p in cases.prefixes)


def test_loader_names_the_bad_line(tmp_path: Path) -> None:
    folder = _write(tmp_path, [[1, 2]], [([1], 2)])
    with gzip.open(folder / "test_cases.tsv.gz", "wt") as fh:
        fh.write("1 2\t3\nno-target-here\n")
    with pytest.raises(DataError, match=r"test_cases\.tsv\.gz:2"):
        load_next_click_data(folder)


def test_score_next_item_by_hand() -> None:
    ranked = [np.array([5, 6, 7]), np.array([1, 2, 3]), np.array([9])]
    m = score_next_item(ranked, np.array([6, 3, 4]), (1, 3))
    assert m["hr@1"] == 0.0
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)


def test_validation_cases_come_from_the_latest_sessions_only(walk_data: Path) -> None:
    table, _ = load_next_click_data(walk_data)
    train, cases = validation_cases(table, 0.1)
    held = set(table["user_id"].to_pylist()) - set(train["user_id"].to_pylist())
    assert 100 <= len(held) <= 200  # ~10% of 1,500 sessions
    newest = {f"s{i}" for i in range(1301, 1501)}
    assert held <= newest
    assert len(cases.targets) > len(held)


def test_quality_floor_of_the_served_session_path(walk_data: Path, tmp_path: Path) -> None:
    """The served session ranking learns the walks' successor rule.

    Measured when written (seeded): MRR@20 served 0.761, item_knn 0.651, s_pop 0.081,
    popularity 0.062; HR@20 served 0.911, item_knn 0.983 (10.5% of next clicks
    revisit a session item, under the 15% at which the trainer lets sessions repeat,
    so those are not shown). MRR is where the walk's order shows, so the floor sits
    on it, ~15% under the measured value.
    """
    table, cases = load_next_click_data(walk_data)
    report = evaluate_next_click(table, cases, small_settings(tmp_path))
    m = report["metrics"]
    assert report["cases"] == len(cases.targets)
    assert m["served"]["mrr@20"] >= 0.65
    assert m["served"]["mrr@20"] > m["item_knn"]["mrr@20"]
    assert m["served"]["hr@20"] > 2 * m["popularity"]["hr@20"]
    assert report["model"]["ranking"]["session_repeats"] is False
    assert report["model"]["ranking"]["session_blend"]["neighbors"] > 0


@pytest.mark.slow
def test_diginetica_session_path_beats_the_published_item_knn(tmp_path: Path) -> None:
    folder = SHARED / "diginetica"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared datasets are not beside the repo)")
    table, cases = load_next_click_data(folder)
    settings = small_settings(tmp_path, als={"factors": 16, "iterations": 3})
    report = evaluate_next_click(table, cases, settings, limit=3000)
    m = report["metrics"]
    # published on all cases: Item-KNN 0.3575 / 0.1157, SR-GNN 0.5073 / 0.1759
    assert m["served"]["hr@20"] >= 0.45
    assert m["served"]["mrr@20"] >= 0.16
