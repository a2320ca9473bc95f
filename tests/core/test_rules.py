"""recsvc.rules (the rule record) and recsvc.rulefile (the TOML file of `recsvc rules
load`): round trips, windows and placements, and every error naming where it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.catalog import AttributeFilter
from recsvc.errors import DataError
from recsvc.rulefile import read_rules
from recsvc.rules import Rule, RuleAction
from recsvc.v1 import recommender_pb2 as pb


def test_a_rule_record_round_trips_and_is_compact() -> None:
    rule = Rule(
        "summer",
        RuleAction.BOOST,
        categories=("garden",),
        attributes=(
            AttributeFilter("brand", values=("acme",)),
            AttributeFilter("price", high=50.0),
        ),
        weight=2.0,
        placements=("home",),
        starts_at=100,
        ends_at=200,
        updated_at=50,
    )
    assert Rule.from_json(rule.to_json()) == rule
    pin = Rule("hero", RuleAction.PIN, item_ids=("a", "b"), position=1)
    assert pin.to_json() == '{"v":1,"id":"hero","do":"pin","items":["a","b"],"pos":1}'
    assert Rule.from_json(pin.to_json()) == pin


@pytest.mark.parametrize(
    "raw",
    ['{"v":2,"id":"x","do":"pin"}', '{"v":1,"do":"pin"}', '{"v":1,"id":"x","do":"shout"}', "[1"],
)
def test_a_record_it_cannot_read_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="rule record"):
        Rule.from_json(raw)


def test_a_rule_applies_inside_its_window_and_placements_only() -> None:
    rule = Rule("r", RuleAction.BURY, item_ids=("a",), weight=0.5, placements=("home",),
                starts_at=100, ends_at=200)  # fmt: skip
    assert rule.applies("home", 100) and rule.applies("home", 199.9)
    assert not rule.applies("home", 99) and not rule.applies("home", 200)
    assert not rule.applies("pdp", 150)
    anywhere = Rule("r", RuleAction.BURY, item_ids=("a",), weight=0.5)
    assert anywhere.applies("", 0) and anywhere.applies("pdp", 1e12)
    assert not Rule.tombstone("r", 5).applies("home", 150)


RULES = """
[[rule]]
id = "summer-garden"
action = "boost"
categories = ["garden"]
attributes = { brand = ["acme", "zed"], price = { min = 10, max = 50.5 } }
weight = 2.0
placements = ["home", "pdp"]
starts_at = 2026-06-01T00:00:00Z
ends_at = 2026-09-01T00:00:00+02:00

[[rule]]
id = "hero"
action = "pin"
items = ["sku-1", "sku-2"]
position = 1
"""


def test_the_rules_file_becomes_rule_messages(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    boost, pin = read_rules(path)
    assert boost.rule_id == "summer-garden" and boost.action == pb.RULE_ACTION_BOOST
    assert list(boost.categories) == ["garden"] and boost.weight == 2.0
    assert list(boost.placements) == ["home", "pdp"]
    brand, price = boost.attributes
    assert (brand.name, list(brand.values.values)) == ("brand", ["acme", "zed"])
    assert (price.name, price.range.min, price.range.max) == ("price", 10.0, 50.5)
    assert boost.starts_at.seconds == 1_780_272_000  # 2026-06-01T00:00:00Z
    assert boost.ends_at.seconds == 1_788_213_600  # 2026-09-01T00:00:00+02:00
    assert pin.action == pb.RULE_ACTION_PIN and list(pin.item_ids) == ["sku-1", "sku-2"]
    assert pin.position == 1 and not pin.HasField("starts_at")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[rule]]\naction = 'pin'", r"rule 1: id is required"),
        ("[[rule]]\nid = 'x'\naction = 'shout'", r"rule 1 \(x\): action must be one of"),
        ("[[rule]]\nid = 'x'\naction = 'boost'\nwieght = 2", r"unknown key 'wieght'"),
        ("[[rule]]\nid = 'x'\naction = 'boost'\nweight = 'big'", r"weight must be a number"),
        ("[[rule]]\nid = 'x'\naction = 'pin'\nposition = 1.5", r"position must be a whole"),
        ("[[rule]]\nid = 'x'\naction = 'pin'\nitems = 'a'", r"items must be a list of strings"),
        (
            "[[rule]]\nid = 'x'\naction = 'bury'\nattributes = { p = { below = 3 } }",
            r"attributes.p: a list of strings, or a table with min and/or max",
        ),
        ("[[rule]]\nid = 'x'\naction = 'bury'\nstarts_at = 'soon'", r"starts_at must be a TOML"),
        (
            "[[rule]]\nid = 'x'\naction = 'pin'\n[[rule]]\nid = 'x'\naction = 'pin'",
            r"rule 2 \(x\): id 'x' appears twice",
        ),
        ("rules = 1", r"unknown top-level key 'rules'"),
        ("[[rule]\n", r"not a TOML file"),
    ],
)
def test_a_bad_rules_file_names_the_rule_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_rules(path)


def test_a_missing_rules_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read rules file"):
        read_rules(tmp_path / "nope.toml")


def test_a_rule_holds_its_action_as_a_member_whatever_it_was_given_as() -> None:
    """Rules are applied by comparing members by identity: an action given as a string
    (a NumPy one too) must become the member, and an unknown one must fail."""
    for given in ("pin", np.str_("pin"), RuleAction.PIN):
        assert Rule("r", given, item_ids=("a",), position=1).action is RuleAction.PIN  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nope"):
        Rule("r", "nope")  # type: ignore[arg-type]
