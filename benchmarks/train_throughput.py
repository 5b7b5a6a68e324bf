"""Training throughput of E2LLM on this machine, with a per-step breakdown.

    python benchmarks/train_throughput.py --data data/v1/train.jsonl --steps 20

Runs the same work as one finetune step (`model(task)`: the paper's two tasks, LoRA on encoder and decoder, the
adapter) on the embedded models, timing the encoder, adapter and decoder forwards (by hooks), backward and optimizer.
Prints examples/s and encoder tokens/s. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict

import torch

from e2llm_plugin import E2LLM
from e2llm_plugin.training.data import JsonlDataset, make_tasks


def time_children(model: torch.nn.Module, times: dict) -> None:
    """Add each top-level part's forward time (encoder, adapter, decoder) to `times`, by forward hooks."""
    for name, child in model.named_children():
        def start(_module, _args, name=name):
            times[f"_{name}_start"] = time.perf_counter()

        def stop(_module, _args, _out, name=name):
            times[name] += time.perf_counter() - times.pop(f"_{name}_start")

        child.register_forward_pre_hook(start)
        child.register_forward_hook(stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    model = E2LLM.from_pretrained(args.model)
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)
    data = JsonlDataset(args.data)
    rng = random.Random(0)
    times, examples, source_tokens = defaultdict(float), 0, 0
    step_times: dict = defaultdict(float)
    time_children(model, step_times)

    for step in range(args.warmup + args.steps):
        record = data.read(rng.randrange(len(data)))
        tasks = make_tasks(record, model, rng, understanding_ratio=0.5, window_chunks=2)
        step_times.clear()
        clock = time.perf_counter()
        for task in tasks:
            loss = model(task)  # the same forward as a finetune step: the model owns its loss
            step_times["forward"] += time.perf_counter() - clock
            clock = time.perf_counter()
            loss.backward()
            step_times["backward"] += time.perf_counter() - clock
            clock = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times["optimizer"] += time.perf_counter() - clock
        if step >= args.warmup:
            examples += 1
            source_tokens += sum(c.num_tokens for task in tasks for c in task.chunks)
            for k, v in step_times.items():
                times[k] += v

    total = times["forward"] + times["backward"] + times["optimizer"]
    print(f"threads {torch.get_num_threads()}, {args.steps} steps (1 example each, {examples} examples)")
    print(f"examples/s {examples / total:.3f}   encoder tokens/s {source_tokens / total:.0f}")
    parts = ("encoder", "adapter", "decoder", "backward", "optimizer")
    print("per step:  " + "   ".join(f"{k} {times[k] / args.steps * 1000:.0f} ms ({times[k] / total:.0%})" for k in parts))


if __name__ == "__main__":
    main()
