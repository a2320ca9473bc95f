"""The serving role's subcommands of ``recsvc``: ``serve`` and ``batch`` (registered
through the ``recsvc.commands`` entry point)."""

from __future__ import annotations

import argparse
from pathlib import Path
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


def _cmd_batch(args: argparse.Namespace) -> int:
    import asyncio
    import json
    from dataclasses import asdict

    from .batch import run_batch

    settings = settings_from_args(args)
    users = None
    if args.users is not None:
        with args.users.open(encoding="utf-8") as fh:
            users = [line.rstrip("\n") for line in fh if line.strip()]
    report = asyncio.run(run_batch(settings, args.out, users, k=args.k, placement=args.placement))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return 0
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    print(
        f"{report.written:,} of {report.customers:,} customers written to {args.out} "
        f"({report.rows:,} rows, model {report.model_version}); skipped: {skipped}"
    )
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``serve`` and ``batch`` to ``sub`` (the ``recsvc`` subparsers)."""
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

    p = sub.add_parser(
        "batch",
        parents=[common],
        help="write the top k of many customers to Parquet/CSV (campaigns), as served",
        description="The top k of each customer (--users: a file of ids, one per line; "
        "default: every customer of the current model) through the ranking the server "
        "runs: live catalogue (no unavailable or withdrawn item), the placement's rules, "
        "live history, stored consent. Erased, opted-out and session-only customers, and "
        "those with nothing personal to recommend, are skipped and counted. Uses the "
        "settings' Redis (--redis-url) as a server would.",
    )
    add_settings_flags(p, als=False)
    p.add_argument("--out", type=Path, required=True, help="output file (.parquet or .csv)")
    p.add_argument("--users", type=Path, help="file of customer ids, one per line")
    p.add_argument("--k", type=int, default=10, help="items per customer (default 10)")
    p.add_argument("--placement", default="email", help="placement whose rules apply")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cmd_batch, extra=EXTRA)
