"""EventLog: canonical CSV that load_events reads back, rotation, durability, threads."""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from recsvc.errors import StoreError
from recsvc.events import CANONICAL_COLUMNS, EventType
from recsvc.serving.eventlog import LOG_COLUMNS, EventLog, EventRow
from recsvc.training.loading import load_events

NAME = r"events-\d{8}T\d{6}-\d{6}\.csv"


def _rows(n: int, start: int = 0, user: str = "u") -> list[EventRow]:
    return [
        EventRow(f"{user}{i % 7}", f"sku-{i}", 1_700_000_000 + i, "view", 1.0, f"b{i}")
        for i in range(start, start + n)
    ]


def _loaded(paths: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in paths:
        table, summary = load_events(path)
        assert summary.removed == {"bad_row": 0, "repeated_event_id": 0}
        out.extend(table.to_pylist())
    return out


def _as_loaded(row: EventRow) -> dict[str, Any]:
    return {
        "user_id": row.user_id,
        "item_id": row.item_id,
        "timestamp": row.timestamp,
        "event_type": str(row.event_type),
        "quantity": row.quantity,
        "basket_id": row.basket_id or f"{row.user_id}@{row.timestamp}",
    }


def test_files_load_with_load_events_unchanged(tmp_path: Path) -> None:
    rows = [
        EventRow("alice", 'sku,"1"', 1_700_000_000, "purchase", 2.0, "order-1"),
        EventRow("bob, jr.", "a|b", 1_700_000_001, EventType.ADD_TO_CART, 0.5, 'b"x'),
        EventRow("00123", "00456", 1_700_000_002, "view"),  # leading zeros kept
        EventRow("carol", " spaced ", 1_700_000_003, "click", 1.0, ""),
        EventRow("dave", "caf\u00e9", 1_700_000_004, "impression", 3.0, "b"),
    ]
    with EventLog(tmp_path, max_bytes=1 << 20) as log:
        log.append(rows[:2])
        log.append(rows[2:])
        current = log.current
        assert current is not None and log.files() == []  # the open file is left out
    files = log.files()
    assert files == [current]
    assert _loaded(files) == [_as_loaded(r) for r in rows]
    text = files[0].read_text()
    assert text.startswith(",".join((*CANONICAL_COLUMNS, *LOG_COLUMNS)) + "\n")
    assert '"sku,""1"""' in text


def test_rotation_at_max_bytes(tmp_path: Path) -> None:
    max_bytes = 400
    rows = _rows(60)
    with EventLog(tmp_path, max_bytes=max_bytes) as log:
        for i in range(0, len(rows), 3):
            log.append(rows[i : i + 3])
    files = log.files()
    assert len(files) > 3
    assert all(f.stat().st_size <= max_bytes for f in files)
    assert all(re.fullmatch(NAME, f.name) for f in files)
    assert files == sorted(files)
    # Oldest first: the rows come back in the order they were appended.
    assert _loaded(files) == [_as_loaded(r) for r in rows]


def test_a_batch_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    with EventLog(tmp_path, max_bytes=200) as log:
        log.append(_rows(1))
        log.append(_rows(20, start=1))
        log.append(_rows(1, start=21))
    sizes = [len(_loaded([f])) for f in log.files()]
    assert sizes == [1, 20, 1]


def test_nothing_half_written_after_close(tmp_path: Path) -> None:
    log = EventLog(tmp_path, max_bytes=500, fsync_interval_seconds=0)
    for i in range(10):
        log.append(_rows(4, start=4 * i))
    log.sync()
    log.close()
    log.close()  # idempotent
    assert log.current is None
    with pytest.raises(ValueError, match="closed"):
        log.append(_rows(1))
    total = 0
    for path in log.files():
        data = path.read_bytes()
        assert data.endswith(b"\n")
        total += data.count(b"\n") - 1
    assert total == 40


def test_empty_append_creates_no_file(tmp_path: Path) -> None:
    with EventLog(tmp_path / "new" / "dir", max_bytes=1024) as log:
        log.append([])
    assert log.files() == []
    assert list((tmp_path / "new" / "dir").iterdir()) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (EventRow("u", "", 1, "view"), "empty item_id"),
        (EventRow("", "a", 1, "view"), "empty user_id"),
        (EventRow("u", "a\nb", 1, "view"), "line break"),
        (EventRow("u\r", "a", 1, "view"), "line break"),
        (EventRow("u", "a", 1, "view", 1.0, "b\n"), "line break"),
        (EventRow("u", "a", 1, "like"), "event_type"),
        (EventRow("u", "a", 1_700_000_000_000, "view"), "Unix seconds"),
        (EventRow("u", "a", 1.5, "view"), "integer"),  # type: ignore[arg-type]
        (EventRow("u", "a", 1, "view", 0.0), "quantity"),
        (EventRow("u", "a", 1, "view", float("nan")), "quantity"),
        (EventRow("u", "a", 1, "view", 1e39), "quantity"),
    ],
)
def test_rows_the_loader_cannot_read_are_rejected(
    tmp_path: Path, row: EventRow, message: str
) -> None:
    with EventLog(tmp_path, max_bytes=1024) as log:
        with pytest.raises(ValueError, match=message):
            log.append([*_rows(2), row])
        assert log.current is None  # nothing of the batch was written
    assert list(tmp_path.iterdir()) == []


