"""Long-context probes: does the model find one planted fact in a very long document, or in one of many files?

    python -m research.long_context --tests quickstart needle_200k files_50 needle_1m --variants 20 --out runs/lc

* ``quickstart``: the README's question over the shipped Finland profile ("What is the national holiday of Finland?"),
  right when the answer holds "6 December".
* ``needle_200k`` / ``needle_1m``: one invented sentence ("The keeper of the Velmora lighthouse is Ottoline Brask.")
  planted at a different depth of 200,000 / 1,000,000 decoder tokens of State of the Union addresses; right when the
  answer holds the planted surname.
* ``files_50``: 50 files (a speech excerpt each) given together, every one with an invented budget of its own project;
  the question asks one project's budget, right when the answer holds that file's number (the other 49 are the
  distractors a reader must not answer from).

Each probe runs ``--variants`` variants (other names, depths, target files) per mode (with ``--max-soft-chunks 0,96``,
per mode and cap: "hybrid/96"; with ``--raw-tokens 128``, per raw-passage budget: "hybrid@128"); the report gives the
hits, the answers, the time per question and the process's peak RSS (the 1M-token probe runs last, so the peak is its
own), and for each answer where the planted fact stood among the raw passages read (``fact_passage``: 1 = first, null
= not read).
Compressed chunks go through a private temporary store, so a variant re-encodes only the chunks its needle changed.
Every fact is invented: no model can know it, and none is in any training set.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import tempfile
import time
from pathlib import Path

from e2llm_plugin import E2LLM
from e2llm_plugin.reading import reader_for

FIRST = ["Ottoline", "Barnaby", "Isolde", "Percival", "Wilhelmina", "Casimir", "Leocadia", "Thaddeus", "Ermengarde",
         "Lysander", "Philippa", "Ambrose", "Seraphina", "Ignatius", "Clementine", "Octavian", "Rosalind", "Evander",
         "Marguerite", "Cornelius"]
LAST = ["Brask", "Quennell", "Vandersloot", "Okonkwo", "Thistlewood", "Marchbanks", "Fairweather", "Delacroix",
        "Ravensworth", "Pettigrew", "Szymanski", "Abernethy", "Holloway", "Kettleborough", "Lindqvist", "Montague",
        "Featherstone", "Castellanos", "Winterbottom", "Achterberg"]
PLACES = ["Velmora", "Quillport", "Harrowgate Point", "Sablecliff", "Dunmarrow", "Esterhaven", "Corvel Bay", "Tamsin Rock",
          "Brightwater Sound", "Ostry Head", "Kellin Reach", "Marrowby", "Fennick Isle", "Galloway Spit", "Hollin Cape",
          "Ardmore Shoals", "Wrenfield", "Carrick Sands", "Lowther Ness", "Pellam Light"]
PROJECTS = ["Orion", "Vega", "Lyra", "Draco", "Cygnus", "Auriga", "Carina", "Pavo", "Tucana", "Volans", "Lepus", "Corvus",
            "Fornax", "Pictor", "Norma", "Indus", "Musca", "Hydrus", "Octans", "Mensa", "Aquila", "Ara", "Caelum", "Crux",
            "Dorado", "Grus", "Lacerta", "Lupus", "Lynx", "Monoceros", "Pyxis", "Reticulum", "Sagitta", "Scutum",
            "Sextans", "Telescopium", "Vulpecula", "Antlia", "Apus", "Circinus", "Columba", "Delphinus", "Equuleus",
            "Horologium", "Leo Minor", "Microscopium", "Phoenix", "Puppis", "Sculptor", "Triangulum"]
QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "factbook_finland.txt"


def filler(model: E2LLM, tokens: int) -> list[str]:
    """Paragraphs of State of the Union addresses, in order, until they hold `tokens` decoder tokens."""
    from research.data_builders.sources import sotu_speeches

    out, total = [], 0
    for speech in sotu_speeches():
        for paragraph in speech.paragraphs:
            out.append(paragraph)
            total += model.count_tokens(paragraph) + 1
            if total >= tokens:
                return out
    raise SystemExit(f"the State of the Union corpus holds only {total} tokens, fewer than {tokens}")


def needle_cases(paragraphs: list[str], variants: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    cases = []
    for v in range(variants):
        first, last, place = FIRST[v % len(FIRST)], LAST[v % len(LAST)], PLACES[v % len(PLACES)]
        depth = (v + 0.5) / variants  # spread evenly through the document
        at = int(depth * len(paragraphs))
        sentence = f"The keeper of the {place} lighthouse is {first} {last}."
        text = "\n\n".join(paragraphs[:at] + [sentence] + paragraphs[at:])
        cases.append({"documents": [text], "question": f"Who is the keeper of the {place} lighthouse?", "expect": last,
                      "depth": round(depth, 3)})
    rng.shuffle(cases)
    return cases


def files_cases(model: E2LLM, variants: int, seed: int, files: int = 50, tokens_per_file: int = 1500) -> list[dict]:
    rng = random.Random(seed)
    paragraphs = filler(model, files * tokens_per_file)
    per_file = max(1, len(paragraphs) // files)
    amounts = rng.sample(range(1_000, 99_999), files)
    documents = []
    for i in range(files):
        body = paragraphs[i * per_file : (i + 1) * per_file]
        fact = f"The {PROJECTS[i]} project was given a budget of {amounts[i]:,} dollars."
        body.insert(rng.randrange(len(body) + 1), fact)
        documents.append("\n\n".join(body))
    targets = rng.sample(range(files), variants)
    return [{"documents": documents, "question": f"What budget was the {PROJECTS[t]} project given?",
             "expect": f"{amounts[t]}", "file": t} for t in targets]


def hit(answer: str, expect: str) -> bool:
    squashed = re.sub(r"(?<=\d)[,\s](?=\d)", "", answer).lower()  # "12,345" and "12 345" read as 12345
    return expect.lower() in squashed


def run_probe(model: E2LLM, name: str, cases: list[dict], modes: list[str], max_new_tokens: int) -> dict:
    rows = {mode: [] for mode in modes}
    contexts: dict[int, object] = {}
    default_cap = model.config.max_soft_chunks
    for i, case in enumerate(cases):
        key = id(case["documents"])
        if key not in contexts:  # files_50's variants share one set of files: compress it once
            contexts = {key: model.compress(case["documents"], show_progress=False)}
        context = contexts[key]
        for mode in modes:
            reading, cap, raw_tokens = parse_mode(mode)
            model.config.max_soft_chunks = default_cap if cap is None else cap
            start = time.perf_counter()
            answer = model.answer(case["question"], context=context, mode=reading, max_new_tokens=max_new_tokens,
                                  raw_tokens=raw_tokens)
            text = "".join(answer).strip()
            read = [context.chunks[index].text for index, _ in answer.passages]
            rows[mode].append({"question": case["question"], "expect": case["expect"], "answer": text,
                               "hit": hit(text, case["expect"]), "seconds": round(time.perf_counter() - start, 2),
                               "chunks_read": answer.chunks_read, "chunks": context.num_chunks,
                               "fact_passage": fact_passage(read, case["expect"]), "passages": len(read),
                               **{k: case[k] for k in ("depth", "file") if k in case}})
        print(f"{name} {i + 1}/{len(cases)}: " + ", ".join(f"{m} {'hit' if rows[m][-1]['hit'] else 'miss'}" for m in modes),
              flush=True)
    tokens = contexts[next(iter(contexts))].num_source_tokens
    return {"source_tokens": tokens, "peak_rss_gib": round(peak_rss_gib(), 2),
            "hits": {m: sum(r["hit"] for r in rows[m]) for m in modes}, "n": len(cases), "answers": rows}


def parse_mode(spec: str) -> tuple[str, int | None, int | None]:
    """A probe's reading: "hybrid", "hybrid/256" (at most 256 soft chunks), "hybrid@128" (128 raw-passage tokens),
    "hybrid/256@128" (both) -> (mode, cap or None, raw budget or None)."""
    spec, _, raw = spec.partition("@")
    mode, _, cap = spec.partition("/")
    return mode, int(cap) if cap else None, int(raw) if raw else None


def fact_passage(passages: list[str], expect: str) -> int | None:
    """Where the planted fact stands among the raw passages read (1 = first), None if none holds it: a miss with the
    fact read is the decoder's, one without it the ranking's."""
    return next((i + 1 for i, text in enumerate(passages) if hit(text, expect)), None)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.long_context", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the shipped one)")
    p.add_argument("--tests", nargs="+", default=["quickstart", "needle_200k", "files_50", "needle_1m"],
                   choices=["quickstart", "needle_200k", "files_50", "needle_1m"])
    p.add_argument("--modes", default=None, help="comma-separated reading modes (default: the checkpoint's)")
    p.add_argument("--variants", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-soft-chunks", default=None,
                   help="comma-separated max_soft_chunks values, each read in every mode (0: every chunk that fits the "
                   "window; default: the checkpoint's)")
    p.add_argument("--raw-tokens", default=None,
                   help="comma-separated raw-passage budgets (decoder tokens), each read in every mode and cap "
                   "(default: the checkpoint's hybrid_raw_tokens for hybrid, the window's rest for rag)")
    p.add_argument("--passage-order", choices=["ranked", "document"], default=None,
                   help="the order raw passages are read in (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory for results.json")
    args = p.parse_args(argv)
    if args.variants < 1:
        p.error("--variants must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = E2LLM.from_pretrained(args.model, store=str(Path(tmp) / "store.sqlite"))
        modes = args.modes.split(",") if args.modes else [model.config.mode]
        if args.passage_order:
            model.config.passage_order = args.passage_order
        if args.max_soft_chunks is not None:  # "hybrid/96": hybrid reading at most 96 chunks as soft tokens (rag reads none)
            caps = [int(cap) for cap in args.max_soft_chunks.split(",")]
            modes = [m for m in modes if not reader_for(m).reads_soft] + \
                [f"{m}/{cap}" for cap in caps for m in modes if reader_for(m).reads_soft]
        if args.raw_tokens is not None:  # "hybrid@128": hybrid reading 128 tokens of raw passages
            modes = [f"{m}@{int(raw)}" for raw in args.raw_tokens.split(",") for m in modes]
        report = {"model": args.model or "shipped", "modes": modes, "variants": args.variants,
                  "passage_order": model.config.passage_order, "probes": {}}
        order = [t for t in ("quickstart", "needle_200k", "files_50", "needle_1m") if t in args.tests]
        for test in order:
            if test == "quickstart":
                cases = [{"documents": [QUICKSTART.read_text()], "question": "What is the national holiday of Finland?",
                          "expect": "6 December"}]
            elif test == "files_50":
                cases = files_cases(model, args.variants, args.seed)
            else:
                size = 200_000 if test == "needle_200k" else 1_000_000
                cases = needle_cases(filler(model, size), args.variants, args.seed)
            report["probes"][test] = run_probe(model, test, cases, modes, args.max_new_tokens)
            (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    for test, probe in report["probes"].items():
        print(f"{test}: {probe['source_tokens']:,} tokens, peak RSS {probe['peak_rss_gib']} GiB, "
              + ", ".join(f"{m} {h}/{probe['n']}" for m, h in probe["hits"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
