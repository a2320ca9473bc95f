"""The client subcommands as a storefront developer runs them, against a real server.

Each test runs ``python -m recsvc.cli ...`` in a subprocess, as a shell user would,
against one in-process server (tests/server_harness.py) on the block shop: users
``g0u..`` buy only items ``g0i..``, users ``g1u..`` only ``g1i..``.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from recsvc.store import client_from_url

from factories import small_settings
from server_harness import ServerThread, publish_block_model

pytestmark = pytest.mark.integration

TOKEN = "cli-s3cret"
RECSVC = [sys.executable, "-m", "recsvc"]


@pytest.fixture(scope="module")
def shop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-artifacts")
    publish_block_model(root)
    return root


@pytest.fixture(scope="module")
def server(shop_root: Path, redis_url: str) -> Iterator[ServerThread]:
    # One server for the module: every CLI call is a fresh process anyway, and tests
    # use disjoint users and sessions. Module scope cannot use the function-scoped
    # redis_prefix fixture, so the prefix is made and swept here the same way.
    root = shop_root
    prefix = f"test-{uuid4().hex[:8]}"
    settings = small_settings(
        None,
        artifact_root=str(root),
        erasure_list=str(root / "erased.txt"),
        redis={"url": redis_url, "prefix": prefix},
        server={
            "port": 0,
            "metrics_port": None,
            "auth_token": TOKEN,
            "event_log_dir": str(root / "eventlog"),
        },
    )
    running = ServerThread(settings)
    try:
        yield running
    finally:
        running.stop()
        client = client_from_url(redis_url, socket_timeout=5.0)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.unlink(*keys)
        finally:
            client.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RECSVC, *args], capture_output=True, text=True, timeout=60, check=False)


def call(server: ServerThread, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``recsvc COMMAND --target <server> ARGS``."""
    return run(command, "--target", server.target, *args)