def test_concurrent_appends_all_land(tmp_path: Path) -> None:
    threads, batches, per_batch = 8, 100, 3
    barrier = threading.Barrier(threads)

    with EventLog(tmp_path, max_bytes=4096) as log:

        def worker(t: int) -> None:
            barrier.wait()
            for b in range(batches):
                log.append(_rows(per_batch, start=(t * batches + b) * per_batch, user=f"t{t}-"))

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    loaded = _loaded(log.files())
    assert len(loaded) == threads * batches * per_batch
    assert sorted(r["item_id"] for r in loaded) == sorted(
        f"sku-{i}" for i in range(threads * batches * per_batch)
    )
    # Each batch stays together: one write per append.
    for start in range(0, len(loaded), per_batch):
        batch = loaded[start : start + per_batch]
        first = int(batch[0]["item_id"].removeprefix("sku-"))
        assert [r["item_id"] for r in batch] == [f"sku-{first + k}" for k in range(per_batch)]


def test_logs_sharing_a_directory_never_share_a_file(tmp_path: Path) -> None:
    with EventLog(tmp_path, max_bytes=1024) as one, EventLog(tmp_path, max_bytes=1024) as two:
        one.append(_rows(1))
        two.append(_rows(1, start=1))
        assert one.current != two.current
    assert len(one.files()) == 2


def test_failed_write_is_cut_back_and_the_next_append_starts_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = EventLog(tmp_path, max_bytes=1 << 20)
    log.append(_rows(2))
    first = log.current
    assert first is not None
    good_size = first.stat().st_size
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data)[:7])  # part of the batch reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(StoreError, match="No space left") as caught:
        log.append(_rows(2, start=2))
    assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert first.stat().st_size == good_size
    assert log.current is None
    log.append(_rows(2, start=4))
    log.close()
    assert len(log.files()) == 2
    assert [r["item_id"] for r in _loaded(log.files())] == ["sku-0", "sku-1", "sku-4", "sku-5"]


def test_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EventLog(tmp_path, max_bytes=0)
    with pytest.raises(ValueError):
        EventLog(tmp_path, max_bytes=10, fsync_interval_seconds=-1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        EventLog(blocker / "sub", max_bytes=10)


def test_the_log_is_owner_only(tmp_path: Path) -> None:
    # the rows name customers: 0644 let every local user read them
    directory = tmp_path / "log"
    with EventLog(directory, max_bytes=1 << 20) as log:
        log.append(_rows(2))
    (path,) = log.files()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_retried_event_logged_twice_loads_once(tmp_path: Path) -> None:
    # a retried RecordEvents may log an event again, in this replica's log or another's
    first = EventRow("alice", "sku-1", 1_700_000_000, "purchase", 1.0, "", "e1")
    second = EventRow("alice", "sku-2", 1_700_000_001, "view", 1.0, "", "e2")
    unnamed = EventRow("bob", "sku-3", 1_700_000_002, "view")  # no id: never dropped
    with EventLog(tmp_path / "a", max_bytes=1 << 20) as log:
        log.append([first, second, first, unnamed, unnamed])
    with EventLog(tmp_path / "b", max_bytes=1 << 20) as other:
        other.append([second])
    seen: set[str] = set()
    tables = [load_events(path, seen_event_ids=seen) for path in (*log.files(), *other.files())]
    assert [t.num_rows for t, _ in tables] == [4, 0]
    assert [s.removed["repeated_event_id"] for _, s in tables] == [1, 1]
    assert seen == {"e1", "e2"}
