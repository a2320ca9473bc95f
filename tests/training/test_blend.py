"""The trainer's blend fit (training/blend.py) picks the signal that predicts."""

from __future__ import annotations

import numpy as np
import pytest

from recsvc.config import WeightingSettings
from recsvc.foldin import FoldIn
from recsvc.training.blend import MIN_USERS, fit_user_blend
from recsvc.training.interactions import build_interactions

from factories import DAY, T0, event_table


def _shop(kind: str, n_users: int = 300, seed: int = 0) -> list[tuple]:
    """Five baskets per user over 50 days. ``repeat``: every basket re-buys the
    user's own three staples; ``trending``: everyone's last basket is the same three
    new items, which half the users also bought in their fourth basket, so only
    popularity can tell the other half."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        user = f"u{u}"
        staples = rng.choice(200, size=3, replace=False)
        for b in range(5):
            t = T0 + (b * 10) * DAY + u
            if kind == "trending" and (b == 4 or (b == 3 and u % 2 == 0)):
                items = [f"new{j}" for j in range(3)]
            elif kind == "repeat":
                items = [f"i{s}" for s in staples]
            else:
                items = [f"i{i}" for i in rng.choice(200, size=3, replace=False)]
            rows += [(user, i, t, "purchase", 1.0, f"{user}-{b}") for i in items]
    return rows


def _fit(kind: str, n_users: int = 300) -> object:
    table = event_table(_shop(kind, n_users))
    weighting = WeightingSettings()
    inter = build_interactions(table, weighting)
    rng = np.random.default_rng(1)
    factors = rng.normal(size=(inter.n_items, 4)).astype(np.float32)
    return fit_user_blend(
        table,
        inter.item_ids,
        factors,
        FoldIn(factors, 0.1, 10.0),
        weighting,
        allow_repeats=True,
        half_lives=(1.0, 30.0),
    )


def test_a_repeat_shop_gets_a_buy_again_blend() -> None:
    fit = _fit("repeat")
    assert fit is not None
    assert fit.recall == pytest.approx(1.0)
    assert fit.blend.repeat > max(fit.blend.cf, fit.blend.popularity)


def test_a_trending_shop_gets_a_popularity_blend() -> None:
    fit = _fit("trending")
    assert fit is not None
    assert fit.recall == pytest.approx(1.0)
    assert fit.blend.popularity > max(fit.blend.cf, fit.blend.repeat)
    assert sum((fit.blend.cf, fit.blend.repeat, fit.blend.popularity)) == pytest.approx(1.0)


def test_too_few_returning_users_fit_nothing() -> None:
    assert _fit("repeat", n_users=MIN_USERS - 1) is None
