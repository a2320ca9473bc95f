"""A seeded storefront simulation of A/B experiments through a real ``recsvc serve``.

Usage::

    .venv/bin/python benchmarks/sim_experiment.py [--visits 4000] [--aa-seeds 20] \\
        [--aa-visits 1500] [--seed 0] [--out benchmarks/results/experiments-sim]

The shop: ``--users`` shoppers and ``--items`` products, each with a hidden taste
vector (``--dim`` dimensions, standard normal); a shopper's affinity to a product is
the inner product. Their history (what training sees) is purchases drawn from a softmax
of their affinities, 6 to 14 each, over the past 90 days. ``recsvc train --publish``
fits the model on it; ``recsvc serve`` answers, with its private Redis, and writes its
event log.

A visit: a shopper drawn at random asks for 10 items (placement ``home``) and is
shown them all (an IMPRESSION event each, carrying the answer's recommendation id);
each shown item is clicked with probability ``sigmoid(-3.2 + 1.2 z)``, ``z`` the
shopper's affinity to it standardised over the catalogue (about 4% for an average
item, 15% for one a standard deviation above), and a clicked item is bought with
probability 0.3 at its price (5 to 50). The events go back through RecordEvents, so
the server's attribution decides what the report counts.

Two runs, each reported with ``recsvc experiment report`` (:mod:`training.experiment_report`):

- **A/B** (twice, ``--visits`` visits each): ``personal`` (the trained model)
  against ``popular`` (the same model, ``non_personalized``: what sells, for
  everyone), then against ``trending`` (the model with a placement trending share of
  0.45, where its own blend gives popularity 0.29): a large and a subtler difference.
  The hidden tastes make ``personal`` better; the report should find it, and says
  after how many impressions (``impressions_to_significance``, the always-valid test).
- **A/A**: ``--aa-seeds`` experiments of two identical variants (a new salt each, so a
  new split), ``--aa-visits`` visits each. The share of them whose report calls a
  difference significant estimates the false-positive rate, checked against the
  stated error rate (0.05 per metric).

Writes ``result.json``, ``SUMMARY.md`` and ``ab.png`` (the A/B report's plot) to
``--out``. Every draw of the simulation is seeded (``--seed``); the model's fit
(multi-threaded ALS) and live popularity (decayed by wall-clock time) are not, so a
rerun's figures differ a little (impressions to significance for ``ab``'s CTR: 2,700 and
3,150 in two runs).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from recsvc.client import RecommenderClient
from recsvc.experiments import Experiment, Variant, experiment_message
from recsvc.store.embedded import start_private_redis
from recsvc.training.experiment_report import ExperimentReport, format_text, plot, report

ROOT = Path(__file__).resolve().parents[1]
PLACEMENT = "home"
K = 10
CLICK_BASE, CLICK_SLOPE, BUY_AFTER_CLICK = -3.2, 1.2, 0.3
METRICS = ("ctr", "conversion_rate", "revenue_per_impression")
AB_RUNS = (
    # the trained model against what sells, for everyone: a large difference
    ("ab", Variant("popular", 0.5, non_personalized=True), Variant("personal", 0.5)),
    # the model's own blend (popularity 0.29 of it here) against one that gives what
    # sells 0.45 of it: a subtler difference
    ("ab-subtle", Variant("trending", 0.5, trending_weight=0.45), Variant("personal", 0.5)),
)


@dataclasses.dataclass(frozen=True)
class Shop:
    """The hidden truth of the simulated shop."""

    tastes: NDArray[np.float64]
    """(users, dim)."""
    items: NDArray[np.float64]
    """(items, dim)."""
    prices: NDArray[np.float64]

    @property
    def n_users(self) -> int:
        return len(self.tastes)

    def click_probability(self, user: int, items: NDArray[np.int64]) -> NDArray[np.float64]:
        affinity = self.items @ self.tastes[user]
        z = (affinity[items] - affinity.mean()) / (affinity.std() or 1.0)
        p: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-(CLICK_BASE + CLICK_SLOPE * z)))
        return p


def make_shop(rng: np.random.Generator, users: int, items: int, dim: int) -> Shop:
    return Shop(
        tastes=rng.standard_normal((users, dim)),
        items=rng.standard_normal((items, dim)),
        prices=np.round(rng.uniform(5, 50, items), 2),
    )


def write_history(shop: Shop, rng: np.random.Generator, path: Path, now: int) -> int:
    """Past purchases drawn from each shopper's softmax of affinities; rows written."""
    rows = 0
    with gzip.open(path, "wt", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "timestamp", "event_type", "quantity"])
        for u in range(shop.n_users):
            logits = 1.5 * (shop.items @ shop.tastes[u])
            p = np.exp(logits - logits.max())
            p /= p.sum()
            n = int(rng.integers(6, 15))
            for i in rng.choice(len(p), size=n, replace=False, p=p):
                when = now - int(rng.integers(1, 90 * 86_400))
                out.writerow([user_name(u), item_name(int(i)), when, "purchase", 1])
                rows += 1
    return rows


