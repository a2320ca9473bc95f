"""What merchandising rules cost one answer: :func:`recsvc.serving.rules.merchandise`
alone, in process, on a 100k-item catalogue.

Usage::

    .venv/bin/python benchmarks/bench_rules.py [--items 100000] [--rules 10] [--calls 3000]

The rules are half boosts by predicate (a mask matching 5% of the items), a third
buries by item list (20 items each), the rest pins of one item; 30 ranked candidates
(k = 10, the fetch :mod:`recsvc.serving.engine` asks for: 3k), with and without a
diversity cap of 2 over 200 categories. The rules are prepared once, as the server
prepares each set of active rules (:class:`recsvc.serving.rules.ActiveRules`, its
boosts and buries folded at the first answer). Prints microseconds per answer, the
median of 5 rounds. Seeded: the same rules and candidates every run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import numpy as np

from recsvc.rules import Rule, RuleAction
from recsvc.serving.rules import ActiveRules, CompiledRule, merchandise


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--rules", type=int, default=10)
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.items
    rules = []
    for i in range(args.rules):
        if i < args.rules // 2:
            rule = Rule(f"b{i}", RuleAction.BOOST, categories=("c",), weight=1.5)
            rules.append(CompiledRule(rule, None, rng.random(n) < 0.05))
        elif i < args.rules // 2 + args.rules // 3:
            rule = Rule(f"d{i}", RuleAction.BURY, item_ids=("x",), weight=0.5)
            rules.append(CompiledRule(rule, rng.integers(0, n, 20).astype(np.int32), None))
        else:
            rule = Rule(f"p{i}", RuleAction.PIN, item_ids=("x",), position=i)
            rules.append(CompiledRule(rule, rng.integers(0, n, 1).astype(np.int32), None))
    active = ActiveRules(rules, n)  # as LiveRules.active prepares them, once per rule set
    items = rng.choice(n, 30, replace=False).astype(np.int32)
    scores = np.sort(rng.random(30).astype(np.float32))[::-1].copy()
    reasons = np.ones(30, np.int8)
    popular = rng.permutation(n).astype(np.int32)
    allowed = np.ones(n, bool)
    category = rng.integers(0, 200, n).astype(np.int32)
    for cap in (0, 2):
        rounds = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(args.calls):
                merchandise(
                    items, scores, reasons, 10, active,
                    allowed=allowed, popular=popular, category=category, cap=cap,
                )  # fmt: skip
            rounds.append((time.perf_counter() - started) / args.calls * 1e6)
        print(f"{args.rules} rules, {n:,} items, 30 candidates, k=10, cap={cap}: "
              f"{statistics.median(rounds):.1f} µs per answer")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
