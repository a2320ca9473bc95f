"""Publishing loads user vectors into a real Redis, byte-exact, under versioned keys."""

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from recsvc import artifact as art
from recsvc.store import KeyScheme, UserVectorStore, encode_vector
from recsvc.training.pipeline import LoadedData, build_model
from recsvc.training.publish import publish, rollback

from factories import block_shop, both_backends, small_settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


def write_version(root: Path, seed: int) -> art.ModelArtifact:
    settings = small_settings(None, als={"factors": 4, "iterations": 5, "random_state": seed})
    built = build_model(LoadedData(block_shop(seed=seed), None, (), 0), settings)
    art.write_artifact(built.artifact, root)
    return built.artifact


def test_publish_writes_every_vector_byte_exact_then_rollback_reloads(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    settings = small_settings(
        tmp_path, redis={"url": redis_url, "prefix": redis_prefix, "vector_ttl_seconds": 3600}
    )
    root = settings.artifact_root
    settings.erasure_path.parent.mkdir(parents=True, exist_ok=True)
    v1 = write_version(root, 1)
    result = publish(settings, v1.model_version)
    assert result.vectors_written == len(v1.user_ids)
    for i in (0, 17, len(v1.user_ids) - 1):
        key = KeyScheme(redis_prefix).vector(str(v1.user_ids[i]), v1.model_version)
        assert redis_client.get(key) == encode_vector(v1.user_factors[i])
        assert 0 < redis_client.ttl(key) <= 3600

    # a newer version, then a user asks to be forgotten, then we roll back:
    v2 = write_version(root, 2)
    publish(settings, v2.model_version)
    settings.erasure_path.write_text(f"{v1.user_ids[0]}\n")
    redis_client.delete(KeyScheme(redis_prefix).vector(str(v1.user_ids[0]), v1.model_version))
    back = rollback(settings)
    assert back.version == v1.model_version
    assert back.vectors_written == len(v1.user_ids) - 1
    store = UserVectorStore(redis_client, prefix=redis_prefix)
    assert store.get(v1.model_version, str(v1.user_ids[0]), 4) is None  # stays forgotten
    got = store.get(v1.model_version, str(v1.user_ids[1]), 4)
    assert got is not None and np.array_equal(got, v1.user_factors[1])


def test_publish_paces_the_vectors_by_the_setting(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, redis_prefix: str
) -> None:
    # [redis] publish_rate_per_second reaches UserVectorStore.publish: the block shop's
    # 60 users at 120 vectors/s take at least half a second, and CURRENT moves after.
    redis_settings = {"url": redis_url, "prefix": redis_prefix, "vector_ttl_seconds": 3600}
    redis_settings |= {"publish_rate_per_second": 120.0, "publish_batch_size": 16}
    settings = small_settings(tmp_path, redis=redis_settings)
    v1 = write_version(settings.artifact_root, 1)
    started = time.monotonic()
    result = publish(settings, v1.model_version)
    assert time.monotonic() - started >= len(v1.user_ids) / 120.0
    assert result.vectors_written == len(v1.user_ids) == 60
    assert art.current_version(settings.artifact_root) == v1.model_version
    keys = KeyScheme(redis_prefix)
    raws = [
        redis_client.get(k) for k in [keys.vector(str(u), v1.model_version) for u in v1.user_ids]
    ]
    assert raws == [encode_vector(row) for row in v1.user_factors]
