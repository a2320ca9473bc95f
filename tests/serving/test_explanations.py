"""Explanations through a real server: each CF or session item names the shopper's item
that led to it, a buy-again item names itself, popular items name nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recsvc.client import RecommenderClient
from recsvc.model import Model
from recsvc.ranking import Ranker, Reason
from recsvc.serving.calls import ScoredItem
from recsvc.serving.engine import _because
from recsvc.serving.profile import Profile
from recsvc.training.pipeline import LoadedData, build_model
from recsvc.v1 import recommender_pb2 as pb

from factories import block_shop, both_backends, small_settings
from server_harness import clients_of, replicas


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


TOKEN = "explain-token"


@pytest.fixture()
def model() -> Model:
    return Model(build_model(LoadedData(block_shop(), None, (), 0), small_settings(None)).artifact)


def test_a_buy_again_item_names_itself_and_no_item_names_itself_otherwise(
    model: Model,
) -> None:
    pos = model.item_position
    history = np.array([pos["g0i01"], pos["g0i02"], pos["g1i01"]], np.int32)
    profile = Profile(
        user_vector=None,
        history_items=history,
        history_weights=np.array([1.0, 0.5, 0.2], np.float32),
        purchased_items=history[:1],
        purchased_weights=np.ones(1, np.float32),
        session_items=np.zeros(0, np.int32),
        session_weights=np.zeros(0, np.float32),
        ignored_item_ids=[],
        degraded=False,
    )
    loaded: Any = SimpleNamespace(model=model, ranker=Ranker(model))
    items = [
        ScoredItem("g0i01", 1.0, Reason.BUY_AGAIN),
        ScoredItem("g0i02", 0.9, Reason.CF),  # in the history: explained by another item
        ScoredItem("g0i07", 0.8, Reason.CF),
        ScoredItem("g1i04", 0.7, Reason.CF),
        ScoredItem("g0i09", 0.6, Reason.POPULAR),
        ScoredItem("new-sku", 0.5, Reason.CF),  # not in the model
    ]
    because = _because(loaded, profile, items)
    assert because is not None
    assert because[0] == "g0i01"
    assert because[1] in {"g0i01", "g1i01"} and because[1] != "g0i02"
    assert because[2].startswith("g0") and because[3] == "g1i01"  # its own group's
    assert because[4] == "" and because[5] == ""
    assert _because(loaded, profile, [ScoredItem("g0i09", 0.6, Reason.POPULAR)]) is None


@pytest.fixture()
def client(tmp_path: Path, redis_url: str, redis_prefix: str) -> Iterator[RecommenderClient]:
    with (
        replicas(tmp_path, redis_url, redis_prefix, token=TOKEN, n=1) as servers,
        clients_of(servers, TOKEN) as (c,),
    ):
        yield c


@pytest.mark.integration
def test_served_items_name_the_shoppers_item_that_led_to_them(
    client: RecommenderClient,
) -> None:
    viewed = ["g1i01", "g1i02"]
    client.record_events([client.event(i, "view", user_id="exp") for i in viewed])
    known = client.recommend("exp", k=6, explain=True)
    assert known.strategy == pb.STRATEGY_PERSONALIZED
    cf = [i for i in known.items if i.reason == pb.REASON_CF]
    assert cf and all(i.because_item_id in viewed for i in cf)
    assert all(i.because_item_id != i.item_id for i in cf)

    session = ["g0i01", "g0i03"]
    visitor = client.recommend(k=6, session_items=session, explain=True)
    assert visitor.strategy == pb.STRATEGY_SESSION
    explained = [i for i in visitor.items if i.reason == pb.REASON_SESSION]
    assert explained and all(i.because_item_id in session for i in explained)

    popular = client.recommend("nobody-at-all", k=4, explain=True)
    assert popular.strategy == pb.STRATEGY_POPULAR
    assert all(i.because_item_id == "" for i in popular.items)
    unasked = client.recommend("exp", k=6)
    assert [i.item_id for i in unasked.items] == [i.item_id for i in known.items]
    assert all(i.because_item_id == "" for i in unasked.items)  # only when asked
