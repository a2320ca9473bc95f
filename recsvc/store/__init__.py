"""Redis: every key, stored format, client and store recsvc uses, in one layer.

==========================  =====================================================
module                      holds
==========================  =====================================================
:mod:`.keys`                every key builder (:class:`KeyScheme`), golden-tested
:mod:`.codec`               the stored formats: user vectors, live events
:mod:`.clients`             URL + settings -> redis-py clients; error translation
:mod:`.state`               :class:`LiveState`, the shared live state the server
                            uses, and its Redis implementation
:mod:`.reader`              the read path of every Recommend: one interface, two
                            implementations (redis-py pipeline, thin reader)
:mod:`.thinreader`          the thin pipelined asyncio/hiredis reader with
                            server-assisted client-side caching
:mod:`.vectors`             published user vectors (the publisher's bulk writes)
:mod:`.records`             shared record collections (a hash, a change stream)
:mod:`.catalog`             the live catalogue, a record collection
:mod:`.rules`               the merchandising rules, a record collection
:mod:`.trending`            live popularity: forward-decayed counters per item
:mod:`.cooccur`             what new products are viewed and bought with
:mod:`.embedded`            a private ``redis-server`` for tests, the demo and
                            ``recsvc serve`` without a Redis URL
==========================  =====================================================

Nothing outside this package builds a key, encodes a value or calls redis-py.
"""

from recsvc.store.clients import (
    Endpoint,
    async_client_from_url,
    client_from_url,
    redacted_url,
    translated_errors,
)
from recsvc.store.codec import decode_event, decode_vector, encode_event, encode_vector
from recsvc.store.keys import DEFAULT_PREFIX, KeyScheme
from recsvc.store.state import (
    ForgetResult,
    LinkRefused,
    LinkResult,
    LiveState,
    RedisLiveState,
    StateLimits,
    UserState,
    open_live_state,
)
from recsvc.store.vectors import UserVectorStore

__all__ = [
    "DEFAULT_PREFIX",
    "Endpoint",
    "ForgetResult",
    "KeyScheme",
    "LinkRefused",
    "LinkResult",
    "LiveState",
    "RedisLiveState",
    "StateLimits",
    "UserState",
    "UserVectorStore",
    "async_client_from_url",
    "client_from_url",
    "decode_event",
    "decode_vector",
    "encode_event",
    "encode_vector",
    "open_live_state",
    "redacted_url",
    "translated_errors",
]
