"""Rotation (issue #16): how much of the top 10 changes, and what it costs in quality.

Usage::

    .venv/bin/python benchmarks/eval_rotation.py [--data ../shared/data] \\
        [--protocol retail tafeng diginetica] [--rotate-after 1 3] [--weight 0.2] \\
        [--limit N] [--out benchmarks/results/rotation-quality]

A shopper is shown their top 10 and never clicks. Visit 0 is today's list; after each
visit the 10 items shown count one impression each; from then on every item shown
``rotate_after`` times or more is demoted by :class:`recsvc.serving.rotation.Demotion`
(its score times ``--weight``), handed to the ranking as ``Query.weights`` exactly as
``serving/engine.py`` ``recommend`` hands it. Visits 0 to 5 are ranked: the list of
visit ``r`` is the one after ``r`` rounds of impressions.

The lists are the quality harness's own ``served`` ranking, not a copy of it:
:func:`training.evaluation.served_recommender` (Online Retail II, Ta-Feng) and
:func:`training.nextclick.served_next_click_ranking` (Diginetica) are called as they
are, on a :class:`recsvc.ranking.Ranker` subclass whose only change is to add the
shopper's current ``Demotion`` to every query it ranks. Each protocol is split, trained
and scored as ``make eval-retail`` / ``eval-tafeng`` / ``eval-diginetica`` do
(``training.splits.split_by_cutoff`` at 2011-09-01; ``training.nextbasket.nbr_splits``,
5 seeds averaged; every Diginetica test prefix as an anonymous session), with
``training.evaluation.score_lists`` / ``training.nextclick.score_next_item``, so visit 0
reproduces the ``served`` row of ``benchmarks/results/quality/<protocol>.json``.

Two request sizes are simulated, each its own sequence of visits:

- ``k20``: the harness's list (``k = 20``, the largest cut-off), the shopper shown its
  first 10: Recall@10/@20 (HR, MRR on Diginetica) per visit;
- ``k10``: a storefront page, ``Recommend(k=10)`` as in tests/serving/test_rotation.py
  (the ranking's candidate headroom depends on k, so its top 10 can differ): @10 only.

Reported per protocol, ``rotate_after`` and request size:

- changed: the share of the visit-0 top 10 no longer in the top 10 at visit r (mean over
  shoppers), and the share of shoppers with at least half changed at visit 5 (the bar
  of docs/api.md);
- quality of the list at visits 0, 1, 3, 5 (all six are in the JSON);
- union: the distinct items of the five lists shown (visits 0-4) and the chance that
  they hold what the shopper buys (clicks) next: recall and any-hit of the union; beside
  it the static ranking's top m (m = that shopper's number of distinct items, from one
  ``k = 60`` request without rotation): what showing as many items in the order of
  the ranking would have caught;
- seconds per ranking call without and with a demotion (in process; the machine is
  shared, so indicative).

Writes ``<protocol>.json`` and ``README.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from _env import REPO, git_revision, machine, versions
from numpy.typing import NDArray

from recsvc.config import Settings, load_settings
from recsvc.model import Model
from recsvc.ranking import Query, Ranker, Ranking
from recsvc.serving.rotation import Demotion
from recsvc.training.evaluation import score_lists, served_recommender, truth_positions
from recsvc.training.nextbasket import load_nbr_dir, nbr_splits, training_table
from recsvc.training.nextclick import (
    load_next_click_data,
    score_next_item,
    served_next_click_ranking,
)
from recsvc.training.pipeline import DataSpec, LoadedData, build_model, load_data
from recsvc.training.splits import split_by_cutoff

SHOWN = 10
"""Items on the shopper's page: what each visit counts as impressions."""
VISITS = 6
"""Visit 0 (no impressions yet) to visit 5 (after five rounds)."""
UNION_VISITS = 5
"""The union is over the five lists shown (visits 0-4)."""
STATIC_K = 60
REQUEST_KS = (20, 10)
RETAIL_CUTOFF = datetime(2011, 9, 1, tzinfo=UTC)
TAFENG_SEEDS = (0, 1, 2, 3, 4)

