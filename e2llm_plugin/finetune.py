"""`python -m e2llm_plugin.finetune`: train E2LLM (encoder LoRA, adapter, decoder LoRA) on your own JSONL data.

    python -m e2llm_plugin.finetune --data train.jsonl --eval-data eval.jsonl --output runs/mine --max-steps 500
    python -m e2llm_plugin.finetune --documents reports/ --output runs/mine --time-budget 30

Each line is ``{"context": str | [str], "prompt": str, "answer": str}`` (reasoning) or ``{"text": str}``
(understanding only). ``--documents`` makes such lines from txt, md and pdf files alone (`e2llm_plugin.autodata`, the
``auto`` extra), holds out a share of whole documents for the evaluation, and starts from the shipped checkpoint.
The output directory is an `E2LLM.from_pretrained` checkpoint; `checkpoints/` inside it holds
the resumable saves (`--resume`). Runs unchanged under ``torchrun`` and ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shlex
import shutil
import sys
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path

from .autodata.questions import INSTALL as AUTO_INSTALL
from .config import ARCHITECTURE, MODES, E2LLMConfig
from .errors import E2LLMError
from .files import STAGING_PREFIX, recover
from .model import CONFIG_NAME
from .reading import reader_for
from .training.data import DataError, JsonlDataset, check_fits
from .training.trainer import Trainer, TrainingArgs

RUN_FILE = "run.json"
# What a run writes into --output; --overwrite removes these and nothing else.
DOCUMENTS_TRAIN, DOCUMENTS_EVAL = "documents_train.jsonl", "documents_eval.jsonl"  # what --documents made, kept for --resume
RUN_FILES = (RUN_FILE, "train_log.jsonl", "checkpoints", "config.json", "model.safetensors", "README.md", DOCUMENTS_TRAIN,
             DOCUMENTS_EVAL)
RUN_KEYS = {"data", "output", "config_overrides"}  # keys every run.json holds: a file by that name without them is not ours
RECHUNKABLE = {"chunk_tokens", "chunk_overlap"}  # architecture flags --from may change: no weight depends on them


@dataclass(frozen=True)
class ConfigFlag:
    """A config field settable from the command line, derived from the field's metadata."""

    name: str  # flat name: "chunk_tokens", or "encoder_lora_r" for a field of a sub-config
    path: tuple[str, ...]  # where it lives: ("chunk_tokens",) or ("encoder_lora", "r")
    kind: type
    choices: tuple | None
    help: str
    group: str  # "architecture" (fixed once trained, but k can grow) or "reading"


def config_flags() -> list[ConfigFlag]:
    """Every config field marked with a `flag` group, sub-config fields included, in declaration order."""
    def walk(cls, prefix: tuple[str, ...]) -> list[ConfigFlag]:
        hints, out = typing.get_type_hints(cls), []
        for f in fields(cls):
            hint, group = hints[f.name], f.metadata.get("flag")
            if group is None:
                continue
            if is_dataclass(hint):
                out += walk(hint, (*prefix, f.name))
                continue
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            out.append(ConfigFlag("_".join((*prefix, f.name)), (*prefix, f.name), str if choices else hint, choices,
                                  f.metadata["help"], group))
        return out

    return walk(E2LLMConfig, ())


