"""The training loop: AdamW with warm-up and cosine decay, gradient accumulation and clipping, periodic eval,
atomic resumable checkpoints, JSONL logs. Distributed through Accelerate, so the same code runs alone, under
``torchrun`` (DDP, gloo on CPU, nccl on GPU) and under ``accelerate launch``; only the main process writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..model import E2LLM
from ..reading import SoftReader, reader_for
from ..tasks import Task
from .data import JsonlDataset, decoder_positions, make_tasks
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
    batch_size: int = 1  # examples read in one forward (their tasks padded into one batch)
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
    encoder_grad_chunks: int = 0  # > 0: the encoder's gradient flows through at most this many chunks of a batch
    soft_ratio: float = 0.0  # with --mode hybrid: share of reasoning tasks read from soft tokens alone
    answer_out_ratio: float = 0.0  # hybrid: share whose answer-holding chunks are kept out of the raw passages
    distill: float = 0.0  # weight of the KL term to the starting checkpoint reading the answer's passages (rag)
    precision: str = "auto"
    push_to_hub: str | None = None
    config_overrides: dict = field(default_factory=dict)


class Trainer:
    def __init__(self, model: E2LLM, args: TrainingArgs, accelerator):
        self.model, self.args, self.acc = model, args, accelerator
        self.output = Path(args.output)
        self.reader = reader_for(args.mode)
        qa_only = not self.reader.reads_soft  # a text-RAG decoder learns from QA lines only
        self.train_set = JsonlDataset(args.data, qa_only)
        self.eval_set = JsonlDataset(args.eval_data, qa_only) if args.eval_data else None
        self.world = accelerator.num_processes
        per_step = args.batch_size * args.grad_accum * self.world
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
        if args.distill > 0:  # the teacher is the starting checkpoint: frozen before `resume` loads later weights
            model.freeze_teacher()
        self.step = 0
        self.saved_step = -1
        self.cursor = 0  # examples consumed, counted globally across ranks
        self.skipped = 0
        self.history: list[dict] = []

    # ---- data ---------------------------------------------------------------------------------------------------
    def _tasks(self, dataset: JsonlDataset, cursor: int, shuffle: bool = True) -> list[Task]:
        """Tasks of the example at global position `cursor`; deterministic in (seed, cursor), so resumable. Training
        tasks follow the recipe (`read_as`); evaluation reads every question in the run's mode, as users read."""
        epoch, index = divmod(cursor, len(dataset))
        example = int(dataset.order(epoch, self.args.seed)[index]) if shuffle else index
        record = dataset.read(example)
        rng = random.Random(f"{self.args.seed}-{cursor}")
        # A text-RAG decoder has no soft tokens to learn to restate; its data holds QA lines only (see __init__).
        ratio = self.args.understanding_ratio if self.reader.reads_soft else 0.0
        kept = []
        for task in make_tasks(record, self.model, rng, ratio, self.args.window_chunks):
            task = read_as(task, self.args, rng) if dataset is self.train_set else task
            reason = self._too_long(task)
            if reason is None:
                kept.append(task)
                continue
            logger.warning("%s: %s task skipped: %s", dataset.where(example), task.kind, reason)
            if dataset is self.train_set:  # the model card counts training tasks; eval runs again and again
                self.skipped += 1
        return kept

    def _too_long(self, task: Task) -> str | None:
        """Why the model cannot read `task` (more chunks than --max-chunks, or past the decoder's window), else None.
        Lines too long even with one chunk were refused before training (`check_fits`)."""
        if len(task.chunks) > self.args.max_chunks:
            return f"{len(task.chunks)} chunks, more than --max-chunks {self.args.max_chunks}"
        need = decoder_positions(self.model, task.mode or self.args.mode, task.question, task.target, len(task.chunks))
        if need > self.model.context_window:
            return f"{len(task.chunks)} chunks need {need} decoder positions, the decoder reads {self.model.context_window}"
        return None

    def _weight(self, kind: str) -> float:
        return self.args.understanding_weight if kind == "understanding" else self.args.reasoning_weight

    # ---- one optimizer step --------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc, args = self.acc, self.args
        losses = {k: [] for k in KINDS}
        batches = []
        for i in range(args.grad_accum):  # micro-batches of `batch_size` examples each, drawn round-robin across ranks
            first = self.cursor + i * args.batch_size * self.world + acc.process_index * args.batch_size
            batches.append([task for j in range(args.batch_size) for task in self._tasks(self.train_set, first + j)])
        self.cursor += args.batch_size * args.grad_accum * self.world
        batches = [b for b in batches if b]
        total_weight = sum(self._weight(t.kind) for b in batches for t in b) or 1.0
        for i, batch in enumerate(batches):
            # Only the last backward of the step synchronises gradients across processes.
            sync = i == len(batches) - 1
            with (contextlib.nullcontext() if sync else acc.no_sync(self.trainable)), acc.autocast():
                batch_losses = self.trainable(batch, args.mode, args.distill, args.encoder_grad_chunks)
            weights = torch.tensor([self._weight(t.kind) for t in batch], device=batch_losses.device)
            acc.backward((batch_losses * weights).sum() / total_weight)
            for task, loss in zip(batch, batch_losses.tolist(), strict=True):
                losses[task.kind].append(loss)
        if not batches:  # every task of this step was too long: keep ranks in step with a zero-gradient sync
            acc.backward(sum(p.sum() * 0 for p in self.params))
        grad_norm = acc.clip_grad_norm_(self.params, args.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        out = {f"loss_{k}": sum(v) / len(v) for k, v in losses.items() if v}
        out["grad_norm"] = float(grad_norm)
        out["tasks"] = sum(len(b) for b in batches)
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if self.eval_set is None:
            return {}
        self.model.eval()
        losses = {k: [] for k in KINDS}
        for position in range(min(self.args.eval_examples, len(self.eval_set))):
            tasks = self._tasks(self.eval_set, position, shuffle=False)
            if tasks:
                with self.acc.autocast():
                    for task, loss in zip(tasks, self.model(tasks, self.args.mode).tolist(), strict=True):
                        losses[task.kind].append(loss)
        self.model.train()
        return {f"eval_loss_{k}": sum(v) / len(v) for k, v in losses.items() if v}

    # ---- the loop ------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        found = list_checkpoints(self.output / "checkpoints")
        if found:
            meta = load_checkpoint(self.model, self.optimizer, self.scheduler, found[-1])
            self.step, self.cursor, self.skipped = meta["step"], meta["cursor"], meta.get("skipped", 0)
            self.saved_step = self.step
            self.history = meta.get("history", [])
            logger.info("resumed from %s (step %d)", found[-1], self.step)
        if self.acc.is_main_process:
            self._cut_log()
        return bool(found)

    def _cut_log(self) -> None:
        """Drop what the log holds past the step resumed from (steps after the last save, a final eval, a line torn
        by the kill): the resumed run logs those steps again. Atomic, so a kill now leaves the old log or the new."""
        path = self.output / "train_log.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= self.step and not record.get("final"):
                kept.append(line + "\n")
        fd, temp = tempfile.mkstemp(prefix=".train_log-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.writelines(kept)
            shutil.copymode(path, temp)  # mkstemp makes a private file; the log keeps its permissions
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
            raise

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
            examples_done += args.batch_size * args.grad_accum * self.world
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


def read_as(task: Task, args: TrainingArgs, rng: random.Random) -> Task:
    """How a training task is read: the recipe for hybrid training (a mode that reads soft tokens and raw passages) reads
    some questions from soft tokens alone (`soft_ratio`), and keeps the chunks that hold the answer out of the raw
    passages in some (`answer_out_ratio`), so the decoder must learn to find answers in the soft tokens. Other tasks and
    modes, and lines that name their own mode, are read as they are."""
    reader = reader_for(args.mode)
    if task.kind != "reasoning" or task.mode is not None or not (reader.reads_soft and reader.reads_raw):
        return task
    if rng.random() < args.soft_ratio:
        return dataclasses.replace(task, mode=SoftReader.mode)
    if rng.random() < args.answer_out_ratio:
        return dataclasses.replace(task, hidden=task.answer_chunks())
    return task


def _any_rank(acc, flag: bool) -> bool:
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    return bool(acc.reduce(t, reduction="sum").item() > 0)


