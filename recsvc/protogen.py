"""Generate the Python code of the wire contract (``make proto``).

``proto/`` is the include root and the repository root the output root, so
``proto/recsvc/v1/recommender.proto`` becomes ``recsvc/v1/recommender_pb2.py`` (plus
``_pb2.pyi`` and ``_pb2_grpc.py``), importable as ``from recsvc.v1 import recommender_pb2``.
The equivalent command line is::

    python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \\
        proto/recsvc/v1/recommender.proto

``make proto`` and the stale-code test both call :func:`generate`, so they cannot drift
apart. This is a development tool: it needs the source tree (``proto/``) and grpcio-tools.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Final

__all__ = ["PROTO_ROOT", "REPO_ROOT", "generate", "main", "proto_files", "write_descriptor_set"]

#: the repository root; also the output root of the generated code
REPO_ROOT: Final[Path] = Path(__file__).resolve().parent.parent
#: the include root of our .proto files
PROTO_ROOT: Final[Path] = REPO_ROOT / "proto"

#: suffixes of the modules protoc writes for each .proto file, in this order
_GENERATED_SUFFIXES: Final[tuple[str, ...]] = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """Every ``.proto`` file of the contract, relative to :data:`PROTO_ROOT`, sorted."""
    return sorted(path.relative_to(PROTO_ROOT) for path in PROTO_ROOT.rglob("*.proto"))


def _protoc(*outputs: str) -> None:
    """Run protoc over :func:`proto_files` with our include paths and the given output flags.

    The include path of the well-known types (google/protobuf/timestamp.proto) is the copy
    bundled with grpcio-tools, as ``python -m grpc_tools.protoc`` adds it; so the result does
    not depend on a system protoc.
    """
    # Imported here, not at module level: importing grpc_tools.protoc installs import hooks
    # that compile .proto files on import, which nothing else in recsvc should get.
    from grpc_tools import protoc  # noqa: PLC0415

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    sources = [str(PROTO_ROOT / name) for name in proto_files()]
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *outputs, *sources]
    status: int = protoc.main(args)
    if status != 0:
        # protoc has already printed the reason (file:line: message) on stderr.
        raise RuntimeError(f"protoc failed with exit status {status} on {', '.join(sources)}")


def generate(out_dir: Path) -> list[Path]:
    """Generate the Python modules of every ``.proto`` file under ``out_dir``.

    ``out_dir`` plays the role of the repository root: the modules land in
    ``out_dir / "recsvc" / "v1"``. Existing files are overwritten. Returns the paths written,
    three per ``.proto`` file (``_pb2.py``, ``_pb2.pyi``, ``_pb2_grpc.py``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    _protoc(f"--python_out={out_dir}", f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}")
    return [
        out_dir / name.with_name(name.stem + suffix)
        for name in proto_files()
        for suffix in _GENERATED_SUFFIXES
    ]


def write_descriptor_set(out_file: Path) -> Path:
    """Write a serialized ``FileDescriptorSet`` of the contract, comments included.

    Unlike the descriptors embedded in the generated modules, it keeps the source info
    (comments, locations), which is what a lint of the comments needs. Returns ``out_file``.
    """
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _protoc(f"--descriptor_set_out={out_file}", "--include_source_info")
    return out_file


def main() -> None:
    """Regenerate the committed modules in place and list them."""
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
