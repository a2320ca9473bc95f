"""ModelHolder: follows CURRENT, refuses what it cannot serve, keeps the old model."""

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from recsvc import artifact as art
from recsvc.serving.reload import ModelHolder, ReloadOutcome

from server_harness import publish_block_model


def test_a_renamed_version_directory_is_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "artifacts"
    good = publish_block_model(root)
    shutil.copytree(root / good, root / "my-copy")
    holder = ModelHolder(root, overfetch=4)

    async def body() -> list[ReloadOutcome]:
        outcomes = [await holder.reload()]
        # pointed at by hand: publishing refuses it
        (root / art.CURRENT).write_text("my-copy\n")
        outcomes += [await holder.reload() for _ in range(3)]
        return outcomes

    with caplog.at_level(logging.ERROR, logger="recsvc.serving.reload"):
        outcomes = asyncio.run(body())
    assert outcomes == [ReloadOutcome.SUCCESS] + [ReloadOutcome.FAILURE] * 3
    assert holder.current is not None and holder.current.version == good
    assert holder.loaded_versions == [good]
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1, refusals
    assert "my-copy" in refusals[0] and good in refusals[0]


def test_bad_current_targets_are_refused_once_each_and_the_old_model_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "artifacts"
    good = publish_block_model(root, seed=0)
    other = publish_block_model(tmp_path / "elsewhere", seed=1)  # valid, outside the root
    holder = ModelHolder(root, overfetch=4)
    targets = [
        f"../elsewhere/{other}",  # traversal to a model that would load
        str(tmp_path / "elsewhere" / other),  # an absolute path to it
        "../../etc",
        good[: len(good) // 2],  # a truncated name
        "\ufffd\x00garbage",
    ]

    async def body() -> list[ReloadOutcome]:
        outcomes = [await holder.reload()]
        for target in targets:
            (root / art.CURRENT).write_text(target + "\n")
            outcomes += [await holder.reload(), await holder.reload()]
        (root / art.CURRENT).write_bytes(b"\xff\xfe\x81 not UTF-8")
        outcomes += [await holder.reload(), await holder.reload()]
        return outcomes

    with caplog.at_level(logging.ERROR, logger="recsvc.serving.reload"):
        outcomes = asyncio.run(body())
    assert outcomes == [ReloadOutcome.SUCCESS] + [ReloadOutcome.FAILURE] * 12
    assert holder.current is not None and holder.current.version == good
    assert holder.loaded_versions == [good]
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 6, refusals  # one per bad target
