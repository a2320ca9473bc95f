"""The manifest: the typed, versioned contract between training and serving.

Training fills a :class:`Manifest`; :mod:`recsvc.artifact` writes it as the
version directory's ``manifest.json`` (JSON, sorted keys, indent 2) and reads it
back with :func:`parse`. Readers use attributes (``m.data.cutoff_unix``,
``m.config.als.regularization``), never string keys.

Checked at load: every section and field is present, none is unknown (a newer
writer, a typo, a hand edit), and each has its type. The re-ranker's weights are
kept by feature name and must name exactly :data:`recsvc.neighbors.FEATURES`, so
the order of the features in the code or on disk never changes a score.

Formats: ``FORMAT_VERSION`` is what this build writes. Format 1 (the untyped
manifest, with the re-ranker's weights by position in ``neighbors.npz``) is
upgraded on load by :func:`upgrade_v1`; any other format is refused. A change to
this schema that an older reader could not follow is a new format, with its upgrade.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from recsvc.config import RepeatPolicy, Settings
from recsvc.index import IndexKind
from recsvc.neighbors import FEATURES

__all__ = [
    "FEATURES_V1",
    "FORMAT_VERSION",
    "BlendFitReport",
    "BlendWeights",
    "BoughtTogetherSection",
    "DataSection",
    "FileEntry",
    "IndexSection",
    "Manifest",
    "NeighborsSection",
    "PeersSection",
    "RankingSection",
    "SourceSummary",
    "TrainedSettings",
    "describe",
    "parse",
    "upgrade_v1",
]

FORMAT_VERSION: Final = 2
"""The manifest format this build writes."""


class _Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, use_attribute_docstrings=True
    )

    def as_json(self) -> dict[str, Any]:
        """This section as ``manifest.json`` holds it (JSON values, field aliases)."""
        return self.model_dump(mode="json", by_alias=True)


class SourceSummary(_Schema):
    """One events file the trainer read (``training.loading.LoadSummary``)."""

    path: str
    """The file, as given to the trainer."""
    format: str
    """Its layout: ``events`` or ``online-retail``."""
    file_format: str
    """How its bytes were stored: ``csv``, ``csv+gzip`` or ``parquet``."""
    rows_read: int
    """Data rows in the file (header excluded), count."""
    rows_kept: int
    """Rows the trainer kept, count."""
    removed: dict[str, int]
    """Rows removed, count by reason."""
    guest_rows: int
    """Kept rows without a user id, count."""
    users: int
    """Distinct user ids kept, count."""
    items: int
    """Distinct item ids kept, count."""
    min_timestamp: int | None
    """Earliest kept event, Unix seconds (None: no rows kept)."""
    max_timestamp: int | None
    """Latest kept event, Unix seconds (None: no rows kept)."""
    seconds: float
    """Wall time spent reading the file, seconds."""


class DataSection(_Schema):
    """What the model was trained on."""

    cutoff: AwareDatetime
    """Time of the newest training event (UTC): later events reach the model only
    through live sessions and user updates."""
    cutoff_unix: int
    """The same instant, Unix seconds: the "now" of every time decay."""
    events: int
    """Events after erasure, count."""
    guest_events: int
    """Events without a user id (they count towards popularity only), count."""
    users: int
    """Users with a row in the model (a trained vector), count."""
    items: int
    """Items in the model's vocabulary, count."""
    interactions: int
    """Non-zero (user, item) weights the fit saw, count."""
    erased_events: int
    """Events dropped because their user is on the erasure list, count."""
    catalog_items_without_events: int
    """Catalogue items with no event (not in the model), count."""
    sources: tuple[SourceSummary, ...]
    """Every events file read, in order."""

    @field_serializer("cutoff", when_used="json")
    def _cutoff_text(self, value: datetime) -> str:
        return value.isoformat()