Items = NDArray[np.int64]
Served = Callable[[Any], Items]
Scorer = Callable[[list[Items], tuple[int, ...]], dict[str, float]]


class RotatingRanker(Ranker):
    """The harness's :class:`Ranker`, plus the engine's rotation: every query it ranks
    carries :attr:`demotion` as its ``weights`` (None: the query as the harness built
    it)."""

    demotion: Demotion | None = None

    def recommend(self, query: Query) -> Ranking:
        if self.demotion is not None:
            query = replace(query, weights=self.demotion)
        return super().recommend(query)


class Timer:
    """Seconds and calls of the ranking, without and with a demotion."""

    def __init__(self) -> None:
        self.seconds = {"plain": 0.0, "demoted": 0.0}
        self.calls = {"plain": 0, "demoted": 0}

    def call(self, served: Served, case: Any, demoted: bool) -> Items:
        key = "demoted" if demoted else "plain"
        t = time.perf_counter()
        out = served(case)
        self.seconds[key] += time.perf_counter() - t
        self.calls[key] += 1
        return out

    def as_json(self) -> dict[str, float]:
        return {
            f"{key}_ms_per_call": 1e3 * self.seconds[key] / max(self.calls[key], 1)
            for key in self.seconds
        } | {f"{key}_calls": float(self.calls[key]) for key in self.calls}


def simulate(
    cases: Sequence[Any],
    first: list[Items],
    served: Served,
    ranker: RotatingRanker,
    rotate_after: int,
    weight: float,
    timer: Timer,
) -> list[list[Items]]:
    """Per case, the lists of visits 0..5: visit 0 is ``first``; each later visit is
    ranked with the items shown (top :data:`SHOWN`) ``rotate_after`` times or more
    demoted. A visit whose demoted set is the previous visit's gets the previous list
    (the same query: the ranking is a pure function of it)."""
    out: list[list[Items]] = []
    try:
        for case, start in zip(cases, first, strict=True):
            lists = [start]
            counts: dict[int, int] = {}
            demoted: frozenset[int] = frozenset()
            for _ in range(1, VISITS):
                for item in lists[-1][:SHOWN].tolist():
                    counts[item] = counts.get(item, 0) + 1
                now = frozenset(i for i, c in counts.items() if c >= rotate_after)
                if now == demoted:
                    lists.append(lists[-1])
                    continue
                demoted = now
                ranker.demotion = Demotion(np.array(sorted(demoted), dtype=np.int32), weight)
                lists.append(timer.call(served, case, demoted=True))
                ranker.demotion = None
            out.append(lists)
    finally:
        ranker.demotion = None
    return out


def changed_shares(runs: list[list[Items]]) -> dict[str, float]:
    """Share of the visit-0 top 10 gone from visit r's (and from the previous visit's)."""
    out: dict[str, float] = {}
    for r in range(1, VISITS):
        gone = [
            len(set(lists[0][:SHOWN].tolist()) - set(lists[r][:SHOWN].tolist()))
            / max(len(lists[0][:SHOWN]), 1)
            for lists in runs
        ]
        step = [
            len(set(lists[r - 1][:SHOWN].tolist()) - set(lists[r][:SHOWN].tolist()))
            / max(len(lists[r - 1][:SHOWN]), 1)
            for lists in runs
        ]
        out[f"changed@visit{r}"] = float(np.mean(gone))
        out[f"changed_from_previous@visit{r}"] = float(np.mean(step))
        if r == VISITS - 1:
            out["shoppers_half_changed@visit5"] = float(np.mean(np.asarray(gone) >= 0.5))
    return out


