"""`e2llm ask FILE [FILE ...] -q QUESTION`: answer a question from whole documents, streaming the answer."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from .config import MODES
from .errors import E2LLMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2llm", description="Answer questions from whole long documents with E2LLM.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer a question from .pdf, .txt or .md files")
    ask.add_argument("files", nargs="+", metavar="FILE", help=".pdf, .txt or .md files, read whole")
    ask.add_argument("-q", "--question", required=True, help="the question to answer")
    ask.add_argument("--model", default=None, help="checkpoint directory or Hub repo id (default: the shipped checkpoint)")
    ask.add_argument("--mode", choices=MODES, default=None,
                     help="soft: every chunk as soft tokens; hybrid: plus the raw text of the best chunks; "
                     "rag: only the raw text of the best chunks (no soft tokens)")
    ask.add_argument("--max-new-tokens", type=int, default=None, help="longest answer, in decoder tokens")
    return parser


def ask(args) -> None:
    from .documents import read_file
    from .model import E2LLM

    if args.max_new_tokens is not None and args.max_new_tokens <= 0:
        raise E2LLMError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if not args.question.strip():
        raise E2LLMError("the question is empty")
    files = [read_file(path) for path in args.files]  # read everything first: a bad file fails before loading models
    start = time.perf_counter()
    model = E2LLM.from_pretrained(args.model)
    loaded = time.perf_counter()
    context = model.compress([f.text for f in files])
    compressed = time.perf_counter()
    answer = model.answer(args.question, context=context, mode=args.mode, max_new_tokens=args.max_new_tokens)
    pages = sum(len(f.pages) for f in files)
    print(
        f"[e2llm] {len(files)} file(s), {pages} page(s) -> {context.num_chunks} chunks -> {context.num_soft_tokens} soft tokens "
        f"for {context.num_source_tokens} text tokens ({context.compression_ratio:.0f}x){_partly_read(answer, context)}; "
        f"load {loaded - start:.1f}s, compress {compressed - loaded:.1f}s",
        file=sys.stderr,
    )
    for piece in answer:
        print(piece, end="", flush=True)
    print()
    seconds = time.perf_counter() - compressed
    print(f"[e2llm] mode {answer.mode}, {answer.prompt_tokens} decoder tokens read, answer in {seconds:.1f}s", file=sys.stderr)


def _partly_read(answer, context) -> str:
    """Said whenever the answer reads only some of the chunks, so a reader knows the rest was not looked at."""
    if answer.chunks_read >= context.num_chunks:
        return ""
    why = ("as raw passages, those most similar to the question" if answer.mode == "rag" else
           "the documents exceed the decoder's window: those most similar to the question")
    return f"; read {answer.chunks_read} of {context.num_chunks} chunks ({why})"


def quiet_libraries() -> None:
    """Keep a command's terminal for what it says: no library deprecation notices or "Loading weights" bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        ask(args)
    except (E2LLMError, OSError) as err:
        print(f"e2llm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