def call_json(server: ServerThread, command: str, *args: str) -> dict[str, Any]:
    result = call(server, command, *args, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a failed client call: exactly one line, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def ids(data: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in data["items"]]


def test_recommend_json_for_a_known_user(server: ServerThread) -> None:
    data = call_json(server, "recommend", "--user", "g0u01", "--k", "5")
    assert {"items", "model_version", "recommendation_id", "strategy"} <= data.keys()
    assert data["strategy"] == "personalized"
    assert data["fallback"] is False and data["degraded"] is False
    assert data["recommendation_id"].startswith(data["model_version"])
    assert len(data["items"]) == 5
    for item in data["items"]:
        assert set(item) == {"item_id", "score", "reason", "rule_ids", "because_item_id"}
        assert item["rule_ids"] == []  # no merchandising rule is set
        assert item["because_item_id"] == ""  # not asked to explain
        assert item["item_id"].startswith("g0")
        assert isinstance(item["score"], float)
        assert item["reason"] in {"cf", "buy_again"}
    scores = [item["score"] for item in data["items"]]
    assert scores == sorted(scores, reverse=True)


def test_recommend_plain_output_is_a_ranked_list(server: ServerThread) -> None:
    result = call(server, "recommend", "--user", "g1u02", "--k", "3")
    assert result.returncode == 0, result.stderr
    assert "strategy: personalized" in result.stdout
    ranked = re.findall(r"^ *(\d+)\. +(\S+) +([\d.]+) +(\w+)$", result.stdout, re.MULTILINE)
    assert [rank for rank, *_ in ranked] == ["1", "2", "3"]
    assert all(item.startswith("g1") for _, item, _, _ in ranked)


def test_recommend_follows_the_session_items(server: ServerThread) -> None:
    data = call_json(server, "recommend", "--session-items", "g1i03,g1i04,nope", "--k", "5")
    assert data["strategy"] == "session"
    assert all(i.startswith("g1") for i in ids(data))
    assert {item["reason"] for item in data["items"]} == {"session"}
    assert data["ignored_item_ids"] == ["nope"]
    # the other group's session leads to the other group's items
    other = call_json(server, "recommend", "--session-items", "g0i03,g0i04", "--k", "5")
    assert all(i.startswith("g0") for i in ids(other))


def test_anonymous_without_signal_is_popular_fallback(server: ServerThread) -> None:
    data = call_json(server, "recommend", "--k", "4")
    assert data["strategy"] == "popular" and data["fallback"] is True
    assert {item["reason"] for item in data["items"]} == {"popular"}


def test_similar_items(server: ServerThread) -> None:
    data = call_json(server, "similar", "--items", "g0i01,unknown", "--k", "4")
    assert len(data["items"]) == 4
    assert all(i.startswith("g0") and i != "g0i01" for i in ids(data))
    assert {item["reason"] for item in data["items"]} == {"similar"}
    assert data["ignored_item_ids"] == ["unknown"]
    assert "NOT_FOUND" in one_line_error(call(server, "similar", "--items", "unknown"))


def test_recorded_session_events_shape_the_next_answer(server: ServerThread) -> None:
    session = f"s-{uuid4().hex[:8]}"
    before = call_json(server, "recommend", "--session", session, "--k", "5")
    assert before["strategy"] == "popular"
    seen = ["g1i01", "g1i02", "g1i05"]
    out = call_json(
        server, "events", "--items", ",".join(seen), "--session", session, "--token", TOKEN
    )
    assert out == {"accepted_count": 3, "ignored_events": []}
    after = call_json(server, "recommend", "--session", session, "--k", "5")
    assert after["strategy"] == "session"
    assert all(i.startswith("g1") for i in ids(after))
    assert not set(seen) & set(ids(after))  # just seen: not news


def test_events_with_an_unknown_item_are_listed_as_ignored(server: ServerThread) -> None:
    out = call_json(
        server, "events", "--items", "g0i01,nope", "--session", "s-unknown", "--token", TOKEN
    )
    assert out["accepted_count"] == 1
    assert [e["index"] for e in out["ignored_events"]] == [1]
    assert out["ignored_events"][0]["reason"].endswith("unknown_item")


def test_ignored_event_reason_is_a_short_name(server: ServerThread) -> None:
    out = call_json(server, "events", "--items", "nope", "--session", "s-x", "--token", TOKEN)
    assert out["ignored_events"] == [{"index": 0, "reason": "unknown_item"}]


def test_writes_need_the_token(server: ServerThread) -> None:
    user = "g0u07"
    line = one_line_error(call(server, "forget", "--user", user))
    assert "UNAUTHENTICATED" in line and TOKEN not in line
    assert "UNAUTHENTICATED" in one_line_error(call(server, "events", "--items", "g0i01"))
    line = one_line_error(call(server, "forget", "--user", user, "--token", "wrong"))
    assert "PERMISSION_DENIED" in line
    # reads need no token
    assert call(server, "recommend", "--user", user).returncode == 0


def test_consent_is_stored_and_held_by_the_next_call(server: ServerThread) -> None:
    user = "g1u08"
    assert call_json(server, "recommend", "--user", user)["strategy"] == "personalized"
    off = call_json(server, "consent", "--user", user, "off", "--token", TOKEN)
    assert off["previous"] == "full" and off["consent"] == "off"
    assert call_json(server, "recommend", "--user", user)["strategy"] == "popular"
    back = call_json(server, "consent", "--user", user, "full", "--token", TOKEN)
    assert back["previous"] == "off"
    assert call_json(server, "recommend", "--user", user)["strategy"] == "personalized"


def test_forget_erases_and_is_idempotent(server: ServerThread) -> None:
    user = "g1u09"
    assert call_json(server, "recommend", "--user", user)["strategy"] == "personalized"
    first = call_json(server, "forget", "--user", user, "--token", TOKEN)
    assert first["added_to_erasure_list"] is True
    again = call_json(server, "forget", "--user", user, "--token", TOKEN)
    assert again["added_to_erasure_list"] is False
    # int64 counts come out as JSON strings (protobuf's JSON mapping): accept both
    assert all(
        int(again[k]) == 0
        for k in ("deleted_vector_count", "deleted_history_event_count", "deleted_session_count")
    )
    # the erased user is served like an anonymous visitor from now on
    after = call_json(server, "recommend", "--user", user)
    assert after["strategy"] == "popular" and after["fallback"] is True
    out = call_json(server, "events", "--items", "g1i01", "--user", user, "--token", TOKEN)
    assert out["accepted_count"] == 0
    assert out["ignored_events"][0]["reason"].endswith("erased_user")


def test_info_json(server: ServerThread, shop_root: Path) -> None:
    info = call_json(server, "info")
    assert info["model_version"] == (shop_root / "CURRENT").read_text().strip()
    assert int(info["item_count"]) == 24 and int(info["user_count"]) == 60
    assert info["factors"] == 2 and info["index_type"] == "exact"
    assert info["default_repeat_policy"] in {"exclude_purchased", "allow_repeats"}
    assert info["trained_at"].endswith("Z") and info["loaded_at"].endswith("Z")


def test_bad_request_is_one_line_naming_the_field(server: ServerThread) -> None:
    line = one_line_error(call(server, "recommend", "--k", "501"))
    assert "INVALID_ARGUMENT" in line and "k:" in line


def test_unreachable_target_fails_fast(server: ServerThread) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    result = run("recommend", "--target", f"127.0.0.1:{port}", "--timeout", "2", "--user", "u")
    elapsed = time.monotonic() - start
    line = one_line_error(result)
    assert line.startswith("recsvc recommend: UNAVAILABLE")
    assert elapsed < 10  # interpreter start-up included; the deadline is 2 s


def test_rules_load_list_and_delete(server: ServerThread, tmp_path: Path) -> None:
    # a placement no other test asks for: the module's server is shared
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "cli-pin"\naction = "pin"\nitems = ["g1i04"]\nposition = 1\n'
        'placements = ["cli_test"]\n'
    )
    target = ["--target", server.target]
    line = one_line_error(run("rules", "load", str(rules), *target))
    assert "UNAUTHENTICATED" in line
    loaded = run("rules", "load", str(rules), *target, "--token", TOKEN, "--json")
    assert loaded.returncode == 0, loaded.stderr
    version = int(json.loads(loaded.stdout)["rules_version"])
    listed = run("rules", "list", *target)
    assert listed.returncode == 0 and listed.stdout.splitlines() == [
        f"rules_version: {version}",
        "cli-pin: pin items g1i04, position 1, cli_test",
    ]

    def first(placement: str) -> str:
        data = call_json(server, "recommend", "--user", "g0u02", "--placement", placement)
        return str(data["items"][0]["item_id"])

    deadline = time.monotonic() + 2
    while first("cli_test") != "g1i04":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert first("home") != "g1i04"
    # a file error: one line naming the rule and the key, nothing sent
    rules.write_text('[[rule]]\nid = "x"\naction = "boost"\nweight = "big"\n')
    assert "rule 1 (x): weight must be a number" in one_line_error(
        run("rules", "load", str(rules), *target, "--token", TOKEN)
    )
    deleted = run("rules", "delete", "cli-pin", *target, "--token", TOKEN, "--json")
    assert json.loads(deleted.stdout)["deleted_count"] == 1


