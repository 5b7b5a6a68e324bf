"""Long-context training data: a curriculum whose contexts grow from a few chunks to the decoder's whole window.

    python -m research.curriculum data/v2/train.jsonl --out runs/curriculum --per-stage 200
    python -m e2llm_plugin.finetune --data runs/curriculum/stage_1.jsonl --max-chunks 16 ...   # then stage 2, 3, ...

Training never showed the decoder more than 96 chunks, and at thousands of soft tokens hybrid answers from the wrong
file or not at all. Each record here is a question of a built training file (extractive QA: its answer is a span of
its own context) whose context, the answer-holding document, is hidden among:

- other documents of the same file (so of the training split only: nothing held out enters), none holding the answer
  or the name the question asks about;
- near-duplicates of the answer-holding document: *siblings*, with the name the question asks about and the answer
  swapped for others of their kind everywhere (the document of a sibling question, as one of 50 similar files would
  be: "What is the national holiday of Finland?" beside a Peru that has its own), and *variants*, with the sentences
  holding the answer dropped and a number or name changed (the same text, minus the fact);
- variants of the other documents (a number or name changed), so near-identical text recurs across the context.

Stage ``i`` holds contexts of more than the previous stage's bound and at most its own bound of chunks, counted by the
encoder's own chunker (``--encoder``, ``--chunk-tokens``); the last bound defaults to what fits the decoder's window at
``--soft-tokens-per-chunk`` (``--window`` minus ``--reserve`` positions for the prompt, the answer and hybrid's raw
passages). A run takes the stages in order, one ``stage_I.jsonl`` each, with ``finetune --max-chunks`` at the stage's
bound (``manifest.json`` lists them). Records are in the format ``python -m e2llm_plugin.finetune --data`` reads, with
``stage``, ``chunks``, ``needle_index``, ``needle_depth`` (the share of chunks before the answer's document),
``siblings`` and ``variants`` beside. Everything is seeded: the same file and seed give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2llm_plugin.autodata.questions import swap, word_pattern

# QA whose answer is one span of its context, wherever that context sits (whole-document questions, counts and "most
# often" ones, would change their answer among other documents; haystacks already are one).
NEEDLE_TASKS = ("qa", "entity_qa", "entity_qa_other_sentence", "entity_qa_counterfactual",
                "entity_qa_other_sentence_counterfactual")
NAME_TYPES = {"PERSON", "GPE", "ORG", "NORP", "LOC", "FAC"}
DEFAULT_BOUNDS = (16, 64, 256, 1024, 4096)  # then the window's own bound
_NAME = re.compile(r"(?<![\w'])[A-Z][\w'-]*(?: (?:of |de |the )?[A-Z][\w'-]*)*")
_NUMBER = re.compile(r"(?<![\w.,])\d{2,}(?![\w])")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


class CurriculumError(ValueError):
    """The curriculum cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Doc:
    source: str
    doc_id: str
    text: str


@dataclass(frozen=True)
class Needle:
    record: dict
    text: str  # the answer-holding document: the record's context as one string
    name: str | None  # the name (or number) the question asks about, found in the context; None: the question has none


def load(lines: list[str], tasks: tuple[str, ...] = NEEDLE_TASKS) -> tuple[list[Needle], list[Doc], dict]:
    """(needles, documents, pools) from the lines of a training file: the questions to hide, every distinct document
    to hide them among, and the swap values of each source (`_pool`: its names, its answers of each kind)."""
    needles, docs, seen = [], [], set()
    pools: dict[str, set[str]] = {}
    for line in lines:
        record = json.loads(line)
        context = record.get("context", record.get("text"))
        texts = [context] if isinstance(context, str) else list(context or [])
        for text in texts:
            if text.strip() and text not in seen:
                seen.add(text)
                docs.append(Doc(record.get("source", ""), record.get("doc_id", ""), text))
        if "prompt" not in record:
            continue
        pools.setdefault(_pool(record), set()).add(record["answer"])
        for name in (record.get("country"), record["answer"] if record.get("answer_type") in NAME_TYPES else None):
            if name and _NAME.fullmatch(name):
                pools.setdefault(_pool(record, "names"), set()).add(name)
        if record.get("task") in tasks and record.get("extractive") and isinstance(record["context"], str) and \
                word_pattern(record["answer"]).search(record["context"]):
            needles.append(Needle(record, record["context"], _asked_name(record["prompt"], record["context"],
                                                                         record["answer"])))
    return needles, docs, {kind: sorted(values) for kind, values in pools.items()}


