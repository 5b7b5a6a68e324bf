"""How well chunks are ranked for hybrid and rag reading: the encoder's cosine similarity alone (`ranking="dense"`)
against its fusion with BM25 over the chunks' words (`ranking="fused"`), each as `E2LLM.rank_chunks` ranks.

    python -m research.ranking --data data/v2/test_factbook_short.jsonl data/v2/test_general_docs.jsonl --max-questions 50

Prints, per file, the share of questions whose gold answer is in the raw passages each ranking selects within the
checkpoint's hybrid budget (the passage hit rate, `select_passages`), with the 95 % Wilson interval, and the paired
counts: questions one ranking hits and the other misses. Only the encoder runs (no soft tokens, no generation).
"""

from __future__ import annotations

import argparse
import math
import typing

from e2llm_plugin import E2LLM
from e2llm_plugin.config import Ranking
from e2llm_plugin.context import CompressedContext
from e2llm_plugin.evaluation.methods import load_examples
from e2llm_plugin.evaluation.metrics import answer_in

RANKINGS: tuple[str, ...] = typing.get_args(Ranking)


def wilson(hits: int, n: int) -> tuple[float, float]:
    if not n:
        return 0.0, 0.0
    p, z = hits / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def hits(model: E2LLM, path: str, max_questions: int, seed: int) -> dict[str, list[bool]]:
    """Per ranking, whether each question's gold answer is among the passages it selects."""
    out: dict[str, list[bool]] = {name: [] for name in RANKINGS}
    budget = model.config.hybrid_raw_tokens
    for example in load_examples(path, max_questions, seed):
        chunks = model.chunk(example.documents)
        context = CompressedContext(chunks, None, len(example.documents), 0)  # embeddings and BM25 shared by both
        for name in RANKINGS:
            model.config.ranking = name
            passages = model.select_passages(example.question, context, budget)
            out[name].append(bool(answer_in(" ".join(chunks[i].text for i, _ in passages), example.answer)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--max-questions", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = E2LLM.from_pretrained(args.model)
    for path in args.data:
        result = hits(model, path, args.max_questions, args.seed)
        n = len(result["dense"])
        for name, hit in result.items():
            low, high = wilson(sum(hit), n)
            print(f"{path}: {name:5s} ranking hit rate {100 * sum(hit) / max(n, 1):.1f} % ({sum(hit)}/{n}; "
                  f"95 % CI {100 * low:.0f}-{100 * high:.0f})")
        only_fused = sum(f and not d for f, d in zip(result["fused"], result["dense"], strict=True))
        only_dense = sum(d and not f for f, d in zip(result["fused"], result["dense"], strict=True))
        print(f"{path}: paired: fused hits {only_fused} that dense misses, dense hits {only_dense} that fused misses",
              flush=True)


if __name__ == "__main__":
    main()
