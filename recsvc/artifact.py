"""The versioned model artifact: what training writes and serving reads.

Layout under the artifact root::

    artifacts/
      CURRENT                  name of the served version (replaced atomically)
      PUBLISHED.json           stack of published versions, for rollback
      publish_log.jsonl        every decision of the publish gate: published, forced,
                               refused (training/publish.py)
      erased_users.txt         erasure list (ForgetUser appends; training honours it)
      20261122T201500Z-1a2b3c4d/
        manifest.json          format/model version, dates, counts, config, metrics,
                               re-ranker weights by name, sha256 of every other file
                               (the schema: recsvc.manifest)
        item_factors.npy       (n_items, factors) float32
        user_factors.npy       (n_users, factors) float32
        item_ids.npy           (n_items,) unicode
        user_ids.npy           (n_users,) unicode
        popularity.npy         (n_items,) float32, decayed
        user_items.npz         CSR (n_users, n_items) float32 decayed weights, all events
        user_purchases.npz     CSR (n_users, n_items) float32 decayed weights, purchases
        item_category.npy      (n_items,) int32, -1 = none
        categories.npy         (n_categories,) unicode
        item_available.npy     (n_items,) bool
        index.faiss            faiss.write_index of the item index
        neighbors.npz          arrays and parameters of the item-neighbour model
                               (recsvc.neighbors), when training built one
        bought_together.npz    co-purchase counts (recsvc.cobuy), when counted
        user_peers.npz         customers-like-you lists (recsvc.peers), CSR (n_users,
                               n_items) float32, with the customers' vectors, when
                               the trainer kept them (their blend weight > 0)

Arrays are ``.npy``/``.npz`` read with ``allow_pickle=False``. A version is written
to a temporary sibling directory and renamed into place, so a reader never sees a
half-written one; a crash leaves only a ``.tmp-*`` directory that the next write
removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Set
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import scipy.sparse as sp
from numpy.typing import NDArray

from recsvc.cobuy import CoPurchases
from recsvc.errors import ArtifactError, ChecksumError
from recsvc.index import ItemIndex
from recsvc.manifest import FORMAT_VERSION, FileEntry, Manifest, describe, parse
from recsvc.peers import PeerLists
from recsvc.peers import remove as remove_peers

__all__ = [
    "FORMAT_VERSION",
    "ModelArtifact",
    "current_version",
    "finish_replacements",
    "is_version_name",
    "list_versions",
    "publish_version",
    "read_artifact",
    "remove_users",
    "resolve",
    "rollback",
    "rollback_target",
    "write_artifact",
]

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
PUBLISHED = "PUBLISHED.json"
INDEX_FILE = "index.faiss"
NEIGHBORS_FILE = "neighbors.npz"
BOUGHT_TOGETHER_FILE = "bought_together.npz"
PEERS_FILE = "user_peers.npz"
_RERANK_WEIGHTS_V1 = "rerank_weights"
"""The array of neighbors.npz that held the re-ranker's weights in format 1."""

_ARRAYS = (
    "item_factors",
    "user_factors",
    "item_ids",
    "user_ids",
    "popularity",
    "item_category",
    "categories",
    "item_available",
)


@dataclass
class ModelArtifact:
    """A trained model in memory: exactly what is written to and read from disk."""

    manifest: Manifest
    item_factors: NDArray[np.float32]
    user_factors: NDArray[np.float32]
    item_ids: NDArray[np.str_]
    user_ids: NDArray[np.str_]
    popularity: NDArray[np.float32]
    user_items: sp.csr_matrix
    """Decayed weights of every event type (what the fit saw; fold-in input)."""
    user_purchases: sp.csr_matrix
    """Decayed weights of purchases only ("bought before": buy-again, exclusion)."""
    item_category: NDArray[np.int32]
    categories: NDArray[np.str_]
    item_available: NDArray[np.bool_]
    index: ItemIndex
    neighbors: dict[str, NDArray[Any]] | None = None
    """Arrays and parameters of the item-neighbour model, if built: its
    :meth:`~recsvc.neighbors.NeighborModel.to_arrays` but the re-ranker's weights,
    which the manifest keeps by name (``manifest.neighbors``)."""
    bought_together: dict[str, NDArray[Any]] | None = None
    """Co-purchase counts, if counted: :meth:`recsvc.cobuy.CoPurchases.to_arrays`."""
    peers: PeerLists | None = None
    """Customers-like-you lists, if kept (``manifest.peers`` says how they were made)."""

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def factors(self) -> int:
        return int(self.item_factors.shape[1])


