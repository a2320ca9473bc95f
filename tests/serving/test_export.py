"""Right of access through a real server: ExportUser returns every key a scan of Redis
finds for the customer, decoded, the event-log rows naming them and the model versions
trained with them; `recsvc export-user` prints it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from recsvc.store import KeyScheme

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas, violations


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "export-token"


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, n=1) as running:
        yield running


def logged_rows(directory: Path, user_id: str) -> list[dict[str, str]]:
    rows = []
    for path in sorted(directory.glob("events-*.csv")):
        with path.open(newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["user_id"] == user_id]
    return rows


def test_export_returns_every_key_and_row_held_for_the_customer(
    servers: list[ServerThread], redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    user = "g0u01"
    with clients_of(servers, TOKEN) as (client,):
        client.record_events(
            [client.event("g0i01", "view", user_id=user, session_id="s1"),
             client.event("g0i02", "purchase", user_id=user, session_id="s1", quantity=2)]
        )  # fmt: skip
        client.recommend(user, k=3, session_id="s1")
        document = client.export_user(user)
        version = client.model_info().model_version
    _, pattern = KeyScheme(redis_prefix).user_pattern(user)
    scanned = sorted(k.decode() for k in redis_client.scan_iter(match=pattern))
    state = document["state_store"]
    assert len(scanned) >= 5 and state["keys"] == scanned
    assert [e["item_id"] for e in state["history"]] == ["g0i02", "g0i01"]
    assert state["history"][0] == {
        "item_id": "g0i02", "event_type": "purchase",
        "timestamp": state["history"][0]["timestamp"], "quantity": 2.0,
    }  # fmt: skip
    assert list(state["sessions"]) == ["s1"] and list(state["session_index"]) == ["s1"]
    assert len(state["seen_event_ids"]) == 2
    assert list(state["vectors"]) == [version] and len(state["vectors"][version]) > 0
    assert state["consent"] == "full" and state["other"] == {}
    rows = logged_rows(tmp_path / "replica-0", user)
    assert len(rows) == 2
    assert [
        {k: v for k, v in r.items() if k != "file"} for r in document["event_log"]["rows"]
    ] == rows
    assert document["model_versions"] == [version]
    assert document["erased"] is False and document["user_id"] == user


def test_an_unknown_customer_exports_empty_and_erasure_shows(
    servers: list[ServerThread],
) -> None:
    with clients_of(servers, TOKEN) as (client,):
        nobody = client.export_user("nobody-*[x]")  # glob characters match literally
        assert nobody["state_store"]["keys"] == [] and nobody["event_log"]["rows"] == []
        assert nobody["model_versions"] == []
        client.set_consent("g1u02", "off")
        client.forget_user("g1u02")
        gone = client.export_user("g1u02")
        assert gone["erased"] is True and gone["state_store"]["keys"] == []
        assert len(gone["model_versions"]) == 1  # until the next training leaves them out


def test_export_needs_the_token_and_a_user_id(servers: list[ServerThread]) -> None:
    with clients_of(servers, "wrong") as (client,):
        with pytest.raises(grpc.RpcError) as err:
            client.export_user("g0u01")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with clients_of(servers, TOKEN) as (client,):
        assert violations(lambda: client.export_user("")) == ["user_id"]


def test_the_cli_prints_the_document(servers: list[ServerThread]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "recsvc", "export-user", "--target", servers[0].target,
         "--token", TOKEN, "--user", "g0u03"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    document = json.loads(out.stdout)
    assert document["user_id"] == "g0u03" and len(document["model_versions"]) == 1
