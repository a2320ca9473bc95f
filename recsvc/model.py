"""A loaded model: the artifact plus the lookups the request path needs.

Built once per artifact (at load or hot reload), then read-only and shared by all
requests, so nothing here is computed per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.artifact import ModelArtifact
from recsvc.config import RepeatPolicy
from recsvc.foldin import FoldIn

__all__ = ["Model", "RankingDefaults"]


@dataclass(frozen=True)
class RankingDefaults:
    """The shop's defaults, chosen by the trainer and stored in the manifest."""

    repeat_policy: RepeatPolicy = RepeatPolicy.ALLOW
    """ALLOW or EXCLUDE (never AUTO: the trainer has decided)."""
    repeat_weight: float = 0.5
    """Blend weight of the buy-again signal against CF."""

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> RankingDefaults:
        section = manifest.get("ranking", {})
        return cls(
            repeat_policy=RepeatPolicy(section.get("repeat_policy", RepeatPolicy.ALLOW)),
            repeat_weight=float(section.get("repeat_weight", 0.5)),
        )


@dataclass
class Model:
    """Artifact + id lookups + fold-in solver + popularity order."""

    artifact: ModelArtifact
    item_position: dict[str, int] = field(init=False, repr=False)
    user_position: dict[str, int] = field(init=False, repr=False)
    category_position: dict[str, int] = field(init=False, repr=False)
    popular_order: NDArray[np.int64] = field(init=False, repr=False)
    foldin: FoldIn = field(init=False, repr=False)
    defaults: RankingDefaults = field(init=False)

    def __post_init__(self) -> None:
        a = self.artifact
        self.item_position = {str(x): i for i, x in enumerate(a.item_ids.tolist())}
        self.user_position = {str(x): i for i, x in enumerate(a.user_ids.tolist())}
        self.category_position = {str(x): i for i, x in enumerate(a.categories.tolist())}
        # stable sort: ties in popularity keep catalogue order, so answers are reproducible
        self.popular_order = np.argsort(-a.popularity, kind="stable")
        als = a.manifest.get("config", {}).get("als", {})
        self.foldin = FoldIn(
            a.item_factors,
            regularization=float(als.get("regularization", 0.05)),
            alpha=float(als.get("alpha", 10.0)),
        )
        self.defaults = RankingDefaults.from_manifest(a.manifest)

    @property
    def version(self) -> str:
        return self.artifact.model_version

    @property
    def n_items(self) -> int:
        return len(self.artifact.item_ids)

    def user_history(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Items and decayed weights of every event of training user ``user``."""
        return _row(self.artifact.user_items, user)

    def user_purchases(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Items training user ``user`` bought, with decayed purchase weights."""
        return _row(self.artifact.user_purchases, user)


def _row(m: sp.csr_matrix, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    start, end = m.indptr[user], m.indptr[user + 1]
    return m.indices[start:end].astype(np.int32), m.data[start:end].astype(np.float32)
