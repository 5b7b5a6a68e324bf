"""How well chunks are ranked for hybrid and rag reading: the base encoder (LoRA off, a second encoder pass) against
the LoRA encoder's own token states (mean-pooled from the pass that makes the soft tokens).

    python -m research.ranking --data data/v1/test_factbook_short.jsonl data/v1/test_unseen_kinds.jsonl --max-questions 60

Prints, per file, the share of questions whose gold answer is in the raw passages each ranking selects within the
checkpoint's hybrid budget (the passage hit rate), with the 95 % Wilson interval.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from e2llm_plugin import E2LLM
from e2llm_plugin.adapter import mean_pool
from e2llm_plugin.evaluation.methods import load_examples
from e2llm_plugin.evaluation.metrics import answer_in


def wilson(hits: int, n: int) -> tuple[float, float]:
    if not n:
        return 0.0, 0.0
    p, z = hits / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@torch.inference_mode()
def lora_embeddings(model: E2LLM, texts: list[str]) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), 32):
        states, mask = model.encoder(texts[i : i + 32])
        out.append(nn.functional.normalize(mean_pool(states, mask), dim=-1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--max-questions", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = E2LLM.from_pretrained(args.model)
    budget = model.config.hybrid_raw_tokens
    for path in args.data:
        hits = {"base": 0, "lora": 0}
        examples = load_examples(path, args.max_questions, args.seed)
        for example in examples:
            chunks = model.chunk(example.documents)
            texts = [c.text for c in chunks]
            for name, embed in (("base", model.embed), ("lora", lambda t: lora_embeddings(model, t))):
                scores = (embed(texts) @ embed([example.question])[0]).tolist()
                chosen, used = [], 0
                for index in sorted(range(len(texts)), key=lambda i: -scores[i]):
                    cost = model.count_tokens(texts[index])
                    if used + cost <= budget:
                        chosen.append(index)
                        used += cost
                    if budget - used < 8:
                        break
                hits[name] += answer_in(" ".join(texts[i] for i in chosen), example.answer)
        n = len(examples)
        for name, h in hits.items():
            low, high = wilson(int(h), n)
            interval = f"95 % CI {100 * low:.0f}-{100 * high:.0f}"
            print(f"{path}: {name:4s} ranking hit rate {100 * h / n:.1f} % ({int(h)}/{n}; {interval})")


if __name__ == "__main__":
    main()
