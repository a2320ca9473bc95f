"""The offline experiment report (training/experiment_report.py): reading the event
log, the delta-method variance, the always-valid test under peeking, the outputs."""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recsvc.errors import DataError
from recsvc.experiments import recommendation_id
from recsvc.training.experiment_report import (
    METRICS,
    AttributedEvents,
    ExperimentReport,
    analyze,
    format_text,
    plot,
    report,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
NEW_HEADER = (
    "user_id",
    "item_id",
    "timestamp",
    "event_type",
    "quantity",
    "basket_id",
    "event_id",
    "recommendation_id",
    "placement",
    "revenue",
)
OLD_HEADER = NEW_HEADER[:7]


def rid(experiment: str, variant: str, shopper: str, nonce: int = 1) -> str:
    return recommendation_id("20260101T000000Z-0123abcd", experiment, variant, T0, shopper, nonce)


def row(
    user: str,
    kind: str,
    t: int,
    rec: str = "",
    *,
    basket: str = "",
    event_id: str = "",
    revenue: str = "",
) -> dict[str, Any]:
    return {
        "user_id": user,
        "item_id": "i1",
        "timestamp": t,
        "event_type": kind,
        "quantity": 1,
        "basket_id": basket,
        "event_id": event_id,
        "recommendation_id": rec,
        "placement": "home",
        "revenue": revenue,
    }


def write_log(
    directory: Path,
    name: str,
    rows: list[dict[str, Any]],
    header: tuple[str, ...] = NEW_HEADER,
    *,
    torn_tail: str = "",
) -> Path:
    """An event-log file as the server writes it (csv module, minimal quoting);
    ``torn_tail``: a last line without its line break (a write cut short)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.write(torn_tail)
    return path


def impressions(user: str, variant: str, n: int, t: int, **kw: Any) -> list[dict[str, Any]]:
    return [
        row(user, "impression", t + i, rid("exp", variant, user or "s"), **kw) for i in range(n)
    ]


def clicks(user: str, variant: str, n: int, t: int, **kw: Any) -> list[dict[str, Any]]:
    return [row(user, "click", t + i, rid("exp", variant, user or "s"), **kw) for i in range(n)]


# --- a tiny log with known answers ----------------------------------------------------


def tiny_log(directory: Path) -> None:
    """Variant A: three shoppers with (impressions, clicks) = (2, 1), (4, 0), (3, 3),
    the second a visitor (no user id, its visit as the basket); one purchase of 12.5.
    Variant B: two shoppers (1, 1), (5, 0). Noise that must not count: an unattributed
    impression, a view, another experiment's impression."""
    rows = [
        *impressions("a1", "A", 2, T0),
        *clicks("a1", "A", 1, T0 + 10),
        row("a1", "purchase", T0 + 20, rid("exp", "A", "a1"), revenue="12.5"),
        *impressions("", "A", 4, T0 + 100, basket="visit:s9"),
        *impressions("a3", "A", 3, T0 + 200),
        *clicks("a3", "A", 3, T0 + 210),
        *impressions("b1", "B", 1, T0 + 300),
        *clicks("b1", "B", 1, T0 + 310),
        *impressions("b2", "B", 5, T0 + 400),
        row("a1", "impression", T0 + 500),  # not attributed
        row("a1", "view", T0 + 510, rid("exp", "A", "a1")),  # not counted
        row("z1", "impression", T0 + 520, rid("other", "X", "z1")),
    ]
    write_log(directory, "events-20260101T000000-000000.csv", rows)


def test_delta_method_variance_by_hand(tmp_path: Path) -> None:
    tiny_log(tmp_path)
    result = report([tmp_path], "exp", control="A", checkpoints=4)
    a, b = result.variants
    assert (a.name, a.units, a.impressions, a.clicks, a.purchases) == ("A", 3, 9, 4, 1)
    assert (b.name, b.units, b.impressions, b.clicks, b.purchases) == ("B", 2, 6, 1, 0)
    assert a.revenue == pytest.approx(12.5)
    # A: x = (2, 4, 3), y = (1, 0, 3): R = 4/9, x̄ = 3, s_x² = 1, s_y² = 7/3, s_xy = -1/2;
    # Var = (7/3 + 2·(4/9)·(1/2) + (16/81)·1) / (3·3²) = (241/81) / 27 = 241/2187
    assert a.ctr.value == pytest.approx(4 / 9)
    assert a.ctr.std_error == pytest.approx(math.sqrt(241 / 2187))
    # B: x = (1, 5), y = (1, 0): R = 1/6, x̄ = 3, s_x² = 8, s_y² = 1/2, s_xy = -2;
    # Var = (1/2 + 2·(1/6)·2 + (1/36)·8) / (2·9) = (25/18) / 18 = 25/324
    assert b.ctr.value == pytest.approx(1 / 6)
    assert b.ctr.std_error == pytest.approx(5 / 18)
    # conversion of A: y = (1, 0, 0): Σ(y − R·x)² with R = 1/9 over n − 1, times n/(Σx)²
    resid = np.array([1 - 2 / 9, -4 / 9, -3 / 9])
    assert a.conversion_rate.std_error == pytest.approx(math.sqrt((resid**2).sum() / 2 * 3 / 81))
    assert a.revenue_per_impression.value == pytest.approx(12.5 / 9)
    assert result.rows == 9 + 4 + 1 + 6 + 1
    assert (result.skipped_rows, result.duplicate_rows, result.bad_lines) == (0, 0, 0)
    assert result.crossover_units == 0
    # too few shoppers to test: p = 1, not significant, no interval
    (comparison,) = result.comparisons
    assert all(not m.tested and not m.significant for m in comparison.metrics)
    assert comparison.metrics[0].always_valid_p == 1.0
    assert comparison.metrics[0].always_valid_ci_low is None
    assert comparison.metrics[0].difference == pytest.approx(1 / 6 - 4 / 9)


def test_checkpoints_are_cumulative_and_the_last_is_everything(tmp_path: Path) -> None:
    tiny_log(tmp_path)
    result = report([tmp_path], "exp", control="A", checkpoints=4)
    assert [c.index for c in result.checkpoints] == [0, 1, 2, 3]
    assert result.checkpoints[-1].until == result.last_event == T0 + 404
    assert result.first_event == T0
    # checkpoints every 101 s: by T0 + 101 a1's 2 impressions and the visitor's first 2;
    # by T0 + 202 the visitor's other 2 and a3's 3; by T0 + 303 b1's; then b2's 5
    assert [c.impressions for c in result.checkpoints] == [4, 9, 10, 15]
    assert [p.impressions for p in result.checkpoints[1].variants] == [9, 0]
    assert result.checkpoints[1].variants[1].ctr.value is None
    last = result.checkpoints[-1].variants
    assert [p.units for p in last] == [v.units for v in result.variants]
    assert last[0].ctr == result.variants[0].ctr


def test_time_window(tmp_path: Path) -> None:
    tiny_log(tmp_path)
    result = report([tmp_path], "exp", control="A", since=T0 + 100, until=T0 + 300)
    (a, *_) = result.variants
    assert (a.impressions, a.clicks, a.purchases) == (7, 3, 0)
    assert [v.name for v in result.variants] == ["A"]  # B's events are all later
    assert result.comparisons == ()
    assert "only one variant" in format_text(result)


def test_repeated_event_ids_count_once(tmp_path: Path) -> None:
    first = [
        *impressions("u1", "A", 2, T0, event_id="e1"),  # both e1: the second is a retry
        *impressions("u1", "A", 2, T0 + 5),  # no event id: both count
        row("u1", "click", T0 + 9, rid("exp", "A", "u1"), event_id="e2"),
    ]
    retried = [row("u1", "click", T0 + 9, rid("exp", "A", "u1"), event_id="e2")]
    write_log(tmp_path, "events-20260101T000000-000000.csv", first)
    write_log(tmp_path, "events-20260101T000500-000001.csv", retried)
    result = report([tmp_path], "exp")
    (a,) = result.variants
    assert (a.impressions, a.clicks) == (3, 1)
    assert result.duplicate_rows == 2
    assert result.rows == 4
    assert result.files == 2


def test_old_seven_column_files_beside_new_ones(tmp_path: Path) -> None:
    old = [row(f"u{i}", "impression", T0 + i, event_id=f"o{i}") for i in range(5)]
    old.append(row("u0", "purchase", T0 + 9, event_id="o9"))
    write_log(tmp_path / "r1", "events-20251201T000000-000000.csv", old, OLD_HEADER)
    write_log(tmp_path / "r2", "events-20260101T000000-000000.csv", impressions("u1", "B", 3, T0))
    assert (
        (tmp_path / "r1" / "events-20251201T000000-000000.csv")
        .read_text()
        .startswith(",".join(OLD_HEADER) + "\n")
    )
    result = report([tmp_path / "r1", tmp_path / "r2"], "exp")
    assert result.files == 2
    (b,) = result.variants
    assert (b.name, b.impressions, b.purchases) == ("B", 3, 0)


def test_unparseable_ids_and_torn_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        *impressions("u1", "A", 2, T0),
        row("u1", "impression", T0 + 3, "not-an-id"),
        row("u1", "click", T0 + 4, "model.exp.A.zz.123"),
        row("u1", "click", "", rid("exp", "A", "u1")),  # no timestamp
    ]
    # a purchase of 12.50 cut short: every column is there, the revenue is not all there
    torn = f"u1,i1,{T0 + 5},purchase,1,,e9,{rid('exp', 'A', 'u1')},home,12"
    write_log(tmp_path, "events-20260101T000000-000000.csv", rows, torn_tail=torn)
    write_log(tmp_path, "events-20260101T000000-000001.csv", [], torn_tail="u2,i1,17672")
    result = report([tmp_path], "exp")
    assert result.skipped_rows == 3
    assert result.bad_lines == 2
    assert (result.variants[0].impressions, result.variants[0].purchases) == (2, 0)
    text = format_text(result)
    assert "3 unusable rows" in text


