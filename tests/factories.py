"""Tiny deterministic inputs with known answers, shared by the tests."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import redis.asyncio

from recsvc.config import Settings
from recsvc.model import Model
from recsvc.ranking import Query, Ranker, training_user_query
from recsvc.serving.metrics import ServingMetrics
from recsvc.store import KeyScheme, RedisLiveState, StateLimits
from recsvc.store.reader import StateReader
from recsvc.store.thinreader import RedisReader

REPO = Path(__file__).resolve().parent.parent
"""The repository root."""
SHARED_DATA = REPO.parent / "shared" / "data"
"""The public datasets (``../shared/data``); tests that need them skip without it."""

FORMAT1_ARTIFACT = REPO / "tests" / "core" / "data" / "format1" / "20261201T120000Z-14a92ee2"
"""A format-1 artifact of a tiny synthetic shop (``tests/core/data/README.md``)."""
FORMAT1_ANSWERS = FORMAT1_ARTIFACT.parent.parent / "format1-answers.json"
"""What :func:`answers` gave on it when format 1 was current."""

DAY = 86_400
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z


def event_table(rows: Iterable[tuple[str | None, str, int, str, float, str]]) -> pa.Table:
    """Canonical event table from (user, item, timestamp, type, quantity, basket) rows."""
    users, items, ts, types, qty, baskets = zip(*rows, strict=True)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "timestamp": pa.array(ts, pa.int64()),
            "event_type": pa.array(types, pa.string()),
            "quantity": pa.array(qty, pa.float32()),
            "basket_id": pa.array(baskets, pa.string()),
        }
    )


def block_shop(
    n_groups: int = 2, users_per_group: int = 30, items_per_group: int = 12, seed: int = 0
) -> pa.Table:
    """Users of group g buy only items of group g: the known answer for every model.

    Each user buys a random half of their group's items over several days, so every
    user has unbought items of their own group left to be recommended.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for u in range(users_per_group):
            user = f"g{g}u{u:02d}"
            bought = rng.choice(items_per_group, size=items_per_group // 2, replace=False)
            for day, i in enumerate(bought):
                t = T0 + int(day) * DAY + u
                rows.append((user, f"g{g}i{i:02d}", t, "purchase", 1.0, f"{user}-{day}"))
    return event_table(rows)


def small_settings(tmp_path: object = None, **overrides: object) -> Settings:
    """Fast, deterministic settings for tiny data (rank 2: the block shop's two groups)."""
    base: dict[str, object] = {
        "als": {
            "factors": 2,
            "iterations": 15,
            "regularization": 0.1,
            "random_state": 1,
            "num_threads": 1,
        },
    }
    if tmp_path is not None:
        base["artifact_root"] = f"{tmp_path}/artifacts"
    base.update(overrides)
    # Settings itself, not load_settings: that one treats None as "flag not given" and
    # drops it, so server={"metrics_port": None} would serve /metrics on the default
    # port (and collide with every other server doing so)
    return Settings(**base)


def answers(model: Model) -> dict[str, Any]:
    """Top 10 (items, scores, reasons) for each training user, for the last five
    items of their history as an anonymous session, and for both together."""
    ranker = Ranker(model)
    out: dict[str, Any] = {}
    for user in range(len(model.user_position)):
        query = training_user_query(model, user, 10)
        items = model.user_history(user)[0][-5:]
        session = {"session_items": items, "session_weights": np.ones(len(items), np.float32)}
        for name, q in (
            ("user", query),
            ("session", Query(k=10, **session)),
            ("user+session", replace(query, **session)),
        ):
            r = ranker.recommend(q)
            out[f"{name} {user}"] = [r.items.tolist(), r.scores.tolist(), r.reasons.tolist()]
    return out


SMALL_LIMITS = StateLimits(
    history_max_events=5,
    history_ttl_seconds=60,
    session_max_events=3,
    session_ttl_seconds=60,
    vector_ttl_seconds=60,
)
"""Small live-state bounds: 5 history events, 3 session events, 60 s TTLs."""


def live_state(
    client: redis.asyncio.Redis, prefix: str = "p", reader: StateReader | None = None
) -> RedisLiveState:
    """A live state with :data:`SMALL_LIMITS` (read through ``reader``, else redis-py)."""
    return RedisLiveState(client, keys=KeyScheme(prefix), limits=SMALL_LIMITS, reader=reader)


@contextlib.asynccontextmanager
async def redis_reader(
    url: str, timeout: float = 5.0, connections: int = 1, **cache: Any
) -> AsyncIterator[RedisReader]:
    """A :class:`RedisReader` on ``url`` (``cache``: its client-side cache options),
    closed on exit."""
    reader = RedisReader.from_url(url, socket_timeout=timeout, connections=connections, **cache)
    try:
        yield reader
    finally:
        await reader.aclose()


def bench_script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as a module (the scripts import their siblings
    by name, so their folder is on the path while it loads)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(REPO / "benchmarks"))
        return importlib.import_module(name)


def fill_every_metric(m: ServingMetrics) -> None:
    """One observation in each, so label-less and labelled families all show samples."""
    m.initialize_grpc_methods("recsvc.v1.RecommenderService", ["Recommend"])
    m.foldin_seconds.observe(0.0002)
    m.index_search_seconds.observe(0.0004)
    m.degraded_responses.labels(rpc="Recommend").inc()
    m.events_ignored.labels(reason="unknown_item").inc()
    m.impressions.labels(placement="home", model_version="v1").inc()
    m.clicks.labels(placement="home", model_version="v1").inc()
    m.set_model("v1", "exact", 1_700_000_000.0, 1_699_990_000.0)
    m.recommendations.labels(
        strategy="personalized", placement="home", experiment="e1", variant="control"
    ).inc()
    m.attributed_events.labels(
        experiment="e1", variant="control", placement="home", event_type="purchase"
    ).inc()
    m.attributed_revenue.labels(experiment="e1", variant="control", placement="home").inc(9.5)
    m.attribution_refused.labels(reason="expired").inc()
    m.experiment_file_loads.labels(outcome="applied").inc()
    m.variant_model_bytes.labels(model_version="v0").set(1 << 20)
    m.recommended_items.observe(10)
    m.inflight_requests.set(0)
    m.unparseable_requests.labels(rpc="Recommend", reason="decode_error").inc()
    m.rule_applications.add((("pin", 1),))
    m.live_version.labels(collection="rules").set(3)
    m.live_records.labels(collection="rules").set(2)
    m.new_items.labels(state="known").set(4)
    m.new_items_recommended.labels(rpc="SimilarItems").inc()


def both_backends(request: pytest.FixtureRequest, redis_url: str) -> str:
    """For a module's ``redis_url`` override parametrized ``["single", "cluster"]``: the
    session's single Redis, or its Redis Cluster."""
    if request.param == "cluster":
        url: str = request.getfixturevalue("redis_cluster_url")
        return url
    return redis_url
