"""Pin the public surface of the shared core: a change here is a deliberate API change."""

import importlib

import grpc
import pytest

from recsvc import errors

PUBLIC = {
    "recsvc.errors": [
        "ArtifactError", "ChecksumError", "ConfigError", "ConflictError", "DataError",
        "FieldViolation", "InputRowError", "InvalidRequestError", "ModelNotLoadedError",
        "NotFoundError", "PreconditionError", "QualityGateError", "RecsvcError", "StoreError",
    ],
    "recsvc.config": [
        "ALSSettings", "BlendSettings", "EvaluationSettings", "IndexSettings", "NeighborParams",
        "NeighborSettings",
        "PeerSettings",
        "PlacementSettings",
        "PrivacySettings",
        "RankingSettings",
        "RedisSettings",
        "RepeatPolicy", "RetentionSettings", "ServerSettings", "Settings", "SimilarMode",
        "WeightingSettings",
        "example_toml",
        "load_settings",
    ],
    "recsvc.ranking": [
        "Filters", "Popularity", "Query", "Ranker", "Ranking", "Reason", "ScoreWeights",
        "Strategy",
        "training_user_query",
    ],
    "recsvc.artifact": [
        "FORMAT_VERSION", "ModelArtifact", "current_version", "finish_replacements",
        "is_version_name", "list_versions", "publish_version", "read_artifact", "remove_users",
        "resolve", "rollback", "rollback_target", "write_artifact",
    ],
    "recsvc.manifest": [
        "FEATURES_V1", "FORMAT_VERSION", "BlendFitReport", "BlendWeights",
        "BoughtTogetherSection", "DataSection",
        "FileEntry", "IndexSection", "Manifest", "NeighborsSection", "PeersSection",
        "RankingSection",
        "SourceSummary", "TrainedSettings", "describe", "parse", "upgrade_v1",
    ],
    "recsvc.cobuy": [
        "MAX_BASKET", "MAX_PARTNERS", "MIN_SUPPORT", "BoughtTogether", "CoPurchases",
        "count_co_purchases",
    ],
    "recsvc.index": [
        "IndexKind", "ItemIndex", "Mask", "NormScan", "ScanMask", "choose_kind", "exact_search",
        "measure_recall", "warm_up",
    ],
    "recsvc.jit": ["CACHES", "kernel"],
    "recsvc.objectstore": ["ObjectStoreModels"],
    "recsvc.peers": ["PeerLists", "nearest", "peer_lists", "remove"],
    "recsvc.erasure": [
        "HEADER", "Erasure", "ErasureList", "append_erasure", "append_erasures",
        "read_erasure_list",
    ],
    "recsvc.experiments": [
        "Experiment", "RecommendationId", "Variant", "check_experiments", "experiment_message",
        "owner_digest", "parse_recommendation_id", "read_experiments", "recommendation_id",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_pinned_and_importable(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_every_error_maps_to_a_client_safe_grpc_code() -> None:
    internal = (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)
    subclasses = [
        getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), errors.RecsvcError)
        and getattr(errors, name) is not errors.RecsvcError
    ]
    assert len(subclasses) == 12
    for cls in subclasses:
        assert cls.grpc_code not in internal, cls.__name__
