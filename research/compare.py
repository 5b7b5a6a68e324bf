"""Paired comparisons over `python -m e2llm_plugin.evaluate` results, question by question.

    python -m research.compare docs/eval/issue12/head/results.json docs/eval/issue12/new/results.json
    python -m research.compare --methods rag_tuned hybrid docs/eval/general/phase8/*/results.json
    python -m research.compare docs/eval/general/phase8 docs/eval/general/round12     # two folders of one run a set

Two runs over the same questions: per file and method, how many answers are identical, and the mean F1 difference
(second minus first), and, over several sets (two folders of a benchmark stored one set a run, `FOLDER/SET/results.json`),
pooled per method over the general sets and, apart, the Factbook ones. `--methods A B` with any number of results: the
mean F1 difference B minus A of one run's two methods, pooled the same way. Each with its 95 % paired interval (1.96
standard errors of the per-question differences). `--metric rouge_l` (or em, recall) compares another of the scores
every answer carries, e.g. for the descriptive set.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = {"f1": "F1", "rouge_l": "ROUGE-L", "em": "EM", "recall": "recall"}


def interval(diffs: list[float], metric: str = "f1") -> str:
    half = 1.96 * statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{METRICS[metric]} {statistics.mean(diffs):+.1f} ± {half:.1f}"


def compare_runs(first: dict, second: dict, metric: str = "f1") -> None:
    """Question by question over the sets both runs hold (a full benchmark may be stored one set per run), then pooled
    per method by kind of set where there are several sets."""
    shared = [name for name in second["files"] if name in first["files"]]
    pooled: dict[tuple[str, str], list[float]] = {}
    if not shared:
        raise SystemExit(f"the two runs share no set: {sorted(first['files'])} against {sorted(second['files'])}")
    for name in shared:
        rows, before = second["files"][name]["examples"], first["files"][name]["examples"]
        if [r["question"] for r in rows] != [r["question"] for r in before]:
            raise SystemExit(f"{name}: the two runs asked different questions")
        for method in rows[0]["methods"]:
            pairs = [(a["methods"].get(method, {}), b["methods"][method]) for a, b in zip(before, rows, strict=True)]
            pairs = [(a, b) for a, b in pairs if a.get(metric) is not None and b.get(metric) is not None]
            if len(pairs) < 2:
                continue
            same = sum(a["prediction"] == b["prediction"] for a, b in pairs)
            diffs = [100 * (b[metric] - a[metric]) for a, b in pairs]
            print(f"{name} {method}: {same}/{len(pairs)} answers identical; {interval(diffs, metric)}")
            pooled.setdefault(("Factbook sets" if "factbook" in name else "general sets", method), []).extend(diffs)
    if len(shared) > 1:
        for (kind, method), diffs in pooled.items():
            print(f"{kind} {method} (n={len(diffs)}): {interval(diffs, metric)}")


def load_run(path: str) -> dict:
    """A results.json, or a folder of them (`FOLDER/*/results.json`, one set each) as one run."""
    folder = Path(path)
    if not folder.is_dir():
        return json.loads(folder.read_text(encoding="utf-8"))
    files = sorted(folder.glob("*/results.json"))
    if not files:
        raise SystemExit(f"{path}: no */results.json in this folder")
    return {"files": {name: entry for f in files for name, entry in json.loads(f.read_text(encoding="utf-8"))["files"].items()}}


def compare_methods(runs: list[dict], first: str, second: str, metric: str = "f1") -> dict[str, list[float]]:
    """Per-question differences `second` minus `first` (0-100), pooled by kind of set: general or Factbook."""
    pooled: dict[str, list[float]] = {"general sets": [], "Factbook sets": []}
    for run in runs:
        for name, entry in run["files"].items():
            kind = "Factbook sets" if "factbook" in name else "general sets"
            for row in entry["examples"]:
                a, b = row["methods"].get(first, {}), row["methods"].get(second, {})
                if a.get(metric) is not None and b.get(metric) is not None:
                    pooled[kind].append(100 * (b[metric] - a[metric]))
    if not any(pooled.values()):
        found = sorted({m for run in runs for f in run["files"].values() for row in f["examples"] for m in row["methods"]})
        raise SystemExit(f"no question was answered by both {first!r} and {second!r}; these results hold: {', '.join(found)}")
    for kind, diffs in pooled.items():
        if len(diffs) >= 2:
            print(f"{kind} (n={len(diffs)}): {second} - {first}: {interval(diffs, metric)}")
    return pooled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.json files or folders of them (two runs, or any number with --methods)")
    p.add_argument("--methods", nargs=2, metavar=("A", "B"), help="compare two methods of the same runs (B minus A)")
    p.add_argument("--metric", choices=sorted(METRICS), default="f1", help="the per-answer score compared")
    args = p.parse_args(argv)
    if not args.methods and len(args.results) != 2:
        p.error("give two results files, or --methods A B with any number")
    runs = [load_run(path) for path in args.results]
    if args.methods:
        compare_methods(runs, *args.methods, metric=args.metric)
    else:
        compare_runs(*runs, metric=args.metric)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
