import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from recsvc import artifact as art
from recsvc.errors import ArtifactError, ChecksumError
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings


@pytest.fixture()
def built(tmp_path: Path) -> art.ModelArtifact:
    settings = small_settings(tmp_path)
    return build_model(LoadedData(block_shop(), None, (), 0), settings).artifact


def test_round_trip_is_exact(built: art.ModelArtifact, tmp_path: Path) -> None:
    path = art.write_artifact(built, tmp_path / "root")
    loaded = art.read_artifact(path)
    assert loaded.model_version == built.model_version == path.name
    for name in (
        "item_factors",
        "user_factors",
        "item_ids",
        "user_ids",
        "popularity",
        "item_category",
        "categories",
        "item_available",
    ):
        assert np.array_equal(getattr(loaded, name), getattr(built, name)), name
    assert (loaded.user_items != built.user_items).nnz == 0
    assert loaded.manifest == built.manifest
    assert loaded.manifest.format_version == art.FORMAT_VERSION == 2
    assert set(loaded.manifest.files) == {p.name for p in path.iterdir()} - {"manifest.json"}
    q = built.user_factors[:3]
    assert np.array_equal(loaded.index.search(q, 5)[1], built.index.search(q, 5)[1])
    assert not list((tmp_path / "root").glob(".tmp-*"))


def test_arrays_load_without_pickle(built: art.ModelArtifact, tmp_path: Path) -> None:
    path = art.write_artifact(built, tmp_path)
    for npy in path.glob("*.npy"):
        np.load(npy, allow_pickle=False)  # raises if anything needed pickle


def test_tampered_file_is_refused(built: art.ModelArtifact, tmp_path: Path) -> None:
    path = art.write_artifact(built, tmp_path)
    data = bytearray((path / "item_factors.npy").read_bytes())
    data[-1] ^= 0xFF
    (path / "item_factors.npy").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"item_factors\.npy"):
        art.read_artifact(path)


def test_missing_file_and_unknown_format_are_refused(
    built: art.ModelArtifact, tmp_path: Path
) -> None:
    path = art.write_artifact(built, tmp_path)
    (path / "index.faiss").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        art.read_artifact(path)
    manifest = path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 2', '"format_version": 99'))
    with pytest.raises(ArtifactError, match=r"manifest\.json: artifact format 99"):
        art.read_manifest(path)
    with pytest.raises(ArtifactError, match="not a model artifact"):
        art.read_manifest(tmp_path / "nowhere")


def test_same_version_is_not_overwritten(built: art.ModelArtifact, tmp_path: Path) -> None:
    art.write_artifact(built, tmp_path)
    with pytest.raises(ArtifactError, match="already exists"):
        art.write_artifact(built, tmp_path)


def test_failed_write_leaves_nothing(built: art.ModelArtifact, tmp_path: Path) -> None:
    built.popularity = object()  # type: ignore[assignment]  # np.save cannot write it
    with pytest.raises(ValueError):
        art.write_artifact(built, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_publish_and_rollback_walk_the_stack(built: art.ModelArtifact, tmp_path: Path) -> None:
    for name in ("v1", "v2", "v3"):
        art.write_artifact(
            replace(built, manifest=built.manifest.model_copy(update={"model_version": name})),
            tmp_path,
        )
    assert art.current_version(tmp_path) is None
    with pytest.raises(ArtifactError, match="no model published"):
        art.resolve(tmp_path)
    art.publish_version(tmp_path, "v1")
    art.publish_version(tmp_path, "v2")
    art.publish_version(tmp_path, "v3")
    assert art.current_version(tmp_path) == "v3"
    assert art.rollback_target(tmp_path) == "v2"
    assert art.rollback(tmp_path) == "v2"
    assert art.rollback(tmp_path) == "v1"
    assert art.current_version(tmp_path) == "v1"
    with pytest.raises(ArtifactError, match="no earlier"):
        art.rollback(tmp_path)
    with pytest.raises(ArtifactError, match="not found"):
        art.publish_version(tmp_path, "v9")
    assert art.list_versions(tmp_path) == ["v1", "v2", "v3"]


def test_a_renamed_version_directory_is_refused(built: art.ModelArtifact, tmp_path: Path) -> None:
    # its vectors would be published under the directory's name, and the server
    # would look them up under the manifest's: the copy must never go live
    path = art.write_artifact(built, tmp_path)
    art.publish_version(tmp_path, path.name)
    shutil.copytree(path, tmp_path / "my-copy")
    expected = rf"my-copy.*{path.name}"
    with pytest.raises(ArtifactError, match=expected):
        art.read_manifest(tmp_path / "my-copy")
    with pytest.raises(ArtifactError, match=expected):
        art.read_artifact(tmp_path / "my-copy")
    with pytest.raises(ArtifactError, match=expected):
        art.resolve(tmp_path, "my-copy")
    with pytest.raises(ArtifactError, match=expected):
        art.publish_version(tmp_path, "my-copy")
    assert art.current_version(tmp_path) == path.name
    assert art.list_versions(tmp_path) == [path.name]


@pytest.mark.parametrize(
    "pointer",
    ["../elsewhere/{v}", "{tmp}/elsewhere/{v}", "{v}/../../elsewhere/{v}", "..", ".", "{v}/."],
)
def test_current_must_name_a_directory_of_the_root(
    built: art.ModelArtifact, tmp_path: Path, pointer: str
) -> None:
    # a valid model outside the root: CURRENT must not reach it
    root = tmp_path / "root"
    version = art.write_artifact(built, root).name
    art.write_artifact(built, tmp_path / "elsewhere")
    (root / art.CURRENT).write_text(pointer.format(v=version, tmp=tmp_path) + "\n")
    with pytest.raises(ArtifactError, match="not the name of a version directory"):
        art.resolve(root)
    with pytest.raises(ArtifactError, match="not the name of a version directory"):
        art.publish_version(root, pointer.format(v=version, tmp=tmp_path))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x81garbage", b"v1\x00", b"\x1b[31mv1"])
def test_garbage_in_current_is_refused_as_an_artifact_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / art.CURRENT).write_bytes(content)
    name = art.current_version(tmp_path)  # never UnicodeDecodeError
    assert name
    with pytest.raises(ArtifactError, match="not the name of a version directory") as err:
        art.resolve(tmp_path)
    assert str(err.value).isascii()  # logged as it is, whatever the bytes were
