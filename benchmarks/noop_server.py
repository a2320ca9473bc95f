"""The serving floor: recsvc.v1.RecommenderService.Recommend doing no work at all.

Usage::

    .venv/bin/python benchmarks/noop_server.py [--host 127.0.0.1] [--port 0]

It prints ``noop serving on HOST:PORT`` once it listens and runs until SIGTERM or
SIGINT. ``Recommend`` parses the request (the generated handler does) and returns a
prebuilt response of the shape recsvc sends: 10 items with id, score and reason, a
model version, a recommendation id and the strategy -- 100 items when the request
asks for k = 100, so the floor carries the same bytes as the service at either k.
Every other RPC is left UNIMPLEMENTED.

``--interceptors`` puts recsvc's own interceptor chain (:func:`serving.interceptors.
server_interceptors` with default settings: metrics, auth off, concurrency limit) in
front of the no-op. That server is *not* the floor; the benchmark runs it beside the
floor to measure what the interceptors alone cost.

What makes it the floor of *this* server: the same ``grpc.aio`` server, the same
server options as :func:`recsvc.serving.server.create_server`, one process, the asyncio event
loop ``recsvc serve`` runs on, the heap frozen once started as ``recsvc serve`` freezes
it, and the generated servicer glue. To match a server
run as several processes on one port, start as many with ``--reuseport``; to match
one on uvloop, pass ``--event-loop uvloop``. What it leaves out on
purpose: recsvc's interceptors (metrics, auth, concurrency limit), health and
reflection, validation, Redis, the ranking. The benchmark reports every serving figure
as a ratio to this one, measured in the same run.
"""

# ruff: noqa: PLC0415  (recsvc's serving stack is imported only for --interceptors)

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
from collections.abc import Sequence
from typing import Any

import grpc

from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

# What recsvc.serving.server.create_server passes; keep the two in step.
SERVER_OPTIONS = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]
MODEL_VERSION = "20261122T210108Z-b63ccbd0"
"""A model version of the shape recsvc writes (the response carries it twice)."""


def fixed_response(k: int) -> pb.RecommendResponse:
    """A response shaped like recsvc's answer to a cached user: ``k`` scored items."""
    return pb.RecommendResponse(
        items=[
            pb.RecommendedItem(
                item_id=f"i{7919 * i % 100_000:05d}", score=1.0 - i / k, reason=pb.REASON_CF
            )
            for i in range(k)
        ],
        model_version=MODEL_VERSION,
        recommendation_id=f"{MODEL_VERSION}.{'5f0c' * 8}",
        strategy=pb.STRATEGY_PERSONALIZED,
    )


class NoopRecommender(pb_grpc.RecommenderServiceServicer):
    """Returns a prebuilt response; the request is parsed by the generated handler."""

    def __init__(self) -> None:
        self._ten = fixed_response(10)
        self._hundred = fixed_response(100)

    async def Recommend(  # noqa: N802 (gRPC method name)
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        return self._hundred if request.k == 100 else self._ten


def recsvc_interceptors() -> list[Any]:
    """recsvc's interceptors as ``create_server`` builds them, on a private registry."""
    from prometheus_client import CollectorRegistry

    from recsvc.config import ServerSettings
    from recsvc.serving.interceptors import server_interceptors
    from recsvc.serving.metrics import ServingMetrics

    return server_interceptors(ServerSettings(), ServingMetrics(CollectorRegistry()))


async def serve(
    host: str, port: int, *, interceptors: bool = False, reuse_port: bool = False
) -> None:
    options = [("grpc.so_reuseport", 1 if reuse_port else 0), *SERVER_OPTIONS[1:]]
    server = grpc.aio.server(
        interceptors=recsvc_interceptors() if interceptors else None, options=options
    )
    pb_grpc.add_RecommenderServiceServicer_to_server(NoopRecommender(), server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    gc.collect()  # as `recsvc serve` does once started (recsvc.serving.server.freeze_heap)
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"noop serving on {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="No-op Recommend server: the gRPC floor.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    p.add_argument(
        "--interceptors", action="store_true", help="recsvc's interceptors in front (not the floor)"
    )
    p.add_argument(
        "--reuseport",
        action="store_true",
        help="bind with SO_REUSEPORT (several processes on one port, as recsvc's processes)",
    )
    p.add_argument(
        "--event-loop", choices=["asyncio", "uvloop"], default="asyncio", help="as recsvc's"
    )
    args = p.parse_args(argv)
    main = serve(args.host, args.port, interceptors=args.interceptors, reuse_port=args.reuseport)
    if args.event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
    return 0


if __name__ == "__main__":
    sys.exit(main())
