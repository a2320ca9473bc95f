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