def test_errors_name_the_experiment_and_what_the_log_holds(tmp_path: Path) -> None:
    tiny_log(tmp_path)
    with pytest.raises(DataError, match=r"'missing' has no attributed events") as info:
        report([tmp_path], "missing")
    assert "exp (21 rows)" in str(info.value)
    assert "other (1 rows)" in str(info.value)
    with pytest.raises(DataError, match=r"control 'C' is no variant .* its variants: A, B"):
        report([tmp_path], "exp", control="C")
    with pytest.raises(DataError, match="does not exist"):
        report([tmp_path / "nowhere"], "exp")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"\(0 files\); experiments in it: none"):
        report([empty], "exp")


def test_default_control_is_the_variant_named_control_else_the_first_by_name() -> None:
    events = simulate(0, n_units=300, names=("treat", "control"))
    assert analyze(events, "x").control == "control"
    events = simulate(0, n_units=300, names=("b", "a"))
    result = analyze(events, "x")
    assert result.control == "a"
    assert [v.name for v in result.variants] == ["a", "b"]


# --- simulated experiments ------------------------------------------------------------


def simulate(
    seed: int,
    n_units: int = 4000,
    ctr: tuple[float, float] = (0.05, 0.05),
    *,
    buy: float = 0.2,
    names: tuple[str, str] = ("A", "B"),
    days: float = 14.0,
) -> AttributedEvents:
    """Shoppers arrive uniformly over ``days``, half in each variant, and see
    1 + Poisson(6) recommendations within the hour; each shopper's click propensity is
    the variant's CTR times a Gamma(2, 1/2) taste (mean 1: correlated events within a
    shopper), a click becomes a purchase with probability ``buy``, revenue lognormal."""
    rng = np.random.default_rng(seed)
    variant = rng.integers(0, 2, n_units)
    arrival = rng.uniform(0.0, days * 86_400, n_units)
    shown = 1 + rng.poisson(6, n_units)
    taste = rng.gamma(2.0, 0.5, n_units)
    clicked = rng.binomial(shown, np.minimum(np.asarray(ctr)[variant] * taste, 1.0))
    bought = rng.binomial(clicked, buy)
    unit = np.arange(n_units)
    owner = np.concatenate(
        [np.repeat(unit, shown), np.repeat(unit, clicked), np.repeat(unit, bought)]
    )
    kind = np.repeat([0, 1, 3], [shown.sum(), clicked.sum(), bought.sum()])
    timestamp = T0 + arrival[owner] + rng.uniform(0.0, 3600.0, len(owner))
    revenue = np.where(kind == 3, rng.lognormal(3.0, 1.0, len(owner)), 0.0)
    return AttributedEvents(
        timestamp=timestamp,
        unit=owner.astype(np.int64),
        variant=variant[owner].astype(np.int64),
        kind=kind.astype(np.int64),
        revenue=revenue,
        variant_names=names,
    )


