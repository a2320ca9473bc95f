"""Login through two real servers sharing one Redis: what a visitor did anonymously in a
session joins the customer who logs in with that session id, once, whichever replica
sees the login first and however often it is seen."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc.client import RecommenderClient
from recsvc.store import KeyScheme
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import ServerThread, clients_of, replicas


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


pytestmark = pytest.mark.integration

TOKEN = "login-token"
VISIT = ["g1i01", "g1i02", "g1i03", "g1i04"]


@pytest.fixture()
def servers(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[list[ServerThread]]:
    with replicas(tmp_path, redis_url, redis_prefix, token=TOKEN) as running:
        yield running


@pytest.fixture()
def clients(servers: list[ServerThread]) -> Iterator[list[RecommenderClient]]:
    with clients_of(servers, TOKEN) as clients:
        yield clients


def browse(client: RecommenderClient, session_id: str, items: list[str]) -> None:
    """An anonymous visitor views ``items`` in ``session_id``."""
    answer = client.record_events([client.event(i, "view", session_id=session_id) for i in items])
    assert answer.accepted_count == len(items)


def logged(tmp_path: Path, user_id: str) -> list[dict[str, str]]:
    """Rows of ``user_id`` in every replica's event log."""
    rows = []
    for path in sorted(tmp_path.glob("replica-*/events-*.csv")):
        with path.open(newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["user_id"] == user_id]
    return rows


def group(response: pb.RecommendResponse, prefix: str) -> int:
    return sum(i.item_id.startswith(prefix) for i in response.items)


def test_a_new_customer_keeps_the_anonymous_visit_once_across_replicas(
    clients: list[RecommenderClient],
    redis_client: redis.Redis,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    a, b = clients
    browse(a, "visit-1", VISIT)
    before = b.recommend("newbie", k=5)
    assert before.strategy == pb.STRATEGY_POPULAR and before.fallback
    # the login: the same session id, now with a customer id, on the other replica
    after = b.recommend("newbie", k=5, session_id="visit-1")
    assert after.strategy == pb.STRATEGY_SESSION and not after.fallback
    assert group(after, "g1") == 5 and not set(VISIT) & {i.item_id for i in after.items}
    # both replicas see the login again (and a RecordEvents of the pair): merged once
    again = a.recommend("newbie", k=5, session_id="visit-1")
    b.record_events([b.event("g1i05", "view", user_id="newbie", session_id="visit-1")])
    assert [i.item_id for i in again.items] == [i.item_id for i in after.items]
    keys = KeyScheme(redis_prefix)
    history = redis_client.lrange(keys.history("newbie"), 0, -1)
    assert sorted(e.decode().rsplit("|", 1)[1] for e in history) == [*VISIT, "g1i05"]
    assert redis_client.exists(keys.session("visit-1")) == 0
    assert redis_client.llen(keys.session("visit-1", "newbie")) == 5
    # the visit is the customer's in the event log too (training reads it), once
    rows = logged(tmp_path, "newbie")
    assert sorted(r["item_id"] for r in rows) == [*VISIT, "g1i05"]
    assert all(r["event_id"].startswith("login|visit-1|") for r in rows if r["item_id"] != "g1i05")
    # and the next answer, with no session id at all, still knows them
    later = a.recommend("newbie", k=5)
    assert later.strategy == pb.STRATEGY_PERSONALIZED and group(later, "g1") == 5


def test_a_known_customers_answer_reflects_the_visit_before_login(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, b = clients
    plain = a.recommend("g0u01", k=6)
    assert group(plain, "g1") == 0  # a group-0 buyer
    browse(b, "visit-2", [*VISIT, *VISIT[:2], "g1i06", "g1i07"])
    logged_in = a.recommend("g0u01", k=6, session_id="visit-2")
    assert group(logged_in, "g1") > 0  # the visit counts
    assert logged_in.strategy == pb.STRATEGY_PERSONALIZED
    # an anonymous event after the login, in the same session, joins at the next call
    browse(b, "visit-2", ["g1i08"])
    b.recommend("g0u01", k=6, session_id="visit-2")
    history = redis_client.lrange(KeyScheme(redis_prefix).history("g0u01"), 0, -1)
    assert b"1|v|" in history[0] and history[0].endswith(b"|g1i08")
    assert redis_client.exists(KeyScheme(redis_prefix).session("visit-2")) == 0


def test_without_consent_nothing_is_merged(
    clients: list[RecommenderClient], redis_client: redis.Redis, redis_prefix: str
) -> None:
    a, _ = clients
    browse(a, "visit-3", VISIT)
    a.recommend("quiet", k=5, session_id="visit-3", non_personalized=True)
    keys = KeyScheme(redis_prefix)
    assert redis_client.exists(keys.history("quiet")) == 0
    assert redis_client.llen(keys.session("visit-3")) == len(VISIT)
