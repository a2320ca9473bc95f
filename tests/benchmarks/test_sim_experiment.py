"""benchmarks/sim_experiment.py end to end, small: a real server splits a simulated
storefront's shoppers, and the report finds the variant the hidden tastes favour
while two identical variants show no difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factories import bench_script

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_the_report_finds_the_better_variant_and_no_difference_between_twins(
    tmp_path: Path,
) -> None:
    sim = bench_script("sim_experiment")
    out = tmp_path / "out"
    args = ["--users", "800", "--items", "200", "--visits", "1200", "--aa-seeds", "2"]
    args += ["--aa-visits", "400", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert sim.main(args) == 0
    result = json.loads((out / "result.json").read_text())
    ab = result["ab"]["report"]
    assert [v["name"] for v in ab["variants"]] == ["popular", "personal"]
    (comparison,) = ab["comparisons"]
    ctr = next(m for m in comparison["metrics"] if m["metric"] == "ctr")
    assert ctr["significant"] and ctr["difference"] > 0
    assert 0 < ctr["impressions_to_significance"] <= sum(v["impressions"] for v in ab["variants"])
    # the server counted what the simulation sent, once each
    sent = result["ab"]["sent"]
    assert sum(v["impressions"] for v in ab["variants"]) == sent["impressions"]
    assert sum(v["clicks"] for v in ab["variants"]) == sent["clicks"]
    for twins in result["aa"]:
        assert not any(twins["significant"].values()), twins
    assert (out / "ab.png").stat().st_size > 0
    assert "## A/B `ab`" in (out / "SUMMARY.md").read_text()
