"""What `GenerationConfig.stop_loops` changes in answers already written: every prediction of the given evaluation
results (results.json files, or folders searched for them) cut where greedy decoding with the option would have ended
it, and scored again against its references.

    python -m research.loop_stop docs/eval

Greedy decoding is the same with and without the option up to the token where a loop is found, so cutting a stored
answer gives the answer the option gives. The answer's tokens are its text tokenised again, which is almost always what
the decoder wrote; answers stored without a prediction are skipped.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from e2llm_plugin.config import LoraConfig
from e2llm_plugin.decoder import Decoder
from e2llm_plugin.embedded import EMBEDDED_DECODER
from e2llm_plugin.evaluation.metrics import loops, score


def cut(decoder: Decoder, text: str) -> str:
    """`text` ended as decoding with `stop_loops` ends it: after the first copy of the first loop found, token by token."""
    ids = decoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    for end in range(1, len(ids) + 1):
        tail = decoder.repeated_tail(ids[:end])
        if tail.loop:
            return decoder.tokenizer.decode(ids[: tail.first_copy], skip_special_tokens=True)
    return text


def answers(paths: list[Path]):
    """(method, prediction, references) of every answer in the results files under `paths`."""
    files = [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("results.json")))]
    for path in files:
        for data in json.loads(path.read_text()).get("files", {}).values():
            for example in data.get("examples", []):
                for method, outcome in example["methods"].items():
                    if outcome.get("prediction"):
                        yield method, outcome["prediction"], example["answer"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="results.json files, or folders holding them")
    p.add_argument("--show", type=int, default=10, help="print this many changed answers")
    args = p.parse_args()
    decoder = Decoder(EMBEDDED_DECODER, LoraConfig(r=0))  # only its tokenizer and words are read
    rows = defaultdict(lambda: {"n": 0, "changed": 0, "loops_before": 0, "loops_after": 0, "f1": 0.0, "worse": 0})
    shown = 0
    for method, prediction, references in answers(args.paths):
        row = rows[method]
        row["n"] += 1
        after = cut(decoder, prediction)
        row["loops_before"] += loops(prediction)
        row["loops_after"] += loops(after)
        if after != prediction:
            row["changed"] += 1
            gain = score(after, references)["f1"] - score(prediction, references)["f1"]
            row["f1"] += 100 * gain
            row["worse"] += gain < 0
            if shown < args.show:
                print(f"{method}: {prediction[:100]!r}\n  -> {after[:100]!r}")
                shown += 1
    print("\n| method | answers | changed | looping before / after | F1 gained, summed over the changed | worse |")
    print("|---|---:|---:|---:|---:|---:|")
    for method, row in sorted(rows.items()) + [("all", {k: sum(r[k] for r in rows.values()) for k in
                                                        ("n", "changed", "loops_before", "loops_after", "f1", "worse")})]:
        print(f"| {method} | {row['n']} | {row['changed']} | {row['loops_before']} / {row['loops_after']} | "
              f"{row['f1']:+.1f} | {row['worse']} |")


if __name__ == "__main__":
    main()
