"""Bought together against similar items and popularity, on real baskets.

Usage::

    .venv/bin/python benchmarks/eval_bought_together.py [--data ../shared/data] \\
        [--cases 3000] [--out benchmarks/results/bought-together]

Protocol (leave one out of a basket): the model is trained with the real trainer on
the training part (Online Retail II: invoices before 2011-09-01; Ta-Feng: every
user's history, the next-basket study's split, their future baskets held out). Each
held-out basket with at least two items the model knows gives one case: one item
drawn at random is hidden, the others (up to 10, shuffled) are the query, as a cart.
A method scores a hit when the hidden item is in its top 10; reported: hit rate and
MRR at 10, over at most ``--cases`` cases drawn at random (seeded). Methods, all
through the code that serves:

- ``bought together``: :class:`recsvc.cobuy.BoughtTogether` on the trained counts
  (``SimilarItems`` with ``mode = BOUGHT_TOGETHER`` answers from it, similar items
  filling a short list);
- ``bought together + fill``: the same with the similar-items fill, as served;
- ``similar``: :meth:`recsvc.ranking.Ranker.similar` (``SimilarItems``' default);
- ``popular``: the trained popularity order, the cart left out.

Also the seconds the trainer spends counting the baskets. Writes ``README.md`` and
``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from _env import git_revision, machine

from recsvc.cobuy import BoughtTogether, count_co_purchases
from recsvc.config import Settings
from recsvc.model import Model
from recsvc.ranking import Ranker
from recsvc.training.loading import load_events
from recsvc.training.nextbasket import load_nbr_dir
from recsvc.training.pipeline import LoadedData, build_model

K = 10
Case = tuple[np.ndarray, int]


def _cases(model: Model, test: pa.Table, n: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    pos = model.item_position
    baskets: dict[str, list[int]] = {}
    for basket, item in zip(
        test["basket_id"].to_pylist(), test["item_id"].to_pylist(), strict=True
    ):
        if basket is not None and item in pos:
            baskets.setdefault(basket, []).append(pos[item])
    cases: list[Case] = []
    for basket in sorted(baskets):
        items = list(dict.fromkeys(baskets[basket]))
        if len(items) < 2:
            continue
        hidden = items[int(rng.integers(len(items)))]
        rest = [x for x in items if x != hidden]
        rng.shuffle(rest)
        cases.append((np.array(rest[:10], np.int32), hidden))
    if len(cases) > n:
        cases = [cases[i] for i in sorted(rng.choice(len(cases), n, replace=False))]
    return cases


def _score(cases: list[Case], method: Callable[[np.ndarray], Sequence[int]]) -> dict[str, float]:
    hits, rr = 0, 0.0
    for query, hidden in cases:
        top = list(method(query))[:K]
        if hidden in top:
            hits += 1
            rr += 1.0 / (top.index(hidden) + 1)
    return {f"hit@{K}": hits / len(cases), f"mrr@{K}": rr / len(cases)}


def evaluate(name: str, train: pa.Table, test: pa.Table, cases_max: int) -> dict[str, Any]:
    t = time.perf_counter()
    model = Model(build_model(LoadedData(train, None, (), 0), Settings()).artifact)
    fit_seconds = time.perf_counter() - t
    ranker = Ranker(model)
    t = time.perf_counter()
    co = count_co_purchases(train, model.artifact.item_ids)
    count_seconds = time.perf_counter() - t
    together = BoughtTogether(co)
    cases = _cases(model, test, cases_max, seed=0)

    def filled(query: np.ndarray) -> list[int]:
        out = together.score(query)[0].tolist()[:K]
        for item in ranker.similar(query, K + len(out)).items.tolist():
            if len(out) >= K:
                break
            if item not in out:
                out.append(item)
        return out

    def popular(query: np.ndarray) -> list[int]:
        cart = set(query.tolist())
        return [i for i in model.popular_order[: K + len(cart)].tolist() if i not in cart]

    methods = {
        "bought together": lambda q: together.score(q)[0].tolist(),
        "bought together + fill": filled,
        "similar": lambda q: ranker.similar(q, K).items.tolist(),
        "popular": popular,
    }
    return {
        "dataset": name,
        "items": model.n_items,
        "baskets_counted": co.n_baskets,
        "pairs_kept": int(co.partners.nnz),
        "cases": len(cases),
        "train_seconds": round(fit_seconds, 1),
        "count_seconds": round(count_seconds, 2),
        "metrics": {m: _score(cases, f) for m, f in methods.items()},
    }


def online_retail(data: Path) -> tuple[pa.Table, pa.Table]:
    table, _ = load_events(data / "online_retail_ii.csv.gz", format="online-retail")
    cut = int(datetime(2011, 9, 1, tzinfo=UTC).timestamp())
    train = table.filter(pc.less(table["timestamp"], cut))
    test = table.filter(
        pc.and_(
            pc.greater_equal(table["timestamp"], cut), pc.equal(table["event_type"], "purchase")
        )
    )
    return train, test


def tafeng(data: Path) -> tuple[pa.Table, pa.Table]:
    nbr = load_nbr_dir(data / "tafeng")
    future = pa.array(nbr.is_future)
    return nbr.table.filter(pc.invert(future)), nbr.table.filter(future)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bought-together"))
    args = p.parse_args(argv)
    started = time.perf_counter()
    reports = [
        evaluate("Online Retail II", *online_retail(args.data), args.cases),
        evaluate("Ta-Feng", *tafeng(args.data), args.cases),
    ]
    result = {
        "revision": git_revision(),
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "reports": reports,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Bought together: leave one item out of a held-out basket",
        "",
        "Produced by `.venv/bin/python benchmarks/eval_bought_together.py` (method in its",
        f"docstring) at {result['revision']}, {result['machine']['nproc']} cores, in",
        f"{result['seconds']} s. Hit rate and MRR at 10: the hidden item among the top 10",
        "answers for the rest of its basket.",
        "",
    ]
    for r in reports:
        lines += [
            f"## {r['dataset']}",
            "",
            f"{r['items']:,} items, {r['baskets_counted']:,} training baskets counted, "
            f"{r['pairs_kept']:,} pairs kept, {r['cases']:,} cases; counting took "
            f"{r['count_seconds']} s (the whole training {r['train_seconds']} s).",
            "",
            f"| method | hit@{K} | mrr@{K} |",
            "|---|---|---|",
        ]
        for method, m in r["metrics"].items():
            lines.append(f"| {method} | {m[f'hit@{K}']:.4f} | {m[f'mrr@{K}']:.4f} |")
        lines.append("")
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
