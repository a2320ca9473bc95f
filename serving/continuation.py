""" "Show more": a continuation token carrying every item a paging sequence returned.

A Recommend with ``paged`` (or a ``continuation``) gets back a token naming the items
of its answer and of every earlier page of the sequence; sent as the next request's
``continuation``, those items are excluded, so paging never repeats one. The token is
the state: nothing is stored server-side, any replica continues any sequence, and a
model reload in between does not break it (it names items by id). Its form:
``c1.`` + base64url(zlib(ids joined by U+001F)), at most :data:`MAX_ITEMS` ids; a
sequence that would pass that gets no further token.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Sequence
from typing import Final

__all__ = ["MAX_ITEMS", "decode", "encode"]

MAX_ITEMS: Final = 500
"""Items one sequence may return (50 pages of 10)."""
_PREFIX: Final = "c1."
_SEPARATOR: Final = "\x1f"
_MAX_TOKEN: Final = 64 * 1024
"""Longest token read (500 ids of the longest allowed size, compressed, fit)."""


def encode(item_ids: Sequence[str]) -> str:
    """The token of a sequence that returned ``item_ids``; "" past :data:`MAX_ITEMS`."""
    if len(item_ids) > MAX_ITEMS:
        return ""
    packed = zlib.compress(_SEPARATOR.join(item_ids).encode(), 1)
    return _PREFIX + base64.urlsafe_b64encode(packed).decode().rstrip("=")


def decode(token: str) -> tuple[str, ...]:
    """The items a token names; ValueError (with the reason) for anything that is not a
    token this module made."""
    if len(token) > _MAX_TOKEN:
        raise ValueError(f"is longer than {_MAX_TOKEN} characters")
    if not token.startswith(_PREFIX):
        raise ValueError("is not a continuation this service issued")
    body = token[len(_PREFIX) :]
    try:
        raw = zlib.decompress(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        text = raw.decode()
    except (binascii.Error, zlib.error, UnicodeDecodeError, ValueError):
        raise ValueError("is not a continuation this service issued (corrupt)") from None
    items = tuple(text.split(_SEPARATOR)) if text else ()
    if len(items) > MAX_ITEMS or any(not i for i in items):
        raise ValueError("is not a continuation this service issued (bad items)")
    return items
