import math

import numpy as np
import pytest

from recsvc.config import Settings, WeightingSettings
from recsvc.events import EventType, LiveEvent
from recsvc.weighting import EVENT_TYPES, confidence, event_weights, live_event_weights

DAY = 86_400
PURCHASE = EVENT_TYPES.index(EventType.PURCHASE)
VIEW = EVENT_TYPES.index(EventType.VIEW)


def test_type_weights_and_log_quantity() -> None:
    s = WeightingSettings(half_life_days=0)
    w = event_weights([PURCHASE, VIEW, PURCHASE], [1, 1, 10], [0, 0, 0], 0, s)
    assert w.dtype == np.float32
    assert w[0] == pytest.approx(1.0)
    assert w[1] == pytest.approx(0.1)
    assert w[2] == pytest.approx(1.0 + math.log(10))


def test_linear_quantity_when_log_is_off() -> None:
    s = WeightingSettings(half_life_days=0, log_quantity=False)
    assert event_weights([PURCHASE], [4], [0], 0, s)[0] == pytest.approx(4.0)


def test_decay_halves_every_half_life_and_never_boosts_the_future() -> None:
    s = WeightingSettings(half_life_days=30)
    now = 100 * DAY
    w = event_weights(
        [PURCHASE] * 4, [1] * 4, [now, now - 30 * DAY, now - 60 * DAY, now + DAY], now, s
    )
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.25, 1.0])


def test_impressions_weigh_nothing_by_default() -> None:
    s = WeightingSettings()
    imp = EVENT_TYPES.index(EventType.IMPRESSION)
    assert event_weights([imp], [1], [0], 0, s)[0] == 0.0


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        WeightingSettings(event_weights={EventType.VIEW: -1.0})


def test_confidence_is_hu_koren_volinsky() -> None:
    assert confidence(np.array([0.0, 2.0]), alpha=10.0).tolist() == [1.0, 21.0]


def test_live_purchases_count_orders_for_buy_again_and_units_for_the_fold_in() -> None:
    now = 1_700_000_000
    settings = Settings()
    events = [
        LiveEvent("bulk", EventType.PURCHASE, now, quantity=50.0),
        LiveEvent("one", EventType.PURCHASE, now, quantity=1.0),
    ]
    # buy-again, as the trainer's purchases: one order is one, whatever its units
    assert live_event_weights(
        events, now, settings.weighting, units=False
    ).tolist() == pytest.approx([1.0, 1.0])
    # the fold-in, as the ALS fit: 1 + ln(units)
    assert live_event_weights(events, now, settings.weighting).tolist() == pytest.approx(
        [1.0 + np.log(50.0), 1.0]
    )
