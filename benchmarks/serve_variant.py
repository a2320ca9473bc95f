"""``recsvc serve`` with one serving lever switched, for :mod:`bench_levers`.

Usage::

    .venv/bin/python benchmarks/serve_variant.py --artifacts DIR --redis-url URL \\
        [--port 0] [--metrics-port P] [--processes 1] [--event-loop asyncio|uvloop] \\
        [--redis-py-read | --redis-py-cache loop|thread|worker] [--state-cache-size N] \\
        [--overfetch N] [--no-gc-freeze]

It builds the settings as ``recsvc serve --artifacts --redis-url --host 127.0.0.1
--port --metrics-port`` does and runs :func:`recsvc.serving.server.run` with ``processes``
and ``event_loop`` (which the CLI does not expose yet). ``--redis-py-read`` sets
``[redis] read_client = "redis-py"``: Recommend reads its state through a redis-py
pipeline instead of the thin reader (:mod:`recsvc.store.thinreader`);
``--redis-py-cache`` reads it through redis-py's own client-side cache instead, a sync
client called on the event loop or through threads (:mod:`redispy_cache_reader`,
``[server] state_cache_size`` entries, Redis >= 7.4); ``--no-gc-freeze`` leaves the
heap unfrozen after start-up (:func:`recsvc.serving.server.freeze_heap`). One process
only for the last two: the switches do not reach spawned processes. Each serving
process prints
``recsvc serving on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redispy_cache_reader import MODES, RedisPyCacheReader

from recsvc.config import load_settings
from recsvc.serving import server
from recsvc.store import state as state_module


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="recsvc serve with one lever switched")
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--event-loop", choices=server.EVENT_LOOPS, default="asyncio")
    p.add_argument("--redis-py-read", action="store_true", help="read state through redis-py")
    p.add_argument(
        "--redis-py-cache", choices=MODES, help="redis-py's client-side cache (1 process)"
    )
    p.add_argument("--state-cache-size", type=int, help="[server] state_cache_size (0 = off)")
    p.add_argument("--overfetch", type=int, help="[ranking] overfetch")
    p.add_argument("--no-gc-freeze", action="store_true", help="heap not frozen (1 process)")
    args = p.parse_args(argv)
    if (args.redis_py_cache or args.no_gc_freeze) and args.processes != 1:
        p.error("--redis-py-cache and --no-gc-freeze work with one process only")
    if args.redis_py_read and args.redis_py_cache:
        p.error("--redis-py-read and --redis-py-cache exclude each other")
    if args.redis_py_cache:
        mode = args.redis_py_cache

        def redis_py_cache(_url: str, client: Any, _choice: str, **options: Any) -> Any:
            entries = options["cache_entries"]
            return RedisPyCacheReader.for_client(client, mode=mode, cache_entries=entries)

        # the seam where the live state opens its reader (recsvc.store.reader.open_reader)
        state_module.open_reader = redis_py_cache  # type: ignore[assignment]
    if args.no_gc_freeze:
        server.freeze_heap = lambda: None
    cache = {} if args.state_cache_size is None else {"state_cache_size": args.state_cache_size}
    ranking = {} if args.overfetch is None else {"ranking": {"overfetch": args.overfetch}}
    settings = load_settings(
        None,
        artifact_root=args.artifacts,
        redis={
            "url": args.redis_url,
            **({"read_client": "redis-py"} if args.redis_py_read else {}),
        },
        server={
            "host": "127.0.0.1",
            "port": args.port,
            "metrics_port": args.metrics_port,
            **cache,
        },
        **ranking,
    )
    return server.run(settings, processes=args.processes, event_loop=args.event_loop)


if __name__ == "__main__":
    sys.exit(main())
