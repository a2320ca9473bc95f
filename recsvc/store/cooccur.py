"""What items are viewed and bought with, counted live by every replica: new
products' meetings, and trained items' co-purchases since training.

A new product (an item of the live catalogue the served model was not trained on)
has no vector until the next training. Shoppers place it among other items as soon
as they meet it: for every event on a new item, the items of the same session (or
the same batch of a user's events) are counted into one sorted set per new item,
``{prefix}:{n:<item>}:co`` (:meth:`recsvc.store.keys.KeyScheme.cooccurrence`): member
= a trained item, score = how often the two met. :mod:`serving.newitems` turns the
counts into a vector in the model's space.

The counts are aggregates of items, never tied to a shopper (like live popularity,
they outlive an erasure: nothing in them names a person). Each set keeps its
``max_items`` most counted members and expires ``ttl_seconds`` after its last
update: by then the next training knows the item. A second sorted set,
``{prefix}:{n}:touched``, scores each new item by when its counts last changed, so a
replica re-reads only what changed since its last read (:meth:`CoOccurrence.touched`).

The same structure under ``{prefix}:{b:<item>}:co`` (``kind="b"``) counts, for each
trained item, the trained items bought with it since training: the live part of
bought together (:mod:`recsvc.cobuy`), read per request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import redis.asyncio

from recsvc.store.clients import translated_errors
from recsvc.store.keys import KeyScheme

__all__ = ["CoOccurrence"]


class CoOccurrence:
    """Co-occurrence counts in one Redis. StoreError on failure.

    ``kind`` names the collection: ``"n"`` (default) what new products met,
    ``"b"`` what trained items were bought with since training (the live part of
    :mod:`recsvc.cobuy`; counted and read alike).
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        keys: KeyScheme,
        *,
        kind: str = "n",
        ttl_seconds: int = 30 * 24 * 3600,
        max_items: int = 200,
    ) -> None:
        if ttl_seconds <= 0 or max_items <= 0:
            raise ValueError("ttl_seconds and max_items must be positive")
        if kind not in ("n", "b"):
            raise ValueError(f"unknown co-occurrence kind {kind!r}")
        self._client = client
        self._keys = keys
        self.kind = kind
        self.ttl_seconds = ttl_seconds
        self.max_items = max_items

    async def add(
        self, counts: Mapping[str, Mapping[str, float]], now: float | None = None
    ) -> None:
        """Count meetings: ``counts[new_item][other_item]`` is how often they met."""
        if not any(counts.values()):
            return
        at = now if now is not None else time.time()
        touched = self._keys.cooccurrence_touched(self.kind)
        with translated_errors("counting what new items are seen with"):
            # one key per command: every command stays in its own hash slot
            async with self._client.pipeline(transaction=False) as pipe:
                for item, others in counts.items():
                    if not others:
                        continue
                    key = self._keys.cooccurrence(item, self.kind)
                    for other, n in others.items():
                        pipe.zincrby(key, n, other)
                    # keep the most counted (a long tail of one-off meetings is noise)
                    pipe.zremrangebyrank(key, 0, -self.max_items - 1)
                    pipe.expire(key, self.ttl_seconds)
                    pipe.zadd(touched, {item: at})
                pipe.zremrangebyscore(touched, "-inf", at - self.ttl_seconds)
                pipe.expire(touched, self.ttl_seconds)
                await pipe.execute()

    async def touched(self, since: float) -> list[str]:
        """New items whose counts changed at or after ``since`` (Unix seconds)."""
        with translated_errors("reading which new items were seen"):
            raw = await self._client.zrangebyscore(
                self._keys.cooccurrence_touched(self.kind), since, "+inf"
            )
        return [item.decode() for item in raw if isinstance(item, bytes)]

    async def read(
        self, items: Sequence[str], limit: int = 0
    ) -> dict[str, list[tuple[str, float]]]:
        """Each of ``items``' counted meetings, most counted first (none: left out);
        ``limit`` > 0: at most that many each."""
        if not items:
            return {}
        with translated_errors("reading what items were seen with"):
            async with self._client.pipeline(transaction=False) as pipe:
                for item in items:
                    key = self._keys.cooccurrence(item, self.kind)
                    pipe.zrevrange(key, 0, limit - 1, withscores=True)
                replies = await pipe.execute()
        return {
            item: [(other.decode(), float(n)) for other, n in reply]
            for item, reply in zip(items, replies, strict=True)
            if reply
        }