def test_cumulative_metrics_match_a_direct_computation_at_every_checkpoint() -> None:
    events = simulate(3, n_units=500, ctr=(0.05, 0.08))
    result = analyze(events, "x", checkpoints=7, min_units=10)
    for point in result.checkpoints:
        upto = events.timestamp <= point.until
        for i, name in enumerate(("A", "B")):
            mine = upto & (events.variant == i)
            units = np.unique(events.unit[mine])
            x = np.bincount(events.unit[mine], weights=events.kind[mine] == 0)[units]
            for metric, kind in (("ctr", 1), ("conversion_rate", 3), ("revenue_per_impression", 3)):
                w = events.revenue if metric == "revenue_per_impression" else np.ones_like(x)
                if metric == "revenue_per_impression":
                    y = np.bincount(events.unit[mine], weights=w[mine])[units]
                else:
                    y = np.bincount(events.unit[mine], weights=events.kind[mine] == kind)[units]
                r = y.sum() / x.sum()
                cov = np.cov(x, y, ddof=1)
                var = (cov[1, 1] - 2 * r * cov[0, 1] + r * r * cov[0, 0]) / (
                    len(units) * x.mean() ** 2
                )
                got = getattr(point.variants[i], metric)
                assert point.variants[i].variant == name
                assert got.value == pytest.approx(r, rel=1e-9)
                assert got.std_error == pytest.approx(math.sqrt(var), rel=1e-6)
            assert point.variants[i].units == int((x > 0).sum())