def config_with(config: E2LLMConfig, values: dict) -> E2LLMConfig:
    """`config` with flat flag values (`{"chunk_tokens": 50, "encoder_lora_r": 4}`) set, validated."""
    by_name = {flag.name: flag for flag in config_flags()}
    config = copy.deepcopy(config)
    for name, value in values.items():
        *parents, leaf = by_name[name].path
        owner = config
        for part in parents:
            owner = getattr(owner, part)
        setattr(owner, leaf, value)
    config.validate()
    for sub in (config.encoder_lora, config.decoder_lora):
        sub.__post_init__()
    return config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2llm_plugin.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    io = p.add_argument_group("data and output")
    io.add_argument("--data", help="training JSONL (required unless --documents; with it, mixed in)")
    io.add_argument("--eval-data", help="evaluation JSONL (periodic and final eval loss)")
    io.add_argument("--documents", nargs="+", metavar="FILE_OR_DIR",
                    help="make the training tasks from these .pdf/.txt/.md files (directories are searched) with the "
                    f"rule-based question generator (needs {AUTO_INSTALL}); the lines are kept in --output as "
                    f"{DOCUMENTS_TRAIN} and {DOCUMENTS_EVAL}; without --from, training starts from the shipped checkpoint")
    io.add_argument("--heldout-share", type=float, default=0.1,
                    help="with --documents: share of whole documents held out for the evaluation (at least one of two or more)")
    io.add_argument("--sentence-answer-share", type=float, default=0.2,
                    help="with --documents: the most that questions answered by whole sentences (describe X, summarize a "
                    "section) may be of the question lines; the rest ask for a name, a number, a word")
    io.add_argument("--dry-run", action="store_true",
                    help="print how many lines of each task the data holds (and a sample of those --documents makes), "
                    "then stop without loading a model or training")
    io.add_argument("--output", help="run directory; ends up a loadable checkpoint (required unless --dry-run)")
    io.add_argument("--from", dest="init_from", help="continue from a trained checkpoint directory or Hub repo id")
    io.add_argument("--resume", action="store_true", help="continue the run in --output from its last save")
    io.add_argument("--overwrite", action="store_true", help="replace whatever --output holds")
    io.add_argument("--push-to-hub", metavar="REPO", help="push the final model to this Hub repo")

    loop = p.add_argument_group("loop")
    loop.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    loop.add_argument("--epochs", type=float, default=1.0)
    loop.add_argument("--time-budget", type=float, dest="time_budget_min", metavar="MINUTES",
                      help="stop cleanly and save after this long")
    loop.add_argument("--lr", type=float, default=3e-4)
    loop.add_argument("--weight-decay", type=float, default=0.0)
    loop.add_argument("--warmup-steps", type=int, default=20)
    loop.add_argument("--max-grad-norm", type=float, default=1.0)
    loop.add_argument("--batch-size", type=int, default=1, help="examples read in one padded forward")
    loop.add_argument("--grad-accum", type=int, default=1, help="batches per optimizer step and process")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--save-every", type=int, default=100)
    loop.add_argument("--eval-every", type=int, default=100)
    loop.add_argument("--eval-examples", type=int, default=64)
    loop.add_argument("--keep-checkpoints", type=int, default=2)
    loop.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                      help="bf16 autocast around the frozen base models (the trained weights stay fp32); auto: bf16 where "
                      "the hardware runs it natively (GPUs with bf16, CPUs with AVX512-BF16 or AMX), else fp32")

    tasks = p.add_argument_group("tasks")
    tasks.add_argument("--mode", choices=MODES, default="hybrid",
                       help="how reasoning examples are read (default: hybrid, the mode E2LLMConfig reads with); rag: raw "
                       "text of the best chunks only, no soft tokens (trains a text-RAG baseline decoder on the QA lines; "
                       "understanding tasks are skipped)")
    tasks.add_argument("--understanding-ratio", type=float, default=0.5,
                       help="chance a QA line also yields a restate-the-chunks task")
    tasks.add_argument("--understanding-weight", type=float, default=1.0)
    tasks.add_argument("--reasoning-weight", type=float, default=1.0)
    tasks.add_argument("--window-chunks", type=int, default=2, help="chunks per understanding window")
    tasks.add_argument("--soft-ratio", type=float, default=0.0,
                       help="with --mode hybrid: share of QA tasks read from the soft tokens alone")
    tasks.add_argument("--answer-out-ratio", type=float, default=0.0,
                       help="with --mode hybrid: share of QA tasks whose answer-holding chunks are kept out of the raw "
                       "passages (the answer must be read from the soft tokens; the other passages stay, as distractors)")
    tasks.add_argument("--distill", type=float, default=0.0,
                       help="weight of a KL term to a teacher, the starting checkpoint (frozen) reading the answer's raw "
                       "passages in rag mode, beside the gold answer (xRAG uses 2); one more no-grad decoder pass per "
                       "QA task read from soft tokens")
    tasks.add_argument("--max-chunks", type=int, default=96, help="tasks with more chunks are skipped (and counted)")
    tasks.add_argument("--encoder-grad-chunks", type=int, default=0,
                       help="backpropagate into the encoder through at most this many chunks of a batch (those holding "
                       "the answer first) and encode the others without gradient: long contexts of hundreds of chunks at "
                       "a fraction of the cost (0: every chunk)")

    model = p.add_argument_group("model (new runs; with --from, only reading settings, the chunk size and a larger k)")
    for flag in config_flags():
        text = flag.help
        if flag.name == "soft_tokens_per_chunk":
            text += "; with --from, a larger k grows from the trained adapter (its k tokens kept, new ones warm-started)"
        elif flag.name in RECHUNKABLE:
            text += "; with --from, the trained adapter reads chunks of the new size"
        model.add_argument("--" + flag.name.replace("_", "-"), type=flag.kind, choices=flag.choices, default=None, help=text)
    return p


