"""Training reads the live catalogue the servers serve: one catalogue for both."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest

from recsvc.catalog import CatalogItem
from recsvc.errors import ConfigError
from recsvc.store import KeyScheme
from recsvc.store.catalog import CatalogStore
from recsvc.training.pipeline import DataSpec, build_model, load_data

from factories import block_shop, small_settings

pytestmark = pytest.mark.integration


def _events_file(path: Path) -> Path:
    rows = block_shop().to_pylist()
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_withdrawn_items_are_not_learned_and_live_categories_are_kept(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async def write() -> None:
        store = CatalogStore.open(redis_url, KeyScheme(redis_prefix), socket_timeout=5.0)
        try:
            await store.upsert([CatalogItem("g0i01", category=("home", "lamps"), available=False)])
            await store.withdraw(["g1i02"])
        finally:
            await store.aclose()

    asyncio.run(write())
    settings = small_settings(tmp_path, redis={"url": redis_url, "prefix": redis_prefix})
    spec = DataSpec((_events_file(tmp_path / "events.csv"),), live_catalog=True)
    data = load_data(spec, settings)
    assert "g1i02" not in set(data.table["item_id"].to_pylist())
    artifact = build_model(data, settings).artifact
    ids = artifact.item_ids.tolist()
    assert "g1i02" not in ids
    at = ids.index("g0i01")
    assert artifact.categories[artifact.item_category[at]] == "lamps"
    assert not artifact.item_available[at]


def test_the_live_catalogue_needs_a_redis_url(tmp_path: Path) -> None:
    spec = DataSpec((_events_file(tmp_path / "events.csv"),), live_catalog=True)
    with pytest.raises(ConfigError, match="redis"):
        load_data(spec, small_settings(tmp_path))
