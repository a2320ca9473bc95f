"""A/B experiments through real servers sharing one Redis: a shopper gets the same
variant from every replica and after a restart, each variant answers with its own
model, a bad set is refused whole while the running one keeps serving, the watched
file is hot-reloaded, and events carrying a recommendation id are attributed once,
to its shopper only, inside the window."""

from __future__ import annotations

import csv
import gc
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from recsvc.client import RecommenderClient
from recsvc.experiments import Experiment, Variant, experiment_message, parse_recommendation_id
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import (
    ServerThread,
    clients_of,
    publish_block_model,
    replicas,
    soon,
    violations,
)


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "experiments-token"
USERS = [f"g{g}u{i:02d}" for g in (0, 1) for i in range(1, 11)]


@pytest.fixture()
def servers(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[tuple[list[ServerThread], str]]:
    with replicas(
        tmp_path,
        redis_url,
        redis_prefix,
        token=TOKEN,
        server={"attribution_window_seconds": 3600},
    ) as running:
        # a second model under the same root, not published: the candidate's
        candidate = publish_block_model(tmp_path / "artifacts", seed=1, publish=False)
        yield running, candidate


def split(candidate_model: str, share: float = 0.5) -> pb.Experiment:
    return experiment_message(
        Experiment(
            "new-model",
            (
                Variant("control", round(1 - share, 10)),
                Variant("candidate", share, model=candidate_model),
            ),
        )
    )


def variants(c: RecommenderClient, users: list[str]) -> dict[str, tuple[str, str]]:
    out = {}
    for u in users:
        r = c.recommend(u, k=3, placement="home")
        out[u] = (r.variant, r.model_version)
    return out


def test_every_replica_and_a_restart_give_a_shopper_the_same_variant_and_its_model(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    with clients_of(running, TOKEN) as (a, b):
        published = a.model_info().model_version
        assert a.set_experiments([split(candidate)]).experiments_version == 1
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        seen = variants(a, USERS)
        assert seen == variants(b, USERS)
        names = {v for v, _ in seen.values()}
        assert names == {"control", "candidate"}
        # each variant answers with its model, and says so in the id
        for variant, model in seen.values():
            assert model == (candidate if variant == "candidate" else published)
        answer = b.recommend("g0u01", placement="home")
        rid = parse_recommendation_id(answer.recommendation_id)
        assert rid is not None and (rid.experiment, rid.variant) == ("new-model", answer.variant)
        listed = a.list_experiments()
        assert [e.name for e in listed.experiments] == ["new-model"]
        assert set(listed.model_bytes) == {candidate}
    # a restart: a new process state, the same assignment
    settings = running[1].running.engine.settings
    running[1].stop()
    running[1] = ServerThread(settings)
    with clients_of(running, TOKEN) as (_, b):
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        assert variants(b, USERS) == seen


def test_a_forced_variant_answers_and_an_unknown_one_is_refused(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    with clients_of(running, TOKEN) as (a, b):
        # no experiment yet: forcing a variant is an error naming the field
        assert violations(lambda: b.recommend("g0u01", placement="home", variant="x")) == [
            "variant"
        ]
        a.set_experiments([split(candidate, share=0.01)])
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        forced = b.recommend("g0u01", placement="home", variant="candidate")
        assert (forced.variant, forced.model_version) == ("candidate", candidate)
        assert violations(lambda: b.recommend("g0u01", placement="home", variant="nope")) == [
            "variant"
        ]


def test_an_invalid_set_is_refused_whole_and_the_running_one_keeps_serving(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([split(candidate)])
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        bad = [
            experiment_message(
                Experiment(
                    "broken",
                    (Variant("a", 0.5), Variant("b", 0.3, model="20200101T000000Z-deadbeef")),
                )
            )
        ]
        found = violations(lambda: a.set_experiments(bad))
        assert set(found) == {"experiments[0].variants", "experiments[0].variants[1].model"}
        assert [e.name for e in b.list_experiments().experiments] == ["new-model"]
        assert b.recommend("g0u01", placement="home").experiment == "new-model"
        # the whole set: an empty one ends the experiment everywhere
        a.set_experiments([])
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "", 5.0)
        # setting experiments needs the token
        with RecommenderClient(running[0].target, timeout=5.0) as anonymous:
            with pytest.raises(grpc.RpcError) as caught:
                anonymous.set_experiments([split(candidate)])
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_the_watched_file_is_hot_reloaded_and_a_bad_one_is_refused(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    path = tmp_path / "experiments.toml"
    with replicas(
        tmp_path,
        redis_url,
        redis_prefix,
        token=TOKEN,
        server={"experiments_file": str(path), "reload_poll_seconds": 0.1},
    ) as running:
        metrics = running[0].running.engine.metrics
        with clients_of(running, TOKEN) as (a, b):
            path.write_text(
                "[[experiment]]\nname = 'file'\nplacements = ['pdp']\n"
                "[[experiment.variant]]\nname = 'only'\nshare = 1.0\n"
            )
            soon(lambda: b.recommend("g0u01", placement="pdp").variant == "only", 5.0)
            assert a.recommend("g0u01", placement="home").experiment == ""  # not its placement
            path.write_text(
                "[[experiment]]\nname = 'file'\n[[experiment.variant]]\nname = 'x'\nshare = 0.5\n"
            )
            refused = metrics.experiment_file_loads.labels(outcome="refused")
            soon(lambda: refused._value.get() >= 1, 5.0)
            assert b.recommend("g0u01", placement="pdp").variant == "only"


def purchase(
    c: RecommenderClient,
    user: str,
    item: str,
    rid: str,
    *,
    event_id: str,
    price: float | None = 4.0,
    at: float | None = None,
) -> pb.RecordEventsResponse:
    event = c.event(
        item,
        "purchase",
        user_id=user,
        quantity=2,
        recommendation_id=rid,
        placement="home",
        price=price,
        event_id=event_id,
    )
    if at is not None:
        event.event_time.CopyFrom(Timestamp(seconds=int(at)))
    return c.record_events([event])


def test_a_purchase_is_attributed_once_to_its_shopper_inside_the_window(
    servers: tuple[list[ServerThread], str], tmp_path: Path
) -> None:
    running, candidate = servers
    metrics = running[0].running.engine.metrics

    def attributed(event_type: str, variant: str) -> float:
        sample = metrics.attributed_events.labels(
            experiment="new-model", variant=variant, placement="home", event_type=event_type
        )
        return float(sample._value.get())

    def refused(reason: str) -> float:
        return float(metrics.attribution_refused.labels(reason=reason)._value.get())

    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([split(candidate)])
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        answer = b.recommend("g0u01", k=3, placement="home")  # issued by the other replica
        rid, variant, item = answer.recommendation_id, answer.variant, answer.items[0].item_id
        a.record_events(
            [a.event(item, "impression", user_id="g0u01", recommendation_id=rid, placement="home")]
        )
        assert attributed("impression", variant) == 1
        purchase(a, "g0u01", item, rid, event_id="order-1")
        purchase(a, "g0u01", item, rid, event_id="order-1")  # a retry: applied once
        assert attributed("purchase", variant) == 1
        revenue = metrics.attributed_revenue.labels(
            experiment="new-model", variant=variant, placement="home"
        )
        assert revenue._value.get() == 8.0
        # another shopper's purchase with this id, and one long before the answer
        purchase(a, "g1u01", item, rid, event_id="order-2")
        assert refused("foreign") == 1
        purchase(a, "g0u01", item, rid, event_id="order-3", at=time.time() - 1800)
        assert refused("expired") == 1
        assert attributed("purchase", variant) == 1
        # the log keeps what the report needs: the id on the attributed rows only
        running[0].running.engine.event_log.sync()
        rows = [
            row
            for path in sorted((tmp_path / "replica-0").glob("events-*.csv"))
            for row in csv.DictReader(path.read_text().splitlines())
        ]
        attributed_rows = [r for r in rows if r["recommendation_id"]]
        assert [(r["event_type"], r["event_id"]) for r in attributed_rows][:2] == [
            ("impression", attributed_rows[0]["event_id"]),
            ("purchase", "order-1"),
        ]
        assert {r["recommendation_id"] for r in attributed_rows} == {rid}
        assert next(r["revenue"] for r in attributed_rows if r["event_type"] == "purchase") == "8.0"
        assert {r["event_id"] for r in rows if not r["recommendation_id"]} >= {"order-2", "order-3"}
        # the CTR counters by model read the model out of the id (a variant's too)
        forced = b.recommend("g0u01", k=3, placement="home", variant="candidate")
        a.record_events(
            [a.event(i.item_id, "impression", user_id="g0u01", placement="home",
                     recommendation_id=rid) for i in answer.items[1:2]]
            + [a.event(forced.items[0].item_id, "impression", user_id="g0u01", placement="home",
                       recommendation_id=forced.recommendation_id)]
        )  # fmt: skip
        for model in {answer.model_version, candidate}:
            shown = metrics.impressions.labels(placement="home", model_version=model)
            assert shown._value.get() >= 1, model


def test_what_a_customer_does_reaches_their_variants_model_at_once(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    user = "g0u05"
    everyone = Experiment("all-in", (Variant("candidate", 1.0, model=candidate),))
    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([experiment_message(everyone)])
        soon(lambda: b.recommend(user, placement="home").model_version == candidate, 5.0)
        a.record_events([a.event("g0i01", "purchase", user_id=user)])
        # the candidate's vector of the customer is now stored (folded in from history)
        before = b.recommend(user, k=6, placement="home")
        assert [i.item_id[:2] for i in before.items] == ["g0"] * 6
        bought = [f"g1i{i:02d}" for i in range(6)]
        a.record_events([a.event(i, "purchase", user_id=user) for i in bought] * 3)
        after = b.recommend(user, k=6, placement="home")
        assert after.model_version == candidate
        assert after.items[0].item_id.startswith("g1")


def test_a_ramp_moves_only_the_expected_share_into_the_candidate(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    shoppers = [f"visitor-{i}" for i in range(300)]
    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([split(candidate, share=0.1)])
        soon(lambda: b.recommend("x", placement="home").experiment == "new-model", 5.0)
        before = {u: b.recommend(u, k=1, placement="home").variant for u in shoppers}
        a.set_experiments([split(candidate, share=0.5)])
        soon(lambda: sum(b.recommend(u, k=1, placement="home").variant == "candidate"
                         for u in shoppers[:40]) > 10, 5.0)  # fmt: skip
        after = {u: b.recommend(u, k=1, placement="home").variant for u in shoppers}
    moved = [u for u in shoppers if before[u] != after[u]]
    assert all(before[u] == "control" and after[u] == "candidate" for u in moved)
    assert 0.3 < len(moved) / len(shoppers) < 0.5


def test_a_variant_model_is_freed_once_its_experiment_ends(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    engine = running[1].running.engine
    assert engine.experiments is not None
    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([split(candidate)])
        soon(lambda: b.recommend("g0u01", placement="home").experiment == "new-model", 5.0)
        forced = b.recommend("g0u01", placement="home", variant="candidate")
        assert forced.model_version == candidate
        loaded = engine.experiments.model(Variant("candidate", 1.0, model=candidate))
        assert loaded.version == candidate
        ref = weakref.ref(loaded.model)
        del loaded
        a.set_experiments([])
        soon(lambda: candidate not in engine.experiments.versions, 5.0)
        assert b.recommend("g0u01", placement="home").model_version != candidate
    gc.disable()
    try:
        assert ref() is None  # by reference counting alone: no cache kept it
    finally:
        gc.enable()


def test_a_variant_with_its_own_model_recommends_new_products_that_sell(
    servers: tuple[list[ServerThread], str],
) -> None:
    running, candidate = servers
    everyone = Experiment("all-in", (Variant("candidate", 1.0, model=candidate),))
    with clients_of(running, TOKEN) as (a, b):
        a.set_experiments([experiment_message(everyone)])
        soon(lambda: b.recommend(session_id="v1", placement="home").variant == "candidate", 5.0)
        a.upsert_items([a.item("new-kettle", category_path=["g1"], price=30.0)])
        a.record_events(
            [a.event("new-kettle", "purchase", user_id=f"g1u{u:02d}", quantity=1)
             for u in range(30)]
        )  # fmt: skip

        def listed() -> bool:
            answer = b.recommend(session_id="v1", k=5, placement="home")
            assert answer.model_version == candidate
            return "new-kettle" in [i.item_id for i in answer.items]

        soon(listed, 5.0)
