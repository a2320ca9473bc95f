"""Every error recsvc raises on purpose, in one place.

The hierarchy::

    RecsvcError                      base; carries a gRPC status code
    ├── ConfigError                  bad settings (file, env, flags)       INVALID_ARGUMENT
    ├── DataError                    bad or insufficient input data        INVALID_ARGUMENT
    │   └── InputRowError            one bad row: file, line, column       INVALID_ARGUMENT
    ├── ArtifactError                a model artifact that cannot be used  FAILED_PRECONDITION
    │   └── ChecksumError            a file whose checksum does not match  DATA_LOSS
    ├── QualityGateError             a model the publish gate refuses      FAILED_PRECONDITION
    ├── ModelNotLoadedError          no model to answer with               UNAVAILABLE
    ├── InvalidRequestError          a client request that is malformed    INVALID_ARGUMENT
    │   ├── ConflictError            contradicts stored state (id taken)   ALREADY_EXISTS
    │   └── PreconditionError        stored state does not allow it        FAILED_PRECONDITION
    ├── NotFoundError                an unknown id where one is required   NOT_FOUND
    └── StoreError                   Redis (or another store) failed       UNAVAILABLE

Lower-level exceptions (pyarrow, redis, OSError, ...) are translated into these at
the module that talks to the library, with ``raise ... from exc`` so the cause is
kept. The command line prints ``str(error)`` (one line) and exits with
``error.exit_code``; the gRPC layer maps ``error.grpc_code`` to the call's status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

__all__ = [
    "ArtifactError",
    "ChecksumError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "FieldViolation",
    "InputRowError",
    "InvalidRequestError",
    "ModelNotLoadedError",
    "NotFoundError",
    "PreconditionError",
    "QualityGateError",
    "RecsvcError",
    "StoreError",
]


class RecsvcError(Exception):
    """Base of every error recsvc raises on purpose."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    #: process exit status used by the command line
    exit_code: int = 1


class ConfigError(RecsvcError):
    """Settings that fail validation; raised before any work starts."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = 2


class DataError(RecsvcError):
    """Input data that cannot be used: missing columns, empty, too little to fit."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    exit_code = 3


class InputRowError(DataError):
    """One bad value in an input file, located by file, line and column."""

    def __init__(self, path: str, line: int, column: str, expected: str, got: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.expected = expected
        self.got = got
        shown = got if len(got) <= 60 else got[:57] + "..."
        super().__init__(f"{path}:{line}: column {column!r}: expected {expected}, got {shown!r}")


class ArtifactError(RecsvcError):
    """A model artifact that is missing, incomplete or of an unknown format."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    exit_code = 4


class ChecksumError(ArtifactError):
    """A file of an artifact whose content does not match its manifest checksum."""

    grpc_code = grpc.StatusCode.DATA_LOSS


class QualityGateError(RecsvcError):
    """A trained model the publish gate refuses: approximate index recall below the
    floor, a holdout score that does not beat popularity and buy-again or falls short
    of the current model's (training/publish.py)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    exit_code = 5


class ModelNotLoadedError(RecsvcError):
    """No model is loaded yet."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class NotFoundError(RecsvcError):
    """An id the caller named that the model does not know, where one is required."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class StoreError(RecsvcError):
    """The state store (Redis) failed or timed out."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    exit_code = 6


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, as google.rpc.BadRequest.FieldViolation carries it."""

    field: str
    description: str


class InvalidRequestError(RecsvcError):
    """A request a client sent that is malformed; lists every bad field."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class ConflictError(InvalidRequestError):
    """A request that contradicts what is stored: an id linked to another customer.
    Lists the fields at fault; nothing of the request was applied."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class PreconditionError(InvalidRequestError):
    """A well-formed request the stored state does not allow (a chain of linked ids,
    more ids than a customer may hold). Lists the fields at fault; nothing of the
    request was applied."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
