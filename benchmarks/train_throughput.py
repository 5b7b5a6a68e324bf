"""Training throughput of E2LLM on this machine: a baseline setting against a faster one, in the same run.

    python benchmarks/train_throughput.py --data data/v2/train.jsonl --steps 12 --batch-size 4
    python benchmarks/train_throughput.py --data runs/distractors.jsonl --steps 6 --encoder-grad-chunks 96   # long contexts

Runs the work of finetune steps (`model(tasks, mode)`: the paper's two tasks, LoRA on encoder and decoder, the
adapter; forward, backward, AdamW) on the embedded models, first as the baseline (fp32, one example per forward), then
with bf16 autocast around the frozen base models and `--batch-size` examples per padded forward. Both read the same
examples. With `--encoder-grad-chunks N`, a third setting: the second with the encoder's gradient through at most N
chunks a batch (`finetune --encoder-grad-chunks`), the rest encoded without it. Prints examples/s of each, their
ratios to the baseline, and the per-step breakdown. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections import defaultdict

import torch

from e2llm_plugin import E2LLM
from e2llm_plugin.training.data import JsonlDataset, make_tasks


def time_children(model: torch.nn.Module, times: dict) -> None:
    """Add the encoder's and the adapter's forward time to `times`, by forward hooks (the decoder is the rest)."""
    for name in ("encoder", "adapter"):
        child = getattr(model, name)

        def start(_module, _args, name=name):
            times[f"_{name}_start"] = time.perf_counter()

        def stop(_module, _args, _out, name=name):
            times[name] += time.perf_counter() - times.pop(f"_{name}_start")

        child.register_forward_pre_hook(start)
        child.register_forward_hook(stop)


def measure(model: E2LLM, examples: list, batch_size: int, bf16: bool, mode: str, warmup: int,
            encoder_grad_chunks: int = 0) -> dict:
    """Examples/s over `examples` (lists of tasks), `batch_size` examples per forward; the first `warmup` batches untimed."""
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-6)
    times: dict = defaultdict(float)
    step_times: dict = defaultdict(float)
    time_children(model, step_times)
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    done = 0
    for index, batch in enumerate(batches):
        step_times.clear()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        clock = time.perf_counter()
        tasks = [task for example in batch for task in example]
        with autocast:
            losses = model(tasks, mode, encoder_grad_chunks=encoder_grad_chunks)
        step_times["forward"] = time.perf_counter() - clock
        clock = time.perf_counter()
        losses.sum().backward()
        step_times["backward"] = time.perf_counter() - clock
        clock = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times["optimizer"] = time.perf_counter() - clock
        if index >= warmup:
            done += len(batch)
            for k, v in step_times.items():
                times[k] += v
    for child in model.children():  # drop the hooks, so the next setting times only itself
        child._forward_hooks.clear()
        child._forward_pre_hooks.clear()
    total = times["forward"] + times["backward"] + times["optimizer"]
    return {"examples": done, "seconds": total, "per_s": done / total, "times": dict(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--mode", default="hybrid", help="how QA examples are read")
    parser.add_argument("--steps", type=int, default=12, help="timed batches of the faster setting")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before timing")
    parser.add_argument("--encoder-grad-chunks", type=int, default=0,
                        help="> 0: also time the encoder's gradient through at most this many chunks a batch")
    args = parser.parse_args()

    model = E2LLM.from_pretrained(args.model, store=False)
    model.train()
    data = JsonlDataset(args.data)
    rng = random.Random(0)
    n = (args.warmup + args.steps) * args.batch_size
    examples = [make_tasks(data.read(rng.randrange(len(data))), model, rng, 0.3, 2) for _ in range(n)]
    print(f"threads {torch.get_num_threads()}, {n} examples ({sum(map(len, examples))} tasks), mode {args.mode}")
    results = {}
    settings = [("baseline fp32, 1 per forward", 1, False, 0),
                (f"bf16 autocast, {args.batch_size} per forward", args.batch_size, True, 0)]
    if args.encoder_grad_chunks:
        settings.append((f"the same, encoder gradient through {args.encoder_grad_chunks} chunks", args.batch_size, True,
                         args.encoder_grad_chunks))
    for name, batch_size, bf16, grad_chunks in settings:
        r = measure(model, examples, batch_size, bf16, args.mode, args.warmup * args.batch_size // batch_size, grad_chunks)
        results[name] = r
        r["times"]["decoder"] = r["times"]["forward"] - r["times"].get("encoder", 0) - r["times"].get("adapter", 0)
        parts = ("encoder", "adapter", "decoder", "backward", "optimizer")
        print(f"{name}: {r['per_s']:.3f} examples/s ({r['examples']} examples in {r['seconds']:.1f} s); per example: "
              + "   ".join(f"{k} {r['times'].get(k, 0) / r['examples'] * 1000:.0f} ms" for k in parts))
    base, *faster = results.values()
    print("speed-up: " + ", ".join(f"{r['per_s'] / base['per_s']:.2f}x" for r in faster) + " examples/s")


if __name__ == "__main__":
    main()
