"""How recsvc compiles its per-request kernels (Numba): :mod:`recsvc.session_kernels`,
the ``normscan`` index's scan (:mod:`recsvc.index`), and the boosts' and buries'
weighing and the pins' and the cap's placing (``serving/rules.py``).

Every kernel is compiled on first use and cached on disk next to its module (or under
``NUMBA_CACHE_DIR``, or in Numba's user cache; with none writable, compiled at every
start). Kernels release the GIL and keep no state between calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from numba import njit

__all__ = ["CACHES", "kernel"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _cache_works() -> bool:
    """Whether Numba finds somewhere writable to cache compiled code (beside the
    module, ``NUMBA_CACHE_DIR`` or the user's cache): without one, ``cache=True``
    would refuse to decorate, so the kernels compile at every start instead."""
    try:
        njit(cache=True)(_cache_works)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        log.warning(
            "recsvc's kernels compile at every start (~10 s): %s; set NUMBA_CACHE_DIR "
            "to a writable directory to cache them",
            exc,
        )
        return False
    return True


CACHES = _cache_works()
"""Whether compiled kernels are cached on disk."""


def kernel(*, fastmath: set[str] | None = None) -> Callable[[F], F]:
    """Compile a function as a kernel (nopython, GIL released, cached where it can be).
    ``fastmath``: LLVM's flags to allow, e.g. ``{"reassoc"}`` for a sum the compiler
    may vectorise (it then adds in another order: rounding differs)."""

    def decorate(function: F) -> F:
        compiled = njit(cache=CACHES, nogil=True, fastmath=fastmath or False)(function)
        return cast(F, compiled)

    return decorate
