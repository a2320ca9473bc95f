"""The live catalogue, merchandising rules and attribute filter of the ``live`` scenario
(:mod:`bench_serving`), written as a shop would hand them to ``recsvc``.

What :func:`prepare` writes under a work folder (never into the repository):

- ``catalogue-a.csv``: every item of the shop's catalogue file (the model's items and
  the few without events), in ``recsvc catalog load``'s columns: ``item_id``,
  ``category`` as a two-level path (``dNN > cNNN``: the synthetic category under one of
  10 departments), ``available``, ``title``, ``price`` (the synthetic shop's), ``brand``
  (one of 50, skewed: the commonest ~6% of the items, the rarest ~1%) and ``rating``
  (1.0 to 5.0). Availability is a seeded 2% draw, not the shop file's flag: that file
  marks 90% of the items out of stock for the ``filter`` scenario, and a live catalogue
  hiding 90% of the items would measure that filter again;
- ``catalogue-b.csv``: the same items with every price 3% higher and another 2% drawn
  unavailable, so a sync of B over A rewrites every record (what
  :mod:`bench_serving`'s ``--sync-repeats`` loads, alternating A and B);
- ``rules.toml``: 10 rules, mixed as :mod:`bench_rules` mixes them: 5 boosts by
  predicate (brand, brand and price, department and rating, rating), 3 buries of 20
  items each, 2 pins (one item at position 1, the best brand-``b05`` item at 3). The
  buried and pinned items are among the items most often in the pool users' top 10 by
  the model's exact scores, so the rules touch answers rather than items no one is
  shown. Two rules have a window (one started yesterday, one ends in 30 days), two are
  limited to placements ``home`` and ``pdp``; all apply to the requests, which ask for
  placement ``home``.

The request's filter is a price range from the 10th to the 90th percentile of the
model items' prices: it keeps ~80% of the items (:attr:`LiveSetup.facts` says how many
exactly, and what share of the users' first candidates it rejects).
"""

# Heavy libraries load where they are used so --help stays fast.
# ruff: noqa: PLC0415

from __future__ import annotations

import csv
import resource
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _shop import Shop, _clean_env, recsvc_bin

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from recsvc.artifact import ModelArtifact
    from recsvc.v1 import recommender_pb2 as pb

SEED = 11
BRANDS = 50
UNAVAILABLE_SHARE = 0.02
CATEGORIES_PER_DEPARTMENT = 16
PRICE_QUANTILES = (0.10, 0.90)
PLACEMENT = "home"
RESYNC_PRICE_FACTOR = 1.03
TOP = 10
"""Items per sampled user whose frequency picks the buried and pinned items."""
SAMPLED_USERS = 200


@dataclass(frozen=True)
class LiveSetup:
    """The files of one shop's live state, and what they hold."""

    catalogues: tuple[Path, Path]
    """``catalogue-a.csv`` (loaded first) and ``catalogue-b.csv`` (its resync)."""
    rules: Path
    price_low: float
    price_high: float
    rule_ids: tuple[str, ...]
    facts: dict[str, Any] = field(default_factory=dict)

    def filters(self) -> pb.Filters:
        """The filter every ``live`` request carries: the price range."""
        from recsvc.v1 import recommender_pb2 as pb

        price = pb.NumberRange(min=self.price_low, max=self.price_high)
        return pb.Filters(attributes=[pb.AttributeFilter(name="price", range=price)])


def _department(category: str) -> str:
    digits = "".join(ch for ch in category if ch.isdigit())
    return f"d{int(digits or 0) // CATEGORIES_PER_DEPARTMENT:02d}"


def frequent_items(artifact: ModelArtifact, users: NDArray[np.int64]) -> list[int]:
    """Model positions by how often they are in the top :data:`TOP` of ``users`` (the
    model's exact inner products), most often first."""
    import numpy as np

    scores = artifact.user_factors[users] @ artifact.item_factors.T
    top = np.argpartition(-scores, TOP, axis=1)[:, :TOP]
    counts = np.bincount(top.ravel(), minlength=len(artifact.item_ids))
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in order[counts[order] > 0]]


