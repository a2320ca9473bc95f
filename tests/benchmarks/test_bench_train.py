"""benchmarks/bench_train.py's accounting of the trainer's step clocks."""

from __future__ import annotations

from types import ModuleType

import pytest

from factories import bench_script


@pytest.fixture(scope="module")
def bench_train() -> ModuleType:
    return bench_script("bench_train")


def test_steps_on_a_thread_count_only_by_the_wait_for_them(bench_train: ModuleType) -> None:
    serial = {"fit": 2.0, "neighbors": 3.0, "blend": 1.0}
    assert bench_train.main_thread_seconds(serial) == pytest.approx(6.0)
    # the session model ran beside the blend fit; the main thread waited 2 s for it
    threaded = {"fit": 2.0, "neighbors": 3.0, "blend": 1.0, "neighbors_wait": 2.0}
    assert bench_train.main_thread_seconds(threaded) == pytest.approx(5.0)
