"""`python -m e2llm_plugin.compress FILES_OR_DIRS... --store DIR`: compress a corpus into a store ahead of questions.

    python -m e2llm_plugin.compress reports/ notes.md --store ~/e2llm-store
    torchrun --standalone --nproc_per_node 2 -m e2llm_plugin.compress reports/ --store ~/e2llm-store

Every chunk's soft tokens and retrieval embedding go into the store (`e2llm_plugin.store`), so a later
`E2LLM.from_pretrained(..., store=DIR)` (or an engine or chat model over it) answers about these documents without
encoding a chunk again. Under ``torchrun`` or ``accelerate launch`` the files are shared out between the processes
(largest first, each to the least loaded), which all write into the one store; SQLite keeps their writes apart.

A file that cannot be read (no permission, a broken PDF, text that is not UTF-8, a dangling link, ...) is skipped with
its reason and the others are stored; a summary ends the run, on stderr for people and as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .documents import TEXT_SUFFIXES, read_file
from .errors import E2LLMError
from .files import private_directory

SUFFIXES = TEXT_SUFFIXES | {".pdf"}
STORE_FILE = "compressed.sqlite"
#: Exit codes: every file stored; some skipped (the rest stored); bad usage (nothing done); the model or the store
#: could not be used (nothing stored).
OK, PARTIAL, USAGE, FAILED = 0, 1, 2, 3

EPILOG = f"""\
which files: a directory is searched recursively for {", ".join(sorted(SUFFIXES))} files; a file named on the command
line is always tried (skipped, and said, if it is of another type). Each file is judged by its own name: a link named
notes.txt is read as text, wherever it points. Links to files are read; links to directories inside a searched
directory are not followed (name them on the command line to include them), so a search never leaves the tree it was
given nor loops.

exit status: {OK} every file was stored; {PARTIAL} some files were skipped (each named with its reason on stderr) and
the others stored; {USAGE} bad usage (an argument is wrong, a path does not exist, no files to read), nothing done;
{FAILED} the model or the store could not be used, nothing stored.

The store's folder is created private (0700) and its files 0600."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2llm_plugin.compress", description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help=f"files, or directories searched for {sorted(SUFFIXES)}")
    p.add_argument("--store", required=True, metavar="DIR", help=f"directory of the store (its file: DIR/{STORE_FILE})")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub repo id (default: the shipped checkpoint)")
    return p


@dataclass
class Search:
    """What `find_files` found: the files to read, the folders it could not list (each with its reason: their files are
    missing from the run) and notes on what it left out on purpose (links to directories)."""

    files: list[Path]
    unlisted: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_files(paths: list[str]) -> Search:
    """The files named, and those with a known suffix below the directories named, each once (by the path it was found
    at: a link and its target are two names), in a stable order. Links to directories met in a search are not
    followed. A path that does not exist, or no file found at all, raises `E2LLMError`."""
    search = Search([])
    found: dict[Path, None] = {}

    def unlisted(err: OSError) -> None:
        search.unlisted.append({"file": str(err.filename), "reason": f"cannot list this folder ({err.strerror})"})

    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            for root, dirs, files in os.walk(path, onerror=unlisted):  # os.walk never follows links to directories
                search.notes += [f"{Path(root) / d}: a link to a directory, not followed (name it to include it)"
                                 for d in sorted(dirs) if (Path(root) / d).is_symlink()]
                dirs.sort()
                for entry in sorted(files):
                    if Path(entry).suffix.lower() in SUFFIXES:  # the entry's own name, not its target's
                        found[Path(os.path.abspath(Path(root) / entry))] = None
        elif path.exists() or path.is_symlink():  # a dangling link named on purpose is reported when read
            found[Path(os.path.abspath(path))] = None
        else:
            raise E2LLMError(f"{name} does not exist; check the path")
    if not found and not search.unlisted:
        raise E2LLMError(f"no {', '.join(sorted(SUFFIXES))} files in {', '.join(paths)}; name files or folders that hold some")
    search.files = list(found)
    return search