def new_model_version(item_factors: NDArray[np.float32], now: datetime | None = None) -> str:
    """``<UTC time>-<8 hex of the factors' hash>``: sortable and unique per content."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256(np.ascontiguousarray(item_factors).tobytes()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_artifact(artifact: ModelArtifact, root: Path) -> Path:
    """Write ``artifact`` as ``root/<model_version>/``; returns that directory.

    The manifest gains ``files`` (sha256 and size of every file) and the current
    ``format_version``. Refuses to overwrite an existing version.
    """
    _check_neighbors(root / artifact.model_version, artifact)
    root.mkdir(parents=True, exist_ok=True)
    final = root / artifact.model_version
    if final.exists():
        raise ArtifactError(f"artifact {final} already exists")
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        manifest = _write_files(artifact, tmp)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    artifact.manifest = manifest
    return final


def _write_files(artifact: ModelArtifact, tmp: Path) -> Manifest:
    """Every file of ``artifact`` into the directory ``tmp``, fsync'd; the manifest
    written (with each file's checksum)."""
    for name in _ARRAYS:
        np.save(tmp / f"{name}.npy", getattr(artifact, name), allow_pickle=False)
    _save_csr(tmp / "user_items.npz", artifact.user_items)
    _save_csr(tmp / "user_purchases.npz", artifact.user_purchases)
    artifact.index.save(tmp / INDEX_FILE)
    if artifact.neighbors is not None:
        # numpy's stub reads ** as its keyword arguments (allow_pickle)
        np.savez(tmp / NEIGHBORS_FILE, **artifact.neighbors)  # type: ignore[arg-type]
    if artifact.bought_together is not None:
        np.savez(tmp / BOUGHT_TOGETHER_FILE, **artifact.bought_together)  # type: ignore[arg-type]
    if artifact.peers is not None:
        np.savez(tmp / PEERS_FILE, **artifact.peers.to_arrays())  # type: ignore[arg-type]
    files = {
        p.name: FileEntry(sha256=_sha256(p), bytes=p.stat().st_size) for p in sorted(tmp.iterdir())
    }
    manifest = artifact.manifest.model_copy(
        update={"format_version": FORMAT_VERSION, "files": files}
    )
    (tmp / MANIFEST).write_text(manifest.to_json())
    for p in tmp.iterdir():
        p.chmod(0o600)  # user ids and histories: owner-only, as the directory (mkdtemp)
        _fsync(p)
    return manifest


_REPLACED = ".replaced-"
"""Prefix of a version directory :func:`remove_users` moved aside while swapping in the
rewritten one (see :func:`finish_replacements`)."""


def remove_users(root: Path, version: str, users: Set[str]) -> int:
    """Rewrite ``root/<version>`` without ``users`` (their ids, factors, histories,
    purchases and customers-like-you lists); the rows removed (0: none was there,
    nothing was written). The list of every customer one of them was a neighbour of
    is recomputed from the customers left (:func:`recsvc.peers.remove`), so their
    purchases are in no one's list afterwards.

    The new version is written beside it and swapped in by two renames (the old
    directory aside, the new one into its name), then the old one is deleted. A crash
    leaves every file old or new, never half-written: :func:`finish_replacements`,
    called first by every compaction, completes or undoes a swap a crash cut. The
    version keeps its name: CURRENT and the rollback stack stay valid; its manifest's
    checksums and user counts change.
    """
    path = root / version
    try:
        ids = np.load(path / "user_ids.npy", mmap_mode="r", allow_pickle=False)
        hit = np.isin(ids, np.array(sorted(users), dtype=ids.dtype))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read the user ids of {path}: {exc}") from exc
    removed = int(hit.sum())
    if removed == 0:
        return 0
    a = read_artifact(path)
    keep = ~hit
    a.user_ids = a.user_ids[keep]
    a.user_factors = np.ascontiguousarray(a.user_factors[keep])
    a.user_items = a.user_items[keep]
    a.user_purchases = a.user_purchases[keep]
    data = a.manifest.data.model_copy(update={"users": len(a.user_ids)})
    a.manifest = a.manifest.model_copy(update={"data": data})
    section = a.manifest.peers
    if a.peers is not None and section is not None:
        a.peers = remove_peers(a.peers, keep, section.k, section.length)
        counts = {
            "pool": int(a.peers.pool.sum()),
            "customers": int(np.count_nonzero(np.diff(a.peers.lists.indptr))),
        }
        a.manifest = a.manifest.model_copy(update={"peers": section.model_copy(update=counts)})
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    aside = root / f"{_REPLACED}{version}"
    try:
        _write_files(a, tmp)
        os.rename(path, aside)
        os.rename(tmp, path)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside)
    return removed


