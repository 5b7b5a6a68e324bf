"""``python -m e2llm_plugin.evaluate``: E2LLM against closed book, truncation, full context and RAG, on the same questions.

Writes ``OUT/results.json`` (every prediction and timing), ``OUT/results.md`` (one table per data file, reconstruction
fidelity, the compression sweep) and ``OUT/compression.png``; prints the Markdown.
See `e2llm_plugin.evaluation.methods` for what each method reads and how its costs are counted.

Example (CPU, about the size of the documented run)::

    python -m e2llm_plugin.evaluate --model runs/v1 --data data/v1/test_factbook_short.jsonl \\
        data/v1/test_heldout_field.jsonl --max-questions 20 --window 2048 --out runs/eval \\
        --reconstruction data/v1/eval.jsonl --reconstruction-windows 6 --ratio-sweep 50,100,200
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import typing
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Expansion, PassageOrder, Precision, Ranking
from .errors import E2LLMError
from .evaluation import report
from .evaluation.methods import DESCRIPTIONS, METHODS, Evaluator, load_examples, load_texts, reconstruction, soft_f1_and_ratio


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2llm_plugin.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the shipped checkpoint)")
    p.add_argument("--data", nargs="+", help="JSONL QA files ({context, prompt, answer} lines)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--generation", nargs="+", default=[], metavar="OPTION=VALUE",
                   help="decoding options of GenerationConfig for every method, e.g. no_repeat_ngram_size=3 "
                   "repetition_penalty=1.2 (default: the checkpoint's)")
    p.add_argument("--combine", nargs="+", metavar="LABEL=DIR",
                   help="instead of evaluating: one benchmark table (OUT/benchmark.md, .json) from earlier runs, each "
                   "directory searched for results.json files and labelled (a label may name several directories); "
                   "predictions are rescored against every "
                   "accepted answer, looping answers counted, and two subsets added (answer missed by the ranking; "
                   "whole-document questions)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all; rag_ft only with --rag-model)")
    p.add_argument("--rag-model", default=None,
                   help="checkpoint trained with `finetune --mode rag`: the text-RAG fine-tuned baseline (method rag_ft)")
    p.add_argument("--max-questions", type=int, default=20, help="questions per data file (default 20)")
    p.add_argument("--seed", type=int, default=None,
                   help="shuffle each file with this seed before taking questions (default: file order)")
    p.add_argument("--window", type=int, default=None,
                   help="decoder tokens the text baselines may read (default: the decoder's maximum)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap, greedy (default 32)")
    p.add_argument("--hybrid-raw-tokens", type=int, default=None, help="override the checkpoint's hybrid raw-text budget")
    p.add_argument("--hybrid-expansion", choices=typing.get_args(Expansion), default=None,
                   help="override how hybrid reads a chunk it expands to raw text: replace its soft tokens, or duplicate "
                   "them (default: the checkpoint's)")
    p.add_argument("--ranking", choices=typing.get_args(Ranking), default=None,
                   help="override how chunks are ranked for the raw passages: fused (BM25 + cosine) or dense (cosine only; "
                   "default: the checkpoint's)")
    p.add_argument("--passage-order", choices=typing.get_args(PassageOrder), default=None,
                   help="override the order raw passages are read in: ranked (best first) or document (default: the "
                   "checkpoint's)")
    p.add_argument("--max-soft-chunks", type=int, default=None,
                   help="override the most chunks soft and hybrid read as soft tokens (0: every chunk that fits the window; "
                   "default: the checkpoint's)")
    p.add_argument("--encoder-precision", choices=typing.get_args(Precision), default=None,
                   help="override the inference encoder's precision (default: the checkpoint's, auto)")
    p.add_argument("--reconstruction", default=None, help="JSONL file whose texts are restated from soft tokens")
    p.add_argument("--reconstruction-windows", type=int, default=6, help="windows restated (default 6)")
    p.add_argument("--reconstruction-chunks", type=int, default=2, help="chunks per restated window (default 2, as in training)")
    p.add_argument("--ratio-sweep", default="",
                   help="chunk sizes (encoder tokens) to re-read the first data file with, e.g. 50,100,200")
    p.add_argument("--sweep-models", nargs="*", default=[], help="other checkpoints (say, other k) for the compression plot")
    p.add_argument("--sweep-questions", type=int, default=None,
                   help="questions per sweep point (default and maximum: --max-questions)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    return p


def _outcome_dict(outcome) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(outcome).items()}


def _write(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _load(path, device, **overrides):
    from .model import E2LLM

    return E2LLM.from_pretrained(path, **overrides).to(device).eval()


def _generation_options(specs: list[str]) -> dict:
    """OPTION=VALUE pairs typed by their GenerationConfig field (JSON values: 3, 1.2, null)."""
    options = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            options[name] = json.loads(value)
        except json.JSONDecodeError:
            sep = ""
        if not sep:
            raise E2LLMError(f"--generation {spec!r}: expected OPTION=VALUE with a number, e.g. no_repeat_ngram_size=3")
    return options


def combine(specs: list[str], out: Path) -> dict:
    """The benchmark table of several labelled evaluation runs (see --combine)."""
    runs = {}
    for spec in specs:
        label, sep, directory = spec.partition("=")
        found = sorted(Path(directory).rglob("results.json")) if sep else []
        if not found:
            raise E2LLMError(f"--combine {spec!r}: expected LABEL=DIR with results.json files under DIR")
        runs.setdefault(label, []).extend(json.loads(path.read_text(encoding="utf-8")) for path in found)  # a label may repeat
    table = report.combine(runs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    (out / "benchmark.md").write_text(report.benchmark_markdown(table), encoding="utf-8")
    return table


def run(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.combine:
        return combine(args.combine, Path(args.out))
    if not args.data:
        raise E2LLMError("nothing to evaluate: pass --data FILE... (or --combine LABEL=DIR... to tabulate earlier runs)")
    if args.methods is None:
        methods = [m for m in METHODS if m != "rag_ft" or args.rag_model]
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise E2LLMError(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    if "rag_ft" in methods and not args.rag_model:
        raise E2LLMError("method rag_ft needs --rag-model DIR, a checkpoint trained with `finetune --mode rag`")
    methods = [m for m in METHODS if m in methods]
    sweep_sizes = [int(s) for s in args.ratio_sweep.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    overrides = {k: v for k, v in (("hybrid_raw_tokens", args.hybrid_raw_tokens), ("encoder_precision", args.encoder_precision),
                                   ("hybrid_expansion", args.hybrid_expansion), ("ranking", args.ranking),
                                   ("passage_order", args.passage_order), ("max_soft_chunks", args.max_soft_chunks))
                 if v is not None}
    model = _load(args.model, args.device, **overrides)
    model.config.generation = model.config.generation.with_overrides(_generation_options(args.generation))
    rag_model = _load(args.rag_model, args.device, **overrides) if "rag_ft" in methods else None
    evaluator = Evaluator(model, args.window, args.max_new_tokens, rag_model)
    results = {
        "model": str(args.model or "shipped checkpoint"),
        "rag_model": args.rag_model,
        "config": model.config.to_dict(),
        "settings": {"methods": methods, "window": evaluator.window, "max_new_tokens": args.max_new_tokens,
                     "generation": dataclasses.asdict(model.config.generation),
                     "max_questions": args.max_questions, "seed": args.seed, "device": args.device,
                     "threads": torch.get_num_threads(), "argv": sys.argv[1:] if argv is None else list(argv)},
        "methods": {m: DESCRIPTIONS[m] for m in methods},
        "files": {},
    }

    evaluator.warm_up(methods)
    first_examples = None
    for path in args.data:
        name = Path(path).name
        examples = load_examples(path, args.max_questions, args.seed)
        if not examples:
            raise E2LLMError(f"{path}: no QA lines ({{context, prompt, answer}})")
        first_examples = first_examples or (name, examples)
        rows = []
        for example in tqdm(examples, desc=name, unit="question"):
            began = time.perf_counter()
            outcomes, stats = evaluator.run_example(example, methods)
            rows.append({"question": example.question, "answer": example.answer, **example.meta, "context": stats,
                         "wall_s": round(time.perf_counter() - began, 3),  # all methods, shared stages once
                         "methods": {m: _outcome_dict(o) for m, o in outcomes.items()}})
        results["files"][name] = {"path": str(path), "wall_s_per_question": sum(r["wall_s"] for r in rows) / len(rows),
                                  "summary": {m: report.aggregate([r["methods"][m] for r in rows]) for m in methods},
                                  "examples": rows}
        _write(out, results)

    texts = load_texts(args.reconstruction) if args.reconstruction else None
    if texts:
        began = time.perf_counter()
        restated = reconstruction(model, texts, args.reconstruction_windows, args.reconstruction_chunks, args.seed or 0)
        results["reconstruction"] = {"file": Path(args.reconstruction).name, "seconds": time.perf_counter() - began, **restated}
        _write(out, results)

    if sweep_sizes or args.sweep_models or "soft" in methods:
        results["sweep"] = _sweep(args, model, first_examples, sweep_sizes, texts, results, "soft" in methods)
    _write(out, results)
    report.plot(results, out / "compression.png")
    text = report.markdown(results)
    (out / "results.md").write_text(text, encoding="utf-8")
    return results


def _sweep(args, model, first, sizes, texts, results, have_soft) -> list[dict]:
    """Soft F1 (and reconstruction F1) at each chunk size and for each extra checkpoint, on the first file's questions."""
    name, examples = first
    n = min(args.sweep_questions or args.max_questions, len(examples))
    examples = examples[:n]
    rows = results["files"][name]["examples"][:n]
    results["sweep_file"] = name
    results["sweep_reference"] = {
        m: report.aggregate([r["methods"][m] for r in rows]).get("f1") for m in ("closed_book", "full_context", "rag_base")
        if m in results["settings"]["methods"]}
    native = model.config.chunk_tokens
    points = []

    def point(label, m, chunk_tokens, reuse):
        if reuse and have_soft:  # the main run already read these questions at this chunk size
            row = {"f1": report.aggregate([r["methods"]["soft"] for r in rows])["f1"], "n": len(rows),
                     "compression_ratio": sum(r["context"]["compression_ratio"] for r in rows) / len(rows)}
            recon = (results.get("reconstruction") or {}).get("f1")
        else:
            row = soft_f1_and_ratio(m, examples, args.max_new_tokens, chunk_tokens)
            recon = (reconstruction(m, texts, args.reconstruction_windows, args.reconstruction_chunks, args.seed or 0,
                                    chunk_tokens)["f1"] if texts else None)
        row.update(model=label, chunk_tokens=chunk_tokens, k=m.config.soft_tokens_per_chunk, reconstruction_f1=recon)
        points.append(row)

    label = Path(str(args.model)).name if args.model else "shipped"
    for size in sorted(set(sizes) | {native}):
        point(label, model, size, reuse=size == native)
    for number, path in enumerate(args.sweep_models, start=2):
        other = _load(path, args.device)
        other_label = Path(path).name
        if other_label in {p["model"] for p in points}:  # keep the plot's lines apart
            other_label = f"{other_label} #{number}"
        point(other_label, other, other.config.chunk_tokens, reuse=False)
        del other
        gc.collect()
    return points


def main(argv: list[str] | None = None) -> int:
    try:
        results = run(argv)
    except E2LLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.benchmark_markdown(results) if "files" not in results else report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
