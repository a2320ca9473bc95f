"""Placements: what each page's answers get, changeable while the server runs.

``[placements.<name>]`` in the settings declares, per placement, a diversity cap, the
SimilarItems mode and the Recommend blend's trending share
(:class:`recsvc.config.PlacementSettings`). With ``placements_file`` set, those tables
come from that file instead, read again whenever it changes (its modification time
and size, checked every ``server.reload_poll_seconds``) or on SIGHUP: a shop turns
its cart into "complete your order" or gives its home page more of what sells now
without a restart. A file that is missing or does not parse is logged, and the last
good placements stay; requests read :attr:`Placements.current`, replaced whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from recsvc.config import PlacementSettings, Settings
from recsvc.errors import ConfigError

__all__ = ["Placements", "file_stamp", "read_placements"]

log = logging.getLogger(__name__)

_TABLES = TypeAdapter(dict[str, PlacementSettings])


def read_placements(path: Path) -> dict[str, PlacementSettings]:
    """The ``[placements.<name>]`` tables of ``path``; ValueError (naming the file and
    the problem) when it cannot be read or holds anything else."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read placements from {path}: {exc}") from exc
    unknown = sorted(set(raw) - {"placements"})
    if unknown:
        raise ValueError(f"{path}: only [placements.<name>] tables, not {', '.join(unknown)}")
    try:
        return _TABLES.validate_python(raw.get("placements", {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"placements.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from exc


def file_stamp(path: Path) -> tuple[int, int] | None:
    """What tells a watched file changed: its modification time and size (None when
    it cannot be read)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class Placements:
    """This server's placements (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.placements_file
        self.current: dict[str, PlacementSettings] = dict(settings.placements)
        self._seen: tuple[int, int] | None = None
        if self.path is not None:
            try:
                self.current = read_placements(self.path)
            except ValueError as exc:  # a bad file stops the start, in one line
                raise ConfigError(str(exc)) from exc
            self._seen = self._stamp()

    def get(self, name: str) -> PlacementSettings | None:
        return self.current.get(name)

    @property
    def rotating(self) -> bool:
        """Whether any placement rotates (impressions then need counting)."""
        return any(p.rotate_after > 0 for p in self.current.values())

    def _stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        return file_stamp(self.path)

    def check(self, *, force: bool = False) -> bool:
        """Read the file again if it changed (``force``: whatever its stamp); whether
        the placements were replaced."""
        if self.path is None:
            return False
        stamp = self._stamp()
        if stamp == self._seen and not force:
            return False
        self._seen = stamp
        try:
            placements = read_placements(self.path)
        except ValueError as exc:
            log.error("placements not reloaded, keeping the last good ones: %s", exc)
            return False
        self.current = placements
        log.info("placements reloaded from %s: %s", self.path, ", ".join(placements) or "none")
        return True

    async def watch(self, every: float, stop: asyncio.Event) -> None:
        """:meth:`check` every ``every`` seconds until ``stop`` is set."""
        while not stop.is_set() and self.path is not None:
            self.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
