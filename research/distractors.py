"""Questions whose answer stands in one document among hundreds of chunks of other documents, read in hybrid.

    python -m research.distractors runs/r9_train.jsonl --n 2000 --words 1500:15000 --seed 33 --out runs/distractors.jsonl

The long-context probe's misses (docs/eval/long-context/README.md) read the planted fact as the first raw passage and
still answer with a name the soft tokens of 512 chunks of speeches hold; the same sentence alone is answered right.
Training contexts stayed under 100 chunks. Here each entity question (plain and other-sentence ones, and their
counterfactual copies, whose answers no prior gives away) keeps its own context and gets other documents' paragraphs
(of any source: a novel's other chapters name other people, as the probe's speeches do), none holding the answer, up
to a word count drawn log-uniformly from `--words` (at 50-token chunks,
about 40 to 400 chunks: a curriculum from short to long in every batch). Every line says ``"mode": "hybrid"``: the
answer is to be copied from a raw passage, never guessed from soft tokens alone. Sources in `--exclude-sources` (by
default the State of the Union addresses, the probe's filler) give no distractors. The task is named
``distractors_<task>``; train with ``--encoder-grad-chunks`` so that the distractors cost an encoder forward only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from e2llm_plugin.autodata.questions import word_pattern
from research.lookalike import TASKS, paragraphs, span


def distractors(records: list[dict], n: int, seed: int, words: tuple[int, int] = (1500, 15000),
                exclude_sources: frozenset[str] = frozenset({"sotu"})) -> list[dict]:
    """Up to `n` of `records`' entity questions, each with other documents added up to a drawn word count."""
    rng = random.Random(seed)
    pool: list[tuple[str, list[str]]] = []  # (doc_id, a window's paragraphs), one entry per distinct window
    seen = set()
    for r in records:
        if r.get("counterfactual") or r.get("source") in exclude_sources:
            continue
        kept = [p for p in paragraphs(r) if p[:120] not in seen]
        seen.update(p[:120] for p in kept)
        if kept:
            pool.append((r["doc_id"], kept))
    questions = [r for r in records if r.get("task") in TASKS and isinstance(r.get("context"), str)]
    rng.shuffle(questions)
    out = []
    for r in questions[:n]:
        answer, budget = word_pattern(r["answer"]), round(math.exp(rng.uniform(*map(math.log, words))))
        docs, total = [], 0
        for _ in range(50 * len(pool)):
            if total >= budget:
                break
            doc_id, doc = rng.choice(pool)
            if doc_id == r["doc_id"]:  # another document: no second window of the question's own
                continue
            kept = [p for p in doc if not answer.search(p)]
            if kept:
                docs.append("\n".join(kept))
                total += sum(len(p.split()) for p in kept)
        if total < budget:
            continue
        at = rng.randrange(len(docs) + 1)
        docs.insert(at, r["context"])
        out.append({**r, "context": docs, "needle_index": at, "n_docs": len(docs), "mode": "hybrid",
                    "task": "distractors_" + r["task"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.distractors", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="training JSONL with entity questions (research.subset's output, e.g. r9_train.jsonl)")
    p.add_argument("--n", type=int, default=2000, help="questions to write")
    p.add_argument("--words", default="1500:15000", help="LOW:HIGH words of distractors a question gets (log-uniform)")
    p.add_argument("--exclude-sources", default="sotu", help="comma-separated sources that give no distractors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    words = span(args.words, "--words")
    records = [json.loads(line) for line in open(args.data) if line.strip()]
    made = distractors(records, args.n, args.seed, words, frozenset(filter(None, args.exclude_sources.split(","))))
    with args.out.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in made)
    print(f"{args.out}: {len(made)} questions among other documents")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
