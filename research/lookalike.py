"""Questions whose answer stands among look-alike passages: the raw passages a reader ranks beside the right one talk
about the same things, and only one holds the answer.

    python -m research.lookalike runs/r9_train.jsonl --n 900 --seed 32 --out runs/lookalike.jsonl
    python -m research.lookalike runs/r9_train.jsonl --n 1500 --negatives 30:100 --neg-words 9000 --mode hybrid \
        --seed 34 --out runs/lookalike_soft.jsonl       # look-alikes past the raw budget, read as soft tokens

The long-context probe's misses (docs/eval/long-context/README.md) read the planted fact as the first raw passage
and still answer with a name from the next ones: speech passages about lighthouses, captains and commodores, ranked
high because they share the question's words. The haystacks trained so far hide a passage among random ones, which
share nothing with the question. Here each entity question (plain and other-sentence ones, and their counterfactual
copies, whose answers no prior gives away) keeps its own context and gets 3-8 paragraphs of *other documents of the
same source* that BM25 ranks highest for the question and that do not hold the answer (at most `--neg-words` words in
all), shuffled in as separate documents. The task is named ``lookalike_<task>``.

With many look-alikes (``--negatives 30:100``) most of them stand past the raw-passage budget and are read as soft
tokens: the probe's case, where the same planted sentence read with two raw passages and no soft tokens is answered
right and with the soft tokens of 512 look-alike chunks beside it is not. ``--mode hybrid`` pins such lines to hybrid
reading, so the recipe never reads them from soft tokens alone nor hides the answer's passage (which would teach the
opposite: to take the answer from the soft tokens over the raw passage).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from e2llm_plugin.autodata.questions import word_pattern
from e2llm_plugin.ranking import Bm25

TASKS = ("entity_qa", "entity_qa_other_sentence", "entity_qa_counterfactual", "entity_qa_other_sentence_counterfactual")


def span(value: str, flag: str) -> tuple[int, int]:
    """LOW:HIGH of a command-line flag, 0 < LOW <= HIGH; else exit naming the flag."""
    try:
        low, high = (int(x) for x in value.split(":"))
    except ValueError:
        low = high = 0
    if not 0 < low <= high:
        raise SystemExit(f"{flag} must be LOW:HIGH with 0 < LOW <= HIGH, got {value}")
    return low, high


def paragraphs(record: dict) -> list[str]:
    """A record's own paragraphs (none from a haystack, whose context holds other documents' passages)."""
    context = record.get("context")
    return [p for p in context.split("\n") if len(p.split()) >= 12] if isinstance(context, str) else []


def lookalike(records: list[dict], n: int, seed: int, negatives: tuple[int, int] = (3, 8),
              neg_words: int = 1200, mode: str | None = None) -> list[dict]:
    """Up to `n` of `records`' entity questions, each with look-alike paragraphs of other documents added."""
    rng = random.Random(seed)
    by_source: dict[str, list[tuple[str, str]]] = defaultdict(list)  # source -> (doc_id, paragraph), deduplicated
    seen = set()
    for r in records:
        if r.get("counterfactual"):  # its paragraphs are real ones with a name swapped: near-copies, not look-alikes
            continue
        for p in paragraphs(r):
            if p[:120] not in seen:  # the same paragraph, cut at other lengths, stands in several windows
                seen.add(p[:120])
                by_source[r["source"]].append((r["doc_id"], p))
    index = {s: Bm25([p for _, p in pool]) for s, pool in by_source.items()}
    questions = [r for r in records if r.get("task") in TASKS and isinstance(r.get("context"), str)
                 and r.get("source") != "factbook"]  # the Factbook's contexts are look-alike lines already
    rng.shuffle(questions)
    out = []
    for r in questions:
        if len(out) >= n:
            break
        pool, answer = by_source[r["source"]], word_pattern(r["answer"])
        scores = index[r["source"]].scores(r["prompt"])
        ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: -scores[i])
        docs, words, want = [], 0, rng.randint(*negatives)
        for i in ranked:
            doc_id, text = pool[i]
            if doc_id == r["doc_id"] or answer.search(text) or words + len(text.split()) > neg_words:
                continue
            docs.append(text)
            words += len(text.split())
            if len(docs) >= want:
                break
        if len(docs) < negatives[0]:
            continue
        docs.append(r["context"])
        rng.shuffle(docs)
        out.append({**r, "context": docs, "needle_index": docs.index(r["context"]), "n_docs": len(docs),
                    "task": "lookalike_" + r["task"], **({"mode": mode} if mode else {})})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lookalike", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="training JSONL with entity questions (research.subset's output, e.g. r9_train.jsonl)")
    p.add_argument("--n", type=int, default=900, help="questions to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neg-words", type=int, default=1200, help="words of look-alike paragraphs added to a question")
    p.add_argument("--negatives", default="3:8", help="LOW:HIGH look-alike paragraphs a question gets (fewer: skipped)")
    p.add_argument("--mode", choices=["soft", "hybrid", "rag"], default=None,
                   help="pin how training reads these lines (default: as the run's recipe draws it)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    negatives = span(args.negatives, "--negatives")
    records = [json.loads(line) for line in open(args.data) if line.strip()]
    made = lookalike(records, args.n, args.seed, negatives, args.neg_words, args.mode)
    with args.out.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in made)
    print(f"{args.out}: {len(made)} questions among look-alike passages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