class TrainedSettings(Settings):
    """The full :class:`~recsvc.config.Settings` the model was trained with.

    The settings model itself rather than a copy, so each default lives once: a field
    Settings gains later loads from an older artifact with its default, and one it
    renames keeps loading through the alias it must keep for old config files anyway.
    Read from the manifest alone: unlike ``Settings``, never from this process's
    ``RECSVC_*`` environment, which belongs to the reader, not to the model."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def of(cls, settings: Settings) -> TrainedSettings:
        """``settings`` as an artifact keeps them: without secrets (the auth token, a
        password in the Redis URL), since artifacts are copied between hosts and read
        by whoever serves them."""
        data = settings.model_dump(mode="json")
        data["server"]["auth_token"] = None
        url = data["redis"]["url"]
        if url:
            parts = urlsplit(url)
            if parts.password is not None:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
                data["redis"]["url"] = urlunsplit(parts._replace(netloc=netloc))
        return cls.model_validate(data)


class IndexSection(_Schema):
    """The FAISS index over the item vectors (``index.faiss``)."""

    kind: IndexKind
    """``exact``, ``normscan``, ``hnsw`` or ``ivf``."""
    max_norm_sq: float
    """M² of a MIPS→L2 reduction, squared vector norm; 0 for every kind built now."""
    ef_search: int
    """HNSW query-time beam width, candidates (unused by the other kinds)."""
    recall_k: int
    """k of ``recall``, items."""
    recall: float
    """Recall@``recall_k`` of the index against exact search on sampled user
    vectors, fraction in [0, 1] (1 for an exact index); publish's gate."""


class BlendWeights(_Schema):
    """Weights of the ranking signals (:class:`recsvc.model.Blend`), each signal
    scaled to [0, 1] before weighing; all >= 0."""

    cf: float = Field(ge=0.0)
    """Inner product of the query vector with the item (ALS)."""
    repeat: float = Field(ge=0.0)
    """The user's own decayed purchase weight of the item (buy again)."""
    neighbors: float = Field(ge=0.0)
    """The item-neighbour model's score."""
    popularity: float = Field(ge=0.0)
    """The item's decayed popularity (a prior)."""
    peers: float = Field(default=0.0, ge=0.0)
    """The customer's customers-like-you list (``user_peers.npz``); 0 in models
    trained before it."""


class BlendFitReport(_Schema):
    """How the user blend was fitted on held-out last baskets (``training/blend.py``)."""

    recall_at_20: float = Field(validation_alias="recall@20", serialization_alias="recall@20")
    """Recall@20 of the chosen blend on the held-out baskets, fraction in [0, 1]."""
    users: int
    """Returning users whose last basket was held out, count."""
    popularity_half_life_days: float
    """Popularity half-life chosen with the blend, days."""


class RankingSection(_Schema):
    """The shop's ranking defaults, measured and fitted by the trainer."""

    repeat_policy: RepeatPolicy
    """``allow`` or ``exclude``: whether items a user bought may be recommended
    again by default (never ``auto``: the trainer has decided)."""
    repeat_share: float
    """Of the purchases late in the data by users who bought before, the share that
    are items the same user bought before, fraction in [0, 1]."""
    session_revisit_share: float
    """Of the visits' clicks after the first, the share that revisit an item of the
    same visit, fraction in [0, 1]."""
    user_blend: BlendWeights
    """The blend for a known user (with or without a live session)."""
    session_blend: BlendWeights
    """The blend for an anonymous session."""
    session_repeats: bool
    """Whether items of the live session may be recommended again by default."""
    user_blend_fit: BlendFitReport | None
    """How ``user_blend`` was fitted; None when it was not (too few returning users,
    or a blend set in the config)."""

    @field_validator("repeat_policy")
    @classmethod
    def _decided(cls, value: RepeatPolicy) -> RepeatPolicy:
        if value is RepeatPolicy.AUTO:
            raise ValueError("the trainer decides between allow and exclude, never auto")
        return value