def _check_args(a) -> None:
    if not (a.data or a.documents):
        raise DataError("give the training data: --data FILE (JSONL lines) or --documents FILES_OR_DIRS (or both)")
    if not (a.output or a.dry_run):
        raise DataError("--output is required: the run directory that becomes the trained checkpoint")
    if not 0 <= a.heldout_share < 1:
        raise DataError(f"--heldout-share must be at least 0 and below 1, got {a.heldout_share}")
    if not 0 <= a.sentence_answer_share <= 1:
        raise DataError(f"--sentence-answer-share must be between 0 and 1, got {a.sentence_answer_share}")
    for name in ("batch_size", "grad_accum", "save_every", "keep_checkpoints", "window_chunks", "max_chunks"):
        if getattr(a, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("soft_ratio", "answer_out_ratio"):
        if not 0.0 <= getattr(a, name) <= 1.0:
            raise DataError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(a, name)}")
    if a.encoder_grad_chunks < 0:
        raise DataError(f"--encoder-grad-chunks must be >= 0 (0: every chunk), got {a.encoder_grad_chunks}")
    if a.distill < 0:
        raise DataError(f"--distill must be >= 0, got {a.distill}")
    if a.max_steps is not None and a.max_steps < 1:
        raise DataError("--max-steps must be >= 1")
    if not 0 <= a.understanding_ratio <= 1:
        raise DataError("--understanding-ratio must be in [0, 1]")
    if a.resume and a.overwrite:
        raise DataError("--resume and --overwrite contradict each other")