def test_experiment_set_list_force_attribute_and_report(
    server: ServerThread, shop_root: Path, tmp_path: Path
) -> None:
    # a placement no other test asks for: the module's server is shared
    spec = tmp_path / "experiments.toml"
    spec.write_text(
        '[[experiment]]\nname = "cli-exp"\nplacements = ["cli_exp"]\n'
        '[[experiment.variant]]\nname = "control"\nshare = 0.5\n'
        '[[experiment.variant]]\nname = "popular"\nshare = 0.5\nnon_personalized = true\n'
    )
    target = ["--target", server.target]
    done = run("experiment", "set", str(spec), *target, "--token", TOKEN, "--json")
    assert done.returncode == 0, done.stderr
    assert int(json.loads(done.stdout)["experiments_version"]) >= 1
    listed = json.loads(run("experiment", "list", *target, "--json").stdout)
    assert [e["name"] for e in listed["experiments"]] == ["cli-exp"]
    answer = call_json(
        server, "recommend", "--user", "g0u03", "--placement", "cli_exp", "--variant", "popular"
    )
    assert (answer["experiment"], answer["variant"]) == ("cli-exp", "popular")
    bought = answer["items"][0]["item_id"]
    rid = ["--recommendation-id", answer["recommendation_id"], "--placement", "cli_exp"]
    for kind in ("impression", "click"):
        sent = call(server, "events", "--user", "g0u03", "--items", bought, "--type", kind,
                    *rid, "--token", TOKEN)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    sent = call(server, "events", "--user", "g0u03", "--items", bought, "--type", "purchase",
                "--quantity", "2", "--price", "9.5", *rid, "--token", TOKEN)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    server.running.engine.event_log.sync()
    # the report: the log's attributed rows, by variant (too few shoppers to test)
    log_dir = ["--event-log", str(shop_root / "eventlog")]
    report = run("experiment", "report", "cli-exp", *log_dir, "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    (popular,) = [v for v in data["variants"] if v["name"] == "popular"]
    assert (popular["impressions"], popular["clicks"], popular["purchases"]) == (1, 1, 1)
    assert popular["revenue"] == 19.0
    text = run("experiment", "report", "cli-exp", *log_dir, "--control", "popular")
    assert text.returncode == 0 and "popular (control)" in text.stdout
    unknown = one_line_error(run("experiment", "report", "nope", *log_dir))
    assert "nope" in unknown and "cli-exp" in unknown
    # an invalid file: one line naming the field, nothing changed
    spec.write_text('[[experiment]]\nname = "cli-exp"\n[[experiment.variant]]\nname = "a"\n'
                    "share = 0.4\n")  # fmt: skip
    line = one_line_error(run("experiment", "set", str(spec), *target, "--token", TOKEN))
    assert "experiments[0].variants" in line and "sum to 1" in line
    assert run("experiment", "set", "/dev/null/x.toml", *target).returncode != 0
