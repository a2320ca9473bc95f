"""A real server in-process: its own event loop on a thread, bound to a free port.

Tests stay synchronous and talk to it over loopback gRPC like any client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recsvc import artifact as art
from recsvc.config import Settings
from recsvc.serving.server import RunningServer, create_server
from recsvc.training.pipeline import LoadedData, build_model

from factories import block_shop, small_settings

T = TypeVar("T")


def publish_block_model(
    root: Path, *, seed: int = 0, categories: bool = True, publish: bool = True
) -> str:
    """Train the block shop (two groups), write it and (unless told not to) publish
    it; returns the version."""
    settings = small_settings(None, als={"factors": 2, "iterations": 15, "random_state": seed})
    built = build_model(LoadedData(block_shop(seed=seed), None, (), 0), settings)
    a = built.artifact
    if categories:
        a.categories = np.array(["g0", "g1"])
        a.item_category = np.array([0 if i.startswith("g0") else 1 for i in a.item_ids], np.int32)
    path = art.write_artifact(a, root)
    if publish:
        art.publish_version(root, path.name)
    return path.name


class ServerThread:
    """Runs ``create_server(settings)`` on a private loop; ``stop()`` drains it."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(create_server(settings))
        self.target = f"127.0.0.1:{self.running.port}"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        try:
            self.call(self.running.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