def user_name(u: int) -> str:
    return f"u{u:05d}"


def item_name(i: int) -> str:
    return f"p{i:04d}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recsvc(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "recsvc", *args], check=True, env=env, cwd=ROOT)


@contextmanager
def running_shop(work: Path, shop: Shop, seed: int) -> Iterator[tuple[RecommenderClient, Path]]:
    """Train on the shop's history and serve it: a client and the event-log folder."""
    redis = start_private_redis()
    server: subprocess.Popen[bytes] | None = None
    try:
        events = work / "history.csv.gz"
        write_history(shop, np.random.default_rng(seed + 1), events, int(time.time()))
        artifacts, log_dir = work / "artifacts", work / "eventlog"
        _recsvc(
            "-q", "train", "--events", str(events), "--artifacts", str(artifacts),
            "--redis-url", redis.url, "--random-state", str(seed), "--publish",
        )  # fmt: skip
        port = _free_port()
        config = work / "serve.toml"
        config.write_text(
            f'artifact_root = "{artifacts}"\n[redis]\nurl = "{redis.url}"\n'
            f'[server]\nhost = "127.0.0.1"\nport = {port}\nmetrics_port = {_free_port()}\n'
            f'event_log_dir = "{log_dir}"\nreload_poll_seconds = 0.2\n'
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "recsvc", "-q", "serve", "--config", str(config)], cwd=ROOT
        )
        client = RecommenderClient(f"127.0.0.1:{port}", timeout=10.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.model_info()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("recsvc serve did not start") from None
                time.sleep(0.2)
        with client:
            yield client, log_dir
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        redis.stop()


def start(client: RecommenderClient, experiment: Experiment) -> None:
    """Set ``experiment`` (the whole set) and wait until the server answers with it."""
    client.set_experiments([experiment_message(experiment)])
    deadline = time.monotonic() + 10
    while client.recommend(user_name(0), k=1, placement=PLACEMENT).experiment != experiment.name:
        if time.monotonic() > deadline:
            raise RuntimeError(f"experiment {experiment.name} not running")
        time.sleep(0.05)


def simulate(
    client: RecommenderClient, shop: Shop, rng: np.random.Generator, visits: int, tag: str
) -> dict[str, int]:
    """``visits`` visits (see the module docstring); counts of what was sent."""
    sent = {"impressions": 0, "clicks": 0, "purchases": 0}
    for v in range(visits):
        u = int(rng.integers(shop.n_users))
        user = user_name(u)
        answer = client.recommend(user, k=K, placement=PLACEMENT)
        shown = np.array([int(i.item_id[1:]) for i in answer.items], dtype=np.int64)
        rid = answer.recommendation_id
        clicked = rng.random(len(shown)) < shop.click_probability(u, shown)
        bought = clicked & (rng.random(len(shown)) < BUY_AFTER_CLICK)
        events = []
        for j, item in enumerate(shown.tolist()):
            common: dict[str, Any] = {
                "user_id": user, "recommendation_id": rid, "placement": PLACEMENT,
            }  # fmt: skip
            events.append(
                client.event(item_name(item), "impression", event_id=f"{tag}-{v}-{j}-i", **common)
            )
            if clicked[j]:
                events.append(
                    client.event(item_name(item), "click", event_id=f"{tag}-{v}-{j}-c", **common)
                )
            if bought[j]:
                events.append(
                    client.event(
                        item_name(item),
                        "purchase",
                        quantity=1,
                        price=float(shop.prices[item]),
                        event_id=f"{tag}-{v}-{j}-p",
                        **common,
                    )
                )
        client.record_events(events)
        sent["impressions"] += len(shown)
        sent["clicks"] += int(clicked.sum())
        sent["purchases"] += int(bought.sum())
    return sent


def _significant(result: ExperimentReport) -> dict[str, bool]:
    return {m.metric: m.significant for c in result.comparisons for m in c.metrics}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    shop = make_shop(rng, args.users, args.items, args.dim)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)  # a fresh shop and event log every run
    work.mkdir(parents=True)
    out: dict[str, Any] = {"config": vars(args).copy()}
    with running_shop(work, shop, args.seed) as (client, log_dir):
        for name, control, better in AB_RUNS:
            start(client, Experiment(name, (control, better)))
            t = time.monotonic()
            sent = simulate(client, shop, np.random.default_rng(args.seed + 2), args.visits, name)
            seconds = time.monotonic() - t
            result = report([log_dir], name, control=control.name, alpha=args.alpha)
            out[name] = {"sent": sent, "seconds": seconds, "report": dataclasses.asdict(result)}
            print(format_text(result), flush=True)
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                plot(result, Path(args.out) / f"{name}.png")
        aa: list[dict[str, Any]] = []
        for s in range(args.aa_seeds):
            name = f"aa-{s}"
            start(client, Experiment(name, (Variant("a", 0.5), Variant("b", 0.5))))
            simulate(client, shop, np.random.default_rng(1000 + s), args.aa_visits, name)
            result = report([log_dir], name, alpha=args.alpha)
            aa.append(
                {
                    "experiment": name,
                    "significant": _significant(result),
                    "fixed_horizon_p": {
                        m.metric: m.fixed_horizon_p for c in result.comparisons for m in c.metrics
                    },
                    "impressions": sum(v.impressions for v in result.variants),
                }
            )
            print(f"{name}: {aa[-1]['significant']}", flush=True)
        out["aa"] = aa
    return out