def _pool(record: dict, kind: str | None = None) -> str:
    """Where a record's swap values come from: its source's names (a Factbook country for a country, a speech's people
    and places for a speech's), or its source's answers of its kind (entity type or Factbook field)."""
    return f"{record.get('source', '')}:{kind or record.get('answer_type') or record.get('field') or record.get('task', '')}"


def _asked_name(prompt: str, context: str, answer: str) -> str | None:
    """The longest name or number of the question (past its first word) that the context holds and the answer does
    not overlap: what a sibling document changes, so the question no longer fits it."""
    found = [re.sub(r"'s$", "", m.group()) for pattern in (_NAME, _NUMBER) for m in pattern.finditer(prompt) if m.start() > 0]
    found = [f for f in found if word_pattern(f).search(context) and f not in answer and answer not in f]
    return max(found, key=len, default=None)


def _fresh(value: str, pool: list[str], rng: random.Random, avoid: str) -> str | None:
    """Another value of the same kind, absent from ``avoid``: a number of as many digits, else one from the pool."""
    for _ in range(8):
        if value.isdigit():
            new = str(rng.randrange(10 ** (len(value) - 1), 10 ** len(value)))
        elif pool:
            new = rng.choice(pool)
        else:
            return None
        if new != value and not word_pattern(new).search(avoid):
            return new
    return None


def sibling(needle: Needle, pools: dict, rng: random.Random) -> str | None:
    """The answer's document with the asked name and the answer both swapped everywhere: it answers another question."""
    record = needle.record
    name, answer = needle.name, record["answer"]
    if name is None:
        return None
    new_name = _fresh(name, pools.get(_pool(record, "names"), []), rng, needle.text)
    new_answer = _fresh(answer, pools.get(_pool(record), []), rng, needle.text)
    if new_name is None or new_answer is None or new_name in new_answer or new_answer in new_name:
        return None
    renamed = swap([needle.text], name, new_name)
    swapped = renamed and swap(renamed, answer, new_answer)
    if not swapped or word_pattern(name).search(swapped[0]) or word_pattern(answer).search(swapped[0]):
        return None
    return swapped[0]


def variant(text: str, names: list[str], rng: random.Random, drop: str | None = None) -> str | None:
    """A near-duplicate: one number or name changed everywhere; ``drop``: the sentences holding it are left out too."""
    if drop is not None:
        holds = word_pattern(drop)
        lines = [" ".join(s for s in _SENTENCE.split(line) if not holds.search(s)) for line in text.split("\n")]
        text = "\n".join(line for line in lines if line.strip())
        if not text.strip() or holds.search(text):
            return None
    options = sorted({m.group() for m in _NUMBER.finditer(text)}) or \
        sorted({m.group() for m in _NAME.finditer(text) if _mid_sentence(text, m.start())})
    rng.shuffle(options)
    for old in options[:4]:
        new = _fresh(old, names, rng, text)
        changed = new and swap([text], old, new)
        if changed:
            return changed[0]
    return None


def _mid_sentence(text: str, start: int) -> bool:
    """Whether a capitalised word at ``start`` follows other words of its sentence (a name, not a sentence's first word)."""
    before = text[max(0, start - 3):start].rstrip(" ")
    return bool(before) and before[-1] not in ".!?\n\"'(["


class ChunkCount:
    """Chunks of a document as the encoder's chunker cuts it (the count finetune's ``--max-chunks`` compares), cached:
    a distractor recurs in many contexts."""

    def __init__(self, chunker):
        self.chunker, self.cache = chunker, {}

    def __call__(self, text: str) -> int:
        if text not in self.cache:
            self.cache[text] = len(self.chunker.split([text]))
        return self.cache[text]


