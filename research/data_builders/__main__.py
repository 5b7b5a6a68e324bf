"""``python -m research.data_builders --out DIR``: build every data file (see the package docstring)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from . import FILES, Sizes, build
from .sources import SourceMissing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.data_builders", description=__doc__)
    parser.add_argument("--out", required=True, help="directory for the JSONL files and manifest.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train", type=int, default=None, help="cap on train.jsonl lines")
    parser.add_argument("--max-test", type=int, default=None, help="questions per test file (default 150)")
    parser.add_argument("--max-haystack", type=int, default=None, help="haystack questions (default 50)")
    parser.add_argument("--quick", action="store_true", help="a tiny version in seconds, for tests")
    parser.add_argument("--version", type=int, choices=(1, 2), default=1,
                        help="1: Factbook QA + cloze (default, today's benchmark); 2: broad prose QA (see data_builders.v2)")
    parser.add_argument("--only", nargs="+", metavar="FILE",
                        help="build only these files (others in --out are left untouched); e.g. test_factbook_short.jsonl, "
                             "or with --version 2 test_descriptive.jsonl")
    args = parser.parse_args(argv)
    if args.version == 2:
        from . import v2
    known = v2.FILES if args.version == 2 else FILES
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"--only: no data file {', '.join(unknown)} in version {args.version}; choose from {', '.join(known)}")

    sizes = Sizes.quick(args.max_train) if args.quick else Sizes(max_train=args.max_train)
    overrides = {"max_test": args.max_test, "max_haystack": args.max_haystack}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()
    try:
        if args.version == 2:
            v2_sizes = v2.SizesV2.quick() if args.quick else v2.SizesV2(v1=sizes)
            manifest = v2.build(args.out, args.seed, v2_sizes, only=args.only)
        else:
            manifest = build(args.out, args.seed, sizes, only=args.only)
    except SourceMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, summary in manifest["files"].items():
        if args.only and name not in args.only:
            continue
        print(f"{name}: {summary['lines']} lines, {summary['mean_context_words']} context words on average")
    print(f"built in {time.perf_counter() - started:.1f} s into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