def union_scores(
    runs: list[list[Items]], truths: list[Items], static: list[Items]
) -> dict[str, float]:
    """Recall (hits / |truth|, unknown truth items counted, as the harness counts them)
    and any-hit of the union of the lists shown at visits 0-4; of the visit-0 top 10
    (what the five visits show without rotation); and of the static ranking's top m,
    m = the size of that union."""
    recall, hit, s_recall, s_hit, distinct, distinct6 = [], [], [], [], [], []
    same_recall, same_hit = [], []
    for lists, truth, fixed in zip(runs, truths, static, strict=True):
        shown = np.unique(np.concatenate([x[:SHOWN] for x in lists[:UNION_VISITS]]))
        m = len(shown)
        distinct.append(m)
        distinct6.append(len(np.unique(np.concatenate([x[:SHOWN] for x in lists]))))
        n = max(len(truth), 1)
        hits = int(np.isin(truth, shown).sum())
        recall.append(hits / n)
        hit.append(float(hits > 0))
        s_hits = int(np.isin(truth, fixed[:m]).sum())
        s_recall.append(s_hits / n)
        s_hit.append(float(s_hits > 0))
        same = int(np.isin(truth, lists[0][:SHOWN]).sum())
        same_recall.append(same / n)
        same_hit.append(float(same > 0))
    return {
        "distinct_shown@visits0-4": float(np.mean(distinct)),
        "distinct_shown@visits0-5": float(np.mean(distinct6)),
        "no_rotation_recall": float(np.mean(same_recall)),
        "no_rotation_hit": float(np.mean(same_hit)),
        "union_recall": float(np.mean(recall)),
        "union_hit": float(np.mean(hit)),
        "static_top_m_recall": float(np.mean(s_recall)),
        "static_top_m_hit": float(np.mean(s_hit)),
    }


def run_fold(
    cases: Sequence[Any],
    truths: list[Items],
    ranker: RotatingRanker,
    served_at: Callable[[int], Served],
    score: Scorer,
    rotate_after: Sequence[int],
    weight: float,
    ks: tuple[int, ...],
) -> dict[str, Any]:
    """Every variant on one trained model: ``{"baseline": {k: metrics}, "variants":
    {"N=…": {"k20": {...}, "k10": {...}}}, "timing": {...}}``."""
    timer = Timer()
    t = time.perf_counter()
    static_served = served_at(STATIC_K)
    static = [timer.call(static_served, c, demoted=False) for c in cases]
    base: dict[int, list[Items]] = {}
    baseline: dict[str, dict[str, float]] = {}
    for k in REQUEST_KS:
        served = served_at(k)
        base[k] = [timer.call(served, c, demoted=False) for c in cases]
        baseline[f"k{k}"] = score(base[k], tuple(x for x in ks if x <= k))
    variants: dict[str, dict[str, Any]] = {}
    for n in rotate_after:
        per_k: dict[str, Any] = {}
        for k in REQUEST_KS:
            runs = simulate(cases, base[k], served_at(k), ranker, n, weight, timer)
            cut = tuple(x for x in ks if x <= k)
            per_k[f"k{k}"] = {
                "quality": {
                    f"visit{r}": score([lists[r] for lists in runs], cut) for r in range(VISITS)
                },
                **changed_shares(runs),
                **union_scores(runs, truths, static),
            }
        variants[f"rotate_after={n}"] = per_k
    return {
        "cases": len(cases),
        "baseline": baseline,
        "variants": variants,
        "timing": timer.as_json() | {"seconds": time.perf_counter() - t},
    }


