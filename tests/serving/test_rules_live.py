"""Merchandising rules and the diversity cap through two real servers sharing one Redis:
a rule set through one server shapes both servers' next answers; bad rules are refused
whole, naming each field."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc.client import RecommenderClient
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas, soon, violations


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "rules-token"


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(
        tmp_path, redis_url, redis_prefix, token=TOKEN, placements={"pdp": {"max_per_category": 2}}
    ) as running:
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def ids(response: pb.RecommendResponse | pb.SimilarItemsResponse) -> list[str]:
    return [i.item_id for i in response.items]


def test_a_pin_sits_at_its_position_in_every_servers_next_answer(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    assert "g1i02" not in ids(a.recommend("g0u01", k=5))
    version = a.set_rules([a.rule("hero", "pin", item_ids=["g1i02"], position=2)])
    assert version.rules_version == 1

    def pinned(c: RecommenderClient) -> bool:
        return ids(c.recommend("g0u01", k=5))[1:2] == ["g1i02"]

    assert soon(lambda: pinned(a) and pinned(b)) < 1.0
    answer = b.recommend("g0u01", k=5)
    assert list(answer.items[1].rule_ids) == ["hero"] and list(answer.applied_rule_ids) == ["hero"]
    assert answer.items[1].reason == pb.REASON_PINNED  # not ranked for this user otherwise
    assert [list(i.rule_ids) for i in answer.items].count([]) == 4
    assert ids(b.similar(["g0i02"], k=5))[1] == "g1i02"
    assert {c.model_info().rules_version for c in clients} == {1}
    assert {c.model_info().live_rule_count for c in clients} == {1}


def test_boost_and_bury_change_the_order_as_declared(
    servers: list[ServerThread], clients: list[RecommenderClient]
) -> None:
    a, b = clients
    before = ids(b.recommend("g0u01", k=10))
    # the sixth item scores about 0.9 of the first (its own group's items all rank high)
    top, low = before[0], before[5]
    a.set_rules(
        [
            a.rule("sink", "bury", item_ids=[top], weight=0.01),
            a.rule("lift", "boost", item_ids=[low], weight=2.0),
        ]
    )
    soon(lambda: ids(b.recommend("g0u01", k=10))[0] == low)
    registry = servers[1].running.registry

    def applications() -> dict[str, float]:
        name = "recsvc_rule_applications_total"
        return {
            action: registry.get_sample_value(name, {"action": action}) or 0.0
            for action in ("boost", "bury", "pin")
        }

    counted = applications()
    after = b.recommend("g0u01", k=10)
    assert top not in ids(after)[:5]
    assert list(after.items[0].rule_ids) == ["lift"]
    assert set(after.applied_rule_ids) == {"sink", "lift"}
    # the answer counted once per rule that touched it, by action
    assert {a: n - counted[a] for a, n in applications().items()} == {
        "boost": 1,
        "bury": 1,
        "pin": 0,
    }
    # the rest keep their order
    rest = [i for i in before if i not in {top, low}]
    assert [i for i in ids(after) if i in rest] == rest[: len([i for i in ids(after) if i in rest])]


def test_a_predicate_rule_follows_the_live_catalogue(clients: list[RecommenderClient]) -> None:
    a, b = clients
    a.upsert_items([a.item("g1i05", labels={"brand": "acme"}, category_path=["g1", "lamps"])])
    soon(lambda: b.model_info().catalog_version == 1)
    a.set_rules([a.rule("acme-first", "pin", attributes=[a.attribute_in("brand", ["acme"])],
                        position=1)])  # fmt: skip
    soon(lambda: ids(b.recommend("g0u01", k=5))[0] == "g1i05")
    # out of stock: the pin does not bring it back, and the answer is still full
    a.upsert_items([a.item("g1i05", available=False, labels={"brand": "acme"})])
    soon(lambda: "g1i05" not in ids(b.recommend("g0u01", k=5)))
    assert len(b.recommend("g0u01", k=5).items) == 5
    # filters win too
    a.upsert_items([a.item("g1i05", labels={"brand": "acme"})])
    soon(lambda: ids(b.recommend("g0u01", k=5))[0] == "g1i05")
    assert "g1i05" not in ids(b.recommend("g0u01", k=5, exclude_item_ids=["g1i05"]))


def test_the_diversity_cap_holds_per_request_and_per_placement(
    clients: list[RecommenderClient],
) -> None:
    _, b = clients
    plain = ids(b.recommend("g0u01", k=8))
    assert Counter(i[:2] for i in plain)["g0"] > 3  # the block model: g0 items first

    capped = ids(b.recommend("g0u01", k=8, max_per_category=3))
    assert len(capped) == 6  # two categories, three each: all that can qualify
    assert Counter(i[:2] for i in capped) == {"g0": 3, "g1": 3}
    assert [i for i in capped if i.startswith("g0")] == [i for i in plain if i.startswith("g0")][:3]
    pdp = ids(b.recommend("g0u01", k=8, placement="pdp"))  # [placements.pdp] cap = 2
    assert Counter(i[:2] for i in pdp) == {"g0": 2, "g1": 2}
    assert len(ids(b.recommend("g0u01", k=8, placement="home"))) == 8
    similar = ids(b.similar(["g0i01"], k=8, max_per_category=1))
    assert Counter(i[:2] for i in similar) == {"g0": 1, "g1": 1}


def test_a_rule_applies_only_in_its_placements_and_window(
    clients: list[RecommenderClient],
) -> None:
    a, b = clients
    now = time.time()
    a.set_rules(
        [
            a.rule("home-only", "pin", item_ids=["g1i03"], position=1, placements=["home"]),
            a.rule("brief", "pin", item_ids=["g1i04"], position=2, ends_at=now + 1.5),
            a.rule("later", "pin", item_ids=["g1i06"], position=3, starts_at=now + 3600),
        ]
    )
    soon(lambda: ids(b.recommend("g0u01", k=5, placement="home"))[:2] == ["g1i03", "g1i04"])
    assert ids(b.recommend("g0u01", k=5, placement="pdp"))[0] != "g1i03"
    assert "g1i06" not in ids(b.recommend("g0u01", k=5, placement="home"))
    # past its end it stops, with no one touching it
    soon(lambda: "g1i04" not in ids(b.recommend("g0u01", k=5, placement="home")), within=3.0)
    assert time.time() >= now + 1.5
    assert b.model_info().live_rule_count == 1
    listed = {r.rule_id for r in b.list_rules().rules}
    assert listed == {"home-only", "brief", "later"}  # ended rules are listed until deleted


def test_delete_and_replace_all(clients: list[RecommenderClient]) -> None:
    a, b = clients
    a.set_rules([a.rule("one", "pin", item_ids=["g1i01"], position=1),
                 a.rule("two", "pin", item_ids=["g1i02"], position=2)])  # fmt: skip
    soon(lambda: ids(b.recommend("g0u01", k=3))[:2] == ["g1i01", "g1i02"])
    out = b.delete_rules(["one", "nope"])
    assert out.deleted_count == 1
    soon(lambda: ids(a.recommend("g0u01", k=3))[0] != "g1i01")
    a.set_rules([a.rule("three", "bury", item_ids=["g0i01"], weight=0.5)], replace_all=True)
    soon(lambda: [r.rule_id for r in b.list_rules().rules] == ["three"])
    rule = b.list_rules().rules[0]
    assert (rule.action, list(rule.item_ids), rule.weight) == (pb.RULE_ACTION_BURY, ["g0i01"], 0.5)


def test_bad_rules_are_refused_whole_naming_each_field(clients: list[RecommenderClient]) -> None:
    a, b = clients
    a.set_rules([a.rule("keep", "boost", item_ids=["g0i01"], weight=2.0)])
    soon(lambda: b.list_rules().rules_version == 1)

    bad_range = a.rule("r2", "bury", attributes=[a.attribute_range("price", 9, 1)], weight=0.5)
    fields = violations(
        lambda: a.set_rules(
            [
                a.rule("ok", "boost", item_ids=["g0i02"], weight=2.0),
                a.rule("r1", "boost", item_ids=["g0i03"], weight=0.5),
                bad_range,
                a.rule("r3", "pin", item_ids=["g0i01", "g0i02"], position=500),
                a.rule("r4", "pin", position=1),
                a.rule("r5", "bury", item_ids=["x"], categories=["g0"], weight=0.5),
                a.rule("ok", "pin", item_ids=["g0i02"], position=1, weight=3.0),
            ]
        )
    )
    assert fields == [
        "rules[1].weight",
        "rules[2].attributes[0].range",
        "rules[3].position",
        "rules[4]",
        "rules[5].item_ids",
        "rules[6].rule_id",
        "rules[6].weight",
    ]
    # an attribute no catalogue item has, a batch past the limit, no action
    unknown = a.rule("u", "bury", attributes=[a.attribute_in("colour", ["red"])], weight=0.5)
    assert violations(lambda: a.set_rules([unknown])) == ["rules[0].attributes[0].name"]
    many = [a.rule(f"r{i}", "pin", item_ids=["g0i01"], position=1) for i in range(1001)]
    assert violations(lambda: a.set_rules(many))[0] == "rules"
    assert violations(lambda: a.set_rules([pb.Rule(rule_id="n", item_ids=["g0i01"])])) == [
        "rules[0].action"
    ]
    assert violations(lambda: b.recommend("g0u01", max_per_category=-1)) == ["max_per_category"]
    assert violations(lambda: a.delete_rules([])) == ["rule_ids"]
    # nothing was half-applied
    time.sleep(0.3)
    assert [r.rule_id for r in b.list_rules().rules] == ["keep"]
    assert b.list_rules().rules_version == 1
