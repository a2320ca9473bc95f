"""Replay a held-out month of Online Retail II through ``recsvc serve``: are new products
recommended at all, and how soon (issue #15, the live catalogue)?

Usage::

    .venv/bin/python benchmarks/replay_new_items.py \\
        [--data ../shared/data/online_retail_ii.csv.gz] [--cutoff 2011-11-01 ...] \\
        [--variant today:max_new_items=0 --variant live ...] [--rev COMMIT] \\
        --out benchmarks/results/new-items

Method
------
1. **Split by time.** Invoices before ``--cutoff`` train the model; the test window is
   ``[cutoff, cutoff + days)``. Lines are cleaned as ``recsvc train --format
   online-retail`` cleans them (no cancellations, returns or non-product codes; codes
   upper-cased, nothing trimmed). *New items* are the stock codes first sold in the
   window, never in the training lines. Lines whose ids the API refuses (a stock code
   with a trailing space, ``47503J ``: the trainer keeps it, RecordEvents and
   UpsertItems refuse it) are left out of the replay and counted.
2. **Train once** per window with the real trainer: the training invoices are written,
   as the export lays them out, to a temporary file and ``recsvc train --format
   online-retail --publish`` writes the model into a temporary artifact root. Every run
   of the window serves this one model.
3. **Serve** per run: ``recsvc serve`` in its own process on a free loopback port,
   with a private ``redis-server`` (``--redis-url``) and the run's settings as
   ``RECSVC_RANKING__*`` variables. The live catalogue gets every item of the model
   with its title (the code's most common Description in the training lines); then the
   server is restarted on the same Redis (``--no-restart`` skips it), as a replica
   starts in a shop whose catalogue is loaded: a server started on an empty catalogue
   places no new item by its title for its first 10 minutes (its title index is built
   at its first refresh and kept ``_TITLE_INDEX_SECONDS``), which a replay that
   compresses a month into minutes would mistake for the method's result. Each new
   item is upserted with its title (its first sale's Description) at the start of the
   day of its first sale, as a shop lists a product when it launches. The export has
   no categories or brands: new items are placed by title words and by what shoppers
   buy them with.
4. **Replay** the window day by day in time order through ``RecordEvents``: each
   invoice is a session (``session_id`` = invoice, ``user_id`` = Customer ID or none
   for guests), each line a purchase (``event_id`` = invoice and line) with its
   quantity and the invoice's time, in batches of at most 1000 events that never split
   an invoice of 1000 lines or fewer. After each day's events (and ``--settle`` seconds
   for the server's 1-s refresh of new items and live popularity) the script asks what
   the shop would show, on ``--workers`` client threads: ``SimilarItems(k=10)`` of the
   trained items sold that day (at most ``--similar-cap``, a seeded sample),
   ``SimilarItems(k=10)`` of every new item listed so far (NOT_FOUND: no answer), the
   anonymous ``Recommend(k=20)`` (the popular list; a ``k=100`` one only gives the
   ranks of new items below it) and ``Recommend(k=10)`` of a seeded sample of the
   customers active that day (at most ``--customer-cap``). For every new item it
   records the first day it showed in any answer and by which path: ``similar`` (in a
   trained item's similar list), ``similar-of-new`` (in another new item's),
   ``popular``, ``personalized``. A day without sales (the shop's Saturdays) is not
   probed; delays count calendar days from the first sale (0 = by the end of its launch
   day). Right after each launch's upsert, ``SimilarItems`` of the new item is asked
   once more: does its title alone place it? How much room new items take is counted
   too: trained items' similar lists holding one, and their share of the slots.
5. **Usefulness**: of the window's invoices on day d+1 that hold a new item and a
   trained one, a seeded sample (at most ``--basket-cap``) is asked about with the
   state after day d (before day d+1's launches are listed): is the new item among
   ``SimilarItems(k=10)`` of one of the basket's trained items (up to 10 of them, one
   call each, "item page"), and of all of them at once (one call, "cart")? As a
   yardstick the same question is asked of one trained item of the basket (held out,
   seeded) against the same query items. The reverse direction too: does
   ``SimilarItems(new item)`` list one of the basket's trained items (yardstick: does
   ``SimilarItems(held-out trained item)`` list one of the others)?

Runs: by default ``today`` (``ranking.max_new_items = 0``: the feature off, the
baseline) and ``live`` (the defaults); ``--variant NAME[:key=value,...]`` (repeated)
names the runs instead, each with its ``[ranking]`` settings, e.g.
``b05:new_item_evidence=0.5``. ``--rev COMMIT`` measures a commit rather than the
checkout: the script runs again with a snapshot of the commit's tree (``git archive``)
first on ``PYTHONPATH``, so the trainer, the servers and the client all run that code
while the checkout may change under them.

Time. The server rejects event times in the future and ages live popularity from the
event time to its wall clock, so the whole dataset (training lines and replay) is moved
by one constant, a whole number of weeks, putting the window's end just before the run.
Live popularity keeps its forward decay (Cormode et al.): an item's stored score is a
sum of its events' weights times ``2^(event time / half-life)``, so the order of the
live head after day d is the order it had at the end of day d (only the absolute
scale, which the service normalises away, follows the wall clock). What the compression
of a day into seconds changes: Redis TTLs (30 days for new items' counts, the sessions'
and histories' TTLs) count wall seconds, so nothing expires during a run, and the
trained history's ageing factor is the one of the window's end throughout.

Every random choice is seeded (``--seed``): the samples of a day and the baskets are
the same in every run. The report is ``results.json`` (the figures, each new item's record,
each day's probes, the sampled invoices; the answers per basket are summed, not kept)
and ``README.md`` (tables, machine, command).
"""

from __future__ import annotations

import argparse
import calendar
import csv
import gzip
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _env import REPO, git_revision, machine, versions  # noqa: E402

from recsvc.artifact import current_version, read_artifact  # noqa: E402
from recsvc.client import RecommenderClient  # noqa: E402
from recsvc.serving.newitems import _COMMON_WORD, _MIN_PEERS, title_words  # noqa: E402
from recsvc.store.embedded import start_private_redis  # noqa: E402
from recsvc.training.loading import NON_PRODUCT_STOCK_CODE  # noqa: E402

T = TypeVar("T")

DEFAULT_DATA = "../shared/data/online_retail_ii.csv.gz"
DAY = 86_400
WEEK = 7 * DAY
BATCH = 1000
PATHS = ("similar", "similar-of-new", "popular", "personalized")
"""Where a new item can show: a trained item's similar list, another new item's, the
anonymous popular list, a customer's Recommend."""
DEFAULT_VARIANTS = ("today:max_new_items=0", "live")
_NON_PRODUCT = re.compile(NON_PRODUCT_STOCK_CODE)
_CUSTOMER = re.compile(r"^(\d+)\.0*$")


# --------------------------------------------------------------------------- the data


