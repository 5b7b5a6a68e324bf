"""The targets of issue 4, judged on an evaluation: ``python -m research.targets RESULTS_JSON``.

Reads the ``results.json`` that ``python -m e2llm_plugin.evaluate`` writes and prints the targets section in Markdown:
each target met, not met or not measured, with the numbers per data file. A file whose every question asks about the
Factbook field held out of training (``test_heldout_field.jsonl``) is judged on the held-out target only, the others on
the rest. Every comparison uses only the questions where both methods ran.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e2llm_plugin.evaluation.report import aggregate

from .data_builders.factbook import HELD_OUT_FIELD


def is_held_out(examples: list[dict]) -> bool:
    """Every question of the file asks about the held-out field (evaluate copies each line's `field` into its row)."""
    return all(e.get("field") == HELD_OUT_FIELD for e in examples)


def _paired(examples: list[dict], a: str, b: str) -> tuple[dict, dict]:
    """Aggregates of methods a and b over the questions where both ran."""
    both = [e["methods"] for e in examples if e["methods"].get(a, {}).get("prediction") is not None
            and e["methods"].get(b, {}).get("prediction") is not None]
    return aggregate([m[a] for m in both]), aggregate([m[b] for m in both])


def _check(examples, a, b, f1_margin=None, recall_margin=None):
    """`a` beats `b` by the margins (points), on paired questions. Returns (met or None, detail)."""
    x, y = _paired(examples, a, b)
    if not x["n"]:
        return None, f"{a} and {b} never both ran"
    ok, parts = True, []
    if f1_margin is not None:
        ok &= x["f1"] - y["f1"] >= f1_margin
        parts.append(f"F1 {x['f1']:.1f} vs {y['f1']:.1f} ({x['f1'] - y['f1']:+.1f}, need +{f1_margin})")
    if recall_margin is not None:
        ok &= x["recall"] - y["recall"] >= recall_margin
        parts.append(f"recall {x['recall']:.1f} vs {y['recall']:.1f} ({x['recall'] - y['recall']:+.1f}, need +{recall_margin})")
    return ok, "; ".join(parts) + f"; n={x['n']}"


def _vs_full(examples):
    soft, full = _paired(examples, "soft", "full_context")
    if not soft["n"]:
        return None, "full context never fit the window"
    ratio = full["tokens_read"] / soft["tokens_read"]
    met = soft["f1"] >= 0.9 * full["f1"] and ratio >= 10
    share = f"{100 * soft['f1'] / full['f1']:.0f}%" if full["f1"] else "n/a"
    return met, (f"soft F1 {soft['f1']:.1f} = {share} of full context's {full['f1']:.1f}; decoder tokens "
                 f"{soft['tokens_read']:.0f} vs {full['tokens_read']:.0f} ({ratio:.1f}x less); TTFT {soft['ttft_s']:.2f} s vs "
                 f"{full['ttft_s']:.2f} s; n={soft['n']}")


def targets(files: dict) -> list[dict]:
    """Each target, met / not met / not measured, with the numbers, per data file (``results["files"]``)."""
    regular = {name: f["examples"] for name, f in files.items() if not is_held_out(f["examples"])}
    held_out = {name: f["examples"] for name, f in files.items() if is_held_out(f["examples"])}
    specs = [
        ("E2LLM soft beats closed book by >= 40 F1", regular, lambda ex: _check(ex, "soft", "closed_book", 40)),
        ("hybrid beats RAG (base decoder) at the same decoder-token budget by >= 5 F1 and >= 5 recall", regular,
         lambda ex: _check(ex, "hybrid", "rag_base", 5, 5)),
        ("hybrid beats RAG (E2LLM's tuned decoder reading text) at the same budget by >= 5 F1 and >= 5 recall", regular,
         lambda ex: _check(ex, "hybrid", "rag_tuned", 5, 5)),
        ("hybrid beats RAG (a decoder fine-tuned for text RAG on the same QA data) at the same budget by >= 5 F1 and "
         ">= 5 recall", regular, lambda ex: _check(ex, "hybrid", "rag_ft", 5, 5)),
        ("soft reaches >= 90% of full-context F1 where full context fits, at >= 10x less decoder prefill", regular, _vs_full),
        ("on a Factbook field held out of training, soft beats closed book by >= 15 F1", held_out,
         lambda ex: _check(ex, "soft", "closed_book", 15)),
    ]
    out = []
    for text, group, check in specs:
        per_file = {name: check(ex) for name, ex in group.items()}
        measured = [met for met, _ in per_file.values() if met is not None]
        out.append({"target": text, "met": all(measured) if measured else None,
                    "per_file": {name: {"met": met, "detail": detail} for name, (met, detail) in per_file.items()}})
    return out


def markdown(found: list[dict]) -> str:
    lines = ["## Targets", ""]
    for t in found:
        status = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {status}")
        for name, d in t["per_file"].items():
            lines.append(f"  - `{name}`: {d['detail']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.targets", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json written by python -m e2llm_plugin.evaluate")
    args = parser.parse_args(argv)
    results = json.loads(Path(args.results).read_text(encoding="utf-8"))
    print(markdown(targets(results["files"])), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