def summary(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        "# Experiments: a seeded storefront simulation through a real server",
        "",
        "Reproduce: `.venv/bin/python benchmarks/sim_experiment.py "
        f"--visits {config['visits']} --aa-seeds {config['aa_seeds']} "
        f"--aa-visits {config['aa_visits']} --seed {config['seed']} --out {config['out']}`",
        "",
        f"Shop: {config['users']} shoppers, {config['items']} products, hidden tastes of "
        f"{config['dim']} dimensions (module docstring). Error rate {config['alpha']} per metric.",
    ]
    for name, control, better in AB_RUNS:
        ab = result[name]["report"]
        lines += [
            "",
            f"## A/B `{name}`: `{better.name}` against `{control.name}`, "
            f"{config['visits']} visits ({result[name]['seconds']:.0f} s)",
            "",
            "| variant | shoppers | impressions | CTR | conversion | revenue / impression |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for v in ab["variants"]:
            lines.append(
                f"| {v['name']} | {v['units']} | {v['impressions']} | {v['ctr']['value']:.4f} | "
                f"{v['conversion_rate']['value']:.4f} | "
                f"{v['revenue_per_impression']['value']:.4f} |"
            )
        lines += [
            "",
            "| metric | lift | always-valid p | significant | impressions to significance |",
            "|---|---:|---:|---|---:|",
        ]
        for c in ab["comparisons"]:
            for m in c["metrics"]:
                lift = m["relative_lift"]
                lines.append(
                    f"| {m['metric']} | {'' if lift is None else f'{lift:+.1%}'} | "
                    f"{m['always_valid_p']:.2g} | {'yes' if m['significant'] else 'no'} | "
                    f"{m['impressions_to_significance'] or 'not reached'} |"
                )
        lines += ["", f"![{name} over time]({name}.png)"]
    aa = result["aa"]
    n = len(aa)
    if n:
        lines += [
            "",
            f"## A/A: {n} experiments of two identical variants, {config['aa_visits']} visits each",
            "",
            "| metric | always-valid false positives | fixed-horizon p < error rate (one look) |",
            "|---|---:|---:|",
        ]
        for metric in METRICS:
            fp = sum(r["significant"].get(metric, False) for r in aa)
            fixed = sum(r["fixed_horizon_p"].get(metric, 1.0) < config["alpha"] for r in aa)
            lines.append(f"| {metric} | {fp}/{n} | {fixed}/{n} |")
        anyfp = sum(any(r["significant"].values()) for r in aa)
        lines.append(f"| any of the three | {anyfp}/{n} | |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--visits", type=int, default=4_000, help="A/B visits")
    p.add_argument("--aa-seeds", type=int, default=20, help="A/A experiments")
    p.add_argument("--aa-visits", type=int, default=1_500, help="visits per A/A experiment")
    p.add_argument("--alpha", type=float, default=0.05, help="error rate per metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/recsvc-sim")
    p.add_argument("--out", default="benchmarks/results/experiments-sim")
    args = p.parse_args(argv)
    result = run(args)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        (out / "SUMMARY.md").write_text(summary(result))
        print(f"wrote {out}/SUMMARY.md")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