@dataclass
class Invoice:
    """One cleaned invoice of the test window: a session."""

    invoice: str
    ts: int
    """The invoice's time, Unix seconds as in the export (read as UTC)."""
    customer: str
    """'' for a guest."""
    day: int
    """Calendar day of the window, 0 = the cut-off's."""
    lines: list[tuple[str, float, int]] = field(default_factory=list)
    """(stock code, quantity, line number in the file)."""

    @property
    def items(self) -> list[str]:
        return list(dict.fromkeys(code for code, _, _ in self.lines))


@dataclass
class Data:
    train_rows: int
    train_codes: set[str]
    train_titles: dict[str, str]
    invoices: list[Invoice]
    new_first: dict[str, tuple[int, int]]
    """New item -> (day, ts) of its first sale."""
    new_titles: dict[str, str]
    removed: Counter[str]


def api_id(value: str) -> bool:
    """Whether the API takes ``value`` as an id: printable, no spaces at either end, at
    most 256 bytes (docs/api.md, conventions)."""
    printable = value == value.strip() and value.isprintable()
    return bool(value) and printable and len(value.encode()) <= 256


def _unix(stamp: str, cache: dict[str, int]) -> int:
    ts = cache.get(stamp)
    if ts is None:
        parsed = datetime.fromisoformat(stamp.strip())
        ts = calendar.timegm(parsed.replace(tzinfo=None).timetuple())
        cache[stamp] = ts
    return ts


def read_data(path: Path, cutoff: int, end: int, shift: int, train_out: Path) -> Data:
    """Read the export once: write its training lines (times moved by ``shift``) to
    ``train_out`` as the export lays them out, collect the window's clean invoices."""
    stamps: dict[str, int] = {}
    moved: dict[int, str] = {}
    train_codes: set[str] = set()
    titles: defaultdict[str, Counter[str]] = defaultdict(Counter)
    invoices: dict[str, Invoice] = {}
    new_titles: dict[str, str] = {}
    removed: Counter[str] = Counter()
    train_rows = 0
    with (
        gzip.open(path, "rt", encoding="utf-8", newline="") as src,
        gzip.open(train_out, "wt", encoding="utf-8", newline="", compresslevel=1) as dst,
    ):
        reader = csv.reader(src)
        header = next(reader)
        col = {name: i for i, name in enumerate(header)}
        ci, cc, cd, cq, ct, cu = (
            col["Invoice"], col["StockCode"], col["Description"], col["Quantity"],
            col["InvoiceDate"], col["Customer ID"],
        )  # fmt: skip
        writer = csv.writer(dst)
        writer.writerow(header)
        for number, row in enumerate(reader, start=2):
            ts = _unix(row[ct], stamps)
            if ts >= end:
                continue
            if ts < cutoff:
                text = moved.get(ts)
                if text is None:
                    text = datetime.fromtimestamp(ts + shift, UTC).strftime("%Y-%m-%d %H:%M:%S")
                    moved[ts] = text
                row[ct] = text
                writer.writerow(row)
                train_rows += 1
            # as the loader reads them: codes upper-cased, nothing trimmed
            invoice, code = row[ci], row[cc].upper()
            try:
                quantity = float(row[cq])
            except ValueError:
                removed["bad_quantity"] += 1
                continue
            if invoice.upper().startswith("C"):
                removed["cancelled_invoice"] += 1
                continue
            if quantity <= 0:
                removed["return_or_zero_quantity"] += 1
                continue
            if _NON_PRODUCT.match(code):
                removed["non_product"] += 1
                continue
            title = " ".join(row[cd].split())
            if ts < cutoff:
                train_codes.add(code)
                if title:
                    titles[code][title] += 1
                continue
            customer = _CUSTOMER.sub(r"\1", row[cu])
            if not (api_id(code) and api_id(invoice) and (not customer or api_id(customer))):
                # the trainer keeps such ids ("47503J "), RecordEvents refuses them
                removed["id_the_api_refuses"] += 1
                continue
            inv = invoices.get(invoice)
            if inv is None:
                inv = invoices[invoice] = Invoice(invoice, ts, customer, (ts - cutoff) // DAY)
            inv.lines.append((code, quantity, number))
            if code not in train_codes and code not in new_titles:
                new_titles[code] = title
    ordered = sorted(invoices.values(), key=lambda v: (v.ts, v.invoice))
    new_first: dict[str, tuple[int, int]] = {}
    for inv in ordered:
        for code in inv.items:
            if code not in train_codes and code not in new_first:
                new_first[code] = (inv.day, inv.ts)
    return Data(
        train_rows=train_rows,
        train_codes=train_codes,
        train_titles={c: t.most_common(1)[0][0] for c, t in titles.items()},
        invoices=ordered,
        new_first=new_first,
        new_titles={c: new_titles[c] for c in new_first},
        removed=removed,
    )


def title_matches(
    new_titles: dict[str, str], trained_titles: Iterable[str]
) -> dict[str, list[str]]:
    """For each new item, the words of its title that place it (the service's rule:
    words of 2+ letters held by at least one and at most 5% (min 3) of trained titles)."""
    holders: Counter[str] = Counter()
    titled = 0
    for title in trained_titles:
        if title:
            titled += 1
            holders.update(title_words(title))
    limit = max(_MIN_PEERS, _COMMON_WORD * titled)
    return {
        code: sorted(w for w in title_words(title) if 0 < holders[w] <= limit)
        for code, title in new_titles.items()
    }


# --------------------------------------------------------------------------- processes


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSVC_") and k != "REDIS_URL"}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def recsvc_bin() -> str:
    here = Path(sys.executable).parent / "recsvc"
    return str(here) if here.exists() else "recsvc"


def train(data_file: Path, root: Path, log: Path) -> tuple[str, float]:
    """``recsvc train --format online-retail --publish``; the version and its wall time."""
    cmd = [recsvc_bin(), "-q", "train", "--events", str(data_file), "--format", "online-retail"]
    cmd += ["--artifacts", str(root), "--publish"]
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env({}),
            cwd=root.parent,
            check=False,
        )
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"recsvc train failed ({done.returncode}):\n{log.read_text()[-3000:]}")
    version = current_version(root)
    if version is None:
        raise RuntimeError("recsvc train --publish published nothing")
    return version, took


