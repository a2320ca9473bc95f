"""Session-based recommendation for anonymous live sessions.

What the shopper clicked in this session (oldest first) in, the items most likely to
be clicked next out, from training sessions alone (no user, no learned factors at
request time beyond a small item embedding table).

Two stages:

1. **Candidates from session neighbours** (STAN, Garg et al., SIGIR 2019; V-STAN,
   Ludewig et al., "Empirical analysis of session-based recommendation algorithms",
   UMUAI 2021), with every shared item anchoring votes:

   - the session is a vector over its distinct items, the one last clicked ``d``
     clicks before the end weighted ``exp(−d / session_decay)``, times its IDF
     ``log(1 + n_sessions / sessions_with_item)`` raised to ``idf``;
   - candidates: the ``sample_size`` most recent training sessions sharing an item
     with it (training sessions are stored in chronological order);
   - similarity to a candidate ``c``: the dot product with ``c``'s binary vector over
     ``sqrt(len(s)) · len(c) ** length_exponent`` (distinct items), times
     ``exp(−age(c) / recency_decay)`` with ``age`` in sessions before the newest;
   - each of the ``neighbors`` most similar candidates votes for its items: for every
     item ``a`` it shares with the session (``d`` clicks before the session's end,
     weight ``exp(−d / anchor_decay)``; STAN uses only the latest shared item:
     ``anchor_decay = 0``), the item ``q`` clicks from ``a`` in ``c`` gets
     ``similarity · weight · exp(−|q| / neighbor_decay)``, times ``before_weight``
     when it was clicked before ``a``. A shared item votes for itself in full, so
     repeat clicks (a fifth of next clicks) are predicted.

2. **Re-ranking** (when the model has re-ranking weights): the ``candidates`` best
   neighbour items, the last item's ``rule_candidates`` strongest sequential rules
   and the session's own items are scored by a linear model over
   :data:`FEATURES` (softmax over the candidates, fitted at build time on a
   held-out tail of the training sessions): the neighbour score, sequential rules
   (SR, Ludewig & Jannach, UMUAI 2018: ``b`` after ``a`` within ``rule_steps``
   clicks, weighted ``1 / gap``) of the last item and of the last ``rule_window``
   items, where and how often the item was clicked in this session, its IDF and
   recent popularity, the dot product of its embedding (truncated SVD of shifted
   PPMI item co-occurrence within a window) with the session's recency-weighted
   embedding and with the last click's, one-hot rank bins of the neighbour and
   embedding scores, and a few of these divided by the session's length. The
   score returned is ``exp(logit − best logit)``.

Measured on Diginetica (the SR-GNN split: 186,670 training sessions, 60,858 test
prefix→next cases, the whole catalogue ranked, repeats allowed; hyperparameters
chosen on prefix→next cases of the last 10% of the training sessions):

================================  =======  =======  =====================
model                             HR@20    MRR@20   score() CPU, median
================================  =======  =======  =====================
these defaults (re-ranked)        0.5359   0.1986   0.67 ms (p99 1.5 ms)
neighbours alone (no re-ranking)  0.5277   0.1886   0.28 ms (p99 0.74 ms)
STAN (published)                  0.5097   0.1848
SR-GNN (published)                0.5073   0.1759
GCE-GNN (published)               0.5422   0.1904
================================  =======  =======  =====================

"No re-ranking": the same arrays with ``with_params(params, np.zeros(0))``.

(thread CPU time, one thread on a shared, loaded 2-core machine; build 30–46 s then,
~8 s since the build's faster embedding and re-ranker fit; arrays 31.5 MB.)

The CPU column is the NumPy scoring's. Scoring now runs in compiled kernels
(:mod:`recsvc.session_kernels`; the same arithmetic, ties at a cut to the newer
session or the smaller item): the served ranking's p50 on Diginetica went 0.46 → 0.17
ms (``recsvc evaluate`` report), HR@20/MRR@20 0.5413/0.2001.

Everything is plain NumPy arrays (saved with ``allow_pickle=False``); scoring does
not write to them and the kernels keep no state, so one instance is safe to share
across threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsvc import session_kernels as kernels
from recsvc.config import NeighborParams

__all__ = ["FEATURES", "N_FEATURES", "NeighborModel", "NeighborParams"]

IntArray = NDArray[np.int32]
FloatArray = NDArray[np.float32]

_EMPTY_INT: IntArray = np.zeros(0, dtype=np.int32)
_EMPTY_FLOAT: FloatArray = np.zeros(0, dtype=np.float32)
_PARAM_PREFIX = "param__"

FEATURES = (
    "knn",  # neighbour score / best neighbour score (0 when not a neighbour item)
    "log_knn",  # log(knn + 0.01)
    "rule",  # rule score from the last item / the best one
    "log_rule",
    "rule_window",  # decayed rule score from the last rule_window items / the best
    "log_rule_window",
    "last",  # the item is the session's last click
    "back1",  # ... was last clicked 1 click before the end
    "back2",  # ... 2 clicks before the end
    "back3plus",  # ... 3 or more clicks before the end
    "log_count",  # log(1 + clicks on the item in the session)
    "neg_idf",  # −log(1 + n_sessions / sessions_with_item)
    "recent",  # log(1 + clicks in the most recent training sessions)
    "embedding",  # item vector · session vector
    "embedding_scaled",  # ... / the largest |value| among the candidates
    "embedding_last",  # item vector · the last click's vector
    "log_rule_raw",  # log(1 + rule score from the last item)
    "knn_by_length",  # knn / clicks in the session
    "log_knn_by_length",  # log_knn / clicks in the session
    "rule_by_length",  # rule / clicks in the session
    "embedding_scaled_by_length",  # embedding_scaled / clicks in the session
    "knn_rank_1",  # the candidate's rank by knn (1 = best) is 1
    "knn_rank_2",
    "knn_rank_3_5",
    "knn_rank_6_10",
    "knn_rank_11_20",
    "knn_rank_21_50",
    "embedding_rank_1_5",  # rank by the embedding feature among the candidates
    "embedding_rank_6_20",
)
N_FEATURES = len(FEATURES)


_ARRAY_NAMES = (
    "session_indptr",
    "session_items",
    "session_length",
    "item_indptr",
    "item_sessions",
    "item_idf",
    "item_recent",
    "item_vectors",
    "rule_indptr",
    "rule_items",
    "rule_scores",
    "rerank_weights",
)


class NeighborModel:
    """Scores next items for a live session (see the module docstring).

    Arrays (``S`` training sessions, ``N`` clicks, ``I`` items):

    - ``session_indptr`` ``(S + 1,)`` int64, ``session_items`` ``(N,)`` int32: the
      training sessions' items in click order, sessions oldest first;
    - ``session_length`` ``(S,)`` float32: distinct items per session;
    - ``item_indptr`` ``(I + 1,)`` int64, ``item_sessions`` ``(M,)`` int32: for each
      item, the sessions holding it, newest first, each once;
    - ``item_idf`` ``(I,)`` float32: ``log(1 + S / sessions_with_item)`` (0 if none);
    - ``item_recent`` ``(I,)`` float32: ``log(1 + clicks)`` in the newest sessions;
    - ``item_vectors`` ``(I, d)`` float32: unit item embeddings (``d`` may be 0);
    - ``rule_indptr`` ``(I + 1,)`` int64, ``rule_items`` ``(R,)`` int32,
      ``rule_scores`` ``(R,)`` float32: each item's strongest successors, best first;
    - ``rerank_weights`` ``(N_FEATURES,)`` float64, or ``(0,)``: no re-ranking.
    """

    def __init__(
        self,
        params: NeighborParams,
        session_indptr: NDArray[np.int64],
        session_items: IntArray,
        session_length: FloatArray,
        item_indptr: NDArray[np.int64],
        item_sessions: IntArray,
        item_idf: FloatArray,
        item_recent: FloatArray,
        item_vectors: FloatArray,
        rule_indptr: NDArray[np.int64],
        rule_items: IntArray,
        rule_scores: FloatArray,
        rerank_weights: NDArray[np.float64],
    ) -> None:
        self.params = params
        self.session_indptr = session_indptr
        self.session_items = session_items
        self.session_length = session_length
        self.item_indptr = item_indptr
        self.item_sessions = item_sessions
        self.item_idf = item_idf
        self.item_recent = item_recent
        self.item_vectors = item_vectors
        self.rule_indptr = rule_indptr
        self.rule_items = rule_items
        self.rule_scores = rule_scores
        self.rerank_weights = rerank_weights
        n_items = len(item_indptr) - 1
        if (
            len(rule_indptr) != n_items + 1
            or len(item_idf) != n_items
            or len(item_recent) != n_items
            or item_vectors.ndim != 2
            or len(item_vectors) != n_items
        ):
            raise ValueError("item arrays disagree on the number of items")
        if len(session_length) != len(session_indptr) - 1:
            raise ValueError("session arrays disagree on the number of sessions")
        if len(rerank_weights) not in (0, N_FEATURES):
            raise ValueError(f"rerank_weights must have 0 or {N_FEATURES} entries")
        for a in self._arrays().values():
            a.flags.writeable = False
        # derived from the arrays and the parameters once, read-only while scoring
        lengths = np.diff(session_indptr)
        self._reach = int(lengths.max()) if len(lengths) else 0
        self._vote_of = _distance_votes(self._reach, params.neighbor_decay, params.before_weight)
        self._length_factor = session_length.astype(np.float64) ** params.length_exponent
        self._vote_of.flags.writeable = False
        self._length_factor.flags.writeable = False

    @property
    def n_items(self) -> int:
        return len(self.item_indptr) - 1

    @property
    def n_sessions(self) -> int:
        return len(self.session_indptr) - 1

    def _arrays(self) -> dict[str, NDArray[Any]]:
        return {name: getattr(self, name) for name in _ARRAY_NAMES}

    def to_arrays(self) -> dict[str, NDArray[Any]]:
        """Every array plus the parameters (as 0-d arrays), for ``np.savez``."""
        out = dict(self._arrays())
        for name, value in self.params.model_dump().items():
            out[_PARAM_PREFIX + name] = np.asarray(value)
        return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, NDArray[Any]] | Any, params: NeighborParams | None = None
    ) -> NeighborModel:
        """The inverse of :meth:`to_arrays` (a dict or an opened ``.npz``);
        ``params`` overrides the saved parameters (only the scoring ones take effect:
        the build ones are baked into the arrays)."""
        if params is None:
            params = NeighborParams.model_validate(
                {
                    name: np.asarray(arrays[_PARAM_PREFIX + name]).item()
                    for name in NeighborParams.model_fields
                }
            )
        dtypes = {
            "session_indptr": np.int64,
            "item_indptr": np.int64,
            "rule_indptr": np.int64,
            "session_items": np.int32,
            "item_sessions": np.int32,
            "rule_items": np.int32,
            "rerank_weights": np.float64,
        }
        loaded = {
            name: np.asarray(arrays[name], dtype=dtypes.get(name, np.float32))
            for name in _ARRAY_NAMES
        }
        return cls(params, **loaded)

    def with_params(
        self, params: NeighborParams, rerank_weights: NDArray[np.float64] | None = None
    ) -> NeighborModel:
        """The same arrays (shared, not copied) scored with other parameters (and,
        when given, other re-ranking weights)."""
        arrays = self._arrays()
        if rerank_weights is not None:
            arrays["rerank_weights"] = np.asarray(rerank_weights, dtype=np.float64)
        return NeighborModel(params, **arrays)

    def nbytes(self) -> int:
        """Memory of the arrays."""
        return sum(a.nbytes for a in self._arrays().values())

    # ------------------------------------------------------------------ scoring

    def score(
        self, items: IntArray, weights: FloatArray | None = None, limit: int = 100
    ) -> tuple[IntArray, FloatArray]:
        """The best ``limit`` next items for a session.

        ``items`` ``(n,)`` int32: the session's items (positions), oldest first;
        unknown positions (negative or ``>= n_items``) are ignored. ``weights``
        ``(n,)`` float32, optional: extra per-click weights (e.g. by event type)
        multiplied into the recency weights of the neighbour search. Returns items
        ``(m,)`` int32 and scores ``(m,)`` float32, best first (ties by position),
        ``m <= limit``, every score positive; empty arrays when no known item is given
        or nothing scores.
        """
        session = self._session(items, weights)
        if limit <= 0 or session is None:
            return _EMPTY_INT, _EMPTY_FLOAT
        cands, knn = self._knn(*session)
        if len(self.rerank_weights) == 0:
            return self._top(cands, knn, limit)
        cands, features = self._features(session[0], session[1], cands, knn)
        logit = features @ self.rerank_weights
        return self._top(cands, np.exp(logit - logit.max()), limit)

    def candidate_features(
        self, items: IntArray, weights: FloatArray | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """The re-ranker's input for a session: candidates ``(c,)`` int64 (sorted) and
        their features ``(c, N_FEATURES)`` float64; empty for an empty session."""
        session = self._session(items, weights)
        if session is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, N_FEATURES), dtype=np.float64)
        cands, knn = self._knn(*session)
        return self._features(session[0], session[1], cands, knn)

    def _session(
        self, items: IntArray, weights: FloatArray | None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]] | None:
        """The known clicks (int64), their positions in the session and their
        recency (times the caller's) weights; None when no click is known."""
        items = np.asarray(items)
        if weights is None:
            weights = np.ones(len(items), dtype=np.float32)
        elif len(weights) != len(items):
            raise ValueError(f"{len(weights)} weights for {len(items)} items")
        seq, position, click_weight = kernels.session_arrays(
            items, np.asarray(weights), self.n_items, self.params.session_decay
        )
        return None if len(seq) == 0 else (seq, position, click_weight)

    def _top(
        self, cands: NDArray[np.int64], scores: NDArray[np.float64], limit: int
    ) -> tuple[IntArray, FloatArray]:
        """The best ``limit`` positive-scored candidates, best first (ties: the smaller
        position): items int32, scores float32."""
        return kernels.top_scores(cands, scores, limit)

    def _knn(
        self,
        seq: NDArray[np.int64],
        position: NDArray[np.float64],
        click_weight: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Stage 1: the neighbours' items (in no particular order) and their summed
        votes."""
        p = self.params
        return kernels.knn_votes(
            seq, position, click_weight,
            self.item_indptr, self.item_sessions, self.item_idf,
            self.session_indptr, self.session_items, self._length_factor,
            self._vote_of, self._reach,
            p.sample_size, p.neighbors, p.idf, p.recency_decay, p.anchor_decay,
        )  # fmt: skip

    def _features(
        self,
        seq: NDArray[np.int64],
        position: NDArray[np.float64],
        knn_items: NDArray[np.int64],
        knn_scores: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Candidates (the neighbours' best, the last item's strongest rules, the
        session's items; sorted) and their ``(c, N_FEATURES)`` features (see
        :data:`FEATURES`)."""
        p = self.params
        return kernels.session_features(
            seq, position, knn_items, knn_scores,
            self.rule_indptr, self.rule_items, self.rule_scores,
            self.item_idf, self.item_recent, self.item_vectors,
            N_FEATURES, p.candidates, p.rule_candidates, p.rule_window, p.rule_decay,
            p.embedding_decay,
        )  # fmt: skip


def _distance_votes(reach: int, neighbor_decay: float, before_weight: float) -> NDArray[np.float64]:
    """The vote ``exp(−|d| / neighbor_decay)`` (times ``before_weight`` for ``d < 0``)
    of every distance ``d`` in ``−reach..reach``, at index ``d + reach``."""
    dist = np.arange(-reach, reach + 1, dtype=np.int64)
    vote = np.exp(-np.abs(dist) / neighbor_decay)
    if before_weight != 1.0:
        vote = np.where(dist < 0, vote * before_weight, vote)
    out: NDArray[np.float64] = vote
    return out


def _ranges(starts: NDArray[np.int64], counts: NDArray[np.int64], total: int) -> NDArray[np.int64]:
    """The concatenation of ``arange(s, s + c)`` for every ``(s, c)``; ``total`` the
    sum of ``counts``."""
    ends = np.cumsum(counts)
    offsets = np.repeat(starts - (ends - counts), counts)
    out: NDArray[np.int64] = np.arange(total, dtype=np.int64) + offsets
    return out
