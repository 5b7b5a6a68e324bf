"""A training subset of a built data set: some question tasks, plus Factbook QA replayed beside them.

    python -m research.subset data/v2/train.jsonl --tasks entity_qa,entity_qa_other_sentence,entity_qa_counterfactual \
        --replay-factbook 0.25 --out runs/s1_train.jsonl

Keeps the records whose `task` is listed and whose `source` is not the Factbook, then adds Factbook QA records (not
restate ones) to `--replay-factbook` times their number, shuffled with `--seed`: a mix that trains one skill while
the in-domain one is rehearsed. `--at-most N` keeps a seeded draw of N of them (general lines replayed beside another
fine-tune: `research/families_run.sh`'s `REPLAY=`).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def subset(lines: list[str], tasks: set[str], replay_factbook: float, seed: int, at_most: int | None = None) -> list[str]:
    chosen, factbook = [], []
    for line in lines:
        record = json.loads(line)
        if record.get("source") == "factbook":
            if "text" not in record:  # QA, not restate
                factbook.append(line)
        elif record.get("task") in tasks:
            chosen.append(line)
    rng = random.Random(seed)
    rng.shuffle(factbook)
    mix = chosen + factbook[: round(len(chosen) * replay_factbook)]
    rng.shuffle(mix)
    return mix[:at_most]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.subset", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a built training JSONL (research.data_builders)")
    p.add_argument("--tasks", required=True, help="comma-separated `task` values to keep")
    p.add_argument("--replay-factbook", type=float, default=0.0, help="Factbook QA records per kept record")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--at-most", type=int, default=None, help="keep a seeded draw of at most this many records")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.at_most is not None and args.at_most < 1:
        p.error(f"--at-most must be at least 1, got {args.at_most}")
    lines = Path(args.data).read_text(encoding="utf-8").splitlines(keepends=True)
    mix = subset(lines, {t.strip() for t in args.tasks.split(",") if t.strip()}, args.replay_factbook, args.seed,
                 args.at_most)
    Path(args.out).write_text("".join(mix), encoding="utf-8")
    print(f"{len(mix)} records -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
