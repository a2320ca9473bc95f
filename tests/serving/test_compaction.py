"""Erasure that deletes: compaction removes erased customers from the event log and
every kept model version, atomically, and records them complete."""

from __future__ import annotations

import csv
import fcntl
import os
from pathlib import Path

import pytest

from recsvc import artifact as art
from recsvc.compaction import (
    LOCK_NAME,
    CompactionBusy,
    compact,
    completion_path,
    erasure_status,
)
from recsvc.erasure import append_erasure
from recsvc.serving.eventlog import EventLog, EventRow
from recsvc.v1 import recommender_pb2 as pb

from factories import both_backends
from server_harness import clients_of, publish_block_model, replicas, soon


@pytest.fixture(params=["single", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """Every Redis test here runs on one Redis and on a Redis Cluster."""
    return both_backends(request, redis_url)


ERASED = "g0u01"


def traces(root: Path, user: str, skip: tuple[Path, ...] = ()) -> list[str]:
    """Files under ``root`` whose bytes hold ``user`` (as UTF-8, or as the UTF-32 of a
    NumPy unicode array), ``skip`` left out."""
    needles = (user.encode(), user.encode("utf-32-le"))
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip:
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path.relative_to(root)))
    return found


def log_rows(directory: Path) -> list[list[str]]:
    rows = []
    for path in sorted(directory.glob("events-*.csv")):
        with path.open(newline="") as fh:
            rows += list(csv.reader(fh))[1:]
    return rows


def shop(tmp_path: Path, users: list[str]) -> tuple[Path, Path, Path]:
    """An artifact root with two versions of the block shop, and an event log of two
    finished files holding three rows of each of ``users``."""
    root = tmp_path / "artifacts"
    publish_block_model(root, seed=0)
    publish_block_model(root, seed=1)
    logs = root / "eventlog"
    with EventLog(logs, max_bytes=10_000) as log:
        for n in range(3):
            log.append([EventRow(u, f"g0i0{n}", 1_700_000_000 + n, "view") for u in users])
            if n == 1:
                log.rotate()
    return root, logs, root / "erased_users.txt"


def test_compaction_leaves_no_trace_of_the_customer(tmp_path: Path) -> None:
    root, logs, erased = shop(tmp_path, [ERASED, "g0u02", 'odd,"id'])
    versions = art.list_versions(root)
    current = art.current_version(root)
    users_before = len(art.read_artifact(root / versions[0]).user_ids)
    assert traces(root, ERASED)  # the log and both versions hold them
    append_erasure(erased, ERASED)
    append_erasure(erased, 'odd,"id')  # a quoted CSV field
    assert erasure_status(erased, ERASED) == "pending"

    report = compact(root, erased, [logs])

    assert report.completed == ("g0u01", 'odd,"id') and report.pending == ()
    assert report.rows_removed == 6 and report.files_rewritten == 2
    assert report.versions_rewritten == 2 and report.users_removed == 2
    keep = (erased, completion_path(erased))
    assert traces(root, ERASED, keep) == [] and traces(root, 'odd,"id', keep) == []
    assert [r[0] for r in log_rows(logs)] == ["g0u02"] * 3
    # the versions keep their names, load with their new checksums, and lost one row
    assert art.list_versions(root) == versions and art.current_version(root) == current
    rewritten = art.read_artifact(root / versions[0])
    assert len(rewritten.user_ids) == users_before - 1 and ERASED not in rewritten.user_ids
    assert rewritten.manifest.data.users == users_before - 1
    assert rewritten.user_items.shape[0] == rewritten.user_factors.shape[0]
    assert erasure_status(erased, ERASED) == "complete"
    assert erasure_status(erased, "g0u02") == "none"
    # a second round has nothing to do
    again = compact(root, erased, [logs])
    assert again.completed == () and again.rows_removed == 0
    assert oct(logs.joinpath(sorted(os.listdir(logs))[0]).stat().st_mode & 0o777) == "0o600"


def test_a_file_being_appended_to_is_left_for_the_writers_round(tmp_path: Path) -> None:
    root, logs, erased = shop(tmp_path, ["g0u03"])
    with EventLog(logs, max_bytes=10_000) as log:
        log.append([EventRow(ERASED, "g0i01", 1_700_000_100, "view")])
        append_erasure(erased, ERASED)
        report = compact(root, erased, [logs])
        assert report.pending == (ERASED,) and report.completed == ()
        assert report.skipped_files == [str(log.current)]
        assert erasure_status(erased, ERASED) == "pending"
        log.rotate()  # what the server does before its own round
        done = compact(root, erased, [logs])
    assert done.completed == (ERASED,) and done.rows_removed == 1
    assert traces(root, ERASED, (erased, completion_path(erased))) == []


def test_one_round_at_a_time(tmp_path: Path) -> None:
    root, logs, erased = shop(tmp_path, ["g0u03"])
    fd = os.open(root / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(CompactionBusy):
            compact(root, erased, [logs])
    finally:
        os.close(fd)


def test_a_swap_cut_by_a_crash_is_completed_or_undone(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    version = publish_block_model(root)
    # cut after the old version went aside, before the new one took its name
    os.rename(root / version, root / f".replaced-{version}")
    assert art.finish_replacements(root) == [version]
    assert art.read_artifact(root / version).model_version == version
    # cut after the new one took its name, before the old one was deleted
    (root / f".replaced-{version}").mkdir()
    assert art.finish_replacements(root) == [version]
    assert not (root / f".replaced-{version}").exists()
    assert art.read_artifact(root / version).model_version == version


@pytest.mark.integration
def test_the_server_compacts_and_forget_user_reports_it(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with (
        replicas(tmp_path, redis_url, redis_prefix, token="t", n=1,
                 server={"compact_interval_seconds": 0.2}) as servers,
        clients_of(servers, "t") as (client,),
    ):  # fmt: skip
        client.record_events([client.event("g0i02", "view", user_id="g0u07")])
        assert traces(tmp_path, "g0u07")  # the server's log and the trained version
        first = client.forget_user("g0u07")
        assert first.erasure_status == pb.ERASURE_STATUS_PENDING
        soon(
            lambda: client.forget_user("g0u07").erasure_status == pb.ERASURE_STATUS_COMPLETE,
            within=10.0,
        )
        erased = tmp_path / "erased.txt"  # the replicas' erasure list
        assert traces(tmp_path, "g0u07", (erased, completion_path(erased))) == []
        assert client.recommend("g0u01", k=3).items  # the rewritten version still serves