def finish_replacements(root: Path) -> list[str]:
    """Complete what a crash cut short in :func:`remove_users`: a version moved aside
    whose rewrite is in place is deleted; one whose rewrite is not is put back (the
    next compaction rewrites it again). The versions touched."""
    touched: list[str] = []
    if not root.is_dir():
        return touched
    for aside in sorted(root.glob(f"{_REPLACED}*")):
        version = aside.name.removeprefix(_REPLACED)
        if (root / version).is_dir():
            shutil.rmtree(aside)
        else:
            os.rename(aside, root / version)
            _fsync(root)
        touched.append(version)
    return touched


def _save_csr(path: Path, m: sp.csr_matrix) -> None:
    np.savez(
        path,
        data=m.data.astype(np.float32),
        indices=m.indices,
        indptr=m.indptr,
        shape=np.array(m.shape, dtype=np.int64),
    )


def _load_csr(path: Path) -> sp.csr_matrix:
    with np.load(path, allow_pickle=False) as z:
        shape = tuple(int(x) for x in z["shape"])
        return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)


def read_manifest(path: Path) -> Manifest:
    """The manifest of the version directory ``path``, checked against the schema
    (format 1 upgraded) and against the directory's name."""
    try:
        raw = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path} is not a model artifact (no {MANIFEST})") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path / MANIFEST}: {exc}") from exc
    try:
        manifest = parse(raw, lambda: _rerank_weights_v1(path, raw))
    except pydantic.ValidationError as exc:
        raise ArtifactError(f"{path / MANIFEST}: {describe(exc)}") from exc
    except ValueError as exc:
        raise ArtifactError(f"{path / MANIFEST}: {exc}") from exc
    _check_name(path, manifest.model_version)
    return manifest


def _rerank_weights_v1(path: Path, raw: dict[str, Any]) -> list[float] | None:
    """Format 1 only: the re-ranker weights neighbors.npz holds by position."""
    if NEIGHBORS_FILE not in (raw.get("files") or {}):
        return None
    try:
        with np.load(path / NEIGHBORS_FILE, allow_pickle=False) as z:
            return [float(w) for w in z[_RERANK_WEIGHTS_V1]]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read the re-ranker weights of {path}: {exc}") from exc


