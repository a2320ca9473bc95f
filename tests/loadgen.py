"""A load generator in a process of its own, for the fault suite (tests/serving/test_faults.py).

N callers, each a thread with its own :class:`recsvc.client.RecommenderClient` and its
default 200 ms deadline, call one RPC at a paced rate until ``--duration`` seconds have
passed or SIGTERM arrives::

    python tests/loadgen.py --target 127.0.0.1:50051 --rpc recommend --callers 4 \\
        --rate 50 --duration 8 --out calls.jsonl [--acked acked.txt] [--token T]

Every call is one JSON line in ``--out``: ``caller``, ``start`` and ``end`` (wall-clock
Unix seconds, so a test can line them up with the faults it made), ``code`` (the status
code's name), and for Recommend ``degraded`` and ``version``. For RecordEvents each
call sends ``--batch`` view events of a user of its own (``<run>-<caller>-<seq>``); the
events of every acknowledged call (status OK) are appended to ``--acked`` as
``user|item|timestamp`` lines, flushed at once, so what was acknowledged survives
whatever happens to the server. Prints ``started`` once the callers run; exits 0.

It imports only the client (grpc, protobuf), so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from itertools import count
from typing import IO, Any

import grpc

from recsvc.client import RecommenderClient

_HARD_STOP_SECONDS = 5.0
"""A caller blocked past the duration by more than this is abandoned, not awaited."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--rpc", choices=["recommend", "record"], required=True)
    p.add_argument("--callers", type=int, default=4)
    p.add_argument("--rate", type=float, default=50.0, help="calls per second per caller")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--out", required=True, help="JSON lines, one per call")
    p.add_argument("--acked", help="RecordEvents: acknowledged events, one per line")
    p.add_argument("--token")
    p.add_argument("--run", default="lg", help="prefix of the RecordEvents users")
    p.add_argument("--batch", type=int, default=3, help="RecordEvents: events per call")
    p.add_argument("--users", default="g0u01,g0u03,g1u02,g1u05")
    p.add_argument("--items", default=",".join(f"g0i{i:02d}" for i in range(12)))
    args = p.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    with (
        open(args.out, "w", encoding="utf-8") as out,
        open(args.acked or "/dev/null", "a", encoding="utf-8") as acked,
    ):
        callers = [
            threading.Thread(target=_caller, args=(n, args, stop, lock, out, acked), daemon=True)
            for n in range(args.callers)
        ]
        for t in callers:
            t.start()
        print("started", flush=True)
        stop.wait(args.duration)
        stop.set()
        for t in callers:
            t.join(_HARD_STOP_SECONDS)
    return 0


def _caller(
    n: int,
    args: argparse.Namespace,
    stop: threading.Event,
    lock: threading.Lock,
    out: IO[str],
    acked: IO[str],
) -> None:
    users, items = args.users.split(","), args.items.split(",")
    period = 1.0 / args.rate
    with RecommenderClient(args.target, token=args.token) as client:  # the 200 ms default
        due = time.monotonic()
        for seq in count():
            if stop.is_set():
                return
            record: dict[str, Any] = {"caller": n, "start": time.time()}
            events: list[str] = []
            try:
                if args.rpc == "recommend":
                    resp = client.recommend(
                        users[seq % len(users)],
                        session_id=f"{args.run}-{n}-{seq}",  # never in a cache
                        session_items=[items[seq % len(items)]],
                        k=5,
                    )
                    record.update(degraded=resp.degraded, version=resp.model_version)
                else:
                    user = f"{args.run}-{n}-{seq}"
                    now = int(time.time())
                    batch = [(items[(seq + j) % len(items)], now - j) for j in range(args.batch)]
                    request = []
                    for item, ts in batch:
                        event = client.event(item, "view", user_id=user)
                        event.event_time.seconds = ts
                        request.append(event)
                    client.record_events(request)
                    events = [f"{user}|{item}|{ts}" for item, ts in batch]
                record["code"] = "OK"
            except grpc.RpcError as err:
                record["code"] = err.code().name
            record["end"] = time.time()
            with lock:
                out.write(json.dumps(record) + "\n")
                out.flush()
                if events:
                    acked.write("".join(e + "\n" for e in events))
                    acked.flush()
            due = max(due + period, time.monotonic())  # paced; no burst to catch up
            stop.wait(max(0.0, due - time.monotonic()))


if __name__ == "__main__":
    raise SystemExit(main())