def _sample(n: int, limit: int | None, seed: int) -> NDArray[np.int64]:
    """Indices of every case, or a seeded sample of ``limit`` in their order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _ranker(model: Model, settings: Settings) -> RotatingRanker:
    faiss.omp_set_num_threads(1)  # one query at a time, as the harness and the server
    return RotatingRanker(model, overfetch=settings.ranking.overfetch)


def retail(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    """``make eval-retail``: Online Retail II, invoices before 2011-09-01 train."""
    spec = DataSpec(events=(args.data / "online_retail_ii.csv.gz",), format="online-retail")
    data = load_data(spec, settings)
    split = split_by_cutoff(data.table, RETAIL_CUTOFF)
    t = time.perf_counter()
    built = build_model(
        LoadedData(split.train, data.catalog, data.summaries, data.erased_events), settings
    )
    fit = time.perf_counter() - t
    model = Model(built.artifact)
    ranker = _ranker(model, settings)
    users, truths = truth_positions(model, split.truth)
    pick = _sample(len(users), args.limit, args.seed)
    users, truths = [users[i] for i in pick], [truths[i] for i in pick]
    counts = built.interactions.counts
    histories = [
        counts.indices[counts.indptr[u] : counts.indptr[u + 1]].astype(np.int64) for u in users
    ]

    def score(lists: list[Items], ks: tuple[int, ...]) -> dict[str, float]:
        return score_lists(lists, truths, histories, ks, model.n_items)

    fold = run_fold(
        users,
        truths,
        ranker,
        lambda k: served_recommender(ranker, k),
        score,
        args.rotate_after,
        args.weight,
        tuple(sorted(settings.evaluation.ks)),
    )
    return [fold | {"fit_seconds": fit}]


def tafeng(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    """``make eval-tafeng``: the next-basket study's 72/8/20 user split, 5 seeds."""
    data = load_nbr_dir(args.data / "tafeng")
    futures = data.future_baskets()
    folds = []
    for seed in TAFENG_SEEDS:
        split = nbr_splits(data.users, seed)
        t = time.perf_counter()
        built = build_model(LoadedData(training_table(data, split), None, (), 0), settings)
        fit = time.perf_counter() - t
        model = Model(built.artifact)
        ranker = _ranker(model, settings)
        users, truths = truth_positions(model, {u: futures[u] for u in sorted(split.test)})
        pick = _sample(len(users), args.limit, args.seed + seed)
        users, truths = [users[i] for i in pick], [truths[i] for i in pick]
        counts = built.interactions.counts
        histories = [
            counts.indices[counts.indptr[u] : counts.indptr[u + 1]].astype(np.int64) for u in users
        ]

        def score(
            lists: list[Items],
            ks: tuple[int, ...],
            truths: list[Items] = truths,
            histories: list[Items] = histories,
            n_items: int = model.n_items,
        ) -> dict[str, float]:
            return score_lists(lists, truths, histories, ks, n_items, ideal="truth")

        def served_at(k: int, ranker: RotatingRanker = ranker) -> Served:
            return served_recommender(ranker, k)

        fold = run_fold(
            users,
            truths,
            ranker,
            served_at,
            score,
            args.rotate_after,
            args.weight,
            tuple(sorted(settings.evaluation.ks)),
        )
        folds.append(fold | {"seed": seed, "fit_seconds": fit})
        print(f"  ta-feng seed {seed}: {fold['cases']} users, {fold['timing']['seconds']:.0f} s")
    return folds


