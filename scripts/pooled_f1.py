"""Pooled F1 and exact match per method over the general held-out sets of a benchmark table.

    python scripts/pooled_f1.py docs/eval/general/benchmark.json phase8:hybrid phase8:rag_tuned phase5:closed_book

The table is what `python -m e2llm_plugin.evaluate --combine ... --out DIR` writes to DIR/benchmark.json. "General"
sets are the eight of `data/v2` (`test_general_*`, `test_handwritten`, `test_whole_document`); the Factbook sets and
the summary rows are left out. Each question counts once (set means weighted by their n).
"""

from __future__ import annotations

import argparse
import json


def is_general(name: str) -> bool:
    return name.startswith(("test_general_", "test_handwritten", "test_whole_document"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("table", help="benchmark.json")
    p.add_argument("methods", nargs="+", help="columns of the table, e.g. phase8:hybrid")
    args = p.parse_args(argv)
    table = json.load(open(args.table, encoding="utf-8"))
    for method in args.methods:
        cells = [row[method] for name, row in table.items() if is_general(name) and method in row]
        if not cells:
            raise SystemExit(f"no general set has a {method!r} column")
        n = sum(c["n"] for c in cells)
        f1, em = (sum(c[key] * c["n"] for c in cells) / n for key in ("f1", "em"))
        print(f"{method}: F1 {f1:.1f}, EM {em:.1f} over {len(cells)} sets, n = {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
