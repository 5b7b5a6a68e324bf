"""Training throughput of E2LLM on this machine, with a per-step breakdown.

    python benchmarks/train_throughput.py --data data/v1/train.jsonl --steps 20

Runs the same work as one finetune step (the paper's two tasks, LoRA on encoder and decoder, the adapter) on the
embedded models, timing encoder forward, adapter forward, decoder forward, backward and optimizer separately.
Prints examples/s and tokens/s (encoder tokens in + decoder tokens through). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import torch

from e2llm_plugin import E2LLM
from e2llm_plugin.context import CompressedContext
from e2llm_plugin.decoder import RESTATE_INSTRUCTION
from e2llm_plugin.training.data import JsonlDataset, make_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    model = E2LLM.from_pretrained(args.model)
    model.train()
    params = [p for n, p in model.named_parameters() if n in model.trained_state_dict()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    data = JsonlDataset(args.data)
    rng = random.Random(0)
    times, examples, enc_tokens, dec_tokens = defaultdict(float), 0, 0, 0

    for step in range(args.warmup + args.steps):
        record = data.read(rng.randrange(len(data)))
        tasks = make_tasks(record, model.chunker, rng, understanding_ratio=0.5, window_chunks=2)
        measured = step >= args.warmup
        t = {}
        clock = time.perf_counter()
        for task in tasks:
            texts = [c.text for c in task.chunks]
            states, mask = model.encoder(texts)
            t["encoder"] = t.get("encoder", 0) + time.perf_counter() - clock; clock = time.perf_counter()
            soft = model.adapter(states, mask)
            t["adapter"] = t.get("adapter", 0) + time.perf_counter() - clock; clock = time.perf_counter()
            if task.kind == "reasoning":
                ctx = CompressedContext(task.chunks, soft, 1, 0)
                prompt, _ = model.prompt(task.question, ctx, "soft", target=task.target)
            else:
                prompt = model.decoder.build_prompt(soft.reshape(-1, soft.shape[-1]), RESTATE_INSTRUCTION, target=task.target)
            loss = model.decoder.loss(prompt)
            t["decoder"] = t.get("decoder", 0) + time.perf_counter() - clock; clock = time.perf_counter()
            loss.backward()
            t["backward"] = t.get("backward", 0) + time.perf_counter() - clock; clock = time.perf_counter()
            if measured:
                enc_tokens += int(mask.sum())
                dec_tokens += prompt.num_tokens
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t["optimizer"] = time.perf_counter() - clock
        if measured:
            examples += 1
            for k, v in t.items():
                times[k] += v

    total = sum(times.values())
    print(f"threads {torch.get_num_threads()}, {args.steps} steps (1 example each, {examples} examples)")
    print(f"examples/s {examples / total:.3f}   encoder tokens/s {enc_tokens / total:.0f}   decoder tokens/s {dec_tokens / total:.0f}")
    print("per step:  " + "   ".join(f"{k} {v / args.steps * 1000:.0f} ms ({v / total:.0%})" for k, v in times.items()))


if __name__ == "__main__":
    main()
