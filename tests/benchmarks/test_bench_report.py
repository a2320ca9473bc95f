"""benchmarks/report.py: the summary of the results JSON, on small fixtures shaped like them."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from factories import bench_script

MIB = 2**20


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return bench_script("report")


def _point(
    catalogue: int, scenario: str, mode: str, level: float, service: dict[str, Any], floor: Any
) -> dict[str, Any]:
    return {
        "catalogue": catalogue,
        "model_items": catalogue - 1000,
        "scenario": scenario,
        "mode": mode,
        "level": level,
        "median": {"service": service, "floor": floor},
    }


SERVING = {
    "date": "2026-01-02T03:04:05+00:00",
    "git": "abc1234",
    "command": "bench_serving.py",
    "machine": {"nproc": 2, "cpu": "test cpu"},
    "config": {
        "targets": {
            "throughput_ratio_min": 0.6,
            "open_loop_p99_ratio_max": 2.0,
            "cached_server_p50_ms_max": 1.0,
            "session_server_p50_ms_max": 1.5,
        }
    },
    "shops": {
        "100000": {
            "config": {"n_items": 100000},
            "model_items": 99000,
            "index_kind": "normscan",
            "index_recall": 1.0,
        }
    },
    "points": [
        _point(10000, "cached", "closed", 32, {"qps": 1.0}, {"qps": 1000.0}),  # not the main one
        _point(
            100000,
            "cached",
            "closed",
            32,
            {
                "qps": 700.0,
                "server": {"handling_p50_ms": 0.8, "index_search_p50_ms": 0.2},
                "cpu_us_per_request": {"server": 900.0},
            },
            {"qps": 1000.0, "cpu_us_per_request": {"server": 300.0}},
        ),
        _point(
            100000,
            "cached",
            "open",
            300,
            {"offered_rate": 300.0, "latency_ms": {"p99": 5.0}},
            {"latency_ms": {"p99": 2.0}},
        ),
        _point(100000, "session", "closed", 32, {"server": {"handling_p50_ms": 1.6}}, {}),
    ],
    "profile": {"summary": {"categories": {"gRPC core": 0.4, "asyncio event loop": 0.2}}},
}
QUICK = {
    "date": "2026-01-03T00:00:00+00:00",
    "git": "def5678",
    "recommend_qps": 500.0,
    "floor_qps": 1000.0,
    "server_p50_ms": 0.9,
    "open_rate": 250.0,
    "open_client_p99_ms": 3.0,
    "open_floor_p99_ms": 2.0,
    "session_server_p50_ms": 1.0,
    "model_items": 99000,
    "targets": {
        "ratio_min": 0.6,
        "server_p50_ms_max": 1.0,
        "session_server_p50_ms_max": 1.5,
        "open_p99_ratio_max": 2.0,
    },
}


def _variant(name: str, family: str, recall: float, us: float) -> dict[str, Any]:
    return {"name": name, "family": family, "recall": recall, "single_us_median": us}


INDEX = {
    "date": "2026-01-01T00:00:00+00:00",
    "git": "0123abc",
    "config": {"target_recall": 0.95, "target_speedup": 10.0},
    "shops": [
        {  # smaller: not the one the summary reads
            "indexed_items": 1000,
            "variants": [_variant("exact", "exact", 1.0, 10.0)],
        },
        {
            "indexed_items": 1_000_000,
            "target": {"default_variant": "hnsw efSearch 128"},
            "variants": [
                _variant("exact", "exact", 1.0, 1000.0),
                _variant("hnsw efSearch 128", "hnsw", 0.5, 50.0),
                _variant("ivf nprobe 64", "ivf", 0.96, 90.0),
                _variant("ivf nprobe 256", "ivf", 0.99, 200.0),  # over the 100 µs budget
                _variant("norm-ordered exact scan", "norm-scan", 1.0, 20.0),
            ],
        },
    ],
}
TRAIN = {
    "date": "2026-01-04T00:00:00+00:00",
    "git": "9876fed",
    "sizes": [
        {
            "dataset": "1,000,000 events",
            "n_events": 1_000_000,
            "median": {
                "recsvc": {
                    "wall_seconds": 12.0,
                    "max_rss_bytes": 150 * MIB,
                    "timings": {"fit": 6.0, "neighbors": 4.0},
                    "unrecorded_seconds": 1.0,
                },
                "bare": {"wall_seconds": 11.0, "load_build_fit_index_seconds": 10.0},
                "matrix": {"csr_bytes": 20 * MIB, "factor_bytes": 30 * MIB},
            },
        },
        {  # a column written without its bare side
            "dataset": "Online Retail II",
            "median": {"recsvc": {"wall_seconds": 5.0}},
        },
    ],
}


def _write(root: Path, files: dict[str, Any]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else json.dumps(data))


def _section(text: str, heading: str) -> str:
    """The part of the README under the ``## heading...`` that starts with ``heading``."""
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def _row(text: str, figure: str, source: str) -> list[str]:
    """The cells of the table row whose figure starts with ``figure``, from ``source``."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {figure}") and f"[{source}]" in line
    ]
    assert len(rows) == 1, (figure, source, rows)
    return rows[0]


def test_figures_ratios_and_met(report: ModuleType, tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "serving/results.json": SERVING,
            "quick/summary.json": QUICK,
            "index/results.json": INDEX,
            "train/results.json": TRAIN,
            "serving-1m/results.json": '{"date": "2026-01',  # being rewritten
            "serving/profile.md": "# profile\n",
            "serving/plot.png": "",
        },
    )
    assert report.main(["--results", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    cached, session = _section(text, "Recommend"), _section(text, "Anonymous")

    # cached user: floor, ratio, target, met; the 10k catalogue is not the one read
    assert _row(text, "throughput, c=32, 99,000 items", "serving")[1:6] == [
        "700 req/s",
        "1,000 req/s (floor)",
        "0.70×",
        "≥ 0.6×",
        "yes",
    ]
    assert ", 9,000 items" not in text
    assert _row(cached, "server p50, c=32", "serving")[1:6:4] == ["0.80 ms", "yes"]
    open_loop = _row(text, "client p99, open loop at 300 req/s", "serving")
    assert open_loop[1:6] == [
        "5.00 ms",
        "2.00 ms (floor, same schedule)",
        "2.50×",
        "≤ 2×",
        "**no**",
    ]
    assert _row(text, "throughput, quick run", "quick")[3:6] == ["0.50×", "≥ 0.6×", "**no**"]
    assert _row(text, "client p99, open loop at 250 req/s", "quick")[3:6] == [
        "1.50×",
        "≤ 2×",
        "yes",
    ]
    # session: the serving run misses 1.5 ms, the quick run meets it
    assert _row(session, "server p50, c=32", "serving")[1:6] == [
        "1.60 ms",
        "-",
        "-",
        "≤ 1.50 ms",
        "**no**",
    ]
    assert _row(session, "server p50, quick run", "quick")[5] == "yes"

    # index: the largest shop; the best recall within exact / 10 is ivf nprobe 64
    assert _row(text, "hnsw efSearch 128", "index")[1:6] == [
        "recall 0.5000 at 50 µs",
        "1,000 µs (exact)",
        "1/20 of exact",
        "recall ≥ 0.95 at ≤ 1/10 of exact",
        "**no**",
    ]
    assert _row(text, "ivf nprobe 64", "index")[5] == "yes"
    assert "ivf nprobe 256" not in text
    assert _row(text, "norm-ordered exact scan", "index")[3] == "1/50 of exact"
    served = _row(text, "served `normscan` index", "serving")
    assert "0.20 ms" in served[1]
    assert served[3] == served[5] == "not measured"

    # training: the targets; a column without its bare side is not measured
    assert _row(text, "wall, 1,000,000 events", "train")[1:6] == [
        "12.0 s",
        "10.0 s (bare load + build + fit + index)",
        "1.20×",
        "≤ 1.3×",
        "yes",
    ]
    assert _row(text, "process wall, 1,000,000 events", "train")[3] == "1.09×"
    assert _row(text, "peak RSS, 1,000,000 events", "train")[1:6] == [
        "150 MiB",
        "50 MiB (CSR + factors)",
        "3.00×",
        "≤ 2×",
        "**no**",
    ]
    retail = _row(text, "wall, Online Retail II", "train")
    assert retail[1] == "5.0 s"
    assert retail[3] == retail[5] == "not measured"

    # the run's date and commit on each row; missing and unreadable reports named
    assert "[serving](serving/README.md) 2026-01-02, abc1234" in text
    assert "`serving-1m/results.json`: unreadable (JSONDecodeError" in text
    assert "900 µs of server CPU per cached request at c=32 (floor 300 µs)" in text
    assert "fit 6.0 s, neighbors 4.0 s; outside the manifest 1.0 s" in text
    assert "[plot.png](serving/plot.png)" in text
    assert "[serving/profile.md](serving/profile.md)" in text


def test_no_reports_at_all(report: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    assert report.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    for file, _, command in report.REPORTS.values():
        assert f"`{file}`: missing (written by `{command}`)" in text
    assert text.count("Not measured: no report read") == len(report.AREAS)
    assert "| yes |" not in text
    assert "**no**" not in text
