"""Aggregation, the Markdown report and the compression plot."""

from __future__ import annotations

from pathlib import Path

from ..config import GenerationConfig
from .methods import DESCRIPTIONS, METHODS, Example, load_examples
from .metrics import loops, score


def aggregate(outcomes: list[dict]) -> dict:
    """Mean EM/F1/recall (0-100), mean TTFT/total seconds and tokens read, max peak MB over questions that ran."""
    ran = [o for o in outcomes if o["prediction"] is not None]
    out = {"n": len(ran), "n_total": len(outcomes)}
    if not ran:
        return out
    for key in ("em", "f1", "recall", "rouge_l"):
        if all(key in o for o in ran):  # results written before ROUGE-L was scored lack it
            out[key] = 100 * sum(o[key] for o in ran) / len(ran)
    for key in ("ttft_s", "total_s", "tokens_read"):
        out[key] = sum(o[key] for o in ran) / len(ran)
    out["peak_mb"] = max(o["peak_mb"] for o in ran)
    hits = [o["passage_hit"] for o in ran if o.get("passage_hit") is not None]
    if hits:
        out["passage_hit"] = 100 * sum(hits) / len(hits)
    out["loops"] = sum(bool(o.get("loops")) for o in ran)
    out["empty"] = sum(not o["prediction"].strip() for o in ran)
    return out


