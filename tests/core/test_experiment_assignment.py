"""Experiments without a server: sticky weighted assignment, ramps that move only the
shoppers they must, the checks a set must pass, the file format, recommendation ids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from recsvc.errors import DataError
from recsvc.experiments import (
    Experiment,
    Variant,
    check_experiments,
    owner_digest,
    parse_recommendation_id,
    read_experiments,
    recommendation_id,
)

UNITS = [f"user-{i}" for i in range(20_000)]


def split(control: float, name: str = "e", salt: str = "") -> Experiment:
    return Experiment(
        name, (Variant("control", control), Variant("candidate", round(1 - control, 10))), salt=salt
    )


def test_each_variant_gets_its_share_of_shoppers() -> None:
    counts = Counter(split(0.9).assign(u).name for u in UNITS)
    assert abs(counts["candidate"] / len(UNITS) - 0.1) < 0.01
    three = Experiment("t", (Variant("a", 0.5), Variant("b", 0.3), Variant("c", 0.2)))
    shares = Counter(three.assign(u).name for u in UNITS)
    for name, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(shares[name] / len(UNITS) - share) < 0.015


def test_assignment_is_a_function_of_salt_and_id_only() -> None:
    first = [split(0.5).assign(u).name for u in UNITS[:500]]
    again = [split(0.5).assign(u).name for u in UNITS[:500]]  # a new object: a restart
    assert first == again
    # the salt defaults to the name: another experiment splits independently
    other = [split(0.5, name="other").assign(u).name for u in UNITS[:500]]
    same = sum(a == b for a, b in zip(first, other, strict=True)) / 500
    assert 0.4 < same < 0.6
    resalted = [split(0.5, salt="2027").assign(u).name for u in UNITS[:500]]
    assert resalted != first


def test_a_ramp_from_10_to_50_percent_moves_only_shoppers_into_the_candidate() -> None:
    before = {u: split(0.9).assign(u).name for u in UNITS}
    after = {u: split(0.5).assign(u).name for u in UNITS}
    moved = [u for u in UNITS if before[u] != after[u]]
    # nobody leaves the candidate; the ones who move are the share it gained
    assert all(before[u] == "control" and after[u] == "candidate" for u in moved)
    assert abs(len(moved) / len(UNITS) - 0.4) < 0.015


def test_adding_a_variant_takes_its_share_from_every_other_proportionally() -> None:
    two = Experiment("e", (Variant("a", 0.5), Variant("b", 0.5)))
    three = Experiment("e", (Variant("a", 0.4), Variant("b", 0.4), Variant("c", 0.2)))
    moved = [u for u in UNITS if two.assign(u).name != three.assign(u).name]
    assert all(three.assign(u).name == "c" for u in moved)
    assert abs(len(moved) / len(UNITS) - 0.2) < 0.015


def fields(experiments: list[Experiment], versions: list[str] | None = None) -> list[str]:
    return [v.field for v in check_experiments(experiments, versions)]


def test_a_valid_set_passes() -> None:
    ok = [
        split(0.5, "home-test"),
        Experiment("pdp", (Variant("a", 1.0, model="v2"),), placements=("pdp",)),
    ]
    assert fields([ok[1]], ["v1", "v2"]) == []
    assert fields([Experiment("x", (Variant("a", 1.0),), placements=("pdp",)),
                   Experiment("y", (Variant("a", 1.0),), placements=("home",))]) == []  # fmt: skip


def test_every_reason_a_set_cannot_run_is_named() -> None:
    bad = [
        Experiment("has space", (Variant("a", 0.5), Variant("a", 0.4))),
        Experiment("e2", (Variant("ok", 0.0),), placements=("pdp",)),
        Experiment("e3", (Variant("x", 1.0, model="nope", rotate_after=500),), placements=("pdp",)),
        Experiment("e4", ()),
    ]
    found = fields(bad, ["v1"])
    assert "experiments[0].name" in found
    assert "experiments[0].variants[1].name" in found  # declared twice
    assert "experiments[0].variants" in found  # shares sum to 0.9
    assert "experiments[1].variants[0].share" in found
    assert "experiments[1].placements" in found  # experiment 0 splits every placement
    assert "experiments[2].variants[0].model" in found
    assert "experiments[2].variants[0].rotate_after" in found
    assert "experiments[3].variants" in found  # no variant
    dup = [split(0.5, "same"), Experiment("same", (Variant("a", 1.0),), placements=("pdp",))]
    assert "experiments[1].name" in fields(dup)


def test_the_file_reads_into_experiments(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(
        """
[[experiment]]
name = "new-model"
placements = ["home"]
salt = "2026-12"

[[experiment.variant]]
name = "control"
share = 0.9

[[experiment.variant]]
name = "candidate"
share = 0.1
model = "v2"
rotate_after = 3
rules = false
"""
    )
    (e,) = read_experiments(path)
    assert e.name == "new-model" and e.placements == ("home",) and e.salt == "2026-12"
    assert e.variants == (
        Variant("control", 0.9),
        Variant("candidate", 0.1, model="v2", rules=False, rotate_after=3),
    )
    assert Experiment.from_record(__import__("json").loads(e.to_json())) == e


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[experiment]]\nname = 1\n", "'name'"),
        ("[[experiment]]\nname = 'a'\ncolour = 'red'\n", "unknown keys ['colour']"),
        ("[[experiment]]\nname = 'a'\n[[experiment.variant]]\nname = 'b'\n", "numeric 'share'"),
        ("[experiment]\nname = 'a'\n", "array of tables"),
        ("name = 'a'\n", "unknown top-level keys"),
        ("[[experiment\n", "not a TOML file"),
    ],
)
def test_a_malformed_file_is_refused_naming_the_problem(
    tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(DataError, match=r"bad\.toml") as caught:
        read_experiments(path)
    assert says in str(caught.value)


def test_recommendation_ids_say_model_variant_time_and_owner() -> None:
    rid = recommendation_id("20261206T110358Z-9dfb3920", "e", "candidate", 1_765_000_000, "u1", 7)
    parsed = parse_recommendation_id(rid)
    assert parsed is not None
    assert (parsed.model_version, parsed.experiment, parsed.variant, parsed.issued_at) == (
        "20261206T110358Z-9dfb3920", "e", "candidate", 1_765_000_000,
    )  # fmt: skip
    assert parsed.owner == owner_digest("u1")
    assert parsed.owned_by("", "u1") and not parsed.owned_by("u2", "s9")
    plain = parse_recommendation_id(recommendation_id("v.1", "", "", 5, "", 1))
    assert plain is not None and plain.model_version == "v.1" and plain.experiment == ""
    assert plain.owner == "" and not plain.owned_by("anyone")
    older = parse_recommendation_id("v1." + "ab" * 16)  # an older server's id
    assert older is not None and older.model_version == "v1" and older.issued_at == 0
    for junk in ("", "v1", "v1.xyz", "v1.e.b.zz." + "0" * 24, "v1.e!.b.1." + "0" * 24):
        assert parse_recommendation_id(junk) is None, junk