class Server:
    """``recsvc serve`` on a free loopback port with a private Redis (which outlives a
    :meth:`restart` of the server)."""

    def __init__(self, root: Path, env: dict[str, str], log: Path) -> None:
        self.root, self.env, self.log = root, env, log
        self.redis = start_private_redis()
        self.starts = 0
        try:
            self._start()
        except BaseException:
            self.redis.stop()
            raise

    def _start(self, timeout: float = 180) -> None:
        self.starts += 1
        log = self.log.with_suffix(f".{self.starts}.log")
        self.metrics_port = _free_port()
        cmd = [recsvc_bin(), "-q", "serve", "--artifacts", str(self.root)]
        cmd += ["--redis-url", self.redis.url, "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--metrics-port", str(self.metrics_port)]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(self.env),
                cwd=self.root.parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"recsvc serving on (\S+:\d+)", log.read_text(errors="replace"))
            if found:
                self.target = found.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"recsvc serve did not start:\n{tail}")
            time.sleep(0.05)

    def _stop_process(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # no drain
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def restart(self) -> None:
        """Stop the server and start it again on the same Redis (a replica restart)."""
        self._stop_process()
        self._start()

    def stop(self) -> None:
        try:
            self._stop_process()
        finally:
            self.redis.stop()


# --------------------------------------------------------------------------- one run


@dataclass
class NewItem:
    code: str
    title: str
    launch_day: int
    title_words: list[str]
    sales_lines: int = 0
    invoices: int = 0
    invoices_with_trained: int = 0
    first_seen: dict[str, int] = field(default_factory=dict)
    """Path -> first day it showed there."""
    answered_at_launch: bool = False
    """SimilarItems(it) answered right after its upsert (its title alone)."""
    first_answered: int | None = None
    """First day SimilarItems(it) answered after that day's events."""
    days_probed: int = 0
    days_answered: int = 0
    best_popular_rank: int | None = None

    @property
    def first_any(self) -> int | None:
        return min(self.first_seen.values(), default=None)


class Prober:
    """Counts and times the calls of one run; :meth:`many` spreads calls over
    ``workers`` threads (the server and the client then overlap on the two cores)."""

    def __init__(self, client: RecommenderClient, workers: int = 1) -> None:
        self.client = client
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.not_found: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def many(self, call: Callable[[str], T], keys: Sequence[str]) -> list[T]:
        """``call(key)`` for each of ``keys``, answers in order."""
        if self._pool is None:
            return [call(k) for k in keys]
        return list(self._pool.map(call, keys))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def _timed(self, kind: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        try:
            return call()
        finally:
            took = time.perf_counter() - started
            with self._lock:
                self.calls[kind] += 1
                self.seconds[kind] += took

    def similar(self, kind: str, items: Sequence[str], k: int = 10) -> list[str] | None:
        """The ids SimilarItems answers; None on NOT_FOUND."""
        try:
            answer = self._timed(kind, lambda: self.client.similar(list(items), k=k))
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                with self._lock:
                    self.not_found[kind] += 1
                return None
            raise
        return [it.item_id for it in answer.items]

    def recommend(self, kind: str, user_id: str = "", k: int = 10) -> list[str]:
        answer = self._timed(kind, lambda: self.client.recommend(user_id, k=k))
        return [it.item_id for it in answer.items]


def batches(invoices: Sequence[Invoice]) -> Iterator[list[tuple[Invoice, str, float, int]]]:
    """The day's lines in batches of at most :data:`BATCH`, never splitting an invoice
    that fits in one."""
    batch: list[tuple[Invoice, str, float, int]] = []
    for inv in invoices:
        lines = [(inv, code, q, n) for code, q, n in inv.lines]
        if batch and len(batch) + len(lines) > BATCH:
            yield batch
            batch = []
        while len(lines) > BATCH:
            yield lines[:BATCH]
            lines = lines[BATCH:]
        batch += lines
    if batch:
        yield batch


def replay(
    client: RecommenderClient, invoices: Sequence[Invoice], shift: int, sent: int, ignored: int
) -> tuple[int, int]:
    """Send ``invoices`` through RecordEvents; the running counts of events sent and
    ignored by the server (unknown items)."""
    for chunk in batches(invoices):
        events = []
        for inv, code, quantity, number in chunk:
            e = client.event(
                code, "purchase", user_id=inv.customer, session_id=inv.invoice, quantity=quantity
            )
            e.event_time.FromSeconds(inv.ts + shift)
            e.event_id = f"{inv.invoice}:{number}"
            events.append(e)
        reply = client.record_events(events)
        sent += len(events)
        ignored += len(reply.ignored_events)
    return sent, ignored


def wait_catalogue(client: RecommenderClient, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while client.model_info().catalog_version < version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"catalogue version {version} not reached in {timeout} s")
        time.sleep(0.05)


def upsert(client: RecommenderClient, items: dict[str, str]) -> int:
    """Upsert ``items`` (id -> title) in batches; the catalogue version reached."""
    version = 0
    ids = sorted(items)
    for i in range(0, len(ids), BATCH):
        chunk = [client.item(c, title=items[c]) for c in ids[i : i + BATCH]]
        version = client.upsert_items(chunk).catalog_version
    return version


def run_variant(
    name: str,
    settings: dict[str, str],
    args: argparse.Namespace,
    data: Data,
    model_items: list[str],
    root: Path,
    workdir: Path,
    shift: int,
    baskets: dict[int, list[Invoice]],
    matches: dict[str, list[str]],
) -> dict[str, Any]:
    env = {f"RECSVC_RANKING__{k.upper()}": v for k, v in settings.items()}
    model_set = set(model_items)
    new = {
        code: NewItem(code, data.new_titles[code], day, matches[code])
        for code, (day, _) in data.new_first.items()
    }
    for inv in data.invoices:
        codes = inv.items
        trained_here = any(c in model_set for c in codes)
        for code in codes:
            if code in new:
                new[code].invoices += 1
                new[code].invoices_with_trained += trained_here
        for code, _, _ in inv.lines:
            if code in new:
                new[code].sales_lines += 1
    by_day: defaultdict[int, list[Invoice]] = defaultdict(list)
    for inv in data.invoices:
        by_day[inv.day].append(inv)
    launches: defaultdict[int, list[str]] = defaultdict(list)
    for code, item in new.items():
        launches[item.launch_day].append(code)

    started = time.monotonic()
    server = Server(root, env, workdir / f"serve-{name}.log")
    client = RecommenderClient(server.target, timeout=30.0)
    prober: Prober | None = None
    together: defaultdict[str, set[str]] = defaultdict(set)
    daily: list[dict[str, Any]] = []
    useful: list[dict[str, Any]] = []
    replay_seconds = settle_seconds = 0.0
    events_sent = events_ignored = 0
    try:
        upsert_started = time.monotonic()
        listable = {c: data.train_titles.get(c, "") for c in model_items if api_id(c)}
        version = upsert(client, listable)
        wait_catalogue(client, version)
        upsert_seconds = time.monotonic() - upsert_started
        if args.restart:
            # the shop's catalogue is in Redis before the replica that serves the window
            # starts (see the module docstring: a server started on an empty catalogue
            # would not place new items by title for its first 10 minutes)
            client.close()
            server.restart()
            client = RecommenderClient(server.target, timeout=30.0)
            wait_catalogue(client, version)
        prober = Prober(client, args.workers)
        listed: list[str] = []
        for day in range(args.days):
            # every sample is seeded by the day alone: the same in each run
            sample_rng = random.Random(f"{args.seed}:{day}")
            # the day's launches are listed at its start
            if launches[day]:
                version = upsert(client, {c: new[c].title for c in launches[day]})
                wait_catalogue(client, version)
                time.sleep(args.settle)
                for code in sorted(launches[day]):
                    answer = prober.similar("similar_new_at_launch", [code])
                    new[code].answered_at_launch = answer is not None
                listed += sorted(launches[day])
            invoices = by_day.get(day, [])
            cache: dict[str, list[str] | None] = {}
            if invoices:
                t = time.monotonic()
                events_sent, events_ignored = replay(
                    client, invoices, shift, events_sent, events_ignored
                )
                replay_seconds += time.monotonic() - t
                t = time.monotonic()
                time.sleep(args.settle)
                settle_seconds += time.monotonic() - t
                for inv in invoices:
                    codes = inv.items
                    for code in codes:
                        if code in new:
                            together[code].update(c for c in codes if c in model_set)
                day_log = probe_day(
                    day, invoices, new, listed, model_set, together, prober, sample_rng, args
                )
                cache = day_log.pop("_similar")
                daily.append(day_log)
            # usefulness: the next day's baskets against this day's state (a day without
            # sales leaves the state of the day before)
            for inv in baskets.get(day + 1, []):
                basket_rng = random.Random(f"{args.seed}:basket:{inv.invoice}")
                useful.append(usefulness(inv, new, model_set, cache, prober, basket_rng))
            if invoices:
                print(
                    f"[{name}] day {day:2d}: {len(invoices)} invoices, "
                    f"{day_log['new_items_shown']} new items shown, "
                    f"{sum(prober.calls.values())} calls so far, "
                    f"{time.monotonic() - started:.0f} s",
                    flush=True,
                )
        metrics = scrape_new_item_metrics(server)
    finally:
        if prober is not None:
            prober.close()
        client.close()
        server.stop()
    wall = time.monotonic() - started
    return summarise(
        name, settings, new, daily, useful, prober, wall,
        {
            "catalogue_upsert_seconds": round(upsert_seconds, 2),
            "replay_seconds": round(replay_seconds, 2),
            "settle_seconds": round(settle_seconds, 2),
            "events_sent": events_sent,
            "events_ignored_by_server": events_ignored,
            "server_metrics_at_end": metrics,
        },
    )  # fmt: skip


def probe_day(
    day: int,
    invoices: list[Invoice],
    new: dict[str, NewItem],
    listed: list[str],
    model_set: set[str],
    together: dict[str, set[str]],
    prober: Prober,
    rng: random.Random,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What the shop shows after ``day``: record where each new item shows first.
    ``together``: each new item's trained items sold in one invoice with it so far."""
    shown: dict[str, set[str]] = {path: set() for path in PATHS}
    cache: dict[str, list[str] | None] = {}
    sold = sorted({c for inv in invoices for c in inv.items if c in model_set})
    asked = sorted(rng.sample(sold, min(len(sold), args.similar_cap)))
    lists_with_new = new_slots = slots = 0
    answers = prober.many(lambda c: prober.similar("similar_trained", [c]), asked)
    bought_with = not_bought_with = 0
    for code, answer in zip(asked, answers, strict=True):
        cache[code] = answer
        hits = [i for i in answer or () if i in new]
        shown["similar"].update(hits)
        for hit in hits:  # beside an item it was sold with so far, or another?
            if code in together.get(hit, ()):
                bought_with += 1
            else:
                not_bought_with += 1
        lists_with_new += bool(hits)
        new_slots += len(hits)
        slots += len(answer or ())
    answers = prober.many(lambda c: prober.similar("similar_new", [c]), listed)
    of_new_slots = of_new_new_slots = 0
    for code, answer in zip(listed, answers, strict=True):
        cache[code] = answer
        of_new_slots += len(answer or ())
        of_new_new_slots += sum(1 for i in answer or () if i in new)
        item = new[code]
        item.days_probed += 1
        if answer is not None:
            item.days_answered += 1
            if item.first_answered is None:
                item.first_answered = day
        shown["similar-of-new"].update(i for i in answer or () if i in new and i != code)
    popular = prober.recommend("recommend_anonymous", k=20)
    shown["popular"].update(i for i in popular if i in new)
    # how far below the list they are: ranks in a longer one (not counted as shown)
    longer = prober.recommend("recommend_anonymous_k100", k=100)
    for rank, code in enumerate(longer, start=1):
        if code in new:
            best = new[code].best_popular_rank
            new[code].best_popular_rank = rank if best is None else min(best, rank)
    customers = sorted({inv.customer for inv in invoices if inv.customer})
    chosen = sorted(rng.sample(customers, min(len(customers), args.customer_cap)))
    personal_lists = 0
    lists = prober.many(lambda c: prober.recommend("recommend_customer", c, k=10), chosen)
    for answer in lists:
        hits = [i for i in answer if i in new]
        personal_lists += bool(hits)
        shown["personalized"].update(hits)
    for path, codes in shown.items():
        for code in codes:
            new[code].first_seen.setdefault(path, day)
    any_shown = set().union(*shown.values())
    return {
        "day": day,
        "invoices": len(invoices),
        "new_items_listed": len(listed),
        "similar_trained_probes": len(asked),
        "similar_trained_lists_with_new": lists_with_new,
        "similar_trained_new_slots": new_slots,
        "similar_trained_slots": slots,
        "similar_new_slots": of_new_slots,
        "similar_new_new_slots": of_new_new_slots,
        "similar_trained_new_bought_with_query": bought_with,
        "similar_trained_new_not_bought_with_query": not_bought_with,
        "customers_probed": len(chosen),
        "new_items_shown": len(any_shown),
        "shown_by_path": {p: len(c) for p, c in shown.items()},
        "new_in_popular_top20": [c for c in popular if c in new],
        "customer_lists_with_new": personal_lists,
        "similar_new_answered": sum(1 for c in listed if cache.get(c) is not None),
        "_similar": cache,
    }


def usefulness(
    inv: Invoice,
    new: dict[str, NewItem],
    model_set: set[str],
    cache: dict[str, list[str] | None],
    prober: Prober,
    rng: random.Random,
) -> dict[str, Any]:
    """Is each new item of ``inv`` shown next to its trained items (see the module doc)?"""

    def similar(code: str, kind: str) -> list[str]:
        if code not in cache:
            cache[code] = prober.similar(kind, [code])
        return cache[code] or []

    trained = [c for c in inv.items if c in model_set]
    held = rng.choice(trained) if len(trained) >= 2 else None
    others = [c for c in trained if c != held]
    query = sorted(rng.sample(others, min(10, len(others))))
    near: set[str] = set()
    missing = [c for c in query if c not in cache]
    for code, answer in zip(
        missing, prober.many(lambda c: prober.similar("usefulness_item", [c]), missing), strict=True
    ):
        cache[code] = answer
    for code in query:
        near.update(cache[code] or ())
    cart = prober.similar("usefulness_cart", query) or []
    basket = set(inv.items)
    # precision: of the new (trained) items shown beside the query, how many it bought
    page_new = {c for c in near if c in new}
    page_trained = near - page_new - set(query)
    cart_new = [c for c in cart if c in new]
    cart_trained = [c for c in cart if c not in new]
    out: dict[str, Any] = {
        "invoice": inv.invoice,
        "day": inv.day,
        "trained_items": len(trained),
        "query_items": len(query),
        "cart_new_slots": len(cart_new),
        "cart_trained_slots": len(cart_trained),
        "cart_slots": len(cart),
        "page_new_shown": len(page_new),
        "page_new_in_basket": len(page_new & basket),
        "page_trained_shown": len(page_trained),
        "page_trained_in_basket": len(page_trained & basket),
        "cart_new_in_basket": sum(1 for c in cart_new if c in basket),
        "cart_trained_in_basket": sum(1 for c in cart_trained if c in basket),
        "new_items": [],
    }
    for code in inv.items:
        if code not in new:
            continue
        item = new[code]
        reverse = similar(code, "usefulness_item") if item.launch_day < inv.day else None
        out["new_items"].append(
            {
                "item": code,
                "launched_before": item.launch_day < inv.day,
                "item_page": code in near,
                "cart": code in cart,
                "reverse": bool(reverse) and any(c in trained for c in reverse or ()),
            }
        )
    if held is not None:
        out["held_out"] = {
            "item": held,
            "item_page": held in near,
            "cart": held in cart,
            "reverse": any(c in others for c in similar(held, "usefulness_item")),
        }
    return out


def scrape_new_item_metrics(server: Server) -> dict[str, float]:
    """The server's ``recsvc_new_items*`` samples (from its /metrics)."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("recsvc_new_items") and "_created" not in line:
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# --------------------------------------------------------------------------- summary


def nearest_rank(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile by nearest rank (a value of the sample); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return float(ordered[int(rank) - 1])


def share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summarise(
    name: str,
    settings: dict[str, str],
    new: dict[str, NewItem],
    daily: list[dict[str, Any]],
    useful: list[dict[str, Any]],
    prober: Prober,
    wall: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    items = list(new.values())
    n = len(items)
    shown = [it for it in items if it.first_any is not None]
    delays = [float(it.first_any - it.launch_day) for it in shown if it.first_any is not None]
    per_path = {}
    for path in PATHS:
        seen = [it for it in items if path in it.first_seen]
        lag = [float(it.first_seen[path] - it.launch_day) for it in seen]
        per_path[path] = {
            "items": len(seen),
            "share": share(len(seen), n),
            "median_days": nearest_rank(lag, 0.5),
            "p90_days": nearest_rank(lag, 0.9),
        }
    pairs = [p for b in useful for p in b["new_items"]]
    held = [b["held_out"] for b in useful if "held_out" in b]

    def rate(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
        hits = sum(1 for r in rows if r[key])
        return {"hits": hits, "of": len(rows), "rate": share(hits, len(rows))}

    before = [p for p in pairs if p["launched_before"]]
    launch_day = [p for p in pairs if not p["launched_before"]]
    return {
        "variant": name,
        "settings": {f"ranking.{k}": v for k, v in settings.items()},
        "new_items": n,
        "recommended_any": {"items": len(shown), "share": share(len(shown), n)},
        "by_path": per_path,
        "days_to_first_appearance": {
            "median": nearest_rank(delays, 0.5),
            "p90": nearest_rank(delays, 0.9),
            "same_day": sum(1 for d in delays if d == 0),
            "within_1_day": sum(1 for d in delays if d <= 1),
            "within_7_days": sum(1 for d in delays if d <= 7),
        },
        "similar_of_new_answers": {
            "ever": sum(1 for it in items if it.first_answered is not None),
            "share_ever": share(sum(1 for it in items if it.first_answered is not None), n),
            "at_launch_title_only": sum(1 for it in items if it.answered_at_launch),
            "share_at_launch": share(sum(1 for it in items if it.answered_at_launch), n),
            "answered_probe_days": sum(it.days_answered for it in items),
            "probe_days": sum(it.days_probed for it in items),
        },
        "usefulness": {
            "baskets": len(useful),
            "pairs": len(pairs),
            "item_page": rate(pairs, "item_page"),
            "cart": rate(pairs, "cart"),
            "item_page_launched_before": rate(before, "item_page"),
            "cart_launched_before": rate(before, "cart"),
            "item_page_launched_that_day": rate(launch_day, "item_page"),
            "reverse_launched_before": rate(before, "reverse"),
            "precision": {
                f"{where}_{kind}": {
                    "in_basket": sum(b[f"{where}_{kind}_in_basket"] for b in useful),
                    "shown": sum(b[f"{where}_{kind}_{slots}"] for b in useful),
                    "rate": share(
                        sum(b[f"{where}_{kind}_in_basket"] for b in useful),
                        sum(b[f"{where}_{kind}_{slots}"] for b in useful),
                    ),
                }
                for where, slots in (("page", "shown"), ("cart", "slots"))
                for kind in ("new", "trained")
            },
            "held_out_trained": {
                "item_page": rate(held, "item_page"),
                "cart": rate(held, "cart"),
                "reverse": rate(held, "reverse"),
            },
        },
        "crowding": {
            "similar_lists": sum(d["similar_trained_probes"] for d in daily),
            "similar_lists_with_new": sum(d["similar_trained_lists_with_new"] for d in daily),
            "similar_share_with_new": share(
                sum(d["similar_trained_lists_with_new"] for d in daily),
                sum(d["similar_trained_probes"] for d in daily),
            ),
            "similar_slot_share_new": share(
                sum(d["similar_trained_new_slots"] for d in daily),
                sum(d["similar_trained_slots"] for d in daily),
            ),
            "similar_new_bought_with_query": sum(
                d["similar_trained_new_bought_with_query"] for d in daily
            ),
            "similar_new_not_bought_with_query": sum(
                d["similar_trained_new_not_bought_with_query"] for d in daily
            ),
            "similar_of_new_slot_share_new": share(
                sum(d["similar_new_new_slots"] for d in daily),
                sum(d["similar_new_slots"] for d in daily),
            ),
            "cart_slot_share_new": share(
                sum(b["cart_new_slots"] for b in useful), sum(b["cart_slots"] for b in useful)
            ),
            "customer_lists": sum(d["customers_probed"] for d in daily),
            "customer_lists_with_new": sum(d["customer_lists_with_new"] for d in daily),
        },
        "popular_top100": {
            "items": sum(1 for it in items if it.best_popular_rank is not None),
            "best_rank": min(
                (it.best_popular_rank for it in items if it.best_popular_rank is not None),
                default=None,
            ),
        },
        "wall_seconds": round(wall, 1),
        "probe_calls": dict(sorted(prober.calls.items())),
        "probe_calls_total": sum(prober.calls.values()),
        "probe_seconds": {k: round(v, 2) for k, v in sorted(prober.seconds.items())},
        "not_found": dict(prober.not_found),
        **extra,
        "items": [
            {
                "item": it.code,
                "title": it.title,
                "launch_day": it.launch_day,
                "title_words": it.title_words,
                "sales_lines": it.sales_lines,
                "invoices": it.invoices,
                "invoices_with_trained": it.invoices_with_trained,
                "first_seen": it.first_seen,
                "answered_at_launch": it.answered_at_launch,
                "first_answered": it.first_answered,
                "days_answered": it.days_answered,
                "days_probed": it.days_probed,
                "best_popular_rank": it.best_popular_rank,
            }
            for it in sorted(items, key=lambda it: (it.launch_day, it.code))
        ],
        "daily": daily,
    }


# --------------------------------------------------------------------------- report


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def days(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def write_report(out: Path, result: dict[str, Any]) -> None:
    m = result["machine"]
    load = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    lines = [
        "# New products: recommended at all, and how soon (Online Retail II replay)",
        "",
        f"Run {result['started']} "
        + (
            f"(commit {result['revision']}, run from a snapshot of its tree: `--rev`). "
            if result.get("snapshot")
            else f"(repo at {result['revision']}, uncommitted changes possible). "
        )
        + "Reproduce from the repo root with:",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, shared with "
        f"other work (load average at start {load}: expect noise in the times). Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + f". Whole invocation {result['wall_seconds']:.0f} s.",
        "",
        "What it answers (issue #15): of the products a shop launches after the model was "
        "trained, how many does the service recommend at all before the next training, "
        "how soon after their first sale, and are they shown where shoppers want them? "
        "`today` is the feature off (`ranking.max_new_items = 0`): the baseline, zero by "
        "construction. `live` is the default settings.",
    ]
    for window in result["windows"]:
        lines += window_report(window, result["args"])
    lines += ["", "## Method", "", *METHOD, ""]
    (out / "README.md").write_text("\n".join(lines))


def window_report(window: dict[str, Any], args: dict[str, Any]) -> list[str]:
    runs = window["runs"]
    d = window["data"]
    names = [r["variant"] for r in runs]

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in runs) + " |"

    def frac(get: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            x = get(r)
            return f"{pct(x['rate'])} ({x['hits']}/{x['of']})" if x["of"] else "-"

        return cell

    def lag(path: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            x = r["by_path"][path]
            return (
                f"{pct(x['share'])} ({x['items']}); {days(x['median_days'])} / "
                f"{days(x['p90_days'])} d"
            )

        return cell

    def first(r: dict[str, Any]) -> str:
        x = r["days_to_first_appearance"]
        return f"{days(x['median'])} / {days(x['p90'])}"

    def within(r: dict[str, Any]) -> str:
        x = r["days_to_first_appearance"]
        return f"{x['same_day']} / {x['within_1_day']} / {x['within_7_days']}"

    def answers(key: str, count: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            x = r["similar_of_new_answers"]
            return f"{pct(x[key])} ({x[count]})"

        return cell

    def yardstick(r: dict[str, Any]) -> str:
        h = r["usefulness"]["held_out_trained"]
        return " / ".join(
            f"{pct(h[k]['rate'])} ({h[k]['hits']}/{h[k]['of']})"
            for k in ("item_page", "cart", "reverse")
        )

    def precision(where: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            x = r["usefulness"]["precision"]
            return " / ".join(
                f"{pct(x[f'{where}_{k}']['rate'])} "
                f"({x[f'{where}_{k}']['in_basket']}/{x[f'{where}_{k}']['shown']})"
                for k in ("new", "trained")
            )

        return cell

    def settings(r: dict[str, Any]) -> str:
        return ", ".join(f"`{k} = {v}`" for k, v in r["settings"].items()) or "defaults"

    any_share = lambda r: (  # noqa: E731
        f"**{pct(r['recommended_any']['share'])}** ({r['recommended_any']['items']})"
    )

    def useful(key: str) -> Callable[[dict[str, Any]], str]:
        return frac(lambda r: r["usefulness"][key])

    out = [
        "",
        f"## Window from {d['cutoff']}: {d['new_items']} new items",
        "",
        f"Trained on the invoices before {d['cutoff']} ({d['train_rows']:,} export lines, "
        f"{d['model_items']:,} items in the model, training {d['train_seconds']:.0f} s); "
        f"replayed {d['window']}: {d['invoices']:,} invoices ({d['guest_invoices']:,} by "
        f"guests), {d['lines']:,} lines, {d['active_days']} days with sales. **{d['new_items']} "
        f"new items** (stock codes first sold in the window) with {d['new_item_lines']:,} of "
        f"the lines ({pct(d['new_item_line_share'])}). New items without a title word that "
        "places them (a word of 2+ letters in at least one and at most 5% of the trained "
        f"titles): {d['new_items_without_title_match']}.",
        "",
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---:|" * len(names),
        row("settings", settings),
        row("**new items recommended at all** within the window", any_share),
        row("… in a trained item's SimilarItems; median / p90 days to it", lag("similar")),
        row("… in a new item's SimilarItems", lag("similar-of-new")),
        row("… in the anonymous popular list (Recommend, k = 20)", lag("popular")),
        row("… in a customer's Recommend (k = 10)", lag("personalized")),
        row("**days from first sale to first appearance**, median / p90", first),
        row("… shown by the end of launch day / within 1 day / within 7 days", within),
        row("SimilarItems(new item) answers at launch (its title alone)",
            answers("share_at_launch", "at_launch_title_only")),
        row("SimilarItems(new item) answers after a day of sales", answers("share_ever", "ever")),
        row("**usefulness**: new item in SimilarItems(k = 10) of one of its basket's "
            "trained items, new items launched before the basket's day",
            useful("item_page_launched_before")),
        row("… the same, all pairs (launched that day: no meeting yet)", useful("item_page")),
        row("… in SimilarItems(k = 10) of the basket's trained items at once (cart), "
            "launched before", useful("cart_launched_before")),
        row("… reverse: SimilarItems(new item) lists one of the basket's trained items",
            useful("reverse_launched_before")),
        row("yardstick, a held-out trained item of the same baskets: item page / cart / "
            "reverse", yardstick),
        row("precision on the item pages: share of the new / trained items shown that the "
            "basket holds", precision("page")),
        row("precision in the cart answers: new / trained", precision("cart")),
        row("trained items' SimilarItems lists holding a new item (share of their slots)",
            lambda r: f"{pct(r['crowding']['similar_share_with_new'])} "
            f"({pct(r['crowding']['similar_slot_share_new'])})"),
        row("… of these appearances, beside an item it was sold with (so far) / another",
            lambda r: f"{r['crowding']['similar_new_bought_with_query']:,} / "
            f"{r['crowding']['similar_new_not_bought_with_query']:,}"),
        row("new items' SimilarItems answers: slots taken by other new items",
            lambda r: pct(r["crowding"]["similar_of_new_slot_share_new"])),
        row("cart answers' slots taken by new items",
            lambda r: pct(r["crowding"]["cart_slot_share_new"])),
        row("new items ever in the top 100 of the popular list (best rank)",
            lambda r: f"{r['popular_top100']['items']} "
            f"({r['popular_top100']['best_rank'] or '-'})"),
        row("wall time of the run", lambda r: f"{r['wall_seconds']:.0f} s"),
        row("probe calls (SimilarItems + Recommend)", lambda r: f"{r['probe_calls_total']:,}"),
        row("events replayed (of them on new items)",
            lambda r: f"{r['events_sent']:,} ({r['events_ignored_by_server']:,})"),
    ]  # fmt: skip
    out += [
        "",
        "Shares are of the new items; days are calendar days from the first sale (0: "
        "shown by the end of its launch day; p90 by nearest rank, over the items shown). "
        f"Usefulness counts (basket, new item) pairs of ≤ {args['basket_cap']} sampled "
        "baskets; the yardstick asks the same of one trained item per basket, held out of "
        "the query.",
    ]
    live = next((r for r in runs if r["variant"] == "live"), runs[-1])
    out += [
        "",
        f"<details><summary>Each new item (`{live['variant']}` run)</summary>",
        "",
        "| item | title | launch day | lines sold | invoices (with trained items) | "
        "title words that place it | SimilarItems at launch | first shown (day: path) |",
        "|---|---|---:|---:|---:|---|:---:|---|",
    ]
    for it in live["items"]:
        seen = ", ".join(
            f"{day}: {path}" for path, day in sorted(it["first_seen"].items(), key=lambda kv: kv[1])
        )
        out.append(
            f"| {it['item']} | {it['title']} | {it['launch_day']} | {it['sales_lines']} | "
            f"{it['invoices']} ({it['invoices_with_trained']}) | "
            f"{', '.join(it['title_words']) or '**none**'} | "
            f"{'yes' if it['answered_at_launch'] else 'no'} | {seen or 'never'} |"
        )
    out += ["", "</details>"]
    return out


METHOD = [
    "- **Split by time**: the invoices before the cut-off train the model once (`recsvc "
    "train --format online-retail --publish`: no cancellations, returns or non-product "
    "codes; guest lines count towards popularity only); the next 30 days are replayed. "
    "New items: stock codes first sold in the window.",
    "- **Serve**, per run: `recsvc serve` in its own process with a private Redis, the "
    "run's settings as `RECSVC_RANKING__*` variables. The live catalogue lists every model "
    "item with its title at start, each new item with its title at the start of the day "
    "of its first sale. The export has no categories or brands: a new item is placed by "
    "its title words and its co-purchases.",
    "- **Restart**: once the trained items are listed, the server is restarted on the "
    "same Redis, as a replica starts in a shop whose catalogue is loaded. A server "
    "started on an empty catalogue (3b8c0fb) builds its title index at its first "
    "refresh and keeps it 10 minutes: no new item would be placed by its title during "
    "a replay that lasts a few minutes.",
    "- **Replay** day by day through `RecordEvents`: an invoice is a session (`user_id` = "
    "Customer ID, none for guests), a line a purchase with its quantity and the invoice's "
    "time, ≤ 1000 events per call. All times are moved by a whole number of weeks so that "
    "the window ends just before the run: the server refuses future times and ages live "
    "popularity by its clock; forward decay keeps each day's live order as it was.",
    "- **Probe** after each day with sales (and 2.5 s for the server's 1-s refresh), on 2 "
    "client threads: SimilarItems(k = 10) of the trained items sold that day (≤ 1500, "
    "seeded), of every new item listed so far (NOT_FOUND: no answer; also asked right "
    "after each launch: the title alone), the anonymous Recommend(k = 20) (a k = 100 "
    "list only gives the ranks below it) and Recommend(k = 10) of ≤ 300 customers active "
    "that day (seeded). A new item is *recommended* once it shows in any of these "
    "answers. The room new items take is counted too: the trained items' lists holding "
    "one (and whether beside an item it was sold with), the slots of new items' and "
    "cart answers they fill.",
    "- **Usefulness**: ≤ 500 invoices (seeded) of day d+1 that hold a new and a trained "
    "item, asked with the state after day d: is the new item in SimilarItems(k = 10) of "
    "one of the basket's trained items (≤ 10 of them, one call each: item pages), or of "
    "them all at once (cart)? Does SimilarItems of the new item list one of the "
    "basket's trained items (reverse)? The same questions of a held-out trained item of "
    "the basket are the yardstick; precision is the share of the new (trained) items "
    "shown beside the query that the basket holds.",
    "- The module docstring of `benchmarks/replay_new_items.py` gives the details.",
]


# --------------------------------------------------------------------------- main


_SCALAR = r'(?:"(?:[^"\\\n]|\\.)*"|-?\d[\d.eE+-]*|true|false|null)'
_SCALAR_LIST = re.compile(rf"\[\n\s*((?:{_SCALAR},\n\s*)*{_SCALAR})\n\s*\]")


def dump(result: dict[str, Any]) -> str:
    """``result`` as indented JSON, with each list of plain values on one line."""
    text = json.dumps(result, indent=1)
    return _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text) + "\n"


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.partition(":")
    settings = {}
    for part in filter(None, rest.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{spec!r}: expected key=value, got {part!r}")
        settings[key.strip()] = value.strip()
    return name, settings


def run_window(
    cutoff_text: str,
    args: argparse.Namespace,
    variants: list[tuple[str, dict[str, str]]],
    workdir: Path,
) -> dict[str, Any]:
    """Train on the invoices before ``cutoff_text`` and replay the window after it once
    per variant."""
    data_path = Path(args.data)
    if not data_path.is_absolute():
        data_path = Path.cwd() / data_path
    cutoff_day = datetime.fromisoformat(cutoff_text).replace(tzinfo=UTC)
    cutoff = int(cutoff_day.timestamp())
    end = cutoff + args.days * DAY
    # move everything by whole weeks so the window ends before now (module docstring)
    shift = int((time.time() - 3600 - end) // WEEK) * WEEK
    workdir.mkdir(parents=True, exist_ok=True)
    train_file = workdir / "train.csv.gz"
    t = time.monotonic()
    data = read_data(data_path, cutoff, end, shift, train_file)
    read_seconds = time.monotonic() - t
    root = workdir / "artifacts"
    if root.exists():
        shutil.rmtree(root)
    version, train_seconds = train(train_file, root, workdir / "train.log")
    artifact = read_artifact(root / version, verify_checksums=False)
    model_items = [str(i) for i in artifact.item_ids]
    model_set = set(model_items)
    del artifact
    matches = title_matches(data.new_titles, [data.train_titles.get(c, "") for c in model_items])
    # the usefulness baskets: a seeded sample, the same in every run
    candidates = [
        inv for inv in data.invoices
        if inv.day >= 1
        and any(c in data.new_first for c in inv.items)
        and any(c in model_set for c in inv.items)
    ]  # fmt: skip
    picked = random.Random(f"{args.seed}:baskets").sample(
        candidates, min(len(candidates), args.basket_cap)
    )
    baskets: defaultdict[int, list[Invoice]] = defaultdict(list)
    for inv in sorted(picked, key=lambda v: (v.ts, v.invoice)):
        baskets[inv.day].append(inv)
    lines = sum(len(inv.lines) for inv in data.invoices)
    new_lines = sum(1 for inv in data.invoices for c, _, _ in inv.lines if c in data.new_first)
    last = (cutoff_day + timedelta(days=args.days - 1)).date().isoformat()
    info = {
        "cutoff": cutoff_text,
        "window": f"{cutoff_text} to {last} (inclusive)",
        "time_shift_days": shift // DAY,
        "train_rows": data.train_rows,
        "model_version": version,
        "model_items": len(model_items),
        "trained_codes_not_in_model": len(data.train_codes - model_set),
        "model_items_the_api_refuses": [c for c in model_items if not api_id(c)],
        "invoices": len(data.invoices),
        "guest_invoices": sum(1 for inv in data.invoices if not inv.customer),
        "lines": lines,
        "active_days": len({inv.day for inv in data.invoices}),
        "new_items": len(data.new_first),
        "new_item_lines": new_lines,
        "new_item_line_share": share(new_lines, lines),
        "new_items_without_title_match": sum(1 for w in matches.values() if not w),
        "usefulness_candidate_baskets": len(candidates),
        "usefulness_baskets": len(picked),
        "usefulness_invoices": sorted(inv.invoice for inv in picked),
        "removed_lines": dict(data.removed),
        "read_seconds": round(read_seconds, 1),
        "train_seconds": round(train_seconds, 1),
    }
    print(json.dumps(info), flush=True)
    runs = [
        run_variant(name, settings, args, data, model_items, root, workdir, shift, baskets, matches)
        for name, settings in variants
    ]
    return {"data": info, "runs": runs}


_TREE = "REPLAY_NEW_ITEMS_TREE"
"""Set in the child that runs a commit's snapshot (``--rev``): the commit's hash."""


def snapshot(rev: str, into: Path) -> str:
    """``rev``'s tree (``git archive``: nothing in the checkout changes) under ``into``,
    laid out so that ``PYTHONPATH=into`` imports it as the installed package: the
    ``recsvc.serving`` and ``recsvc.training`` folders linked in. Returns the hash."""
    full = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", full], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    for role in ("serving", "training"):
        (into / "recsvc" / role).symlink_to(Path("..") / role)
    return full


def run_snapshot(rev: str, argv: Sequence[str]) -> int:
    """This script again, with ``rev``'s code first on the path (its own, the trainer's
    and the servers'): the measured code stays put while the checkout changes."""
    with tempfile.TemporaryDirectory(prefix="recsvc-newitems-src-") as tmp:
        tree = Path(tmp)
        full = snapshot(rev, tree)
        print(f"measuring {full[:12]} from a snapshot of its tree", flush=True)
        path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, _TREE: full}
        return subprocess.run([sys.executable, __file__, *argv], env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the export (default {DEFAULT_DATA})")
    p.add_argument(
        "--cutoff",
        action="append",
        help="first day of a test window (repeat for several; default 2011-11-01)",
    )
    p.add_argument("--days", type=int, default=30, help="length of the test window")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/new-items"))
    p.add_argument("--workdir", type=Path, help="temporary files (default: a fresh temp dir)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--similar-cap", type=int, default=1500)
    p.add_argument("--customer-cap", type=int, default=300)
    p.add_argument("--basket-cap", type=int, default=500)
    p.add_argument("--settle", type=float, default=2.5, help="seconds after a day's events")
    p.add_argument("--workers", type=int, default=2, help="client threads for the probes")
    p.add_argument(
        "--restart",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="restart the server once the trained items' catalogue is loaded (default: yes)",
    )
    p.add_argument(
        "--variant",
        action="append",
        type=parse_variant,
        help="NAME[:key=value,...] of [ranking] (default: today:max_new_items=0 and live)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only write README.md again from the results.json in --out",
    )
    p.add_argument(
        "--rev",
        help="measure this commit (a snapshot of its tree, code first on the path) rather "
        "than the checkout as it is",
    )
    args = p.parse_args(argv)
    if args.report_only:
        out = args.out if args.out.is_absolute() else REPO / args.out
        write_report(out, json.loads((out / "results.json").read_text()))
        return 0
    measured = os.environ.get(_TREE)
    if args.rev and not measured:
        return run_snapshot(args.rev, sys.argv[1:] if argv is None else argv)
    if measured:  # the snapshot's code, not the checkout's, must be what runs
        tree = Path(os.environ["PYTHONPATH"].split(os.pathsep)[0]).resolve()
        for name in ("recsvc", "recsvc.serving.newitems", "recsvc.training.loading"):
            where = Path(str(sys.modules[name].__file__)).resolve()
            if not where.is_relative_to(tree):
                raise RuntimeError(f"{name} comes from {where}, not from the snapshot")
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    cutoffs = args.cutoff or ["2011-11-01"]
    command = " ".join(
        [".venv/bin/python benchmarks/replay_new_items.py", *map(shlex.quote, sys.argv[1:])]
    )
    started_at = datetime.now(UTC)
    started = time.monotonic()
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="recsvc-newitems-")) if own_workdir else args.workdir
    try:
        windows = [run_window(c, args, variants, workdir / c) for c in cutoffs]
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "benchmark": "replay_new_items",
        "started": started_at.isoformat(timespec="seconds"),
        "revision": measured[:7] if measured else git_revision(),
        "snapshot": bool(measured),
        "command": command,
        "args": {
            "data": args.data,
            "cutoffs": cutoffs,
            "days": args.days,
            "seed": args.seed,
            "similar_cap": args.similar_cap,
            "customer_cap": args.customer_cap,
            "basket_cap": args.basket_cap,
            "settle": args.settle,
            "workers": args.workers,
            "restart": args.restart,
            "variants": [[name, settings] for name, settings in variants],
        },
        "machine": machine(),
        "versions": versions(["grpcio", "numpy", "faiss-cpu", "implicit", "redis"]),
        "wall_seconds": round(time.monotonic() - started, 1),
        "windows": windows,
    }
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(dump(result))
    write_report(out, result)
    for window in windows:
        for r in window["runs"]:
            print(
                f"{window['data']['cutoff']} {r['variant']}: {r['recommended_any']['items']}/"
                f"{r['new_items']} new items recommended, median "
                f"{r['days_to_first_appearance']['median']} d, usefulness "
                f"{r['usefulness']['item_page_launched_before']['rate']}, {r['wall_seconds']} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
