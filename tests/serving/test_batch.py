"""Batch recommendations for campaigns: every customer of the shop, through the served
ranking; opted-out and erased customers skipped, no unavailable item listed."""

from __future__ import annotations

import asyncio
import csv
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsvc.config import Settings
from recsvc.serving.batch import run_batch

from factories import small_settings
from server_harness import ServerThread, clients_of, publish_block_model

pytestmark = pytest.mark.integration

TOKEN = "batch-token"


def shop_settings(tmp_path: Path, redis_url: str, redis_prefix: str) -> Settings:
    root = tmp_path / "artifacts"
    publish_block_model(root)
    return small_settings(
        None,
        artifact_root=str(root),
        redis={"url": redis_url, "prefix": redis_prefix},
        server={"port": 0, "metrics_port": None, "auth_token": TOKEN},
    )


def test_a_campaign_skips_who_must_be_skipped_and_lists_only_what_can_be_bought(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = shop_settings(tmp_path, redis_url, redis_prefix)
    server = ServerThread(settings)
    try:
        with clients_of([server], TOKEN) as (client,):
            items = [f"g{g}i{i:02d}" for g in (0, 1) for i in range(12)]
            client.upsert_items(
                [client.item(i, category_path=[i[:2]], available=i != "g0i03") for i in items]
            )
            client.set_consent("g0u02", "off")
            client.set_consent("g0u03", "session_only")
            client.forget_user("g1u04")
    finally:
        server.stop()
    out = tmp_path / "campaign.parquet"
    report = asyncio.run(run_batch(settings, out, k=5))
    assert report.customers == 60
    assert report.skipped == {"opted_out": 1, "session_only": 1, "erased": 1}
    assert report.written == 57 and report.rows == 57 * 5
    table = pq.read_table(out)
    assert table.num_rows == report.rows
    users = set(table["user_id"].to_pylist())
    assert len(users) == 57 and not users & {"g0u02", "g0u03", "g1u04"}
    assert "g0i03" not in set(table["item_id"].to_pylist())  # out of stock
    # each customer's list is their group's (the block shop's known answer), ranked 1..5
    rows = table.to_pylist()
    assert all(r["item_id"][:2] == r["user_id"][:2] for r in rows)
    assert sorted({r["rank"] for r in rows}) == [1, 2, 3, 4, 5]
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_the_cli_writes_csv_for_a_list_of_customers(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    settings = shop_settings(tmp_path, redis_url, redis_prefix)
    ids = tmp_path / "ids.txt"
    ids.write_text("g0u05\ng1u06\nnobody-known\n")
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [sys.executable, "-m", "recsvc", "batch", "--artifacts", str(settings.artifact_root),
         "--redis-url", redis_url, "--users", str(ids), "--out", str(out), "--k", "3"],
        capture_output=True, text=True, timeout=120, check=False,
        env={"RECSVC_REDIS__PREFIX": redis_prefix, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 of 3 customers" in done.stdout and "1 no_signal" in done.stdout
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["user_id"] for r in rows] == ["g0u05"] * 3 + ["g1u06"] * 3
