"""Model versions in an object store, for replicas that share no directory.

The object store holds the artifact root's published part, in the same layout::

    s3://bucket/shop/CURRENT                 name of the served version
    s3://bucket/shop/<version>/manifest.json
    s3://bucket/shop/<version>/<file>        every file the manifest lists

``recsvc push --to URL`` uploads a version from a local artifact root: its files, then
its manifest (a version without a manifest is not one), then CURRENT when it publishes
it. A server with ``[server] artifact_url = URL`` mirrors it into its own artifact root
(a local directory) every ``[server] reload_poll_seconds``: a version it lacks is
downloaded into a temporary sibling directory, every file checked against the
manifest's size and sha256, then renamed into place, and only then does the local
CURRENT move; the server loads it as it loads any published version (verifying the
checksums again). A version that fails the check is refused and logged, and the served
one stays.

Any fsspec URL works; ``s3://`` needs the ``object-store`` extra (s3fs). Credentials,
region and endpoint come from the environment as the library reads them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3
other than AWS's, ...). Tested against a local S3 server (moto's, in
tests/serving/test_object_store.py).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from recsvc import artifact as art
from recsvc.errors import ArtifactError, ConfigError, StoreError

__all__ = ["ObjectStoreModels"]

log = logging.getLogger(__name__)


class ObjectStoreModels:
    """The model versions under ``url`` (see the module docstring). Every method
    raises StoreError when the object store fails, ArtifactError for a version that is
    not one (a bad name, a missing or mismatching file)."""

    def __init__(self, url: str) -> None:
        try:
            import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415 (optional extra)

            self.fs: Any
            self.fs, path = fsspec.core.url_to_fs(url)
        except ImportError as exc:
            raise ConfigError(
                f"artifact URL {url!r} needs the object-store extra "
                f"(pip install 'recsvc[object-store]'): {exc}"
            ) from exc
        except ValueError as exc:
            raise ConfigError(f"invalid artifact URL {url!r}: {exc}") from exc
        self.url = url
        self.path = path.rstrip("/")

    def current(self) -> str | None:
        """The version the object store's CURRENT names, or None (nothing published)."""
        try:
            raw: bytes = self.fs.cat_file(f"{self.path}/{art.CURRENT}")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"reading {self.url}/{art.CURRENT} failed: {exc}") from exc
        name = raw.decode("utf-8", "surrogateescape").strip()
        if name and not art.is_version_name(name):
            raise ArtifactError(f"{self.url}/{art.CURRENT} names {name!r}: not a version")
        return name or None

    def push(self, root: Path, version: str, *, publish: bool = True) -> int:
        """Upload ``version`` of the local artifact root ``root`` (its checksums
        verified first), manifest last, then point CURRENT at it if ``publish``. The
        bytes uploaded."""
        path = art.resolve(root, version)
        manifest = art.read_manifest(path)
        art.verify(path, manifest)
        remote = f"{self.path}/{version}"
        sent = 0
        try:
            for name, meta in manifest.files.items():
                self.fs.put_file(str(path / name), f"{remote}/{name}")
                sent += meta.bytes
            self.fs.put_file(str(path / art.MANIFEST), f"{remote}/{art.MANIFEST}")
            if publish:
                self.fs.pipe_file(f"{self.path}/{art.CURRENT}", f"{version}\n".encode())
        except OSError as exc:
            raise StoreError(f"uploading {version} to {self.url} failed: {exc}") from exc
        return sent

    def pull(self, version: str, root: Path) -> Path:
        """``version`` in the local artifact root ``root``, downloaded and checked if it
        is not there yet (a temporary sibling renamed into place)."""
        if not art.is_version_name(version):
            raise ArtifactError(f"{version!r} is not a version name")
        target = root / version
        if (target / art.MANIFEST).is_file():
            return target
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".pull-{version}-", dir=root))
        try:
            remote = f"{self.path}/{version}"
            try:
                self.fs.get_file(f"{remote}/{art.MANIFEST}", str(tmp / art.MANIFEST))
            except FileNotFoundError as exc:
                raise ArtifactError(f"{self.url}: version {version} has no manifest") from exc
            staged = tmp / version
            staged.mkdir()
            (tmp / art.MANIFEST).rename(staged / art.MANIFEST)
            manifest = art.read_manifest(staged)
            for name in manifest.files:
                if not art.is_version_name(name):
                    raise ArtifactError(f"{self.url}: {version} lists a file named {name!r}")
                self.fs.get_file(f"{remote}/{name}", str(staged / name))
            art.verify(staged, manifest)  # ChecksumError: refused, nothing kept
            staged.rename(target)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{self.url}: a file of {version} is missing: {exc}") from exc
        except OSError as exc:
            raise StoreError(f"downloading {version} from {self.url} failed: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
        return target

    def sync(self, root: Path) -> str | None:
        """Make the local artifact root serve what the object store's CURRENT names:
        the version pulled if need be, then the local CURRENT moved. The version
        published now, or None when nothing changed."""
        version = self.current()
        if version is None or version == art.current_version(root):
            return None
        self.pull(version, root)
        art.publish_version(root, version)
        log.info("model %s pulled from %s and published locally", version, self.url)
        return version
