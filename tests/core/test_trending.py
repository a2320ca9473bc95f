"""Live popularity's forward-decayed counters against a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from recsvc.store import KeyScheme, async_client_from_url
from recsvc.store.trending import Trending

from factories import both_backends

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


HOUR = 3600.0


def _run(url: str, prefix: str, body: Any) -> Any:
    async def main() -> Any:
        client = async_client_from_url(url, socket_timeout=5.0)
        try:
            return await body(Trending(client, KeyScheme(prefix), half_life=HOUR))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_scores_decay_by_half_each_half_life(redis_url: str, redis_prefix: str) -> None:
    t0 = 1_700_000_000.0

    async def body(trending: Trending) -> Any:
        await trending.add({"old": 4.0}, now=t0)
        await trending.add({"new": 1.5, "old": 0.0}, now=t0 + 2 * HOUR)
        return await trending.top(10, now=t0 + 2 * HOUR), await trending.top(1, now=t0 + 3 * HOUR)

    at_two, at_three = _run(redis_url, redis_prefix, body)
    assert [i for i, _ in at_two] == ["new", "old"]
    assert dict(at_two) == pytest.approx({"new": 1.5, "old": 1.0})
    assert at_three == [("new", pytest.approx(0.75))]


def test_a_rebase_keeps_scores_and_drops_the_decayed_tail(
    redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    t0 = 1_700_000_000.0
    later = t0 + 70 * HOUR  # past 60 half-lives: the next add rebases

    async def body(trending: Trending) -> Any:
        await trending.add({"faded": 1.0, "kept": 2.0**69}, now=t0)
        await trending.add({"fresh": 1.0}, now=later)
        return await trending.top(10, now=later)

    top = _run(redis_url, redis_prefix, body)
    assert dict(top) == pytest.approx({"fresh": 1.0, "kept": 0.5})
    items, epoch = KeyScheme(redis_prefix).trending()
    assert float(redis_client.get(epoch)) == later
    assert redis_client.zscore(items, "faded") is None