def _fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def _decoding(generation: dict | None) -> str:
    """'greedy', or the options that differ from GenerationConfig's defaults."""
    default = GenerationConfig().__dict__
    changed = {k: v for k, v in (generation or {}).items() if default.get(k) != v}
    return ("greedy" if not changed.get("temperature") else "sampled") + "".join(f", {k}={v}" for k, v in changed.items())


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# E2LLM evaluation: `{results['model']}`", "",
             f"Window for text baselines: {s['window']} decoder tokens; decoding {_decoding(s.get('generation'))}, at most "
             f"{s['max_new_tokens']} new tokens; "
             f"{s['device']}, {s['threads']} torch thread(s). Scores are 0-100 (SQuAD normalisation); recall = share of gold "
             "answer tokens in the prediction; ROUGE-L = F1 of the longest common word subsequence (for sentence-long "
             "answers). TTFT includes compression (E2LLM) or chunk embedding (RAG) and prefill; "
             "peak MB = the most memory one call added over the RSS before it (max over questions); answer in passages = "
             "share of questions whose gold answer occurs in the raw passages the method read (retrieval hit rate).", ""]
    for name, f in results["files"].items():
        lines += [f"## {name}", "",
                  "| method | EM | F1 | recall | ROUGE-L | answer in passages % | TTFT s | total s | decoder tokens read | "
                  "peak MB | looping / empty | n |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, agg in f["summary"].items():
            hit = _fmt(agg.get("passage_hit"), 0) if "passage_hit" in agg else "–"
            lines.append(f"| {method} | {_fmt(agg.get('em'))} | {_fmt(agg.get('f1'))} | {_fmt(agg.get('recall'))} | "
                         f"{_fmt(agg.get('rouge_l'))} | {hit} | {_fmt(agg.get('ttft_s'), 2)} | {_fmt(agg.get('total_s'), 2)} | "
                         f"{_fmt(agg.get('tokens_read'), 0)} | {_fmt(agg.get('peak_mb'), 0)} | "
                         f"{agg.get('loops', 0)} / {agg.get('empty', 0)} | {agg['n']}/{agg['n_total']} |")
        if "wall_s_per_question" in f:
            lines.append(f"\nWall time: {f['wall_s_per_question']:.1f} s per question for all methods (shared stages run once).")
        lines.append("")
    if results.get("reconstruction"):
        r = results["reconstruction"]
        lines += ["## Reconstruction", "",
                  f"Token F1 (SQuAD normalisation) of {r['windows']} restated windows of {r['window_chunks']} chunks "
                  f"from `{r['file']}`: **{_fmt(r['f1'])}**.", ""]
    if results.get("sweep"):
        lines += ["## Quality against compression ratio", "",
                  "| model | chunk tokens | k | compression ratio | soft F1 | reconstruction F1 | n |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for p in results["sweep"]:
            lines.append(f"| {p['model']} | {p['chunk_tokens']} | {p['k']} | {p['compression_ratio']:.1f} | {p['f1']:.1f} | "
                         f"{_fmt(p.get('reconstruction_f1'))} | {p['n']} |")
        lines += ["", "![quality against compression ratio](compression.png)", ""]
    lines += ["## Methods", ""] + [f"- `{m}`: {DESCRIPTIONS[m]}" for m in METHODS if m in s["methods"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str | Path) -> None:
    """Soft F1 and reconstruction F1 against compression ratio, with text baselines as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 (used as matplotlib.ticker)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = results.get("sweep") or []
    if points:
        by_model: dict[str, list] = {}
        for p in points:
            by_model.setdefault(f"{p['model']} (k={p['k']})", []).append(p)
        for label, group in by_model.items():
            group = sorted(group, key=lambda p: p["compression_ratio"])
            xs = [p["compression_ratio"] for p in group]
            ax.plot(xs, [p["f1"] for p in group], "o-", label=f"QA F1, soft: {label}")
            recon = [(p["compression_ratio"], p["reconstruction_f1"]) for p in group if p.get("reconstruction_f1") is not None]
            if recon:
                ax.plot(*zip(*recon, strict=True), "s--", label=f"reconstruction F1: {label}")
            for p in group:
                ax.annotate(f"{p['chunk_tokens']} tok", (p["compression_ratio"], p["f1"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        reference = results.get("sweep_reference") or {}
        styles = {"full_context": "g:", "rag_base": "c-.", "closed_book": "r:"}
        for method, value in reference.items():
            if value is not None:
                ax.axhline(value, linestyle=styles[method][1:], color=styles[method][0], linewidth=1, label=f"{method} (text)")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ticks: list[float] = []
        for ratio in sorted({round(p["compression_ratio"], 1) for p in points}):
            if not ticks or ratio > ticks[-1] * 1.15:  # closer ticks print over each other on a log axis
                ticks.append(ratio)
        ax.set_xticks(ticks)
    else:
        ax.text(0.5, 0.5, "no compression sweep was run", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("compression ratio (source decoder tokens per soft token)")
    ax.set_ylabel("F1 (0-100)")
    ax.set_ylim(0, 100)
    ax.set_title(f"E2LLM quality vs compression ({results.get('sweep_file') or 'no data'})", fontsize=9)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- the benchmark: several evaluation runs in one table ---------------------------------------------------------
def _examples(path: str | Path) -> dict[tuple[str, str], Example]:
    """(question, answer) -> the example of a data file (its accepted answers, its documents); keyed by both, since one
    question ("Who gave this address?") can be asked of several documents."""
    try:
        return {(e.question, e.answer): e for e in load_examples(path)}
    except OSError:
        return {}


def combine(runs: dict[str, list[dict]]) -> dict:
    """Scores per data file, run label and method, from evaluation results (`results.json` objects), rescored against
    every accepted answer; with two subsets where reading the whole document should pay: questions whose answer the
    ranking missed (not in hybrid's raw passages), and whole-document questions (`task` starting "whole_document" or
    "handwritten_whole_document")."""
    table: dict[str, dict[str, dict]] = {}
    subsets: dict[str, dict[str, list[dict]]] = {"ranking missed the answer": {}, "whole-document questions": {}}
    for label, results_list in runs.items():
        for results in results_list:
            for name, f in results["files"].items():
                examples = _examples(f["path"])
                for row in f["examples"]:
                    example = examples.get((row["question"], row["answer"]))
                    golds, source = (example.answers, "\n".join(example.documents)) if example else ([row["answer"]], "")
                    for outcome in row["methods"].values():
                        if outcome["prediction"] is not None:
                            outcome.update(score(outcome["prediction"], golds), loops=loops(outcome["prediction"], source))
                    hybrid = row["methods"].get("hybrid", {})
                    missed = hybrid.get("passage_hit") == 0.0
                    whole = str(row.get("task", "")).replace("handwritten_", "").startswith("whole_document")
                    for method, outcome in row["methods"].items():
                        key = f"{label}:{method}"
                        for subset, wanted in (("ranking missed the answer", missed), ("whole-document questions", whole)):
                            if wanted:
                                subsets[subset].setdefault(key, []).append(outcome)
                for method in f["summary"]:
                    table.setdefault(name, {})[f"{label}:{method}"] = aggregate([r["methods"][method] for r in f["examples"]])
    for subset, by_method in subsets.items():
        for key, outcomes in by_method.items():
            table.setdefault(subset, {})[key] = aggregate(outcomes)
    return table


def benchmark_markdown(table: dict, noise_note: str = "") -> str:
    """F1 per data file (rows) and run:method (columns), with looping answers counted."""
    keys = list(dict.fromkeys(key for row in table.values() for key in row))
    labels = list(dict.fromkeys(key.split(":")[0] for key in keys))
    order = {m: i for i, m in enumerate(METHODS)}  # per run label, the methods in their usual order
    columns = sorted(keys, key=lambda k: (labels.index(k.split(":")[0]), order.get(k.split(":", 1)[1], len(order))))
    lines = ["| set | " + " | ".join(f"`{c}`" for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, row in table.items():
        cells = []
        for c in columns:
            agg = row.get(c)
            cells.append("–" if not agg or "f1" not in agg else f"{agg['f1']:.1f}")
        n = max((agg["n"] for agg in row.values()), default=0)
        lines.append(f"| {name} (n={n}) | " + " | ".join(cells) + " |")
    files = [row for name, row in table.items() if name.endswith(".jsonl")]  # the subsets repeat their questions
    loops_total = {c: sum(row[c].get("loops", 0) for row in files if c in row) for c in columns}
    lines.append("| looping answers (all sets) | " + " | ".join(str(loops_total[c]) for c in columns) + " |")
    return "\n".join(lines) + ("\n\n" + noise_note if noise_note else "") + "\n"
