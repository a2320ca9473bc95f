"""A loaded model: the artifact plus the lookups the request path needs.

Built once per artifact (at load or hot reload), then read-only and shared by all
requests, so nothing here is computed per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.artifact import ModelArtifact
from recsvc.cobuy import BoughtTogether, CoPurchases
from recsvc.config import RepeatPolicy
from recsvc.foldin import FoldIn
from recsvc.manifest import BlendWeights, RankingSection
from recsvc.neighbors import NeighborModel
from recsvc.peers import PeerLists

__all__ = ["Blend", "Model", "NeighborScorer", "RankingDefaults"]


@dataclass(frozen=True)
class Blend:
    """Weights of the ranking signals, each signal scaled to [0, 1] before weighing.

    ``cf`` is the inner product of the query vector with the item (ALS), ``repeat``
    the user's own decayed purchase weight of the item (buy again), ``neighbors``
    the item-neighbour score of the session's (or the user's) items, ``popularity``
    the item's decayed popularity (a prior), ``peers`` the known customer's
    customers-like-you list (:mod:`recsvc.peers`).
    """

    cf: float = 1.0
    repeat: float = 0.0
    neighbors: float = 0.0
    popularity: float = 0.0
    peers: float = 0.0

    def __post_init__(self) -> None:
        if min(self.cf, self.repeat, self.neighbors, self.popularity, self.peers) < 0:
            raise ValueError(f"blend weights must be >= 0, got {self}")

    def with_repeat_weight(self, repeat: float | None) -> Blend:
        """This blend with the buy-again weight set to ``repeat`` (a request's
        override) and the other weights scaled to share ``1 - repeat``."""
        if repeat is None:
            return self
        rest = self.cf + self.neighbors + self.popularity + self.peers
        if rest <= 0:
            return Blend(cf=1.0 - repeat, repeat=repeat)
        scale = (1.0 - repeat) / rest
        return Blend(
            self.cf * scale,
            repeat,
            self.neighbors * scale,
            self.popularity * scale,
            self.peers * scale,
        )

    def with_popularity_weight(self, popularity: float | None) -> Blend:
        """This blend with the popularity weight set to ``popularity`` (a placement's
        trending share) and the other weights scaled to share ``1 - popularity``."""
        if popularity is None:
            return self
        rest = self.cf + self.repeat + self.neighbors + self.peers
        if rest <= 0:
            return Blend(cf=1.0 - popularity, popularity=popularity)
        scale = (1.0 - popularity) / rest
        return Blend(
            self.cf * scale,
            self.repeat * scale,
            self.neighbors * scale,
            popularity,
            self.peers * scale,
        )

    def without_repeat(self) -> Blend:
        return replace(self, repeat=0.0)

    def without_peers(self) -> Blend:
        """No peer list (a customer without one): the other weights as they are."""
        return replace(self, peers=0.0)

    def without_neighbors(self) -> Blend:
        """No neighbour model: its weight goes to CF, the closest signal."""
        return replace(self, cf=self.cf + self.neighbors, neighbors=0.0)

    @classmethod
    def from_weights(cls, weights: BlendWeights) -> Blend:
        """The blend a manifest records."""
        return cls(weights.cf, weights.repeat, weights.neighbors, weights.popularity, weights.peers)


@dataclass(frozen=True)
class RankingDefaults:
    """The shop's defaults, chosen by the trainer and stored in the manifest."""

    repeat_policy: RepeatPolicy = RepeatPolicy.ALLOW
    """ALLOW or EXCLUDE (never AUTO: the trainer has decided)."""
    user: Blend = Blend(cf=0.5, repeat=0.5)
    """The blend for a known user (with or without a live session)."""
    session: Blend = Blend()
    """The blend for an anonymous session."""
    session_repeats: bool = False
    """Whether items of the live session may be recommended again by default."""

    @classmethod
    def from_manifest(cls, ranking: RankingSection) -> RankingDefaults:
        """The defaults of the manifest's ``ranking`` section."""
        return cls(
            repeat_policy=ranking.repeat_policy,
            user=Blend.from_weights(ranking.user_blend),
            session=Blend.from_weights(ranking.session_blend),
            session_repeats=ranking.session_repeats,
        )


class NeighborScorer(Protocol):
    """Item neighbours of a list of items (see :mod:`recsvc.neighbors`)."""

    def score(
        self, items: NDArray[np.int32], weights: NDArray[np.float32] | None = None, limit: int = 100
    ) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """``items`` (oldest first) in; the top ``limit`` neighbours, best first, out."""
        ...


@dataclass
class Model:
    """Artifact + id lookups + fold-in solver + popularity order."""

    artifact: ModelArtifact
    item_names: list[str] = field(init=False, repr=False)
    """Every item's id, by position, as Python strings (an answer's ids are read
    from here one by one: no NumPy call per answer)."""
    item_position: dict[str, int] = field(init=False, repr=False)
    user_position: dict[str, int] = field(init=False, repr=False)
    category_position: dict[str, int] = field(init=False, repr=False)
    popular_order: NDArray[np.int64] = field(init=False, repr=False)
    foldin: FoldIn = field(init=False, repr=False)
    neighbors: NeighborScorer | None = field(init=False, repr=False)
    """The item-neighbour model, when the artifact has one."""
    bought_together: BoughtTogether | None = field(init=False, repr=False)
    """The co-purchase ranking, when the artifact has its counts."""
    peers: PeerLists | None = field(init=False, repr=False)
    """Every known customer's customers-like-you list, when the artifact has them."""
    defaults: RankingDefaults = field(init=False)

    def __post_init__(self) -> None:
        a = self.artifact
        self.item_names = [str(x) for x in a.item_ids.tolist()]
        self.item_position = {x: i for i, x in enumerate(self.item_names)}
        self.user_position = {str(x): i for i, x in enumerate(a.user_ids.tolist())}
        self.category_position = {str(x): i for i, x in enumerate(a.categories.tolist())}
        # stable sort: ties in popularity keep catalogue order, so answers are reproducible
        self.popular_order = np.argsort(-a.popularity, kind="stable")
        als = a.manifest.config.als
        self.foldin = FoldIn(a.item_factors, regularization=als.regularization, alpha=als.alpha)
        self.neighbors = _neighbors(a)
        self.bought_together = (
            BoughtTogether(CoPurchases.from_arrays(a.bought_together))
            if a.bought_together is not None
            else None
        )
        self.peers = a.peers
        self.defaults = RankingDefaults.from_manifest(a.manifest.ranking)

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

    def user_peers(self, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
        """Training user ``user``'s customers-like-you list: items (ascending) and
        scores scaled to (0, 1]; empty when the model has none for them."""
        if self.peers is None:
            return _EMPTY_INT, _EMPTY_FLOAT
        return self.peers.row(user)


_EMPTY_INT: NDArray[np.int32] = np.zeros(0, np.int32)
_EMPTY_FLOAT: NDArray[np.float32] = np.zeros(0, np.float32)


def _row(m: sp.csr_matrix, user: int) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    start, end = m.indptr[user], m.indptr[user + 1]
    return m.indices[start:end].astype(np.int32), m.data[start:end].astype(np.float32)


def _neighbors(a: ModelArtifact) -> NeighborScorer | None:
    if a.neighbors is None or a.manifest.neighbors is None:
        return None
    # the weights by name, in the order of the features the code computes now
    return NeighborModel.from_arrays(
        {**a.neighbors, "rerank_weights": a.manifest.neighbors.vector()}
    )