def long_record(needle: Needle, docs: list[Doc], pools: dict, low: int, high: int, count: Callable[[str], int],
                rng: random.Random, max_near: int = 8, variant_share: float = 0.3) -> dict | None:
    """One record of more than ``low`` and at most ``high`` chunks, or None where the needle cannot make one."""
    record, answer = needle.record, needle.record["answer"]
    names = pools.get(_pool(record, "names"), [])
    target = low + 1 + int((high - low) * rng.random() ** 0.5)  # in (low, high], its upper part more often
    budget = target - count(needle.text)
    if budget < 0:
        return None
    others: list[str] = []
    near = Counter()
    for _ in range(rng.randint(0, max_near)):  # near-duplicates of the answer's document, while they fit
        kind = "siblings" if needle.name and rng.random() < 0.5 else "variants"
        made = sibling(needle, pools, rng) if kind == "siblings" else variant(needle.text, names, rng, drop=answer)
        if made and made not in others and count(made) <= budget:
            others.append(made)
            budget -= count(made)
            near[kind] += 1
    holds = [word_pattern(answer)] + ([word_pattern(needle.name)] if needle.name else [])
    misses = 0
    while budget > 0 and misses < 200:  # other documents (and variants of theirs) until the target is met
        doc = docs[rng.randrange(len(docs))]
        chunks = count(doc.text)
        if (doc.source, doc.doc_id) == (record.get("source"), record.get("doc_id")) or chunks > budget or \
                doc.text in others or any(p.search(doc.text) for p in holds):
            misses += 1
            continue
        others.append(doc.text)
        budget -= chunks
        if rng.random() < variant_share:
            copy = variant(doc.text, pools.get(f"{doc.source}:names", []), rng)
            if copy and count(copy) <= budget and not any(p.search(copy) for p in holds):
                others.append(copy)
                budget -= count(copy)
                near["distractor_variants"] += 1
    chunks = target - budget
    if chunks <= low:
        return None
    context = others + [needle.text]
    rng.shuffle(context)
    at = context.index(needle.text)
    before = sum(count(text) for text in context[:at])
    return {**record, "context": context, "task": f"long_{record.get('task', 'qa')}", "chunks": chunks, "needle_index": at,
            "needle_depth": round(before / chunks, 3), "siblings": near["siblings"], "variants": near["variants"],
            "distractor_variants": near["distractor_variants"]}


def stage_bounds(bounds: list[int] | None, window: int, reserve: int, soft_tokens_per_chunk: int) -> list[int]:
    """The stages' chunk bounds: given, or the defaults up to what the window holds; each checked against the window."""
    top = (window - reserve) // soft_tokens_per_chunk
    if top < 1:
        raise CurriculumError(f"--window {window} minus --reserve {reserve} leaves no position for soft tokens")
    bounds = list(bounds) if bounds else [b for b in DEFAULT_BOUNDS if b < top] + [top]
    if any(b < 1 for b in bounds) or bounds != sorted(set(bounds)):
        raise CurriculumError(f"stage bounds must be positive and increasing, got {bounds}")
    if bounds[-1] > top:
        raise CurriculumError(f"the last stage's {bounds[-1]} chunks need {bounds[-1] * soft_tokens_per_chunk} soft "
                              f"tokens, more than the {window - reserve} the window leaves (--window {window} minus "
                              f"--reserve {reserve}); lower it to {top} or less")
    return bounds


def build(lines: list[str], bounds: list[int], per_stage: list[int], count: Callable[[str], int], seed: int = 0,
          tasks: tuple[str, ...] = NEEDLE_TASKS, max_near: int = 8, variant_share: float = 0.3) -> list[list[dict]]:
    """Every stage's records (``per_stage[i]`` for stage ``i``), in stage order (see the module docstring); each stage
    draws from its own seeded stream."""
    if len(per_stage) != len(bounds):
        raise CurriculumError(f"{len(per_stage)} record counts for {len(bounds)} stages: give one, or one per stage")
    needles, docs, pools = load(lines, tasks)
    if not needles:
        raise CurriculumError(f"no extractive QA line of the tasks {list(tasks)} to build records from")
    stages = []
    for i, (high, wanted) in enumerate(zip(bounds, per_stage, strict=True), start=1):
        low = bounds[i - 2] if i > 1 else 0
        rng = random.Random(f"{seed}:stage{i}")
        made, tries = [], 0
        while len(made) < wanted and tries < 20 * wanted + 100:
            tries += 1
            record = long_record(needles[rng.randrange(len(needles))], docs, pools, low, high, count, rng, max_near,
                                 variant_share)
            if record is not None:
                made.append({**record, "stage": i})
        stages.append(made)
    return stages


def summary(records: list[dict], low: int, high: int) -> dict:
    chunks = [r["chunks"] for r in records]
    return {"chunks": [low + 1, high], "records": len(records),
            "mean_chunks": round(statistics.fmean(chunks)) if chunks else 0,
            "mean_siblings": round(statistics.fmean(r["siblings"] for r in records), 2) if records else 0,
            "mean_variants": round(statistics.fmean(r["variants"] for r in records), 2) if records else 0,
            "mean_distractor_variants": round(statistics.fmean(r["distractor_variants"] for r in records), 2) if records else 0,
            "by_task": dict(Counter(r["task"] for r in records).most_common())}


