"""Run the README's quick starts the way a newcomer would, and check they print what the README shows.

    python scripts/newcomer_check.py --python /path/to/fresh/venv/bin/python

Each quick start sits between `<!-- quickstart: NAME -->` and `<!-- /quickstart -->` in README.md: a ```python or
```bash block, then a ```text block with what it prints on stdout. Each runs in a scratch directory holding only
`examples/factbook_finland.txt` (so Python imports the installed package, never the source tree), with `--python`'s
bin directory first on PATH (so `e2llm` is that environment's) and no PYTHONPATH. Exit 0 when every output matches
(leading and trailing whitespace aside), 1 otherwise, printing both.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK_START = re.compile(r"<!-- quickstart: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /quickstart -->", re.S)
FENCE = re.compile(r"```(?P<lang>\w+)\n(?P<text>.*?)```", re.S)
EXAMPLE = "examples/factbook_finland.txt"


def quick_starts(readme: str) -> list[tuple[str, str, str, str]]:
    """(name, language, code, expected output) of every marked quick start, in README order."""
    found = []
    for match in QUICK_START.finditer(readme):
        blocks = FENCE.findall(match["body"])
        if len(blocks) != 2 or blocks[0][0] not in ("python", "bash") or blocks[1][0] != "text":
            raise SystemExit(f"quick start {match['name']!r}: expected a python or bash block, then a text block")
        (lang, code), (_, expected) = blocks
        found.append((match["name"], lang, code, expected))
    return found


def run(lang: str, code: str, python: Path, workdir: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    command = [str(python), "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="the interpreter of the install under test")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--timeout", type=int, default=900, help="seconds per quick start")
    args = p.parse_args(argv)
    starts = quick_starts(args.readme.read_text(encoding="utf-8"))
    if not starts:
        raise SystemExit(f"{args.readme}: no <!-- quickstart: NAME --> blocks")
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        (workdir / EXAMPLE).parent.mkdir()
        shutil.copy(ROOT / EXAMPLE, workdir / EXAMPLE)
        for name, lang, code, expected in starts:
            proc = run(lang, code, args.python.absolute(), workdir, args.timeout)
            if proc.returncode == 0 and proc.stdout.strip() == expected.strip():
                print(f"quick start {name}: ok ({proc.stdout.strip()!r})")
                continue
            failed += 1
            print(f"quick start {name}: FAILED (exit {proc.returncode})\n  README shows: {expected.strip()!r}\n"
                  f"  it printed:   {proc.stdout.strip()!r}\n  stderr tail:\n{proc.stderr[-3000:]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
