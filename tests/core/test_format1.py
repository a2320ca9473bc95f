"""A format-1 artifact (written by the trainer before the manifest had a schema) still
loads and serves exactly what it served then.

``data/format1/`` is a tiny synthetic shop (1,000 events, 40 items, 20 users) trained
and written by that trainer; ``data/format1-answers.json`` holds the answers the
server's ranking gave from it at the time (see ``data/README.md``).
"""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from recsvc import artifact as art
from recsvc.model import Model
from recsvc.ranking import Query, Ranker, training_user_query

DATA = Path(__file__).parent / "data"
FORMAT1_ROOT = DATA / "format1"
FORMAT1_VERSION = "20261201T120000Z-14a92ee2"


def answers(model: Model) -> dict[str, Any]:
    """Top 10 (items, scores, reasons) for each training user, for the last five
    items of their history as an anonymous session, and for both together."""
    ranker = Ranker(model)
    out: dict[str, Any] = {}
    for user in range(len(model.user_position)):
        query = training_user_query(model, user, 10)
        items = model.user_history(user)[0][-5:]
        session = {"session_items": items, "session_weights": np.ones(len(items), np.float32)}
        for name, q in (
            ("user", query),
            ("session", Query(k=10, **session)),
            ("user+session", replace(query, **session)),
        ):
            r = ranker.recommend(q)
            out[f"{name} {user}"] = [r.items.tolist(), r.scores.tolist(), r.reasons.tolist()]
    return out


def test_format1_artifact_serves_what_it_served() -> None:
    model = Model(art.read_artifact(FORMAT1_ROOT / FORMAT1_VERSION))
    expected = json.loads((DATA / "format1-answers.json").read_text())
    assert answers(model) == expected
