"""Training lines with sentence-long answers, made from the benchmark's training documents by the held-out set's rules.

    python -m research.sentence_lines --out runs/train_descriptive.jsonl [--docs-per-source 40] [--n 600] [--seed 0]

``test_descriptive.jsonl`` (`research.data_builders.v2`) asks "Describe X." / "Summarize the section on Y." over
held-out excerpts and scores one to three sentences quoted from them. The shipped checkpoint never trained on such
answers and replies in a few words. This writes the same kind of lines over excerpts of the *training* documents only
(v2's split, same seed: no test or eval document, no GNU manual, no Python tutorial or howto page), in the format
`python -m e2llm_plugin.finetune` reads, to be mixed into a training set.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from .data_builders import v2


def sentence_lines(docs_per_source: int, n: int, seed: int = 0) -> list[dict]:
    forbidden = v2.country_split(seed)[2]
    excerpts = v2._excerpts(v2.splits(seed)["train"], docs_per_source, v2._rng(seed, "sentence-lines"),
                            v2.SizesV2().excerpt_words, forbidden)
    v2._parse(excerpts)
    return v2.test_descriptive(excerpts, n, v2._rng(seed, "sentence-lines-questions"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.sentence_lines", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSONL to write")
    p.add_argument("--docs-per-source", type=int, default=40, help="training documents read per source (spaCy parses them)")
    p.add_argument("--n", type=int, default=600, help="lines to make, spread evenly over the sources")
    p.add_argument("--seed", type=int, default=0, help="v2's split seed (keep the benchmark's: 0)")
    a = p.parse_args(argv)
    lines = sentence_lines(a.docs_per_source, a.n, a.seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} lines -> {out}: {dict(Counter(line['source'] for line in lines))}, "
          f"{dict(Counter(line['task'] for line in lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