def _check_output(output: Path, signature: dict, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory. Read-only, so every process can run it before anyone writes."""
    run_file = output / RUN_FILE
    if resume:
        if not run_file.exists():
            raise DataError(f"--resume: {output} holds no run to resume")
        previous = _read_run(run_file)
        if previous is None:
            raise DataError(f"--resume: {run_file} is unreadable or not written by finetune; resume a finetune run's "
                            "directory, or start a new run elsewhere")
        # A setting added after the run started is absent from its run.json: it ran at that setting's default.
        defaults = {f.name: f.default for f in fields(TrainingArgs) if f.name in signature and f.name not in previous}
        previous = {**defaults, **previous}
        if previous != signature:
            changed = sorted(k for k in set(previous) | set(signature) if previous.get(k) != signature.get(k))
            raise DataError(f"--resume: {output} holds a run with different settings ({', '.join(changed)})")
    elif output.exists() and not output.is_dir():
        raise DataError(f"--output {output} is a file; name a directory for the run")
    elif output.exists() and any(output.iterdir()):
        if not overwrite:
            raise DataError(f"{output} already holds files; pass --resume to continue that run or --overwrite to replace it")
        resolved, cwd, home = output.resolve(), Path.cwd().resolve(), Path.home().resolve()
        if resolved in (cwd, home, Path(resolved.anchor)) or resolved in cwd.parents:
            raise DataError(f"--overwrite refuses {output}: it is the working, home or root directory, or holds it; "
                            "give the run a directory of its own")
        if _read_run(run_file) is None:
            raise DataError(f"--overwrite refuses {output}: it holds files but no {RUN_FILE} written by finetune, so it is "
                            "not a finetune run; give the run a new directory")


def _read_run(run_file: Path) -> dict | None:
    """The settings a finetune run recorded in run.json; None if the file is unreadable or another program's."""
    try:
        signature = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return signature if isinstance(signature, dict) and RUN_KEYS <= signature.keys() else None


def _start_output(output: Path, signature: dict, resume: bool) -> None:
    if resume:
        recover(output, CONFIG_NAME)  # a final save cut short: finish it, or its half-moved files block the next one
        return
    for name in RUN_FILES:  # an --overwrite'd run's files only: _check_output refused anything else
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for staging in output.glob(STAGING_PREFIX + "*"):  # what a final save of that run left when it was cut short
        shutil.rmtree(staging, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / RUN_FILE).write_text(json.dumps(signature, indent=1))


def _build_model(args: TrainingArgs, overrides: dict):
    from .model import E2LLM

    if args.init_from:
        overrides = dict(overrides)
        k = overrides.pop("soft_tokens_per_chunk", None)
        architecture = {flag.name for flag in config_flags() if flag.group == ARCHITECTURE} - RECHUNKABLE
        arch = sorted(name for name in overrides if name in architecture)
        if arch:
            raise DataError(f"--from {args.init_from}: cannot change {arch} of a trained model")
        model = E2LLM.from_pretrained(args.init_from, **overrides)
        if k is not None:
            try:
                model.grow_soft_tokens(k)
            except E2LLMError as err:
                raise DataError(f"--soft-tokens-per-chunk {k} with --from {args.init_from}: {err}") from None
    else:
        model = E2LLM(config_with(E2LLMConfig(), overrides))
    if not reader_for(args.mode).reads_soft:  # it reads as it was trained: from_pretrained() of this run answers by text RAG
        model.config.mode = args.mode
    return model


# --- --documents: training lines made from the documents themselves ---------------------------------------------

def _documents_lines(a):
    from .autodata.tasks import Recipe, from_files
    from .compress import find_files

    search = find_files(a.documents)
    for folder in search.unlisted:
        print(f"finetune: warning: skipped {folder['file']}: {folder['reason']}", file=sys.stderr)
    made = from_files(search.files, a.heldout_share, a.seed, Recipe(sentence_share=a.sentence_answer_share))
    for why in made.skipped:
        print(f"finetune: warning: skipped {why}", file=sys.stderr)
    return made


def _documents_run(a, made) -> dict:
    """The TrainingArgs --documents sets: the run directory's line files, and the shipped checkpoint to start from."""
    from .model import resolve_checkpoint

    output = Path(a.output)
    has_eval = bool(made.eval or a.eval_data) if made is not None else (output / DOCUMENTS_EVAL).is_file()
    # Without --from, the model that reads documents best already: adapting it to the user's domain is the point.
    start = a.init_from or str(resolve_checkpoint(None))
    return {"data": str(output / DOCUMENTS_TRAIN), "eval_data": str(output / DOCUMENTS_EVAL) if has_eval else None,
            "init_from": start}


def _fitting(made, model, mode: str):
    """The generated lines the decoder can read with one chunk of context (a generated line is dropped, not refused)."""
    from .training.data import decoder_positions

    def fits(line: dict) -> bool:
        return "prompt" not in line or \
            decoder_positions(model, mode, line["prompt"], line["answer"], num_chunks=1) <= model.context_window

    train, evaluation = [x for x in made.train if fits(x)], [x for x in made.eval if fits(x)]
    if not train or (made.eval and not evaluation):
        raise DataError("no line made from the documents fits the decoder's window; use a decoder with a longer window")
    return replace(made, train=train, eval=evaluation)


def _write_documents_lines(output: Path, made, a) -> None:
    """The run's training and evaluation lines (--data's and --eval-data's appended as they are), each file written
    whole under a temporary name and renamed, so --resume finds exactly these or none."""
    for name, lines, extra in ((DOCUMENTS_TRAIN, made.train, a.data), (DOCUMENTS_EVAL, made.eval, a.eval_data)):
        if not lines and not extra:
            continue
        staging = output / (name + ".partial")
        with staging.open("w", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            if extra:
                with open(extra, encoding="utf-8") as given:
                    for raw in given:
                        if raw.strip():
                            out.write(raw if raw.endswith("\n") else raw + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, output / name)


def _read_lines(path: str | None) -> list[dict]:
    if not path:
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(raw) for raw in f if raw.strip()]


def _dry_run(a, made, samples_per_task: int = 2) -> dict:
    """Print what training would read (lines per task, a seeded sample of the generated ones); load nothing, train nothing."""
    from .autodata.tasks import task_counts

    sides = {"train": _read_lines(a.data), "eval": _read_lines(a.eval_data)}
    if made is not None:
        print(f"documents: {len(made.train_docs)} for training, {len(made.eval_docs)} held out for the evaluation"
              + (f" ({', '.join(made.eval_docs)})" if made.eval_docs else "") + f", {len(made.skipped)} skipped")
        sides = {"train": made.train + sides["train"], "eval": made.eval + sides["eval"]}
    summary = {"dry_run": True, **{side: {"lines": len(lines), "by_task": task_counts(lines)} for side, lines in sides.items()}}
    for side, lines in sides.items():
        print(f"{side}: {len(lines)} lines")
        for task, n in summary[side]["by_task"].items():
            print(f"  {task:<40} {n:>6}")
    if made is not None and made.train:
        rng = random.Random(a.seed)
        print("sample of the lines made from the documents:")
        by_task: dict[str, list[dict]] = {}
        for line in made.train:
            by_task.setdefault(line["task"], []).append(line)
        for task, lines in sorted(by_task.items()):
            for line in rng.sample(lines, min(samples_per_task, len(lines))):
                if "prompt" in line:
                    print(f"  [{task}] {line['doc_id']}\n    Q: {line['prompt']}\n    A: {_clip(line['answer'])}")
                else:
                    print(f"  [{task}] {line['doc_id']}\n    {_clip(line['text'])}")
    return summary


def _clip(text: str, words: int = 60) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _documents_card(output: Path) -> str:
    if not (output / DOCUMENTS_TRAIN).is_file():
        return ""
    return (f"- training tasks made from the documents themselves (`{DOCUMENTS_TRAIN}`, evaluation on held-out documents: "
            f"`{DOCUMENTS_EVAL}`)\n")


def _training_card(args: TrainingArgs, summary: dict, model, argv: list[str]) -> str:
    losses = ", ".join(f"{k} {v:.3f}" for k, v in summary.items() if "loss" in k)
    return (
        f"Trained with `python -m e2llm_plugin.finetune {shlex.join(argv)}`.\n\n"
        f"- base encoder: `{model.config.encoder}`, base decoder: `{model.config.decoder}` "
        "(frozen; LoRA on both, adapter trained)\n"
        f"- data: `{Path(args.data).name}`" + (f", eval: `{Path(args.eval_data).name}`" if args.eval_data else "") + "\n"
        f"- steps: {summary['steps']}" + (" (stopped by --time-budget)" if summary["stopped_early"] else "") + "\n"
        f"- final losses: {losses or 'n/a'}\n"
        f"- tasks skipped for exceeding --max-chunks or the decoder's window: {summary['skipped_tasks']}\n"
    )


def run(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    _check_args(a)
    overrides = {flag.name: getattr(a, flag.name) for flag in config_flags() if getattr(a, flag.name) is not None}
    given = {f.name: getattr(a, f.name) for f in fields(TrainingArgs) if hasattr(a, f.name)}
    qa_only = not reader_for(a.mode).reads_soft  # no soft tokens to learn to restate
    # Every malformed line surfaces here, before any model is loaded.
    datasets = [JsonlDataset(path, qa_only) for path in (a.data, a.eval_data) if path]
    made = _documents_lines(a) if a.documents and (a.dry_run or not a.resume) else None  # spaCy, before any model
    if a.dry_run:
        return _dry_run(a, made)
    if a.documents:
        given.update(_documents_run(a, made))
    args = TrainingArgs(**given, config_overrides=overrides)

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .encoder import bf16_is_fast

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and bf16_is_fast(device))
    # cpu=True is what makes Accelerate start a gloo process group under torchrun on a machine without GPUs.
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())
    output = Path(args.output)
    unsigned = ("time_budget_min", "push_to_hub", "eval_every", "save_every", "keep_checkpoints")  # may change on --resume
    signature = {k: v for k, v in asdict(args).items() if k not in unsigned}
    if a.documents:
        signature["documents"] = {"paths": a.documents, "heldout_share": a.heldout_share, "data": a.data,
                                  "eval_data": a.eval_data, "sentence_answer_share": a.sentence_answer_share}
    _check_output(output, signature, a.resume, a.overwrite)
    if a.documents and a.resume:  # the lines the run was started with, kept in --output
        datasets = [JsonlDataset(path, qa_only) for path in (args.data, args.eval_data) if path]
    set_seed(args.seed)
    model = _build_model(args, overrides).to(acc.device)  # before --output is touched: a refused --from leaves it as it was
    for dataset in datasets:  # lines the model can never read, refused before they stop a run (and every resume)
        check_fits(dataset, model, args.mode)
    if made is not None:
        made = _fitting(made, model, args.mode)
    acc.wait_for_everyone()
    if acc.is_main_process:
        _start_output(output, signature, a.resume)
        if made is not None:
            _write_documents_lines(output, made, a)
    acc.wait_for_everyone()
    trainer = Trainer(model, args, acc)
    if a.resume:
        trainer.resume()
    summary = trainer.train()
    if acc.is_main_process:
        card = {"training": _training_card(args, summary, model, argv) + _documents_card(output)}
        model.save_pretrained(output, model_card_kwargs=card)  # the run directory itself becomes a loadable checkpoint
        if args.push_to_hub:
            model.push_to_hub(args.push_to_hub, model_card_kwargs=card)
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        summary = run(argv)
    except DataError as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 2
    except (E2LLMError, OSError) as err:
        print(f"finetune: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
