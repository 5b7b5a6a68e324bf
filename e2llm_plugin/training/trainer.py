"""The training loop: AdamW with warm-up and cosine decay, gradient accumulation and clipping, periodic eval,
atomic resumable checkpoints, JSONL logs. Distributed through Accelerate, so the same code runs alone, under
``torchrun`` (DDP, gloo on CPU, nccl on GPU) and under ``accelerate launch``; only the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..model import E2LLM
from ..tasks import Task
from .data import JsonlDataset, make_tasks
from .state import list_checkpoints, load_checkpoint, save_checkpoint

logger = logging.getLogger("e2llm_plugin.finetune")
KINDS = ("understanding", "reasoning")


@dataclass
class TrainingArgs:
    data: str
    output: str
    eval_data: str | None = None
    init_from: str | None = None
    mode: str = "soft"  # reading mode for reasoning examples
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    time_budget_min: float | None = None
    seed: int = 0
    save_every: int = 100
    eval_every: int = 100
    eval_examples: int = 64
    keep_checkpoints: int = 2
    understanding_ratio: float = 0.5
    understanding_weight: float = 1.0
    reasoning_weight: float = 1.0
    window_chunks: int = 2
    max_chunks: int = 96
    precision: str = "auto"
    push_to_hub: str | None = None
    config_overrides: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, model: E2LLM, args: TrainingArgs, accelerator):
        self.model, self.args, self.acc = model, args, accelerator
        self.output = Path(args.output)
        qa_only = args.mode == "rag"  # a text-RAG decoder learns from QA lines only
        self.train_set = JsonlDataset(args.data, qa_only)
        self.eval_set = JsonlDataset(args.eval_data, qa_only) if args.eval_data else None
        self.world = accelerator.num_processes
        per_step = args.grad_accum * self.world
        self.steps_per_epoch = max(1, len(self.train_set) // per_step)
        self.total_steps = args.max_steps or max(1, math.ceil(args.epochs * self.steps_per_epoch))

        model.train()
        params = model.trainable_parameters()
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        warmup = min(args.warmup_steps, self.total_steps // 2)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.trainable = accelerator.prepare(model)  # DDP where distributed; its forward is the model's loss
        self.step = 0
        self.saved_step = -1
        self.cursor = 0  # examples consumed, counted globally across ranks
        self.skipped = 0
        self.history: list[dict] = []

    # ---- data ---------------------------------------------------------------------------------------------------
    def _tasks(self, dataset: JsonlDataset, cursor: int, shuffle: bool = True) -> list[Task]:
        """Tasks of the example at global position `cursor`; deterministic in (seed, cursor), so resumable."""
        epoch, index = divmod(cursor, len(dataset))
        record = dataset.read(int(dataset.order(epoch, self.args.seed)[index]) if shuffle else index)
        rng = random.Random(f"{self.args.seed}-{cursor}")
        # A text-RAG decoder has no soft tokens to learn to restate; its data holds QA lines only (see __init__).
        ratio = 0.0 if self.args.mode == "rag" else self.args.understanding_ratio
        tasks = make_tasks(record, self.model, rng, ratio, self.args.window_chunks)
        kept = [t for t in tasks if len(t.chunks) <= self.args.max_chunks]
        self.skipped += len(tasks) - len(kept)
        return kept

    def _weight(self, kind: str) -> float:
        return self.args.understanding_weight if kind == "understanding" else self.args.reasoning_weight

    # ---- one optimizer step --------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc, args = self.acc, self.args
        losses = {k: [] for k in KINDS}
        micro = []
        for i in range(args.grad_accum):
            position = self.cursor + i * self.world + acc.process_index
            micro.extend(self._tasks(self.train_set, position))
        self.cursor += args.grad_accum * self.world
        total_weight = sum(self._weight(t.kind) for t in micro) or 1.0
        for i, task in enumerate(micro):
            # Only the last backward of the step synchronises gradients across processes.
            sync = i == len(micro) - 1
            with (contextlib.nullcontext() if sync else acc.no_sync(self.trainable)), acc.autocast():
                loss = self.trainable(task, args.mode)
            acc.backward(loss * self._weight(task.kind) / total_weight)
            losses[task.kind].append(loss.item())
        if not micro:  # every task of this step was too long: keep ranks in step with a zero-gradient sync
            acc.backward(sum(p.sum() * 0 for p in self.params))
        grad_norm = acc.clip_grad_norm_(self.params, args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        out = {f"loss_{k}": sum(v) / len(v) for k, v in losses.items() if v}
        out["grad_norm"] = float(grad_norm)
        out["tasks"] = len(micro)
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        self.model.eval()
        losses = {k: [] for k in KINDS}
        for position in range(min(self.args.eval_examples, len(self.eval_set))):
            for task in self._tasks(self.eval_set, position, shuffle=False):
                with self.acc.autocast():
                    losses[task.kind].append(self.model(task, self.args.mode).item())
        self.model.train()
        return {f"eval_loss_{k}": sum(v) / len(v) for k, v in losses.items() if v}

    # ---- the loop ------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        found = list_checkpoints(self.output / "checkpoints")
        if not found:
            return False
        meta = load_checkpoint(self.model, self.optimizer, self.scheduler, found[-1])
        self.step, self.cursor, self.skipped = meta["step"], meta["cursor"], meta.get("skipped", 0)
        self.saved_step = self.step
        self.history = meta.get("history", [])
        logger.info("resumed from %s (step %d)", found[-1], self.step)
        return True

    def save(self) -> None:
        if self.acc.is_main_process:
            info = {"step": self.step, "cursor": self.cursor, "skipped": self.skipped, "history": self.history[-50:],
                    "args": asdict(self.args)}
            directory = self.output / "checkpoints"
            save_checkpoint(self.model, self.optimizer, self.scheduler, info, directory, self.args.keep_checkpoints)
        self.saved_step = self.step
        self.acc.wait_for_everyone()

    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.acc.is_main_process:
            with (self.output / "train_log.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def train(self) -> dict:
        from tqdm.auto import tqdm

        args, acc = self.args, self.acc
        start = time.monotonic()
        deadline = start + args.time_budget_min * 60 if args.time_budget_min else None
        bar = tqdm(total=self.total_steps, initial=self.step, desc="finetune", disable=not acc.is_main_process,
                   dynamic_ncols=True)
        running: dict[str, float] = {}
        stopped_early = False
        examples_done = 0
        while self.step < self.total_steps:
            metrics = self.train_step()
            examples_done += args.grad_accum * self.world
            for k, v in metrics.items():
                if k.startswith("loss_"):
                    running[k] = v if k not in running else 0.9 * running[k] + 0.1 * v
            rate = examples_done / (time.monotonic() - start)
            bar.set_postfix({k.removeprefix("loss_")[:5]: f"{v:.3f}" for k, v in running.items()} | {"ex/s": f"{rate:.2f}"})
            bar.update(1)
            self.log({"step": self.step, "lr": self.scheduler.get_last_lr()[0], "examples_per_s": round(rate, 3),
                      "elapsed_s": round(time.monotonic() - start, 1), **metrics})
            if args.eval_every and self.step % args.eval_every == 0 and self.step < self.total_steps:
                self.log({"step": self.step, **self.evaluate()})
            # Decide together: a rank that stops alone would leave the others waiting in all-reduce.
            out_of_time = deadline is not None and _any_rank(acc, time.monotonic() > deadline)
            if args.save_every and self.step % args.save_every == 0 or out_of_time:
                self.save()
            if out_of_time:
                stopped_early = self.step < self.total_steps
                break
        bar.close()
        if self.saved_step != self.step:
            self.save()
        final = self.evaluate()
        if final:
            self.log({"step": self.step, "final": True, **final})
        return {"steps": self.step, "stopped_early": stopped_early, "skipped_tasks": self.skipped, **final,
                **{k: round(v, 4) for k, v in running.items()}}


def _any_rank(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


