"""How values are laid out in Redis: user vectors and live events (the stored formats).

A vector is the factors as raw little-endian float32 bytes, exactly ``4 * factors``
bytes, no header: the reader knows ``factors`` from the model manifest, and a length
mismatch (a version published with other factors) is reported, never guessed at.

A live event (a history or session list entry) is UTF-8 text::

    1|<type code>|<timestamp>|<quantity>|<item_id>        e.g. b"1|p|1700000000|2|sku-42"

``1`` is the format version; the type code is one letter
(:attr:`recsvc.events.EventSpec.state_code`); the timestamp is integer Unix seconds; the
quantity is the shortest text that reads back to the same float (``2``, ``0.5``); the
item id comes last, so it may contain ``|``. Readers skip (and log) entries they cannot
decode — e.g. a newer format version written by another replica during a rolling
deploy — instead of failing the request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

from recsvc.errors import StoreError
from recsvc.events import EVENT_SPECS, EventType, LiveEvent

__all__ = [
    "EVENT_FORMAT_VERSION",
    "WIRE_DTYPE",
    "decode_event",
    "decode_events",
    "decode_vector",
    "encode_event",
    "encode_vector",
]

log = logging.getLogger(__name__)

#: A single user's factors, shape ``(factors,)``, float32.
Vector: TypeAlias = NDArray[np.float32]

#: Little-endian float32 whatever the host: the bytes are the stored contract.
WIRE_DTYPE: Final = np.dtype("<f4")

EVENT_FORMAT_VERSION: Final = "1"
"""Leading field of every encoded event; bump it when the layout changes."""

_TYPE_OF_CODE: Final = {spec.state_code: t for t, spec in EVENT_SPECS.items()}


def encode_vector(vec: Vector) -> bytes:
    """The stored form of one vector ``(factors,)``; other float dtypes are converted."""
    if vec.ndim != 1:
        raise ValueError(f"expected a 1-d vector, got shape {vec.shape}")
    return np.ascontiguousarray(vec, dtype=WIRE_DTYPE).tobytes()


def decode_vector(raw: bytes, factors: int) -> Vector:
    """Inverse of :func:`encode_vector`: a new, writable float32 array ``(factors,)``.

    Raises :class:`StoreError` when ``raw`` is not exactly ``4 * factors`` bytes.
    """
    expected = WIRE_DTYPE.itemsize * factors
    if len(raw) != expected:
        raise StoreError(
            f"stored vector has {len(raw)} bytes, expected {expected} "
            f"({factors} float32 factors); was it published by a model with other factors?"
        )
    # astype copies: the result is native-endian, owns its memory and is writable.
    return np.frombuffer(raw, dtype=WIRE_DTYPE).astype(np.float32)


def encode_event(event: LiveEvent) -> bytes:
    """The list entry of ``event``: ``b"1|<code>|<timestamp>|<quantity>|<item_id>"``.

    Raises ValueError for an empty item id or a quantity that is not finite and > 0.
    """
    if not event.item_id:
        raise ValueError("item_id must be a non-empty string")
    quantity = float(event.quantity)
    if not (math.isfinite(quantity) and quantity > 0):
        raise ValueError(f"quantity must be finite and > 0, got {event.quantity!r}")
    # Integral quantities (the common case) as "2", not "2.0"; others as repr, which
    # is the shortest text that parses back to the same float.
    qty = str(int(quantity)) if quantity.is_integer() and quantity < 2**53 else repr(quantity)
    code = EventType(event.event_type).spec.state_code
    return f"{EVENT_FORMAT_VERSION}|{code}|{int(event.timestamp)}|{qty}|{event.item_id}".encode()


def decode_event(raw: bytes) -> LiveEvent:
    """Inverse of :func:`encode_event`. Raises ValueError (or KeyError for an unknown
    type code) for anything else."""
    version, code, timestamp, quantity, item_id = raw.decode().split("|", 4)
    if version != EVENT_FORMAT_VERSION:
        raise ValueError(f"unknown entry format version {version!r}")
    if not item_id:
        raise ValueError("empty item id")
    return LiveEvent(item_id, _TYPE_OF_CODE[code], int(timestamp), float(quantity))


def decode_events(raws: Sequence[bytes | str], what: str) -> list[LiveEvent]:
    """Every entry of a list that decodes, in order; the others skipped and logged."""
    events: list[LiveEvent] = []
    for raw in raws:
        try:
            if not isinstance(raw, bytes):
                raise TypeError("text entry: the client must not decode responses")
            events.append(decode_event(raw))
        except (ValueError, KeyError, TypeError):  # bad shape, code or type
            log.warning("skipped an undecodable %s entry: %.60r", what, raw)
    return events