def _check_name(path: Path, model_version: str) -> None:
    # publish keys the user vectors by the directory's name and the server reads them
    # by the manifest's model_version: a renamed copy would serve without its vectors
    if path.name != model_version:
        raise ArtifactError(
            f"{path}: directory {path.name!r} holds model version {model_version!r}; "
            "a version directory must keep its model version as its name"
        )


def verify(path: Path, manifest: Manifest) -> None:
    """Check every file against its manifest checksum; raise ChecksumError on a mismatch."""
    for name, meta in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ChecksumError(f"{path}: file {name} listed in the manifest is missing")
        if file.stat().st_size != meta.bytes or _sha256(file) != meta.sha256:
            raise ChecksumError(f"{path}: checksum of {name} does not match the manifest")


def read_artifact(path: Path, *, verify_checksums: bool = True) -> ModelArtifact:
    """Load the version directory ``path`` (checksums verified unless told not to)."""
    manifest = read_manifest(path)
    if verify_checksums:
        verify(path, manifest)
    try:
        arrays = {name: np.load(path / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        user_items = _load_csr(path / "user_items.npz")
        user_purchases = _load_csr(path / "user_purchases.npz")
        neighbors = None
        if NEIGHBORS_FILE in manifest.files:
            with np.load(path / NEIGHBORS_FILE, allow_pickle=False) as z:
                # format 1 kept the re-ranker's weights here; the manifest has them now
                neighbors = {name: z[name] for name in z.files if name != _RERANK_WEIGHTS_V1}
        bought_together = None
        if BOUGHT_TOGETHER_FILE in manifest.files:
            with np.load(path / BOUGHT_TOGETHER_FILE, allow_pickle=False) as z:
                bought_together = {name: z[name] for name in z.files}
        peers = None
        if PEERS_FILE in manifest.files:
            with np.load(path / PEERS_FILE, allow_pickle=False) as z:
                peers = PeerLists.from_arrays({name: z[name] for name in z.files})
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read arrays of {path}: {exc}") from exc
    idx = manifest.index
    index = ItemIndex.load(path / INDEX_FILE, idx.kind, idx.max_norm_sq, idx.ef_search)
    artifact = ModelArtifact(
        manifest=manifest,
        user_items=user_items,
        user_purchases=user_purchases,
        index=index,
        neighbors=neighbors,
        bought_together=bought_together,
        peers=peers,
        **arrays,
    )
    _check_shapes(path, artifact)
    _check_neighbors(path, artifact)
    return artifact


def _check_shapes(path: Path, a: ModelArtifact) -> None:
    n_items, n_users = len(a.item_ids), len(a.user_ids)
    expected = {
        "item_factors": (n_items, a.factors),
        "user_factors": (n_users, a.factors),
        "popularity": (n_items,),
        "item_category": (n_items,),
        "item_available": (n_items,),
        "user_items": (n_users, n_items),
        "user_purchases": (n_users, n_items),
    }
    for name, shape in expected.items():
        if getattr(a, name).shape != shape:
            raise ArtifactError(f"{path}: {name} has shape {getattr(a, name).shape}, not {shape}")
    if a.index.ntotal != n_items:
        raise ArtifactError(f"{path}: index holds {a.index.ntotal} items, not {n_items}")
    if a.peers is not None and a.peers.lists.shape != (n_users, n_items):
        raise ArtifactError(
            f"{path}: user_peers has shape {a.peers.lists.shape}, not {(n_users, n_items)}"
        )


def _check_neighbors(path: Path, a: ModelArtifact) -> None:
    if (a.neighbors is None) != (a.manifest.neighbors is None):
        raise ArtifactError(
            f"{path}: the neighbour model's arrays and its manifest section must come together"
        )
    if (a.bought_together is None) != (a.manifest.bought_together is None):
        raise ArtifactError(
            f"{path}: the co-purchase counts and their manifest section must come together"
        )
    if (a.peers is None) != (a.manifest.peers is None):
        raise ArtifactError(
            f"{path}: the customers-like-you lists and their manifest section must come together"
        )
    if a.bought_together is not None:
        try:
            co = CoPurchases.from_arrays(a.bought_together)
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"{path}: bought-together counts: {exc}") from exc
        if len(co.baskets) != len(a.item_ids):
            raise ArtifactError(
                f"{path}: bought-together counts for {len(co.baskets)} items, not {len(a.item_ids)}"
            )


# --- the CURRENT pointer and the publish stack --------------------------------------


def list_versions(root: Path) -> list[str]:
    """Version directories under ``root`` whose manifest reads (see
    :func:`read_manifest`), oldest first (by creation time)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and (p / MANIFEST).is_file():
            try:
                created = read_manifest(p).created_at
            except ArtifactError:
                continue  # unreadable or renamed: not a version anyone can publish
            found.append((created, p.name))
    return [name for _, name in sorted(found)]


def current_version(root: Path) -> str | None:
    """The version CURRENT names, or None when nothing was published.

    Whatever the file holds is returned, bytes that are not UTF-8 as lone surrogates
    (never a UnicodeDecodeError): :func:`resolve` is what refuses a bad name."""
    try:
        name = (root / CURRENT).read_bytes().decode("utf-8", "surrogateescape").strip()
    except FileNotFoundError:
        return None
    return name or None


def resolve(root: Path, version: str | None = None) -> Path:
    """Directory of ``version`` (default: CURRENT), its manifest read and checked.

    ``version`` must be the name of a directory of ``root``: a path (``../other/v``,
    ``/srv/v``), ``.``, ``..`` or unprintable text is refused, so neither CURRENT nor a
    rollback stack can make the server load a model from outside the artifact root."""
    name = version or current_version(root)
    if name is None:
        raise ArtifactError(f"no model published under {root} (no {CURRENT} file)")
    if not is_version_name(name):
        raise ArtifactError(
            f"{name!r} is not the name of a version directory of {root} "
            "(a path, '.', '..' or unprintable text)"
        )
    path = root / name
    if not (path / MANIFEST).is_file():
        raise ArtifactError(f"model version {name} not found under {root}")
    read_manifest(path)
    return path


def is_version_name(name: str) -> bool:
    """Whether ``name`` can name a version directory (or a file in one): printable, no
    path separator, not ``.`` or ``..``, no surrounding blanks."""
    return (
        name.isprintable()  # no control, format, separator or undecodable characters
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and name == name.strip()
    )


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _published(root: Path) -> list[str]:
    try:
        stack = json.loads((root / PUBLISHED).read_text())["stack"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"cannot read {root / PUBLISHED}: {exc}") from exc
    return [str(v) for v in stack]


def publish_version(root: Path, version: str) -> None:
    """Point CURRENT at ``version`` and push it on the publish stack."""
    resolve(root, version)
    stack = [v for v in _published(root) if v != version] + [version]
    _atomic_write(root / PUBLISHED, json.dumps({"stack": stack}) + "\n")
    _atomic_write(root / CURRENT, version + "\n")


def _rollback_stack(root: Path) -> list[str]:
    stack = _published(root)
    current = current_version(root)
    if current in stack:
        stack = stack[: stack.index(current)]
    while stack and not (root / stack[-1] / MANIFEST).is_file():
        stack.pop()  # a version deleted by hand cannot be rolled back to
    if not stack:
        raise ArtifactError(f"no earlier published version under {root} to roll back to")
    return stack


def rollback_target(root: Path) -> str:
    """The version :func:`rollback` would return to (nothing is changed)."""
    return _rollback_stack(root)[-1]


def rollback(root: Path) -> str:
    """Return CURRENT to the version published before it; returns that version."""
    stack = _rollback_stack(root)
    _atomic_write(root / PUBLISHED, json.dumps({"stack": stack}) + "\n")
    _atomic_write(root / CURRENT, stack[-1] + "\n")
    return stack[-1]
