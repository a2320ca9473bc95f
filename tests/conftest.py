"""Shared fixtures.

Redis: tests get a real Redis, never a mock. ``REDIS_URL`` selects one (CI's service
container, a developer's own); without it a private ``redis-server`` is started for the
session on a free loopback port. If neither works the Redis tests are skipped locally
and fail under ``CI=true``, so CI can never pass by silently skipping them.

Redis Cluster: ``redis_cluster_url`` is a real cluster (3 primaries, 3 replicas, from
the same ``redis-server`` binary, joined by ``redis-cli --cluster create``) started once
per session, or ``REDIS_CLUSTER_URL`` (a ``redis+cluster://`` URL). Test modules that
run on both backends override ``redis_url`` with a ``single``/``cluster`` parameter
(``factories.both_backends``).

Each test that uses ``redis_client`` writes only under its own ``redis_prefix`` and
its keys are deleted afterwards (SCAN + UNLINK, never FLUSHALL), so a shared server is
left as it was found. Tests that use ``redis_url`` are marked ``integration``
automatically as a safety net; mark them explicitly too.

Hypothesis: every property test is deterministic (``derandomize=True``, no example
database), so CI and a developer see the same examples. ``HYPOTHESIS_PROFILE`` picks
the profile: ``ci`` (the default: 150 examples per property) or ``slow`` (1,000, for a
longer search before a release); ``explore`` draws new random examples on each run
and is for looking for bugs locally, never for CI. Tests that build models take a
share of the profile's examples (see tests/training/test_small_shops.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from hypothesis import HealthCheck, settings

from recsvc.errors import StoreError
from recsvc.store import client_from_url
from recsvc.store.embedded import (
    PrivateCluster,
    find_redis_server,
    start_private_cluster,
    start_private_redis,
)

_DETERMINISTIC = {
    "derandomize": True,
    "database": None,
    "deadline": None,  # a loaded shared host must not fail a property on time
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
settings.register_profile("ci", max_examples=150, **_DETERMINISTIC)
settings.register_profile("slow", max_examples=1000, **_DETERMINISTIC)
settings.register_profile(
    "explore",
    max_examples=500,
    database=None,  # a failure prints its reproduce_failure blob instead
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Generous for tests: a loaded CI host must not turn into a flaky timeout.
_TEST_SOCKET_TIMEOUT = 5.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "redis_url" in names or "redis_cluster_url" in names:
            item.add_marker(pytest.mark.integration)


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it on CI where a missing Redis is a broken pipeline."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_binary() -> Path:
    """The ``redis-server`` that private servers run (skip/fail if there is none)."""
    try:
        return find_redis_server()
    except StoreError as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable always raises


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis for this test session: ``$REDIS_URL``, else a private server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield _answering(url, "REDIS_URL")
        return
    try:
        server = start_private_redis()
    except StoreError as exc:
        _unavailable(f"no Redis for integration tests (set REDIS_URL): {exc}")
        raise  # unreachable: _unavailable always raises
    with server:
        yield server.url


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[PrivateCluster | None]:
    """The session's private Redis Cluster (None when ``REDIS_CLUSTER_URL`` names one)."""
    if os.environ.get("REDIS_CLUSTER_URL"):
        yield None
        return
    try:
        cluster = start_private_cluster()
    except StoreError as exc:
        _unavailable(f"no Redis Cluster for integration tests: {exc}")
        raise  # unreachable: _unavailable always raises
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_cluster_url(private_cluster: PrivateCluster | None) -> str:
    """URL of the Redis Cluster for this session: ``$REDIS_CLUSTER_URL``, else a private
    one (3 primaries, 3 replicas)."""
    if private_cluster is not None:
        return private_cluster.url
    return _answering(os.environ["REDIS_CLUSTER_URL"], "REDIS_CLUSTER_URL")


def _answering(url: str, variable: str) -> str:
    """``url`` (from ``$variable``) once it answers PING; skip/fail the tests if not."""
    try:
        client = client_from_url(url, socket_timeout=_TEST_SOCKET_TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, StoreError) as exc:
        _unavailable(f"{variable} is set but Redis does not answer: {exc}")
    return url


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix unique to this test; everything under it is deleted afterwards
    (when the test used the session's Redis), whether or not it asked for
    ``redis_client``: a key one test leaves must not meet another's scan."""
    prefix = f"test-{uuid4().hex[:8]}"
    yield prefix
    if "redis_url" not in request.fixturenames:
        return
    client = client_from_url(
        request.getfixturevalue("redis_url"), socket_timeout=_TEST_SOCKET_TIMEOUT
    )
    try:
        # ':*' not '*': prefix "test-ab" must not sweep another test's "test-abc".
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str, redis_prefix: str) -> Iterator[redis.Redis]:
    """A client on the session's Redis (keys under ``redis_prefix`` go after the test,
    with the prefix)."""
    client = client_from_url(redis_url, socket_timeout=_TEST_SOCKET_TIMEOUT)
    try:
        yield client
    finally:
        client.close()