def share(files: list[Path], rank: int, world: int) -> list[Path]:
    """This process's files: largest first, each to the process with the fewest bytes so far (the same on every rank)."""
    sizes = {file: _size(file) for file in files}
    loads = [0] * world
    mine = []
    for file in sorted(files, key=lambda f: (-sizes[f], str(f))):
        owner = loads.index(min(loads))
        loads[owner] += sizes[file]
        if owner == rank:
            mine.append(file)
    return mine


def _size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:  # a dangling link, or no permission: it is reported when read
        return 0


def check_arguments(argv: list[str] | None) -> tuple[argparse.Namespace, Search]:
    """The parsed arguments and the files to read; bad usage ends in argparse's message and `SystemExit(2)`, before
    any model loads."""
    parser = build_parser()
    args = parser.parse_args(argv)
    store_dir = Path(args.store).expanduser()
    if store_dir.exists() and not store_dir.is_dir():
        parser.error(f"--store {store_dir} is a file; name a directory (the store is {STORE_FILE} inside it)")
    try:
        search = find_files(args.paths)
    except E2LLMError as err:
        parser.error(str(err))
    return args, search


def run(args: argparse.Namespace, search: Search) -> dict:
    """Compress this process's share of the files into the store; the summary of what was stored and skipped.
    Raises `E2LLMError` or `OSError` when the model or the store cannot be used at all."""
    from tqdm.auto import tqdm

    from .model import E2LLM

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    files = share(search.files, rank, world)
    store_dir = private_directory(Path(args.store).expanduser())
    model = E2LLM.from_pretrained(args.model, store=store_dir / STORE_FILE)
    began, stored, chunks, tokens = time.perf_counter(), 0, 0, 0
    skipped = list(search.unlisted) if rank == 0 else []  # said once, not by every process
    with tqdm(files, desc=f"compress (process {rank + 1}/{world})", unit="file", position=rank) as bar:
        for file in bar:
            try:
                context = model.compress([read_file(file).text], show_progress=False)
            except Exception as err:  # any failure of one file (unreadable, broken, not text) skips it, with its reason
                reason = str(err) if isinstance(err, E2LLMError) else f"{type(err).__name__}: {err}"
                skipped.append({"file": str(file), "reason": reason})
                continue
            stored, chunks, tokens = stored + 1, chunks + context.num_chunks, tokens + context.num_source_tokens
            bar.set_postfix(chunks=chunks)
    return {"process": rank, "files": stored, "skipped": len(skipped), "chunks": chunks, "tokens": tokens,
            "seconds": round(time.perf_counter() - began, 1), "failed": skipped, "notes": search.notes if rank == 0 else [],
            "store": model.store.stats()}


def main(argv: list[str] | None = None) -> int:
    from .cli import quiet_libraries

    try:
        args, search = check_arguments(argv)
    except SystemExit as stop:  # argparse has printed its message (or the help); its status is the answer
        return stop.code
    quiet_libraries()
    try:
        summary = run(args, search)
    except (E2LLMError, OSError) as err:
        print(f"compress: error: {err}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130
    for note in summary["notes"]:
        print(f"compress: note: {note}", file=sys.stderr)
    for failure in summary["failed"]:
        print(f"compress: skipped {failure['file']}: {failure['reason']}", file=sys.stderr)
    print(f"compress: {summary['files']} file(s) stored, {summary['skipped']} skipped; {summary['chunks']:,} chunks, "
          f"{summary['tokens']:,} tokens in {summary['seconds']} s; the store {summary['store']['path']} holds "
          f"{summary['store']['entries']:,} entries", file=sys.stderr)
    print(json.dumps(summary))
    return PARTIAL if summary["failed"] else OK


if __name__ == "__main__":
    sys.exit(main())