def test_a_20_percent_ctr_lift_is_found_with_the_right_sign() -> None:
    result = analyze(simulate(11, n_units=20_000, ctr=(0.05, 0.06)), "x")
    (comparison,) = result.comparisons
    ctr = comparison.metrics[0]
    assert (comparison.variant, comparison.control, ctr.metric) == ("B", "A", "ctr")
    assert ctr.significant
    assert ctr.always_valid_p < 0.001
    assert ctr.difference is not None and ctr.difference > 0
    assert ctr.relative_lift is not None and 0.1 < ctr.relative_lift < 0.3
    assert ctr.always_valid_ci_low is not None and ctr.always_valid_ci_low > 0
    assert ctr.always_valid_ci_high is not None and ctr.always_valid_ci_high > ctr.difference
    assert ctr.fixed_horizon_ci_low is not None and ctr.fixed_horizon_ci_low > 0
    # the confidence sequence is wider than the fixed-horizon interval: the price of peeking
    assert ctr.always_valid_ci_low < ctr.fixed_horizon_ci_low
    control_ctr = result.variants[0].ctr.value
    assert control_ctr is not None and ctr.tau == pytest.approx(0.1 * control_ctr)
    total = sum(v.impressions for v in result.variants)
    assert ctr.impressions_to_significance is not None
    assert 0 < ctr.impressions_to_significance < total
    p = [c.comparisons[0].always_valid_p for c in result.checkpoints]
    assert p == sorted(p, reverse=True)  # a running minimum
    assert p[-1] == ctr.always_valid_p
    first = next(i for i, v in enumerate(p) if v < result.alpha)
    assert result.checkpoints[first].impressions == ctr.impressions_to_significance
    assert "B beats A on CTR" in format_text(result)


def test_a_worse_variant_is_significant_with_the_negative_sign() -> None:
    result = analyze(simulate(12, n_units=20_000, ctr=(0.06, 0.05)), "x")
    ctr = result.comparisons[0].metrics[0]
    assert ctr.significant and ctr.difference is not None and ctr.difference < 0
    assert ctr.always_valid_ci_high is not None and ctr.always_valid_ci_high < 0
    assert "B loses to A on CTR" in format_text(result)


