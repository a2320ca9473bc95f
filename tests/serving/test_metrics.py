"""serving.metrics: names, labels and buckets pinned, bounded labels, the /metrics endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from recsvc.serving.metrics import (
    ITEM_COUNT_BUCKETS,
    LATENCY_BUCKETS_SECONDS,
    ServingMetrics,
    placement_label,
    start_metrics_http_server,
)

from factories import fill_every_metric

# Dashboards and alert rules read these: renaming one is a breaking change.
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "grpc_server_started": ("counter", {"grpc_type", "grpc_service", "grpc_method"}),
    "grpc_server_handled": ("counter", {"grpc_type", "grpc_service", "grpc_method", "grpc_code"}),
    "grpc_server_handling_seconds": ("histogram", {"grpc_type", "grpc_service", "grpc_method"}),
    "recsvc_user_vector_lookups": ("counter", {"layer", "result"}),
    "recsvc_foldin_seconds": ("histogram", set()),
    "recsvc_index_search_seconds": ("histogram", set()),
    "recsvc_fallbacks": ("counter", {"reason"}),
    "recsvc_degraded_responses": ("counter", {"rpc"}),
    "recsvc_events": ("counter", {"event_type"}),
    "recsvc_events_ignored": ("counter", {"reason"}),
    "recsvc_impressions": ("counter", {"placement", "model_version"}),
    "recsvc_clicks": ("counter", {"placement", "model_version"}),
    "recsvc_model_info": ("gauge", {"model_version", "index_type"}),
    "recsvc_model_loaded_timestamp_seconds": ("gauge", set()),
    "recsvc_model_trained_timestamp_seconds": ("gauge", set()),
    "recsvc_model_reloads": ("counter", {"outcome"}),
    "recsvc_recommendations": ("counter", {"strategy", "placement", "experiment", "variant"}),
    "recsvc_attributed_events": (
        "counter",
        {"experiment", "variant", "placement", "event_type"},
    ),
    "recsvc_attributed_revenue": ("counter", {"experiment", "variant", "placement"}),
    "recsvc_attribution_refused": ("counter", {"reason"}),
    "recsvc_experiment_file_loads": ("counter", {"outcome"}),
    "recsvc_variant_model_bytes": ("gauge", {"model_version"}),
    "recsvc_session_merges": ("counter", {"outcome"}),
    "recsvc_consent_changes": ("counter", {"consent"}),
    "recsvc_identity_links": ("counter", {"outcome"}),
    "recsvc_erasures_pending": ("gauge", set()),
    "recsvc_recommended_items": ("histogram", set()),
    "recsvc_inflight_requests": ("gauge", set()),
    "recsvc_live_version": ("gauge", {"collection"}),
    "recsvc_live_records": ("gauge", {"collection"}),
    "recsvc_rule_applications": ("counter", {"action"}),
    "recsvc_new_items": ("gauge", {"state"}),
    "recsvc_new_items_recommended": ("counter", {"rpc"}),
    "recsvc_unparseable_requests": ("counter", {"rpc", "reason"}),
    # prometheus_client's process, platform and GC collectors
    "process_cpu_seconds": ("counter", set()),
    "process_resident_memory_bytes": ("gauge", set()),
    "process_virtual_memory_bytes": ("gauge", set()),
    "process_open_fds": ("gauge", set()),
    "process_max_fds": ("gauge", set()),
    "process_start_time_seconds": ("gauge", set()),
    "python_info": ("gauge", {"implementation", "major", "minor", "patchlevel", "version"}),
    "python_gc_collections": ("counter", {"generation"}),
    "python_gc_objects_collected": ("counter", {"generation"}),
    "python_gc_objects_uncollectable": ("counter", {"generation"}),
}  # fmt: skip


def _families(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    out: dict[str, tuple[str, set[str]]] = {}
    for metric in registry.collect():
        labels: set[str] = set()
        for sample in metric.samples:
            labels |= set(sample.labels) - {"le"}
        out[metric.name] = (metric.type, labels)
    return out


def test_every_metric_has_its_pinned_name_type_and_labels() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    fill_every_metric(metrics)

    assert _families(registry) == EXPECTED


def test_metrics_live_on_the_given_registry_only() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    ServingMetrics(first)
    ServingMetrics(second)  # no "Duplicated timeseries": nothing is shared

    assert first.get_sample_value("recsvc_inflight_requests") == 0.0
    assert second.get_sample_value("recsvc_inflight_requests") == 0.0
    assert REGISTRY.get_sample_value("recsvc_inflight_requests") is None
    with pytest.raises(ValueError, match="Duplicated"):
        ServingMetrics(first)


def test_latency_histograms_resolve_sub_millisecond_calls() -> None:
    registry = CollectorRegistry()
    m = ServingMetrics(registry)
    m.foldin_seconds.observe(0.00007)  # 70 µs

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("recsvc_foldin_seconds_bucket", {"le": le})

    assert bucket("5e-05") == 0.0
    assert bucket("0.0001") == 1.0
    assert sum(b < 0.001 for b in LATENCY_BUCKETS_SECONDS) >= 5
    assert list(LATENCY_BUCKETS_SECONDS) == sorted(LATENCY_BUCKETS_SECONDS)


def test_recommended_items_buckets_count_empty_answers_apart() -> None:
    registry = CollectorRegistry()
    m = ServingMetrics(registry)
    m.recommended_items.observe(0)
    m.recommended_items.observe(10)

    assert ITEM_COUNT_BUCKETS == (0, 1, 5, 10, 20, 50, 100, 500)
    assert registry.get_sample_value("recsvc_recommended_items_bucket", {"le": "0.0"}) == 1.0
    assert registry.get_sample_value("recsvc_recommended_items_bucket", {"le": "10.0"}) == 2.0


def test_closed_label_sets_exist_at_zero_from_start_up() -> None:
    registry = CollectorRegistry()
    ServingMetrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("recsvc_user_vector_lookups_total", layer="redis", result="error") == 0.0
    assert value("recsvc_user_vector_lookups_total", layer="artifact", result="hit") == 0.0
    assert value("recsvc_model_reloads_total", outcome="unchanged") == 0.0
    assert value("recsvc_events_total", event_type="add_to_cart") == 0.0
    assert value("recsvc_fallbacks_total", reason="no_signal") == 0.0


def test_initialize_grpc_methods_creates_every_status_code_at_zero() -> None:
    registry = CollectorRegistry()
    ServingMetrics(registry).initialize_grpc_methods(
        "recsvc.v1.RecommenderService", ["Recommend", "ForgetUser"]
    )
    labels = {
        "grpc_type": "unary",
        "grpc_service": "recsvc.v1.RecommenderService",
        "grpc_method": "ForgetUser",
    }

    assert registry.get_sample_value("grpc_server_started_total", labels) == 0.0
    assert registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 0.0
    for code in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"):
        handled = registry.get_sample_value(
            "grpc_server_handled_total", {**labels, "grpc_code": code}
        )
        assert handled == 0.0, code


def test_set_model_keeps_only_the_served_version() -> None:
    registry = CollectorRegistry()
    m = ServingMetrics(registry)
    m.set_model("v1", "exact", 100.0, 90.0)
    m.set_model("v2", "hnsw", 200.0, 150.0)

    infos = [s for f in registry.collect() if f.name == "recsvc_model_info" for s in f.samples]
    assert [(s.labels, s.value) for s in infos] == [
        ({"model_version": "v2", "index_type": "hnsw"}, 1.0)
    ]
    assert registry.get_sample_value("recsvc_model_loaded_timestamp_seconds") == 200.0
    assert registry.get_sample_value("recsvc_model_trained_timestamp_seconds") == 150.0


def test_model_version_label_accepts_only_versions_this_process_served() -> None:
    m = ServingMetrics(CollectorRegistry())
    m.set_model("v1", "exact", 1.0, 0.5)
    m.set_model("v2", "exact", 2.0, 1.5)

    assert m.model_version_label("v1") == "v1"  # a click on an answer from before the swap
    assert m.model_version_label("v2") == "v2"
    assert m.model_version_label("") == "unknown"
    assert m.model_version_label("v999-forged") == "other"
    for n in range(3, 20):
        m.set_model(f"v{n}", "exact", float(n), float(n))
    assert m.model_version_label("v1") == "other"  # only the last 16 are kept
    assert m.model_version_label("v19") == "v19"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("home", "home"), ("pdp", "pdp"), ("", "unknown"), ("Home", "other"), ("x" * 500, "other")],
)
def test_placement_label_keeps_cardinality_bounded(raw: str, expected: str) -> None:
    assert placement_label(raw, ("home", "pdp", "cart")) == expected


def test_metrics_endpoint_serves_the_registry_on_a_free_port_and_stops() -> None:
    registry = CollectorRegistry()
    m = ServingMetrics(registry)
    m.fallbacks.labels(reason="unknown_user").inc(3)
    server, port = start_metrics_http_server(registry, "127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode("utf-8")
    finally:
        server.shutdown()

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("recsvc_fallbacks_total", (("reason", "unknown_user"),))] == 3.0
    assert ("recsvc_inflight_requests", ()) in samples
    # this process, from the registry's own process collector (CPU, memory, fds)
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert samples[("process_resident_memory_bytes", ())] > 10 * 2**20
    assert 0 < samples[("process_open_fds", ())] <= samples[("process_max_fds", ())]
    assert samples[("process_start_time_seconds", ())] < time.time()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    server.shutdown()  # idempotent


def test_state_cache_lookups_are_read_from_the_reader_at_each_scrape() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    counts = [3, 1]
    metrics.watch_state_cache(lambda: (counts[0], counts[1]))
    name = "recsvc_state_cache_lookups_total"
    assert registry.get_sample_value(name, {"result": "hit"}) == 3
    counts[:] = [7, 2]
    assert registry.get_sample_value(name, {"result": "hit"}) == 7
    assert registry.get_sample_value(name, {"result": "miss"}) == 2
    assert _families(registry)["recsvc_state_cache_lookups"] == ("counter", {"result"})


def test_rule_applications_count_without_a_lock_and_show_at_each_scrape() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    name = "recsvc_rule_applications_total"
    assert registry.get_sample_value(name, {"action": "bury"}) == 0  # exists from start-up
    metrics.rule_applications.add((("boost", 2), ("pin", 1)))
    metrics.rule_applications.add((("boost", 1),))
    assert registry.get_sample_value(name, {"action": "boost"}) == 3
    assert registry.get_sample_value(name, {"action": "pin"}) == 1
    assert metrics.rule_applications.value("bury") == 0
    with pytest.raises(KeyError):  # a value outside the closed set is a bug, not a series
        metrics.rule_applications.add((("promote", 1),))
    assert _families(registry)["recsvc_rule_applications"] == ("counter", {"action"})
