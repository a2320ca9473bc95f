"""serving/monitoring: the alert rules and the dashboard ops install read what recsvc
exports: every PromQL expression parses, and every metric and label it selects is one
serving.metrics declares."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from recsvc.serving.metrics import ServingMetrics

from factories import REPO, fill_every_metric

MONITORING = REPO / "serving" / "monitoring"
TARGET_LABELS = {"job", "instance"}
"""Labels Prometheus attaches to every scraped series."""
NOT_OURS = {"up": set[str]()}
"""Series Prometheus makes itself, and their labels beyond the target's."""
GRAFANA = {"$__rate_interval": "5m", "$job": "recsvc", "$instance": ".*"}


@cache
def exported() -> dict[str, set[str]]:
    """Every series name recsvc exports (``_total``, ``_bucket``, ... included) and its
    label names (built once; callers only read it)."""
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    fill_every_metric(metrics)
    metrics.watch_state_cache(lambda: (3, 1))
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in ``expr``;
    ValueError when it does not parse."""
    found: list[tuple[str, set[str]]] = []

    def visit(node: Any, *_: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))

    promql_parser.walk(promql_parser.parse(expr), visit)
    yield from found


def unknown_selections(expr: str) -> list[str]:
    series = {**exported(), **NOT_OURS}
    problems = []
    for name, labels in selectors(expr):
        if name not in series:
            problems.append(f"no series {name}")
        elif extra := labels - series[name] - TARGET_LABELS:
            problems.append(f"{name} has no label {sorted(extra)}")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads((MONITORING / "dashboard.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_each_alert_selects_only_what_recsvc_exports(rule: dict[str, Any]) -> None:
    assert unknown_selections(rule["expr"]) == []
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 40
    if "for" in rule:
        promql_parser.parse_duration(rule["for"])
    assert any(
        name.startswith("recsvc_") or name.startswith("grpc_") or name == "up"
        for name, _ in selectors(rule["expr"])
    )


def test_alert_names_are_unique_and_cover_the_failures_ops_page_on() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    # down, no model, errors, slow, Redis gone, shedding, a refused model, a stale one
    for needed in (
        "RecsvcDown",
        "RecsvcNoModel",
        "RecsvcServerErrors",
        "RecsvcRecommendSlow",
        "RecsvcDegraded",
        "RecsvcShedding",
        "RecsvcModelReloadFailed",
        "RecsvcModelStale",
    ):
        assert needed in names


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs(), ids=lambda v: str(v)[:40])
def test_each_dashboard_query_selects_only_what_recsvc_exports(title: str, expr: str) -> None:
    assert unknown_selections(expr) == [], title


def test_the_dashboard_shows_every_metric_recsvc_exports() -> None:
    shown = {name for _, expr in dashboard_exprs() for name, _ in selectors(expr)}
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", s) for s in shown}
    declared = {re.sub(r"_(total|bucket|count|sum|created)$", "", s) for s in exported()}
    assert declared - families == set()
    board = json.loads((MONITORING / "dashboard.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('rate(recsvc_events_totl{job="recsvc"}[5m])', "no series recsvc_events_totl"),
        ('rate(recsvc_events_total{event="view"}[5m])', "recsvc_events_total has no label"),
        ('rate(up{grpc_code="OK"}[5m])', "up has no label"),
    ],
)
def test_the_check_catches_a_wrong_series_or_label(expr: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in unknown_selections(expr))


def test_the_check_refuses_an_expression_that_does_not_parse() -> None:
    with pytest.raises(ValueError):
        unknown_selections("sum(rate(recsvc_events_total[5m])")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs Prometheus' promtool")
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    # the rule file as Prometheus loads it, and alerts.yml's own unit tests (which
    # alerts fire on given series, with which labels and text)
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
