"""Live popularity in Redis: time-decayed counts of what shoppers do, per item.

One sorted set, ``{prefix}:{trend}:items`` (:meth:`recsvc.store.keys.KeyScheme.trending`),
scores every item by its events' weights, each decayed by half every ``half_life``
seconds — kept by *forward decay* (Cormode et al., ICDE 2009): an event at time ``t``
adds ``w · 2^((t - epoch) / half_life)``, so nothing is ever rewritten to age the rest,
and the score at ``now`` is the stored one times ``2^(-(now - epoch) / half_life)``.
When the exponent nears float range (60 half-lives after the epoch) the script rebases:
every score is scaled down and the epoch moved, in one pass (once every 60 half-lives),
and the tail that decayed below :data:`FLOOR` is dropped. Every replica writes to it
(RecordEvents) and reads its head (:meth:`Trending.top`), so a burst of purchases
through any replica moves every replica's popular lists within a read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import redis.asyncio

from recsvc.store.clients import translated_errors
from recsvc.store.keys import KeyScheme

__all__ = ["FLOOR", "Trending"]

FLOOR: Final = 1e-3
"""Decayed scores below this are dropped at a rebase (an event weighs ~0.1 to 1)."""

_REBASE_AFTER: Final = 60
"""Half-lives after the epoch at which the scores are rebased (2^60 ~ 1e18)."""

_RECORD: Final = """
-- KEYS: items, epoch; ARGV: now, half-life seconds, floor, rebase after (half-lives),
--   then (item, weight) pairs
local now = tonumber(ARGV[1])
local half_life = tonumber(ARGV[2])
local epoch = tonumber(redis.call("GET", KEYS[2]) or "")
if not epoch then
  epoch = now
  redis.call("SET", KEYS[2], epoch)
end
local age = (now - epoch) / half_life
if age > tonumber(ARGV[4]) then
  -- rescale every score to a new epoch (now) and drop the decayed tail
  local scale = 2 ^ (-age)
  local all = redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES")
  redis.call("DEL", KEYS[1])
  for i = 1, #all, 2 do
    local score = tonumber(all[i + 1]) * scale
    if score >= tonumber(ARGV[3]) then
      redis.call("ZADD", KEYS[1], score, all[i])
    end
  end
  epoch = now
  redis.call("SET", KEYS[2], epoch)
  age = 0
end
local grow = 2 ^ age
for i = 5, #ARGV, 2 do
  redis.call("ZINCRBY", KEYS[1], tonumber(ARGV[i + 1]) * grow, ARGV[i])
end
return tostring(epoch)
"""


class Trending:
    """Live popularity of one Redis (see the module docstring). StoreError on failure."""

    def __init__(self, client: redis.asyncio.Redis, keys: KeyScheme, half_life: float) -> None:
        if half_life <= 0:
            raise ValueError("half_life must be positive")
        self._client = client
        self._items, self._epoch = keys.trending()
        self.half_life = float(half_life)
        self._record = client.register_script(_RECORD)

    async def add(self, weights: Mapping[str, float], now: float | None = None) -> None:
        """Count events: ``weights`` maps an item to the summed weight of its events."""
        if not weights:
            return
        at = now if now is not None else time.time()
        args: list[Any] = [at, self.half_life, FLOOR, _REBASE_AFTER]
        for item, weight in weights.items():
            if weight > 0:
                args += [item, weight]
        if len(args) == 4:
            return
        with translated_errors("counting live popularity"):
            await self._record(keys=[self._items, self._epoch], args=args)

    async def top(self, n: int, now: float | None = None) -> list[tuple[str, float]]:
        """The ``n`` most popular items now, best first, with their decayed scores."""
        with translated_errors("reading live popularity"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self._epoch)
                pipe.zrevrange(self._items, 0, n - 1, withscores=True)
                raw_epoch, head = await pipe.execute()
        if raw_epoch is None:
            return []
        at = now if now is not None else time.time()
        decay = 2.0 ** (-(at - float(raw_epoch)) / self.half_life)
        return [(item.decode(), score * decay) for item, score in head]
