"""Aggregation, the targets of issue 4, the Markdown report and the compression plot."""

from __future__ import annotations

from pathlib import Path

from .methods import DESCRIPTIONS, METHODS

HELD_OUT_NOTE = "held-out field"


def aggregate(outcomes: list[dict]) -> dict:
    """Mean EM/F1/recall (0-100), mean TTFT/total seconds and tokens read, max peak MB over questions that ran."""
    ran = [o for o in outcomes if o["prediction"] is not None]
    out = {"n": len(ran), "n_total": len(outcomes)}
    if not ran:
        return out
    for key in ("em", "f1", "recall"):
        out[key] = 100 * sum(o[key] for o in ran) / len(ran)
    for key in ("ttft_s", "total_s", "tokens_read"):
        out[key] = sum(o[key] for o in ran) / len(ran)
    out["peak_mb"] = max(o["peak_mb"] for o in ran)
    hits = [o["passage_hit"] for o in ran if o.get("passage_hit") is not None]
    if hits:
        out["passage_hit"] = 100 * sum(hits) / len(hits)
    return out


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


def targets(files: dict) -> list[dict]:
    """Each target of issue 4, met / not met / not measured, with the numbers, per data file."""
    regular = {name: f["examples"] for name, f in files.items() if not f.get("held_out_field")}
    held_out = {name: f["examples"] for name, f in files.items() if f.get("held_out_field")}
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


def _fmt(value, digits=1):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# E2LLM evaluation: `{results['model']}`", "",
             f"Window for text baselines: {s['window']} decoder tokens; greedy decoding, at most {s['max_new_tokens']} "
             "new tokens; "
             f"{s['device']}, {s['threads']} torch thread(s). Scores are 0-100 (SQuAD normalisation); recall = share of gold "
             "answer tokens in the prediction. TTFT includes compression (E2LLM) or chunk embedding (RAG) and prefill; "
             "peak MB = the most memory one call added over the RSS before it (max over questions); answer in passages = "
             "share of questions whose gold answer occurs in the raw passages the method read (retrieval hit rate).", ""]
    for name, f in results["files"].items():
        lines += [f"## {name}" + (f" ({HELD_OUT_NOTE})" if f.get("held_out_field") else ""), "",
                  "| method | EM | F1 | recall | answer in passages % | TTFT s | total s | decoder tokens read | peak MB | n |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, agg in f["summary"].items():
            hit = _fmt(agg.get("passage_hit"), 0) if "passage_hit" in agg else "–"
            lines.append(f"| {method} | {_fmt(agg.get('em'))} | {_fmt(agg.get('f1'))} | {_fmt(agg.get('recall'))} | {hit} | "
                         f"{_fmt(agg.get('ttft_s'), 2)} | {_fmt(agg.get('total_s'), 2)} | {_fmt(agg.get('tokens_read'), 0)} | "
                         f"{_fmt(agg.get('peak_mb'), 0)} | {agg['n']}/{agg['n_total']} |")
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
    lines += ["## Targets", ""]
    for t in results["targets"]:
        status = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {status}")
        for name, d in t["per_file"].items():
            lines.append(f"  - `{name}`: {d['detail']}")
    lines += ["", "## Methods", ""] + [f"- `{m}`: {DESCRIPTIONS[m]}" for m in METHODS if m in s["methods"]]
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
                ax.plot(*zip(*recon), "s--", label=f"reconstruction F1: {label}")
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
