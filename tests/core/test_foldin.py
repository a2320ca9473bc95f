import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from recsvc.foldin import FoldIn


def test_foldin_matches_implicit_recalculate_user() -> None:
    rng = np.random.default_rng(3)
    dense = (rng.random((40, 25)) < 0.2) * rng.integers(1, 5, size=(40, 25))
    alpha = 5.0
    weights = sp.csr_matrix(dense.astype(np.float32))
    cui = weights.copy()
    cui.data = 1.0 + alpha * cui.data
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=6, regularization=0.1, iterations=5, random_state=0, use_cg=False
        )
        model.fit(cui, show_progress=False)
        expected = model.recalculate_user(7, cui[7])
    row = weights[7]
    got = FoldIn(model.item_factors, regularization=0.1, alpha=alpha).user_vector(
        row.indices, row.data
    )
    assert got == pytest.approx(np.asarray(expected).ravel(), rel=1e-3, abs=1e-4)


def test_repeated_items_are_summed_and_empty_is_zero() -> None:
    y = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    f = FoldIn(y, regularization=0.1, alpha=2.0)
    once = f.user_vector(np.array([1]), np.array([2.0]))
    twice = f.user_vector(np.array([1, 1]), np.array([1.0, 1.0]))
    assert once == pytest.approx(twice)
    assert f.user_vector(np.array([], dtype=np.int64), np.array([])).tolist() == [0.0] * 3
    assert f.user_vector(np.array([2]), np.array([0.0])).tolist() == [0.0] * 3


def test_singular_system_without_regularization_still_solves() -> None:
    # 3 items in 5 dimensions and no regularization: YtY is singular
    y = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    x = FoldIn(y, regularization=0.0, alpha=1.0).user_vector(np.array([0, 2]), np.array([1.0, 2.0]))
    assert np.isfinite(x).all() and x.shape == (5,)
    assert float(x @ y[2]) > float(x @ y[1]) - 1e-6  # the heavier item scores at least as high