def write(out: Path, stages: list[list[dict]], bounds: list[int], settings: dict) -> dict:
    """One ``stage_I.jsonl`` a stage and ``manifest.json``; each file written whole, then renamed into place."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"settings": settings, "stages": {}}
    for i, records in enumerate(stages, start=1):
        name = f"stage_{i}.jsonl"
        partial = out / f".{name}.partial"
        partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        partial.replace(out / name)
        manifest["stages"][name] = {**summary(records, bounds[i - 2] if i > 1 else 0, bounds[i - 1]),
                                    "finetune": f"--data {out / name} --max-chunks {bounds[i - 1]}"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def chunk_counter(encoder: str, chunk_tokens: int) -> ChunkCount:
    """The chunker E2LLM uses, over ``encoder``'s tokenizer (an ``embedded:`` name, a path or a Hub id)."""
    from transformers import AutoTokenizer

    from e2llm_plugin.chunking import Chunker
    from e2llm_plugin.embedded import load_base

    return ChunkCount(Chunker(load_base(AutoTokenizer, encoder, "encoder"), chunk_tokens))


def main(argv: list[str] | None = None) -> int:
    from e2llm_plugin.config import EMBEDDED_ENCODER

    p = argparse.ArgumentParser(prog="python -m research.curriculum", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a built training JSONL (research.data_builders); its documents are the distractors")
    p.add_argument("--out", required=True, help="directory for stage_1.jsonl ... and manifest.json")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated chunk bounds, one per stage (default {','.join(map(str, DEFAULT_BOUNDS))} and "
                        "the window's own)")
    p.add_argument("--per-stage", default="100", help="records per stage: one number, or one per stage (comma-separated)")
    p.add_argument("--tasks", default=",".join(NEEDLE_TASKS), help="comma-separated tasks whose questions are hidden")
    p.add_argument("--near-duplicates", type=int, default=8, help="at most this many near-duplicates of the answer's document")
    p.add_argument("--variant-share", type=float, default=0.3, help="share of distractors followed by a variant of theirs")
    p.add_argument("--encoder", default=EMBEDDED_ENCODER, help="the encoder whose tokenizer counts chunks")
    p.add_argument("--chunk-tokens", type=int, default=100)
    p.add_argument("--soft-tokens-per-chunk", type=int, default=1)
    p.add_argument("--window", type=int, default=8192, help="the decoder's window in positions")
    p.add_argument("--reserve", type=int, default=800,
                   help="positions kept for the prompt template, question, answer and hybrid's raw passages (512)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        given = [int(b) for b in args.stages.split(",")] if args.stages else None
        per_stage = [int(n) for n in args.per_stage.split(",")]
    except ValueError:
        p.error(f"--stages and --per-stage take comma-separated whole numbers, got {args.stages!r} and {args.per_stage!r}")
    if min(per_stage) < 1 or args.near_duplicates < 0 or not 0 <= args.variant_share <= 1:
        p.error("--per-stage must be at least 1, --near-duplicates at least 0, --variant-share within [0, 1]")
    data = Path(args.data)
    if not data.is_file():
        p.error(f"{data}: no such file")
    try:
        bounds = stage_bounds(given, args.window, args.reserve, args.soft_tokens_per_chunk)
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
        per_stage = per_stage * len(bounds) if len(per_stage) == 1 else per_stage
        stages = build(data.read_text(encoding="utf-8").splitlines(), bounds, per_stage,
                       chunk_counter(args.encoder, args.chunk_tokens), args.seed, tasks, args.near_duplicates,
                       args.variant_share)
    except CurriculumError as err:
        p.error(str(err))
    settings = {k: v for k, v in vars(args).items() if k != "out"} | {"stages": bounds, "per_stage": per_stage}
    manifest = write(Path(args.out), stages, bounds, settings)
    for name, stage in manifest["stages"].items():
        print(f"{name}: {stage['records']} records of {stage['chunks'][0]}-{stage['chunks'][1]} chunks "
              f"(mean {stage['mean_chunks']}), {stage['mean_siblings']} siblings and {stage['mean_variants']} variants "
              f"of the answer's document on average")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
