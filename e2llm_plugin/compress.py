"""`python -m e2llm_plugin.compress FILES_OR_DIRS... --store DIR`: compress a corpus into a store ahead of questions.

    python -m e2llm_plugin.compress reports/ notes.md --store ~/e2llm-store
    torchrun --standalone --nproc_per_node 2 -m e2llm_plugin.compress reports/ --store ~/e2llm-store

Every chunk's soft tokens and retrieval embedding go into the store (`e2llm_plugin.store`), so a later
`E2LLM.from_pretrained(..., store=DIR)` (or an engine or chat model over it) answers about these documents without
encoding a chunk again. Under ``torchrun`` or ``accelerate launch`` the files are shared out between the processes
(largest first, each to the least loaded), which all write into the one store; SQLite keeps their writes apart.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .documents import TEXT_SUFFIXES, read_file
from .errors import E2LLMError

SUFFIXES = TEXT_SUFFIXES | {".pdf"}
STORE_FILE = "compressed.sqlite"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2llm_plugin.compress", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help=f"files, or directories searched for {sorted(SUFFIXES)}")
    p.add_argument("--store", required=True, metavar="DIR", help=f"directory of the store (its file: DIR/{STORE_FILE})")
    p.add_argument("--model", default=None, help="checkpoint directory or Hub repo id (default: the shipped checkpoint)")
    return p


def find_files(paths: list[str]) -> list[Path]:
    """The readable files named or found below the directories named, each once, in a stable order."""
    found: dict[Path, None] = {}
    for name in paths:
        path = Path(name).expanduser()
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                if file.is_file() and file.suffix.lower() in SUFFIXES:
                    found[file.resolve()] = None
        elif path.is_file():
            found[path.resolve()] = None
        else:
            raise E2LLMError(f"{name} does not exist")
    if not found:
        raise E2LLMError(f"no {', '.join(sorted(SUFFIXES))} files in {', '.join(paths)}")
    return list(found)


def share(files: list[Path], rank: int, world: int) -> list[Path]:
    """This process's files: largest first, each to the process with the fewest bytes so far (the same on every rank)."""
    loads = [0] * world
    mine = []
    for file in sorted(files, key=lambda f: (-f.stat().st_size, str(f))):
        owner = loads.index(min(loads))
        loads[owner] += file.stat().st_size
        if owner == rank:
            mine.append(file)
    return mine


def run(argv: list[str] | None = None) -> dict:
    from tqdm.auto import tqdm

    from .model import E2LLM

    args = build_parser().parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    files = share(find_files(args.paths), rank, world)
    store_dir = Path(args.store).expanduser()
    if store_dir.exists() and not store_dir.is_dir():
        raise E2LLMError(f"--store {store_dir} is a file; name a directory (the store is {STORE_FILE} inside it)")
    store_dir.mkdir(parents=True, exist_ok=True)
    model = E2LLM.from_pretrained(args.model, store=store_dir / STORE_FILE)
    began, chunks, failed = time.perf_counter(), 0, []
    with tqdm(files, desc=f"compress (process {rank + 1}/{world})", unit="file", position=rank) as bar:
        for file in bar:
            try:
                context = model.compress([read_file(file).text])
            except E2LLMError as err:  # one unreadable file does not stop the corpus; it is reported at the end
                failed.append(f"{file}: {err}")
                continue
            chunks += context.num_chunks
            bar.set_postfix(chunks=chunks)
    summary = {"process": rank, "files": len(files) - len(failed), "chunks": chunks, "failed": failed,
               "seconds": round(time.perf_counter() - began, 1), "store": model.store.stats()}
    return summary


def main(argv: list[str] | None = None) -> int:
    import json

    from .cli import quiet_libraries

    quiet_libraries()
    try:
        summary = run(argv)
    except (E2LLMError, OSError) as err:
        print(f"compress: error: {err}", file=sys.stderr)
        return 1
    for failure in summary["failed"]:
        print(f"compress: skipped {failure}", file=sys.stderr)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
