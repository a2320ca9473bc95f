"""Print the quality reports (benchmarks/results/quality/*.json) as Markdown tables.

    .venv/bin/python benchmarks/quality_tables.py            # every report found

docs/quality.md holds the output beside the published numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quality"

COLUMNS = {
    "tafeng": ["recall@10", "ndcg@10", "phr@10", "recall@20", "ndcg@20", "phr@20"],
    "diginetica": ["hr@10", "mrr@10", "hr@20", "mrr@20"],
    "retail": ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "phr@20", "recall_new@20"],
    "retail-synthetic": ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall_new@20"],
}


def table(name: str, report: dict[str, object]) -> str:
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    columns = COLUMNS.get(name) or sorted({k for m in metrics.values() for k in m})
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method, values in metrics.items():
        cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
        label = f"**{method}**" if method == "served" else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in RESULTS.glob("*.json"))
    for name in names:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"### {name}\n\n{table(name, report)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
