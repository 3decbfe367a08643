"""Mean ± std over seeds of the final average score of every strategy in result.json files.

python bench/summarize.py bench/out/split_mnist-s*
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in paths:
        rec = json.loads((Path(p) / "result.json").read_text())
        runs = rec["runs"] if rec.get("kind") == "compare" else {rec["strategy"]: rec}
        for label, r in runs.items():
            rows[(rec["name"], label)].append(r)
    print("| config | strategy | seeds | avg accuracy | BWT | train s (median) |")
    print("|---|---|---|---|---|---|")
    for (name, label), rs in rows.items():
        acc = [r["metrics"]["avg_accuracy"] for r in rs]
        bwt = [r["metrics"]["bwt"] for r in rs if r["metrics"].get("bwt") is not None]
        secs = statistics.median(r["timing"]["train_seconds"] for r in rs)
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        b = (
            f"{statistics.mean(bwt):.3f} ± {statistics.stdev(bwt) if len(bwt) > 1 else 0:.3f}"
            if bwt
            else "–"
        )
        print(
            f"| {name} | {label} | {len(rs)} | {statistics.mean(acc):.4f} ± {sd:.4f} | {b} | {secs:.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
