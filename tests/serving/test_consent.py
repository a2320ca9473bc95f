"""Stored consent through two real servers sharing one Redis: a consent stored through
one replica holds on the other from the next call, whatever the request's
non_personalized flag says; switching off deletes the stored profile."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from recsvc.client import RecommenderClient
from recsvc.store import KeyScheme
from recsvc.training.interactions import visit_arrays
from recsvc.training.loading import load_events
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas, violations


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "consent-token"


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN) as running:
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def user_keys(r: redis.Redis, prefix: str, user: str) -> set[str]:
    return {k.decode() for k in r.scan_iter(match=f"{prefix}:{{u:{user}}}:*")}


def logged(tmp_path: Path, user_id: str) -> int:
    n = 0
    for path in tmp_path.glob("replica-*/events-*.csv"):
        with path.open(newline="") as f:
            n += sum(r["user_id"] == user_id for r in csv.DictReader(f))
    return n


def ids(response: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in response.items]


def test_consent_off_keeps_nothing_and_answers_as_non_personalized(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    a, b = clients
    keys = KeyScheme(redis_prefix)
    a.record_events([a.event(f"g0i0{i}", "view", user_id="g0u01", session_id="s1") for i in (1, 2)])
    assert b.recommend("g0u01", k=5).strategy == pb.STRATEGY_PERSONALIZED
    logged_before = logged(tmp_path, "g0u01")
    assert logged_before == 2
    answer = a.set_consent("g0u01", "off")
    assert answer.previous == pb.CONSENT_FULL and answer.consent == pb.CONSENT_OFF
    assert answer.deleted_history_event_count == 2 and answer.deleted_session_count == 1
    assert user_keys(redis_client, redis_prefix, "g0u01") == {keys.consent("g0u01")}
    # the other replica, a request without the flag: the non-personalized answer
    plain = b.recommend("g0u01", k=5, session_id="s1")
    anonymous = b.recommend(k=5, non_personalized=True)
    assert plain.strategy == pb.STRATEGY_POPULAR and ids(plain) == ids(anonymous)
    # events are counted, nothing of the customer is kept or logged
    events = b.record_events([b.event("g0i03", "purchase", user_id="g0u01", session_id="s1")])
    assert events.accepted_count == 1
    b.recommend("g0u01", k=5, session_id="s1")
    assert user_keys(redis_client, redis_prefix, "g0u01") == {keys.consent("g0u01")}
    assert logged(tmp_path, "g0u01") == logged_before
    # switched on again: personalised (the trained model) and kept again
    back = b.set_consent("g0u01", "full")
    assert back.previous == pb.CONSENT_OFF and back.consent == pb.CONSENT_FULL
    assert a.recommend("g0u01", k=5).strategy == pb.STRATEGY_PERSONALIZED
    assert redis_client.exists(keys.consent("g0u01")) == 0


def test_session_only_uses_the_visit_and_keeps_no_history(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str, tmp_path: Path
) -> None:
    a, b = clients
    keys = KeyScheme(redis_prefix)
    a.set_consent("sam", "session_only")
    b.record_events(
        [b.event(f"g1i0{i}", "view", user_id="sam", session_id="v1") for i in (1, 2, 3)]
    )
    answer = a.recommend("sam", k=5, session_id="v1")
    assert answer.strategy == pb.STRATEGY_SESSION
    assert sum(i.startswith("g1") for i in ids(answer)) == 5
    # kept as a visitor's session: nothing under the customer, no log row, no merge
    assert user_keys(redis_client, redis_prefix, "sam") == {keys.consent("sam")}
    assert redis_client.llen(keys.session("v1")) == 3
    assert logged(tmp_path, "sam") == 0
    # a customer switching to session-only loses what was kept
    a.record_events([a.event("g0i01", "view", user_id="kim")])
    assert a.set_consent("kim", "session_only").deleted_history_event_count == 1
    assert user_keys(redis_client, redis_prefix, "kim") == {keys.consent("kim")}


def test_forget_user_removes_the_stored_consent_too(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, _ = clients
    a.set_consent("ola", "off")
    a.forget_user("ola")
    assert user_keys(redis_client, redis_prefix, "ola") == set()


def test_bad_consent_requests_are_refused(servers: list[ServerThread]) -> None:
    with clients_of(servers, TOKEN) as (a, _):
        unspecified = pb.SetConsentRequest(user_id="u1")
        assert violations(lambda: a.stub.SetConsent(unspecified, metadata=a._metadata)) == [
            "consent"
        ]
        no_user = pb.SetConsentRequest(consent=pb.CONSENT_OFF)
        assert violations(lambda: a.stub.SetConsent(no_user, metadata=a._metadata)) == ["user_id"]
        with pytest.raises(ValueError, match="unknown consent"):
            a.set_consent("u1", "maybe")
    with clients_of(servers, "wrong-token") as (a, _):
        with pytest.raises(grpc.RpcError) as err:
            a.set_consent("u1", "off")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # a write: the token


def visit_rows(tmp_path: Path, session_id: str) -> list[dict[str, str]]:
    rows = []
    for path in tmp_path.glob("replica-*/events-*.csv"):
        with path.open(newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["basket_id"] == f"visit:{session_id}"]
    return rows


def test_a_visitors_events_are_logged_without_an_id_a_session_only_customers_are_not(
    clients: list[RecommenderClient], tmp_path: Path
) -> None:
    a, _ = clients
    a.record_events([a.event(f"g1i0{i}", "view", session_id="anon-7") for i in (1, 2, 3)])
    rows = visit_rows(tmp_path, "anon-7")
    assert len(rows) == 3 and {r["user_id"] for r in rows} == {""}
    # the trainer reads them as one guest visit: the session model learns from them
    (path,) = {p for p in tmp_path.glob("replica-*/events-*.csv")}
    table, summary = load_events(path)
    assert summary.guest_rows == 3
    indptr, _ = visit_arrays(table, np.array([f"g1i0{i}" for i in (1, 2, 3)]))
    assert list(np.diff(indptr)) == [3]
    a.set_consent("sol", "session_only")
    a.record_events([a.event("g1i04", "view", user_id="sol", session_id="anon-8")])
    assert visit_rows(tmp_path, "anon-8") == []