AA_SEEDS = 200


def test_aa_always_valid_false_positive_rate_holds_under_peeking() -> None:
    """A/A over 200 seeds, 20 checkpoints each: the always-valid test stays within
    alpha however often it is read; the fixed-horizon test read at every checkpoint
    (stopping at the first p < alpha) does not. Measured (this seed range): always-valid
    0.015 / 0.000 / 0.000 (CTR, conversion, revenue per impression); fixed-horizon at
    the end only 0.050 / 0.050 / 0.090; fixed-horizon peeked 0.230 / 0.185 / 0.245."""
    always_valid = np.zeros((AA_SEEDS, len(METRICS)), dtype=bool)
    peeked = np.zeros((AA_SEEDS, len(METRICS)), dtype=bool)
    for s in range(AA_SEEDS):
        result = analyze(simulate(1000 + s), "x", checkpoints=20)
        for j, m in enumerate(result.comparisons[0].metrics):
            assert m.tested
            always_valid[s, j] = m.significant
            peeked[s, j] = any(c.comparisons[j].fixed_horizon_p < 0.05 for c in result.checkpoints)
    av_rate, peek_rate = always_valid.mean(axis=0), peeked.mean(axis=0)
    print(f"A/A false-positive rates: always-valid {av_rate}, fixed-horizon peeked {peek_rate}")
    assert (av_rate <= 0.05).all(), av_rate
    assert (peek_rate > 0.05).all(), peek_rate
    assert peek_rate.mean() > 2 * 0.05


# --- outputs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lifted() -> ExperimentReport:
    return analyze(simulate(5, n_units=6000, ctr=(0.05, 0.065)), "new-model")


def test_format_text(lifted: ExperimentReport) -> None:
    text = format_text(lifted)
    lines = text.splitlines()
    assert lines[0].startswith("experiment new-model: control A, alpha 0.05")
    variant_rows = [ln for ln in lines if ln.startswith(("A (control) ", "B   "))]
    assert len(variant_rows) == 2
    header = next(ln for ln in lines if ln.startswith("variant"))
    # aligned: every column ends where its header ends
    for column in ("units", "impressions", "CTR", "revenue/impr"):
        end = header.index(column) + len(column)
        assert all(r[end - 1] != " " and (len(r) == end or r[end] == " ") for r in variant_rows)
    assert "B vs A" in text
    for label in ("CTR", "conversion", "revenue/impression"):
        assert any(ln.strip().startswith(label) for ln in lines), label
    assert sum(ln.startswith("verdict: ") for ln in lines) == 1
    assert "fixed-horizon" in text
    assert max(len(ln) for ln in lines) <= 110


def test_report_is_json_able(lifted: ExperimentReport) -> None:
    doc = json.loads(json.dumps(asdict(lifted), allow_nan=False))
    assert doc["control"] == "A"
    assert [v["name"] for v in doc["variants"]] == ["A", "B"]
    assert len(doc["checkpoints"]) == 20
    assert doc["comparisons"][0]["metrics"][0]["metric"] == "ctr"


def test_plot_writes_a_png(lifted: ExperimentReport, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "report.png"
    plot(lifted, path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_arms_below_min_units_are_not_tested(lifted: ExperimentReport) -> None:
    events = simulate(5, n_units=6000, ctr=(0.05, 0.065))
    result = analyze(events, "new-model", min_units=10_000)
    ctr = result.comparisons[0].metrics[0]
    assert lifted.comparisons[0].metrics[0].significant  # the same data, tested
    assert not ctr.tested and not ctr.significant
    assert (ctr.always_valid_p, ctr.fixed_horizon_p) == (1.0, 1.0)
    assert ctr.always_valid_ci_low is None and ctr.fixed_horizon_ci_low is None
    assert "too few shoppers to test (< 10000 per arm)" in format_text(result)


def test_plot_without_matplotlib_names_it(
    lifted: ExperimentReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ModuleNotFoundError, match="needs matplotlib") as info:
        plot(lifted, tmp_path / "report.png")
    assert info.value.name == "matplotlib"
    assert not (tmp_path / "report.png").exists()
