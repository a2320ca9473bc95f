"""Pseudonymous customer ids: a keyed hash of each id, applied at the boundary.

With ``[privacy] pseudonymous_ids``, every customer id that enters recsvc — a user id
in any RPC, a ``user_id`` of a file training reads — is replaced by
``~p<32 hex>``: the first 128 bits of HMAC-SHA256 under the deployment's secret
(``[privacy] id_key_file``). The same id always gives the same pseudonym, so the
live state, the event log, the erasure list and the model versions all agree, and
none of them holds a raw id. Without the secret a pseudonym cannot be turned back
into the id, nor an id guessed by hashing candidates.

An id that already has the pseudonym's form is kept as it is, so rows the server
logged (pseudonyms already) and a shop's raw export can be trained on together.

Rotating the secret changes every pseudonym: retrain from the raw exports with the new
key, publish, and accept that live state (histories, sessions, consents, links) and
the event log written under the old key no longer match anyone. Erasures made under
the old key stay listed under it (their rows are already gone or will be compacted).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pyarrow as pa
import pyarrow.compute as pc

from recsvc.errors import ConfigError

if TYPE_CHECKING:
    from recsvc.config import Settings

__all__ = ["PREFIX", "Pseudonyms", "pseudonyms_from"]

PREFIX: Final = "~p"
_FORM: Final = re.compile(r"~p[0-9a-f]{32}")
_MIN_KEY_BYTES: Final = 32


class Pseudonyms:
    """The keyed hash of customer ids under one secret."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < _MIN_KEY_BYTES:
            raise ConfigError(f"the id key must hold at least {_MIN_KEY_BYTES} bytes")
        self._key = key

    def __call__(self, user_id: str) -> str:
        """The pseudonym of ``user_id`` ("" stays "": no customer; a pseudonym stays)."""
        if not user_id or _FORM.fullmatch(user_id):
            return user_id
        digest = hmac.new(self._key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:32]

    def column(self, ids: pa.ChunkedArray | pa.Array) -> pa.Array:
        """A string column of ids, each replaced (nulls stay null): one hash per
        distinct id."""
        encoded = pc.dictionary_encode(ids)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        names = [self(v) for v in encoded.dictionary.to_pylist()]
        return pc.take(pa.array(names, pa.string()), encoded.indices)


def pseudonyms_from(settings: Settings) -> Pseudonyms | None:
    """The deployment's pseudonyms, or None when ids are kept as given. Raises
    ConfigError when ``pseudonymous_ids`` is on without a readable key file."""
    privacy = settings.privacy
    if not privacy.pseudonymous_ids:
        return None
    if privacy.id_key_file is None:
        raise ConfigError("[privacy] pseudonymous_ids needs id_key_file")
    try:
        key = Path(privacy.id_key_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read [privacy] id_key_file: {exc}") from exc
    return Pseudonyms(key)
