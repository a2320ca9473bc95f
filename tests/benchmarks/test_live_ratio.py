"""benchmarks/live_ratio.py: the paired live ÷ cached repeats pooled, on small fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from factories import bench_script


@pytest.fixture(scope="module")
def live_ratio() -> ModuleType:
    return bench_script("live_ratio")


def _runs(p50s: list[float], cpu: float) -> list[dict[str, Any]]:
    return [
        {
            "server": {"handling_p50_ms": p50, "handling_mean_ms": p50 * 1.1},
            "cpu_us_per_request": {"server": cpu},
        }
        for p50 in p50s
    ]


def _results(path: Path, cached: list[float], live: list[float], level: int = 8) -> Path:
    def point(mode: str, level: int, scenario: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"mode": mode, "level": level, "scenario": scenario, "service_runs": runs}

    points = [
        point("closed", level, "cached", _runs(cached, 600)),
        point("closed", level, "live", _runs(live, 720)),
        point("open", 500, "cached", _runs([9.0], 1)),
    ]
    path.write_text(json.dumps({"points": points}))
    return path


def test_each_repeat_pairs_live_with_the_cached_run_beside_it(
    live_ratio: ModuleType, tmp_path: Path
) -> None:
    path = _results(tmp_path / "a.json", [0.30, 0.40, 0.20], [0.36, 0.60, 0.21])
    ratios = live_ratio.paired(path, 8)
    assert [round(r[0], 3) for r in ratios] == [1.2, 1.5, 1.05]
    assert [round(r[2], 3) for r in ratios] == [1.2, 1.2, 1.2]
    # pooled over files: the median of every repeat, and how many meet the target
    other = _results(tmp_path / "b.json", [0.30, 0.30], [0.30, 0.45])
    line = live_ratio.summary("x", ratios + live_ratio.paired(other, 8), 1.25)
    assert line.startswith("| x | 5 | 1.20× (1.05–1.50) |")
    assert line.endswith("| 3 of 5 |")


def test_a_run_without_both_scenarios_at_the_level_is_refused(
    live_ratio: ModuleType, tmp_path: Path
) -> None:
    path = _results(tmp_path / "a.json", [0.3], [0.4], level=32)
    with pytest.raises(SystemExit, match="concurrency 8"):
        live_ratio.paired(path, 8)
    assert live_ratio.main(["--concurrency", "32", str(path)]) == 0
