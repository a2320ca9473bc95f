"""Replicas that share nothing but the store: models from an object store (a local S3
server: moto's, over HTTP on loopback), their own artifact roots, erasure lists and
event logs, one Redis (single and cluster). They serve the same model, move to a new
one pushed to the store, refuse a tampered one, honour one erasure and see each other's
events."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsvc import artifact as art
from recsvc.cli import main
from recsvc.errors import ArtifactError, ChecksumError, ConfigError
from recsvc.objectstore import ObjectStoreModels
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends, small_settings
from server_harness import ServerThread, clients_of, publish_block_model, soon

TOKEN = "s3cret"
BUCKET = "models"


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A local S3 server (moto's, a real HTTP server on a loopback port)."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture()
def store_url(
    s3_server: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """A fresh prefix of the bucket, with the S3 client's environment pointing at the
    local server (as an operator's would at theirs)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }.items():
        monkeypatch.setenv(name, value)
    import fsspec  # noqa: PLC0415

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    tag = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    return f"s3://{BUCKET}/{tag}"


def _replica(tmp_path: Path, i: int, store_url: str, redis_url: str, prefix: str) -> ServerThread:
    own = tmp_path / f"replica-{i}"  # nothing of it is shared
    settings = small_settings(
        None,
        artifact_root=str(own / "artifacts"),
        erasure_list=str(own / "erased.txt"),
        redis={"url": redis_url, "prefix": prefix},
        server={
            "port": 0,
            "metrics_port": None,
            "auth_token": TOKEN,
            "event_log_dir": str(own / "eventlog"),
            "artifact_url": store_url,
            "reload_poll_seconds": 0.2,
        },
    )
    return ServerThread(settings)


def test_a_pushed_version_is_pulled_checked_and_published(tmp_path: Path, store_url: str) -> None:
    trained = tmp_path / "trainer"
    v1 = publish_block_model(trained, seed=0)
    store = ObjectStoreModels(store_url)
    assert store.current() is None
    assert store.push(trained, v1) > 0
    assert store.current() == v1
    mirror = tmp_path / "mirror"
    assert store.sync(mirror) == v1
    assert art.current_version(mirror) == v1
    assert store.sync(mirror) is None  # nothing new
    a = art.read_artifact(mirror / v1)  # checksums verified
    assert len(a.item_ids) == len(art.read_artifact(trained / v1).item_ids)


def test_recsvc_push_uploads_the_published_version(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trained = tmp_path / "trainer"
    v1 = publish_block_model(trained, seed=0)
    v2 = publish_block_model(trained, seed=1, publish=False)
    assert main(["push", "--to", store_url, "--artifacts", str(trained)]) == 0
    assert f"pushed {v1} to {store_url}" in capsys.readouterr().out
    store = ObjectStoreModels(store_url)
    assert store.current() == v1
    assert main(["push", "--to", store_url, "--artifacts", str(trained), "--version", v2,
                 "--no-publish"]) == 0  # fmt: skip
    assert store.current() == v1  # uploaded, not published
    assert store.fs.exists(f"{store.path}/{v2}/{art.MANIFEST}")
    with pytest.raises(ConfigError, match="invalid artifact URL"):
        ObjectStoreModels("nosuchscheme://bucket/x")


def test_a_tampered_or_incomplete_version_is_refused_and_nothing_is_kept(
    tmp_path: Path, store_url: str
) -> None:
    trained = tmp_path / "trainer"
    v1 = publish_block_model(trained, seed=0)
    store = ObjectStoreModels(store_url)
    store.push(trained, v1)
    store.fs.pipe_file(f"{store.path}/{v1}/{art.INDEX_FILE}", b"not an index")
    with pytest.raises(ChecksumError):
        store.pull(v1, tmp_path / "mirror")
    assert not list((tmp_path / "mirror").iterdir())  # no half version, no temp dir
    store.fs.rm_file(f"{store.path}/{v1}/{art.INDEX_FILE}")
    with pytest.raises(ArtifactError, match="missing"):
        store.pull(v1, tmp_path / "mirror")
    store.fs.pipe_file(f"{store.path}/{art.CURRENT}", b"../../etc\n")
    with pytest.raises(ArtifactError, match="not a version"):
        store.sync(tmp_path / "mirror")


@pytest.mark.integration
def test_replicas_sharing_nothing_but_the_store(
    tmp_path: Path, store_url: str, redis_url: str, redis_prefix: str
) -> None:
    trained = tmp_path / "trainer"
    v1 = publish_block_model(trained, seed=0)
    ObjectStoreModels(store_url).push(trained, v1)
    replicas = [_replica(tmp_path, i, store_url, redis_url, redis_prefix) for i in range(2)]
    try:
        with clients_of(replicas, TOKEN) as (a, b):
            # the same model, pulled by each into its own root
            assert a.model_info().model_version == b.model_info().model_version == v1
            # each other's events: recorded through a, in b's next answer's history
            user = "g0u01"
            bought = [a.event(f"g1i0{n}", "purchase", user_id=user) for n in range(4)]
            assert a.record_events(bought).accepted_count == 4
            held = b.export_user(user)["state_store"]["history"]
            assert {e["item_id"] for e in held} == {f"g1i0{n}" for n in range(4)}
            # one erasure, through b: a refuses the customer's events within a second
            assert b.forget_user(user).added_to_erasure_list

            def refused() -> bool:
                out = a.record_events([a.event("g0i01", "view", user_id=user)])
                return [i.reason for i in out.ignored_events] == [pb.IGNORE_REASON_ERASED_USER]

            soon(refused)
            # a new version pushed to the store: both move to it
            v2 = publish_block_model(trained, seed=1)
            ObjectStoreModels(store_url).push(trained, v2)
            soon(lambda: {a.model_info().model_version, b.model_info().model_version} == {v2},
                 within=10.0)  # fmt: skip
    finally:
        for replica in replicas:
            replica.stop()
    for i in range(2):
        assert (tmp_path / f"replica-{i}" / "artifacts" / v2 / art.MANIFEST).is_file()
