"""The serving role's subcommand of ``recsvc``: ``serve`` (registered through the
``recsvc.commands`` entry point)."""

from __future__ import annotations

import argparse
from typing import Any

from recsvc.cli import add_settings_flags, settings_from_args

__all__ = ["add_commands"]

EXTRA = "serve"
"""The install extra that brings this role's dependencies."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = settings_from_args(args)
    server = settings.server
    return run(settings, processes=server.processes, event_loop=server.event_loop)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` to ``sub`` (the ``recsvc`` subparsers)."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the gRPC server (health, reflection, /metrics) on the current model",
    )
    add_settings_flags(p, als=False)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--metrics-port", type=int, help="HTTP /metrics port (default 9464)")
    p.add_argument("--processes", type=int, help="server processes sharing the port (default 1)")
    p.set_defaults(handler=_cmd_serve, extra=EXTRA)
