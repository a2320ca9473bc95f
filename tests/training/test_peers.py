"""The trainer's customers-like-you step (training/peers.py): a weight only where the
lists predict, the lists in the artifact, erasure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsvc.artifact import read_artifact, remove_users, write_artifact
from recsvc.config import PeerSettings, WeightingSettings
from recsvc.foldin import FoldIn
from recsvc.model import Model
from recsvc.training.blend import fit_user_blend
from recsvc.training.evaluation import evaluate, split_last_basket
from recsvc.training.interactions import build_interactions
from recsvc.training.peers import PeerFit, fit_peers
from recsvc.training.pipeline import LoadedData, build_model

from factories import DAY, T0, event_table, small_settings


def _groups_shop(*, noise: bool, n_groups: int = 10, per_group: int = 30, seed: int = 0) -> list:
    """Customers of a group buy its items, never twice. Their last basket: items of
    their group they never bought (what their group's other customers buy: the lists
    predict it), or with ``noise`` items of another group at random (nothing does)."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for u in range(per_group):
            user = f"g{g}u{u}"
            order = rng.permutation(30)
            for b in range(5):
                t = T0 + (b * 7) * DAY + g * 100 + u
                if b == 4 and noise:
                    other = (g + 1 + rng.integers(n_groups - 1)) % n_groups
                    items = [f"g{other}i{i}" for i in rng.choice(30, 3, replace=False)]
                else:
                    items = [f"g{g}i{i}" for i in order[b * 3 : b * 3 + 3]]
                rows += [(user, i, t, "purchase", 1.0, f"{user}-{b}") for i in items]
    return rows


def _fit(noise: bool) -> PeerFit:
    table = event_table(_groups_shop(noise=noise))
    weighting = WeightingSettings()
    inter = build_interactions(table, weighting)
    # random item factors: CF knows nothing of the groups
    factors = np.random.default_rng(1).normal(size=(inter.n_items, 4)).astype(np.float32)
    blend = fit_user_blend(
        table, inter.item_ids, factors, FoldIn(factors, 0.1, 10.0), weighting,
        allow_repeats=True, half_lives=(7.0,),
    )  # fmt: skip
    assert blend is not None and blend.held is not None
    return fit_peers(table, inter.user_ids, inter.item_ids, factors, blend.held, PeerSettings())


def test_lists_that_predict_the_next_basket_get_a_weight() -> None:
    fit = _fit(noise=False)
    assert fit.weight > 0 and fit.blend.peers > 0
    assert fit.recall > fit.recall_without + 0.1
    assert sum(fit.blend.__dict__.values()) == pytest.approx(1.0)


def test_lists_that_predict_nothing_get_weight_zero() -> None:
    fit = _fit(noise=True)
    assert fit.weight == 0.0 and fit.blend.peers == 0.0
    assert fit.recall == fit.recall_without
    assert fit.grid  # every setting was tried, none helped


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Model]:
    settings = small_settings(tmp_path_factory.mktemp("peers"))
    data = LoadedData(event_table(_groups_shop(noise=False)), None, (), 0)
    artifact = build_model(data, settings).artifact
    return write_artifact(artifact, settings.artifact_root), Model(artifact)


def test_the_lists_are_written_checksummed_and_read_back(built: tuple[Path, Model]) -> None:
    path, model = built
    section = model.artifact.manifest.peers
    assert section is not None and model.defaults.user.peers > 0
    assert "user_peers.npz" in model.artifact.manifest.files
    assert section.customers == len(model.user_position) == 300
    back = Model(read_artifact(path))
    assert back.peers is not None and model.peers is not None
    assert (back.peers.lists != model.peers.lists).nnz == 0
    items, scores = back.user_peers(back.user_position["g3u7"])
    assert 0 < len(items) <= section.length and scores.max() == pytest.approx(1.0)
    # the customer's group's items lead their list
    top = items[np.argsort(-scores, kind="stable")[:5]]
    assert all(str(back.artifact.item_ids[i]).startswith("g3i") for i in top)


def test_erasure_drops_the_customers_list(built: tuple[Path, Model]) -> None:
    path, _ = built
    assert remove_users(path.parent, path.name, {"g3u7"}) == 1
    after = read_artifact(path)
    assert after.peers is not None and after.manifest.peers is not None
    assert "g3u7" not in after.user_ids.tolist()
    assert after.peers.n_users == len(after.user_ids) == 299
    assert after.manifest.peers.customers == 299 and after.manifest.peers.pool == 299
    assert after.peers.pool.all()  # every customer left is in the pool


def test_switched_off_the_trainer_keeps_no_lists(tmp_path: Path) -> None:
    settings = small_settings(tmp_path, peers={"enabled": False})
    data = LoadedData(event_table(_groups_shop(noise=False)), None, (), 0)
    artifact = build_model(data, settings).artifact
    assert artifact.peers is None and artifact.manifest.peers is None
    assert artifact.manifest.ranking.user_blend.peers == 0.0


@pytest.mark.slow  # ~15 s: two evaluations, one with the strong baselines tuned
def test_quality_floor_customers_like_you_on_a_groups_shop(tmp_path: Path) -> None:
    """The CI quality floor of the fitted blend with its peers weight: a deterministic
    shop where the next basket is what a customer's group buys and they have not (no
    repeats, CF with 12 groups of 40 learns them poorly). Measured when written (seed
    3): served recall@20 0.908 with the lists, 0.212 without, tuned TIFU-KNN 0.453; on
    another CPU the same seed gave served 0.904 and TIFU-KNN 0.915 (its tuning picked
    another of its configurations), so the floor against TIFU-KNN, whose neighbour part
    the lists are, is keeping up with it, not a multiple of it."""
    data = LoadedData(
        event_table(_groups_shop(noise=False, seed=3, n_groups=12, per_group=40)), None, (), 0
    )
    split = split_last_basket(data.table)
    on = evaluate(data, split, small_settings(tmp_path / "on"), dataset="groups", strong=True)
    off = evaluate(
        data, split, small_settings(tmp_path / "off", peers={"enabled": False}), dataset="groups"
    )
    served, without = on.metrics["served"]["recall@20"], off.metrics["served"]["recall@20"]
    assert on.model["ranking"]["user_blend"]["peers"] > 0
    assert served >= 0.8
    assert served >= without + 0.4
    assert served >= 0.95 * on.metrics["tifu_knn"]["recall@20"]
    assert served > on.metrics["item_knn"]["recall@20"]
