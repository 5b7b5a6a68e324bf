"""Paired comparison of two `python -m e2llm_plugin.evaluate` runs over the same questions.

    python -m research.compare docs/eval/issue12/head/results.json docs/eval/issue12/new/results.json

Per file and method: how many answers are identical, and the mean F1 difference (second minus first) with its 95 %
paired interval (1.96 standard errors of the per-question differences).
"""

from __future__ import annotations

import json
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    first_path, second_path = (sys.argv[1:] if argv is None else argv)[:2]
    first, second = (json.load(open(p, encoding="utf-8")) for p in (first_path, second_path))
    for name, entry in second["files"].items():
        rows, before = entry["examples"], first["files"][name]["examples"]
        if [r["question"] for r in rows] != [r["question"] for r in before]:
            raise SystemExit(f"{name}: the two runs asked different questions")
        for method in rows[0]["methods"]:
            pairs = [(a["methods"].get(method, {}), b["methods"][method]) for a, b in zip(before, rows, strict=True)]
            pairs = [(a, b) for a, b in pairs if a.get("f1") is not None and b.get("f1") is not None]
            if len(pairs) < 2:
                continue
            same = sum(a["prediction"] == b["prediction"] for a, b in pairs)
            diffs = [100 * (b["f1"] - a["f1"]) for a, b in pairs]
            half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5
            print(f"{name} {method}: {same}/{len(pairs)} answers identical; F1 {statistics.mean(diffs):+.1f} ± {half:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