def diginetica(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    """``make eval-diginetica``: every test prefix as an anonymous live session."""
    table, cases = load_next_click_data(args.data / "diginetica")
    t = time.perf_counter()
    built = build_model(LoadedData(table, None, (), 0), settings)
    fit = time.perf_counter() - t
    model = Model(built.artifact)
    ranker = _ranker(model, settings)
    position = model.item_position
    every = [np.array([position.get(i, -1) for i in p], dtype=np.int32) for p in cases.prefixes]
    every_target = np.array([position.get(t, -1) for t in cases.targets], dtype=np.int64)
    ks = tuple(sorted({*settings.evaluation.ks, 20}))
    # visit 0 of every case, whatever --limit samples: the check against the recorded run
    served = served_next_click_ranking(ranker, settings, max(ks))
    t = time.perf_counter()
    visit0_all = score_next_item([served(p) for p in every], every_target, ks)
    visit0_seconds = time.perf_counter() - t
    pick = _sample(len(every), args.limit, args.seed)
    prefixes = [every[j] for j in pick]
    targets = every_target[pick]

    def score(lists: list[Items], ks: tuple[int, ...]) -> dict[str, float]:
        return score_next_item(lists, targets, ks)

    fold = run_fold(
        prefixes,
        [targets[i : i + 1] for i in range(len(targets))],
        ranker,
        lambda k: served_next_click_ranking(ranker, settings, k),
        score,
        args.rotate_after,
        args.weight,
        ks,
    )
    return [
        fold
        | {
            "fit_seconds": fit,
            "visit0_all_cases": visit0_all | {"cases": len(every), "seconds": visit0_seconds},
        }
    ]


PROTOCOLS: dict[str, tuple[str, Callable[[argparse.Namespace, Settings], list[dict[str, Any]]]]] = {
    "retail": ("Online Retail II, time split at 2011-09-01", retail),
    "tafeng": ("Ta-Feng, next basket (NBR reality check), 5 seeds", tafeng),
    "diginetica": ("Diginetica, next click of anonymous session prefixes", diginetica),
}
HEADLINE = {
    "retail": ("recall@10", "recall@20", "ndcg@20"),
    "tafeng": ("recall@10", "recall@20", "ndcg@20"),
    "diginetica": ("hr@10", "hr@20", "mrr@20"),
}


def _mean(values: Sequence[Any]) -> Any:
    """Element-wise mean of equally shaped nested dicts of numbers (the seeds)."""
    if isinstance(values[0], dict):
        return {key: _mean([v[key] for v in values]) for key in values[0]}
    return float(np.mean(values))


def _recorded(protocol: str) -> dict[str, float]:
    path = REPO / "benchmarks" / "results" / "quality" / f"{protocol}.json"
    if not path.is_file():
        return {}
    served: dict[str, float] = json.loads(path.read_text())["metrics"]["served"]
    return served


def tables(protocol: str, result: dict[str, Any]) -> list[str]:
    """The Markdown tables of one protocol."""
    mean = result["mean"]
    names = HEADLINE[protocol]
    what = "prefixes" if protocol == "diginetica" else "test users"
    if protocol == "tafeng":
        what += " per seed"
    if result["limit"] is not None:
        what += f" (a seeded sample: --limit {result['limit']})"
    full = result["folds"][0].get("visit0_all_cases")
    which = "Visit 0" if full is None else f"Visit 0 of all {full['cases']:,} cases (not a sample)"
    lines = [
        f"## {PROTOCOLS[protocol][0]}",
        "",
        f"{result['cases']:,} {what}; {result['seconds']:.0f} s.",
        "",
        f"{which} against the committed `served` row "
        f"(`benchmarks/results/quality/{protocol}.json`):",
        "",
        "| metric | visit 0 (k20) | recorded | difference |",
        "|---|---|---|---|",
    ]
    recorded = _recorded(protocol)
    for name in names:
        mine = (full or mean["baseline"]["k20"])[name]
        theirs = recorded.get(name)
        lines.append(
            f"| {name} | {mine:.4f} | "
            + ("— | — |" if theirs is None else f"{theirs:.4f} | {mine - theirs:+.5f} |")
        )
    lines += [
        "",
        "What changes and what it costs (top 10 shown each visit, no click; "
        f"weight {result['weight']}):",
        "",
        "| rotate_after | request | changed at visit 1 / 3 / 5 | ≥ half changed at 5 | "
        + " | ".join(f"{n} visit 0 → 1 / 3 / 5" for n in names)
        + " | distinct shown (visits 0-4) | union hit (recall) | without rotation"
        + " | static top m |",
        "|---" * (8 + len(names)) + "|",
    ]
    for variant, per_k in mean["variants"].items():
        for k, v in per_k.items():
            quality = v["quality"]
            cells = []
            for name in names:
                if name not in quality["visit0"]:
                    cells.append("—")
                    continue
                cells.append(
                    f"{quality['visit0'][name]:.4f} → "
                    + " / ".join(f"{quality[f'visit{r}'][name]:.4f}" for r in (1, 3, 5))
                )
            lines.append(
                f"| {variant.split('=')[1]} | {k} | "
                + " / ".join(f"{v[f'changed@visit{r}']:.2f}" for r in (1, 3, 5))
                + f" | {v['shoppers_half_changed@visit5']:.2f} | "
                + " | ".join(cells)
                + f" | {v['distinct_shown@visits0-4']:.1f} | {v['union_hit']:.4f}"
                f" ({v['union_recall']:.4f}) | {v['no_rotation_hit']:.4f}"
                f" ({v['no_rotation_recall']:.4f}) | {v['static_top_m_hit']:.4f}"
                f" ({v['static_top_m_recall']:.4f}) |"
            )
    timing = mean["timing"]
    lines += [
        "",
        f"Ranking, in process: {timing['plain_ms_per_call']:.3f} ms per call without a "
        f"demotion, {timing['demoted_ms_per_call']:.3f} ms with one (shared machine).",
        "",
    ]
    return lines


def write_readme(out: Path) -> None:
    """``README.md`` from every ``<protocol>.json`` under ``out``."""
    results = [
        json.loads((out / f"{p}.json").read_text())
        for p in PROTOCOLS
        if (out / f"{p}.json").is_file()
    ]
    lines = [
        "# Rotation: what it costs and what it changes (issue #16)",
        "",
        "Produced by `benchmarks/eval_rotation.py` (method in its docstring). A shopper is",
        f"shown their top {SHOWN} and never clicks; after each visit the items shown count one",
        "impression; items shown `rotate_after` times or more are demoted (score × weight)",
        "through `serving.rotation.Demotion` as `Query.weights`, in the quality harness's",
        "own `served` ranking. Visit r = the list after r rounds of impressions.",
        "",
        "- changed: share of the visit-0 top 10 gone from visit r's top 10 (mean over",
        "  shoppers); ≥ half: share of shoppers with at least 5 of 10 changed at visit 5;",
        "- request k20: the harness's list (k = 20, top 10 shown; @20 metrics from it);",
        "  k10: a storefront page, `Recommend(k=10)`, its own sequence of visits;",
        "- union: the distinct items of the five lists shown (visits 0-4) and whether they",
        "  hold what the shopper buys (clicks) next, any hit (recall in brackets); without",
        "  rotation: the same, the visit-0 top 10 shown five times; static top m: the",
        "  rotation-free ranking's first m items, m = that shopper's distinct count (the",
        "  same number of items shown in rank order);",
        "- `--limit N`: a sample of N cases (`numpy.random.default_rng(--seed)`, default 7;",
        "  Ta-Feng: per seed, seeded `--seed + seed`); Diginetica's visit 0 is scored on every",
        "  case too, for the check against the recorded run. A full Diginetica run ranks",
        "  ~15 lists per prefix, ~0.8 ms each here: ~13 min for 60,858 prefixes.",
        "",
        "Runs:",
        "",
    ]
    for r in results:
        lines.append(
            f"- `{r['protocol']}`: `{r['command']}` at {r['revision']}, {r['date']}, "
            f"{r['machine']['nproc']} cores ({r['machine']['cpu']}), {r['seconds']:.0f} s"
        )
    lines.append("")
    for r in results:
        lines += tables(r["protocol"], r)
    (out / "README.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--protocol", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    p.add_argument("--rotate-after", type=int, nargs="+", default=[1, 3])
    p.add_argument("--weight", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=None, help="a seeded sample of cases")
    p.add_argument("--seed", type=int, default=7, help="of the --limit sample")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rotation-quality"))
    raw = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(raw)
    settings = load_settings(None)
    args.out.mkdir(parents=True, exist_ok=True)
    revision, host = git_revision(), machine()
    for protocol in args.protocol:
        started = time.perf_counter()
        folds = PROTOCOLS[protocol][1](args, settings)
        result = {
            "protocol": protocol,
            "description": PROTOCOLS[protocol][0],
            "revision": revision,
            "machine": host,
            "versions": versions(["numpy", "faiss-cpu", "implicit"]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python benchmarks/eval_rotation.py", *raw]),
            "rotate_after": list(args.rotate_after),
            "weight": args.weight,
            "shown": SHOWN,
            "limit": args.limit,
            "seed": args.seed,
            "cases": folds[0]["cases"],
            "seconds": time.perf_counter() - started,
            "mean": _mean([{k: f[k] for k in ("baseline", "variants", "timing")} for f in folds]),
            "folds": folds,
        }
        (args.out / f"{protocol}.json").write_text(json.dumps(result, indent=2) + "\n")
        print("\n".join(tables(protocol, result)), flush=True)
    write_readme(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
