"""Customers-like-you lists (recsvc/peers.py): the search, erasure, the ranking's use
of the signal, and artifacts made before it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.artifact import read_artifact
from recsvc.model import Blend, Model
from recsvc.peers import PeerLists, _top_of_rows, nearest, remove
from recsvc.ranking import Ranker, Reason, training_user_query
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings

FORMAT1 = Path(__file__).parent / "data" / "format1" / "20261201T120000Z-14a92ee2"


def _vectors(n_users: int = 80, n_items: int = 40, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) * (rng.random((n_users, n_items)) < 0.15)
    dense[5] = 0.0  # a customer without purchases: no list, never a neighbour
    return sp.csr_matrix(dense.astype(np.float32))


def test_nearest_are_the_smallest_euclidean_distances_never_oneself() -> None:
    v = _vectors()
    users = np.flatnonzero(np.diff(v.indptr) > 0)
    pool = users[::2]
    found, threshold = nearest(v[users], users, v[pool], pool, 7)
    dense = v.toarray()
    for row, u in enumerate(users):
        distance = ((dense[pool] - dense[u]) ** 2).sum(axis=1)
        distance[pool == u] = np.inf
        expected = np.argsort(distance, kind="stable")[:7]
        assert set(found[row].tolist()) == set(expected.tolist())
        assert u not in pool[found[row]]
        sim = (
            2 * dense[pool[found[row, -1]]] @ dense[u]
            - dense[pool[found[row, -1]]] @ dense[pool[found[row, -1]]]
        )
        assert threshold[row] == pytest.approx(sim, abs=1e-5)


def test_lists_are_the_top_of_the_neighbours_mean_scaled_and_read_back() -> None:
    v = _vectors()
    users = np.flatnonzero(np.diff(v.indptr) > 0)
    peers = PeerLists.build(v, users, users, 5, 10)
    again = PeerLists.from_arrays(peers.to_arrays())
    assert (again.lists != peers.lists).nnz == 0
    items, scores = again.row(int(users[0]))
    assert 0 < len(items) <= 10 and (np.diff(items) > 0).all()
    assert scores.max() == pytest.approx(1.0) and scores.min() > 0
    found, _ = nearest(v[users[:1]], users[:1], v[users], users, 5)
    mean = np.asarray(v[users[found[0]]].mean(axis=0)).ravel()
    expected = np.argsort(-mean, kind="stable")[:10]
    assert set(items.tolist()) == set(expected[mean[expected] > 0].tolist())
    assert len(again.row(5)[0]) == 0  # no purchases: no list


def test_erasure_drops_the_row_and_recomputes_every_list_the_customer_was_in() -> None:
    v = _vectors()
    users = np.flatnonzero(np.diff(v.indptr) > 0)
    peers = PeerLists.build(v, users, users, 5, 10)
    # the customer most often someone's neighbour is erased
    found, _ = nearest(v[users], users, v[users], users, 5)
    erased = int(users[np.bincount(found.ravel()).argmax()])
    keep = np.ones(v.shape[0], bool)
    keep[erased] = False
    had = {int(u) for u, row in zip(users, found, strict=True) if erased in users[row]}
    assert had  # (the test means something)
    after = remove(peers, keep, 5, 10)
    assert after.n_users == v.shape[0] - 1
    # exactly what a build without the erased customer gives
    v_kept = sp.csr_matrix(v[keep])
    left = np.flatnonzero(np.diff(v_kept.indptr) > 0)
    fresh = PeerLists.build(v_kept, left, left, 5, 10)
    assert np.allclose(after.lists.toarray(), fresh.lists.toarray(), atol=1e-6)
    assert not np.allclose(
        after.lists.toarray(), sp.csr_matrix(peers.lists[keep]).toarray(), atol=1e-6
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    settings = small_settings(tmp_path_factory.mktemp("m"))
    return Model(build_model(LoadedData(block_shop(), None, (), 0), settings).artifact)


def test_the_ranking_weighs_the_list_only_with_a_weight(model: Model) -> None:
    user = model.user_position["g0u03"]
    stranger = int(model.item_position["g1i05"])  # the other group's: CF never ranks it
    query = dataclasses.replace(
        training_user_query(model, user, 5),
        peer_items=np.array([stranger], np.int32),
        peer_scores=np.ones(1, np.float32),
    )
    plain = dataclasses.replace(query, peer_items=np.zeros(0, np.int32))

    def ranked(blend: Blend, q: object) -> list[int]:
        m = dataclasses.replace(model)  # a shallow copy: its own defaults
        m.defaults = dataclasses.replace(model.defaults, user=blend)
        got = Ranker(m).recommend(q)  # type: ignore[arg-type]
        if stranger in got.items.tolist():
            assert got.reasons[got.items.tolist().index(stranger)] == Reason.CF
        return got.items.tolist()

    without = ranked(Blend(cf=0.5, repeat=0.0), query)
    assert stranger not in without
    assert ranked(Blend(cf=0.5, peers=0.0), query) == without
    assert ranked(Blend(cf=0.5, peers=1.0), query)[0] == stranger
    # a customer without a list: the weight is unused, the blend as without it
    assert ranked(Blend(cf=0.5, peers=1.0), plain) == without


def test_an_artifact_from_before_the_lists_loads_with_weight_zero() -> None:
    old = Model(read_artifact(FORMAT1))
    assert old.artifact.peers is None and old.artifact.manifest.peers is None
    assert old.defaults.user.peers == 0.0
    query = training_user_query(old, 0, 5)
    assert len(query.peer_items) == 0
    assert len(Ranker(old).recommend(query).items) == 5


def test_top_of_rows_keeps_each_rows_largest_positive_entries_scaled() -> None:
    rng = np.random.default_rng(5)
    dense = rng.integers(-2, 6, size=(40, 60)).astype(np.float32)  # ties, zeros, negatives
    dense[3] = 0.0  # a row with nothing positive
    got = _top_of_rows(sp.csr_matrix(dense), 7).toarray()
    for r, row in enumerate(dense):
        # the reference: positive entries by value descending, the lower column first
        cols = sorted((c for c in range(60) if row[c] > 0), key=lambda c: (-row[c], c))[:7]
        want = np.zeros(60, np.float32)
        if cols:
            want[cols] = row[cols] / row[cols[0]]
        np.testing.assert_allclose(got[r], want, err_msg=str(r))
    assert not got[3].any()