def prepare(
    shop: Shop, artifact: ModelArtifact, folder: Path, users: NDArray[np.int64]
) -> LiveSetup:
    """Write the live catalogue files and the rules of ``shop`` under ``folder``;
    ``users``: model positions of the request pool's users (the rules' items come from
    their top items)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    with shop.catalog.open(newline="") as f:
        rows = list(csv.DictReader(f))
    n = len(rows)
    rng = np.random.default_rng(SEED)
    weights = 1.0 / (np.arange(BRANDS) + 8.0)
    brands = rng.choice(BRANDS, n, p=weights / weights.sum())
    ratings = np.round(rng.uniform(1.0, 5.0, n), 1)
    unavailable = [rng.random(n) < UNAVAILABLE_SHARE for _ in range(2)]
    prices = np.array([float(r["price"]) for r in rows])
    for variant, path_name in enumerate(("catalogue-a.csv", "catalogue-b.csv")):
        factor = RESYNC_PRICE_FACTOR if variant else 1.0
        with (folder / path_name).open("w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(["item_id", "category", "available", "title", "price", "brand", "rating"])
            for i, r in enumerate(rows):
                out.writerow(
                    [
                        r["item_id"],
                        f"{_department(r['category'])} > {r['category']}",
                        "false" if unavailable[variant][i] else "true",
                        r["title"],
                        f"{prices[i] * factor:.2f}",
                        f"b{brands[i]:02d}",
                        f"{ratings[i]:.1f}",
                    ]
                )
    # the filter, over the model's items (what a request ranks)
    row_of = {r["item_id"]: i for i, r in enumerate(rows)}
    model_rows = np.array([row_of[str(i)] for i in artifact.item_ids.tolist()])
    model_prices = prices[model_rows]
    low, high = (round(float(q), 2) for q in np.quantile(model_prices, PRICE_QUANTILES))
    in_range = (model_prices >= low) & (model_prices <= high)
    shown = in_range & ~unavailable[0][model_rows]

    frequent = frequent_items(artifact, users[:SAMPLED_USERS])
    buried = frequent[:60]
    hero = next(p for p in frequent[60:] if shown[p])
    ids = artifact.item_ids
    now = time.time()

    def stamp(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def items(positions: list[int]) -> str:
        return "[" + ", ".join(f'"{ids[p]}"' for p in positions) + "]"

    rules = [
        ("boost-b01", 'action = "boost"\nattributes = { brand = ["b01"] }\nweight = 1.5'),
        (
            "boost-b02-b03-cheap",
            'action = "boost"\nattributes = { brand = ["b02", "b03"], price = { max = 15 } }\n'
            'weight = 1.3\nplacements = ["home", "pdp"]',
        ),
        (
            "boost-d03-rated",
            'action = "boost"\ncategories = ["d03"]\nattributes = { rating = { min = 4.0 } }\n'
            "weight = 1.25",
        ),
        (
            "boost-top-rated",
            'action = "boost"\nattributes = { rating = { min = 4.5 } }\nweight = 1.15\n'
            f"ends_at = {stamp(now + 30 * 86400)}",
        ),
        (
            "boost-b07-premium",
            'action = "boost"\nattributes = { brand = ["b07"], price = { min = 20 } }\n'
            f"weight = 2.0\nstarts_at = {stamp(now - 86400)}",
        ),
        ("bury-list-1", f'action = "bury"\nitems = {items(buried[0:60:3])}\nweight = 0.5'),
        ("bury-list-2", f'action = "bury"\nitems = {items(buried[1:60:3])}\nweight = 0.3'),
        ("bury-list-3", f'action = "bury"\nitems = {items(buried[2:60:3])}\nweight = 0.7'),
        (
            "pin-hero",
            f'action = "pin"\nitems = {items([hero])}\nposition = 1\nplacements = ["home", "pdp"]',
        ),
        ("pin-b05", 'action = "pin"\nattributes = { brand = ["b05"] }\nposition = 3'),
    ]
    text = "".join(f'[[rule]]\nid = "{rule_id}"\n{body}\n\n' for rule_id, body in rules)
    (folder / "rules.toml").write_text(text)
    facts = {
        "catalogue_items": n,
        "model_items": len(ids),
        "brands": BRANDS,
        "departments": len({_department(r["category"]) for r in rows}),
        "unavailable_share": float(unavailable[0].mean()),
        "price_range": [low, high],
        "filter_keeps_model_items_share": float(in_range.mean()),
        "shown_model_items_share": float(shown.mean()),
        "rules": [rule_id for rule_id, _ in rules],
        "buried_items": len(buried),
        "pinned_item": str(ids[hero]),
        "catalogue_bytes": (folder / "catalogue-a.csv").stat().st_size,
    }
    return LiveSetup(
        catalogues=(folder / "catalogue-a.csv", folder / "catalogue-b.csv"),
        rules=folder / "rules.toml",
        price_low=low,
        price_high=high,
        rule_ids=tuple(rule_id for rule_id, _ in rules),
        facts=facts,
    )


def candidate_rejection(
    artifact: ModelArtifact, setup: LiveSetup, users: NDArray[np.int64], fetch: int
) -> dict[str, float]:
    """Share of the first ``fetch`` exact candidates of ``users`` that the live
    catalogue hides or the price filter rejects (what the ranker widens past)."""
    import numpy as np

    with setup.catalogues[0].open(newline="") as f:
        rows = {r["item_id"]: r for r in csv.DictReader(f)}
    keep = np.array(
        [
            rows[i]["available"] == "true"
            and setup.price_low <= float(rows[i]["price"]) <= setup.price_high
            for i in artifact.item_ids.tolist()
        ]
    )
    sample = users[:SAMPLED_USERS]
    scores = artifact.user_factors[sample] @ artifact.item_factors.T
    top = np.argpartition(-scores, fetch, axis=1)[:, :fetch]
    return {
        "candidates_per_user": float(fetch),
        "rejected_share": float((~keep[top]).mean()),
        "model_items_kept_share": float(keep.mean()),
        "users_sampled": float(len(sample)),
    }


def cli(args: list[str], timeout: float = 600.0) -> dict[str, Any]:
    """Run ``recsvc ARGS`` as a shop would; its wall time, CPU time, exit status and
    output. RuntimeError when it fails."""
    cmd = [recsvc_bin(), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, m0 = time.perf_counter(), time.monotonic()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=_clean_env(), timeout=timeout, check=False
    )
    t1, m1 = time.perf_counter(), time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {
        "command": cmd,
        "seconds": t1 - t0,
        "start_monotonic": m0,
        "end_monotonic": m1,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "returncode": done.returncode,
        "output": (done.stdout + done.stderr).strip()[-2000:],
    }
    if done.returncode != 0:
        raise RuntimeError(f"recsvc {' '.join(args[:2])} failed: {out['output']}")
    return out


def load_catalogue(target: str, path: Path) -> dict[str, Any]:
    """``recsvc catalog load PATH`` against ``target`` (batches of 1000, as a shop runs it)."""
    return cli(["-q", "catalog", "load", str(path), "--target", target, "--timeout", "30"])


def load_rules(target: str, path: Path) -> dict[str, Any]:
    """``recsvc rules load PATH --replace`` against ``target``."""
    return cli(["-q", "rules", "load", str(path), "--replace", "--target", target])


def model_info(target: str) -> dict[str, Any]:
    """The server's ``GetModelInfo`` (catalogue version and items, live rules), as JSON."""
    from recsvc.client import RecommenderClient, to_json

    with RecommenderClient(target, timeout=10.0) as client:
        return to_json(client.model_info())