class NeighborsSection(_Schema):
    """The item-neighbour model (``neighbors.npz`` holds its arrays and parameters)."""

    rerank_weights: dict[str, float] | None
    """Weight of each re-ranker feature by name, exactly the features of
    :data:`recsvc.neighbors.FEATURES` (unitless: features are combined in a softmax
    over the candidates); None = no re-ranking, the neighbour score alone."""

    @field_validator("rerank_weights")
    @classmethod
    def _exactly_the_features(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        problems = []
        if missing := [f for f in FEATURES if f not in value]:
            problems.append(f"missing feature(s) {', '.join(missing)}")
        if unknown := sorted(set(value) - set(FEATURES)):
            problems.append(f"unknown feature(s) {', '.join(unknown)}")
        if problems:
            raise ValueError("; ".join(problems) + " (the re-ranker's features do not match)")
        return value

    @classmethod
    def from_vector(cls, weights: NDArray[np.float64]) -> NeighborsSection:
        """From weights in :data:`FEATURES` order, as the model holds them; an empty
        vector means no re-ranking."""
        if len(weights) == 0:
            return cls(rerank_weights=None)
        if len(weights) != len(FEATURES):
            raise ValueError(f"{len(weights)} re-ranker weights for {len(FEATURES)} features")
        return cls(rerank_weights=dict(zip(FEATURES, weights.tolist(), strict=True)))

    def vector(self) -> NDArray[np.float64]:
        """The weights in :data:`FEATURES` order, as the model takes them (empty: no
        re-ranking)."""
        if self.rerank_weights is None:
            return np.zeros(0, dtype=np.float64)
        return np.array([self.rerank_weights[f] for f in FEATURES], dtype=np.float64)


class BoughtTogetherSection(_Schema):
    """The co-purchase counts (``bought_together.npz``, :mod:`recsvc.cobuy`)."""

    baskets: int = Field(ge=0)
    """Purchase baskets counted (of 2 to ``max_basket`` distinct items)."""
    pairs: int = Field(ge=0)
    """Item pairs kept (each item's strongest ``max_partners``)."""
    max_partners: int = Field(ge=1)
    """Partners kept per item."""
    min_support: int = Field(ge=1)
    """A pair met in fewer baskets was dropped."""
    max_basket: int = Field(ge=2)
    """Baskets of more distinct items were left out."""


class PeersSection(_Schema):
    """The customers-like-you lists (``user_peers.npz``, :mod:`recsvc.peers`) and how
    their weight was fitted (``training/peers.py``)."""

    k: int = Field(ge=1)
    """Nearest customers averaged per list."""
    groups: int = Field(ge=1)
    """TIFU-KNN's m: groups a customer's baskets are split into."""
    basket_decay: float
    """TIFU-KNN's r_b: a basket's weight within its group, per later basket."""
    group_decay: float
    """TIFU-KNN's r_g: a group's weight, per later group."""
    length: int = Field(ge=1)
    """Items kept per list."""
    pool: int = Field(ge=0)
    """Customers who can be a neighbour (the most recently active), count."""
    customers: int = Field(ge=0)
    """Customers with a list, count."""
    recall_at_20: float = Field(validation_alias="recall@20", serialization_alias="recall@20")
    """Recall@20 of the user blend with the lists on the blend fit's held-out
    baskets, fraction in [0, 1]."""
    recall_at_20_without: float = Field(
        validation_alias="recall@20_without", serialization_alias="recall@20_without"
    )
    """The same without them, fraction in [0, 1]."""


class FileEntry(_Schema):
    """One file of the version directory."""

    sha256: str
    """SHA-256 of its bytes, hex."""
    bytes: int
    """Its size, bytes."""


class Manifest(_Schema):
    """``manifest.json``: what a model version is, what made it, and its files."""

    format_version: Literal[1, 2] = FORMAT_VERSION
    """The format ``manifest.json`` was written in: ``FORMAT_VERSION``, or an older
    one this manifest was upgraded from on load. Writing always writes the current."""
    model_version: str
    """``<UTC time>-<8 hex of the item factors' hash>``; the version directory's name
    and the version in the user vectors' Redis keys."""
    created_at: AwareDatetime
    """When the trainer built the model (UTC, microseconds)."""
    data: DataSection
    """What the model was trained on: cut-off and counts."""
    config: TrainedSettings
    """The settings the model was trained with (``m.config.als.regularization``)."""
    index: IndexSection
    """The item index and its measured recall."""
    ranking: RankingSection
    """The shop's ranking defaults, as the server applies them."""
    neighbors: NeighborsSection | None
    """The item-neighbour model's weights; None when training built none (then there
    is no ``neighbors.npz``)."""
    bought_together: BoughtTogetherSection | None = None
    """The co-purchase counts behind SimilarItems' bought-together mode; None when
    training counted none (models trained before it; then no
    ``bought_together.npz``)."""
    peers: PeersSection | None = None
    """The customers-like-you lists; None when the trainer kept none (the signal did
    not help, was switched off, or the model predates it; then no
    ``user_peers.npz`` and the user blend's ``peers`` weight is 0)."""
    metrics: dict[str, float]
    """Quality measured at training time, by name: ``index_recall_at_20`` and the
    publish gate's holdout metrics (docs/evaluation.md), fractions in [0, 1], but
    ``holdout_users`` and ``compared_users@<version>``, counts."""
    timings: dict[str, float]
    """Training steps' wall times, by name (``<step>_seconds``), seconds."""
    files: dict[str, FileEntry]
    """Every other file of the version directory, by name (empty until written)."""

    @field_serializer("created_at", when_used="json")
    def _created_text(self, value: datetime) -> str:
        # microseconds always, so the text sorts as the time does (list_versions)
        return value.isoformat(timespec="microseconds")

    def to_json(self) -> str:
        """The text of ``manifest.json``."""
        return json.dumps(self.as_json(), indent=2, sort_keys=True) + "\n"


def parse(
    raw: Any, rerank_weights_v1: Callable[[], Sequence[float] | None] = lambda: None
) -> Manifest:
    """The manifest from the parsed JSON ``raw``, upgraded when of an older format.

    ``rerank_weights_v1`` is called for format 1 only: the re-ranker weights
    ``neighbors.npz`` holds by position (None: no such file). Raises ``ValueError``
    for an unsupported format and ``pydantic.ValidationError`` for a missing, unknown
    or mistyped field (see :func:`describe`)."""
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if isinstance(version, bool):
        version = str(version).lower()  # JSON true is no format, though Python's 1 == True
    if version == FORMAT_VERSION:
        return Manifest.model_validate(raw)
    if version == 1:
        return upgrade_v1(raw, rerank_weights_v1())
    raise ValueError(
        f"artifact format {version!r} is not supported "
        f"(this build reads formats 1 and {FORMAT_VERSION})"
    )


#: The re-ranker's features in the order format 1 stored their weights
#: (``recsvc.neighbors.FEATURES`` when format 2 began). Frozen: format-1 artifacts
#: mean these positions whatever the code's list becomes.
FEATURES_V1 = (
    "knn",
    "log_knn",
    "rule",
    "log_rule",
    "rule_window",
    "log_rule_window",
    "last",
    "back1",
    "back2",
    "back3plus",
    "log_count",
    "neg_idf",
    "recent",
    "embedding",
    "embedding_scaled",
    "embedding_last",
    "log_rule_raw",
    "knn_by_length",
    "log_knn_by_length",
    "rule_by_length",
    "embedding_scaled_by_length",
    "knn_rank_1",
    "knn_rank_2",
    "knn_rank_3_5",
    "knn_rank_6_10",
    "knn_rank_11_20",
    "knn_rank_21_50",
    "embedding_rank_1_5",
    "embedding_rank_6_20",
)


def upgrade_v1(raw: dict[str, Any], rerank_weights: Sequence[float] | None) -> Manifest:
    """A format-1 manifest as the current schema.

    Format 1 is format 2 without the ``neighbors`` section (the re-ranker's weights
    were an array in ``neighbors.npz``, by position in :data:`FEATURES_V1`; pass it
    as ``rerank_weights``, None when the artifact has no neighbour model) and with
    ``ranking.user_blend_fit`` left out when no blend was fitted. ``format_version``
    stays 1: the format the artifact was written in."""
    upgraded = dict(raw)
    if "neighbors" in upgraded:
        raise ValueError("format 1 has no 'neighbors' section")
    if rerank_weights is None:
        upgraded["neighbors"] = None
    elif len(rerank_weights) == 0:
        upgraded["neighbors"] = {"rerank_weights": None}
    elif len(rerank_weights) != len(FEATURES_V1):
        raise ValueError(
            f"neighbors.npz holds {len(rerank_weights)} re-ranker weights; "
            f"format 1 has {len(FEATURES_V1)} features"
        )
    else:
        weights = [float(w) for w in rerank_weights]
        upgraded["neighbors"] = {"rerank_weights": dict(zip(FEATURES_V1, weights, strict=True))}
    ranking = upgraded.get("ranking")
    if isinstance(ranking, dict):
        upgraded["ranking"] = {"user_blend_fit": None, **ranking}
    return Manifest.model_validate(upgraded)


def describe(exc: ValidationError) -> str:
    """Every problem of ``exc`` on one line, each as ``section.field: message``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors()
    )
