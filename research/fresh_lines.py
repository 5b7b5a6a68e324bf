"""QA lines over training documents the v2 training set never drew an excerpt from: new facts, same rules.

    python -m research.fresh_lines --out runs/fresh_lines.jsonl [--words-per-source 150000] [--seed 27]

Every round since phase 8 trained on questions from the same ~520 excerpts of ``data/v2/train.jsonl``, read again and
again. This makes lines of the same kinds (`e2llm_plugin.autodata`, what ``finetune --documents`` uses: entity and term
questions, counterfactual copies, haystacks, whole-document questions) from v2's *training* split (seed 0: no test or
eval document, no GNU manual, no Python tutorial or howto page, test countries scrubbed), taking first the documents
``data/v2/train.jsonl`` holds no line of, whole, up to ``--words-per-source`` words a source; where a source has too
few of them, the documents v2 drew an excerpt from fill the rest (other windows, other questions).
Sentence-answer and restate lines are dropped: the round's mix takes those from their own pools.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from e2llm_plugin.autodata import tasks

from .data_builders import prose, v2

KEEP_OUT = set(tasks.SENTENCE_TASKS) | {"restate"}


def used_doc_ids(train_file: Path) -> set[tuple[str, str]]:
    with train_file.open(encoding="utf-8") as f:
        return {(line["source"], line["doc_id"]) for line in map(json.loads, f) if line.get("doc_id")}


def documents(words_per_source: int, seed: int, used: set[tuple[str, str]]) -> list[tasks.Excerpt]:
    """Excerpts of the training split's documents, unused ones first, up to ``words_per_source`` words a source."""
    forbidden = v2.country_split(0)[2]
    out = []
    for source, docs in sorted(v2.splits(0)["train"].items()):
        rng = random.Random(f"{seed}:{source}")
        order = sorted(docs, key=lambda d: ((source, d.doc_id) in used, rng.random()))
        words = 0
        for doc in order:
            if words >= words_per_source:
                break
            text = "\n\n".join(prose.without(doc, forbidden).paragraphs)
            made = tasks.excerpts_of(doc.doc_id, text, source=source)
            out += made
            words += sum(ex.words for ex in made)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.fresh_lines", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="the JSONL to write")
    p.add_argument("--words-per-source", type=int, default=150_000, help="document words read per source")
    p.add_argument("--seed", type=int, default=0, help="the draw of documents and of questions (not v2's split)")
    p.add_argument("--v2-train", default="data/v2/train.jsonl", help="the training set whose documents come last")
    a = p.parse_args(argv)
    if not Path(a.v2_train).is_file():
        p.error(f"{a.v2_train} not found: build it first with `python -m research.data_builders --out data/v2 --version 2`")
    used = used_doc_ids(Path(a.v2_train))
    excerpts = documents(a.words_per_source, a.seed, used)
    tasks.parse(excerpts)
    lines = [line for line in tasks.lines_from(excerpts, a.seed) if line.get("task") not in KEEP_OUT]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    unused = sum((ex.source, ex.doc_id) not in used for ex in excerpts)
    print(f"{len(lines)} lines -> {out} from {len(excerpts)} excerpts ({unused} of documents v2 never read): "
          f"{dict(Counter(line['source'] for line in lines))}; {tasks.task_counts(lines)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
