"""From events to interaction weights and ALS confidences.

Shared by the trainer (millions of rows at once) and the server (a live event at a
time), so that a fold-in at serving time sees the same numbers the fit saw::

    weight     = event_weight[type] · q(quantity) · 0.5 ** (age / half_life)
    q(n)       = 1 + ln(n)          (or n when log_quantity is off)
    confidence = 1 + alpha · Σ weight   over a user's events on an item
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from recsvc.config import WeightingSettings
from recsvc.events import EventType, LiveEvent

__all__ = [
    "EVENT_TYPES",
    "SESSION_HALF_LIFE_EVENTS",
    "confidence",
    "event_type_weights",
    "event_weights",
    "live_event_weights",
    "session_weights",
]

SECONDS_PER_DAY = 86_400.0

#: Fixed order of event types; ``event_type_weights`` is indexed by position here.
EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)


def event_type_weights(settings: WeightingSettings) -> NDArray[np.float32]:
    """Weight of each type in :data:`EVENT_TYPES` order, shape ``(len(EVENT_TYPES),)``."""
    return np.array([settings.event_weights.get(t, 0.0) for t in EVENT_TYPES], dtype=np.float32)


def event_weights(
    type_codes: NDArray[np.integer] | Sequence[int],
    quantity: NDArray[np.floating] | Sequence[float],
    timestamp: NDArray[np.integer] | Sequence[int],
    reference_time: int,
    settings: WeightingSettings,
) -> NDArray[np.float32]:
    """Weights of ``n`` events.

    Args:
        type_codes: ``(n,)`` positions in :data:`EVENT_TYPES`.
        quantity: ``(n,)`` units, > 0.
        timestamp: ``(n,)`` Unix seconds.
        reference_time: the "now" of the decay (data cut-off, or request time);
            events after it are not boosted (age is clipped at 0).
        settings: weighting settings.

    Returns:
        ``(n,)`` float32 weights, >= 0.
    """
    per_type = event_type_weights(settings)[np.asarray(type_codes, dtype=np.intp)]
    q = np.asarray(quantity, dtype=np.float32)
    q_factor = 1.0 + np.log(np.maximum(q, 1.0)) if settings.log_quantity else q
    weights = per_type * q_factor
    if settings.half_life_days > 0:
        age = np.maximum(reference_time - np.asarray(timestamp, dtype=np.float64), 0.0)
        decay = np.exp2(-age / (settings.half_life_days * SECONDS_PER_DAY))
        weights = weights * decay.astype(np.float32)
    return weights.astype(np.float32, copy=False)


def live_event_weights(
    events: Sequence[LiveEvent], now: int, settings: WeightingSettings, *, units: bool = True
) -> NDArray[np.float32]:
    """:func:`event_weights` of live events at ``now``: what the server folds in
    (``units``: quantities count, as in the ALS fit) or scores for buy-again (not
    ``units``: one order is one, whatever its quantity, as the trainer's purchases)."""
    return event_weights(
        [_POSITION[e.event_type] for e in events],
        [e.quantity if units else 1.0 for e in events],
        [e.timestamp for e in events],
        now,
        settings,
    )


_POSITION = {t: i for i, t in enumerate(EVENT_TYPES)}

#: A live session's events halve in weight every this many newer events.
SESSION_HALF_LIFE_EVENTS = 5.0


def session_weights(
    type_codes: NDArray[np.integer] | Sequence[int],
    quantity: NDArray[np.floating] | Sequence[float],
    settings: WeightingSettings,
    boost: float,
) -> NDArray[np.float32]:
    """Weights of a live session's ``n`` events, oldest first: what the server and the
    session protocol of ``recsvc evaluate`` give the ranking.

    Views weigh little in training, but in a live session they are the signal: every
    event weighs at least a purchase. Recency is by position (the last event weighs
    most, halving every :data:`SESSION_HALF_LIFE_EVENTS`), and ``boost`` scales the
    session against the user's history in the fold-in.
    """
    n = len(type_codes)
    if n == 0:
        return np.zeros(0, np.float32)
    base = event_type_weights(settings)[np.asarray(type_codes, dtype=np.intp)]
    q = np.asarray(quantity, dtype=np.float32)
    q_factor = 1.0 + np.log(np.maximum(q, 1.0)) if settings.log_quantity else q
    floor = settings.event_weights.get(EventType.PURCHASE, 1.0)
    recency = np.exp2(-np.arange(n)[::-1] / SESSION_HALF_LIFE_EVENTS)
    return (np.maximum(base * q_factor, floor) * recency * boost).astype(np.float32)


def confidence(weights: NDArray[np.floating], alpha: float) -> NDArray[np.float32]:
    """Hu-Koren-Volinsky confidence ``1 + alpha · w`` (what the ALS fit is given)."""
    return (1.0 + alpha * np.asarray(weights, dtype=np.float32)).astype(np.float32, copy=False)
