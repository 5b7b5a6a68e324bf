"""Two document families held out of all training, exported for measuring domain adaptation.

    python -m research.families --out data/families [--seed 0] [--benchmark data/v2]

The benchmark (`research.data_builders.v2`) never trains on the GNU info manuals nor on the Python docs' ``tutorial/``
and ``howto/`` pages. For each of these two families this writes, under ``OUT/{gnu,pydocs}/``:

- ``train/*.txt`` and ``test/*.txt``: one plain-text file per document (its paragraphs, a blank line between them: what
  ``finetune --documents`` and ``e2llm ask`` read), split by whole manual (GNU) or page (Python docs): about 30 % of
  them in test, holding 20-35 % of the words: the pinned ones (every page the hand-written set asks about, and the
  units the question generator can ask most about, see `FAMILIES`), then a seeded draw. A paragraph a train document
  shares with a test document (a licence, an option line) is left out of the train file, so no test text is trained on;
- ``test.jsonl``: questions over the test documents only, in the evaluation's format (`e2llm_plugin.evaluate`): the
  hand-written ones first, then the benchmark's generated ones about a test document, then questions generated here
  from the test files by `e2llm_plugin.autodata` (short factual kinds only). Every generated question must pass
  `rejection`: its answer in its document, a specific question, an answer that cannot be guessed without reading.
  Generated questions' passages are hidden among passages of the other test documents, never train ones;
- ``test_handwritten.jsonl``: more questions written by hand over the test documents (``family_questions.jsonl`` next
  to this file), each with its whole document as context: a second set, so that the first stays as it was measured;
- ``summary.json``: the split (which document in which side), counts, what was rejected and why, and the seed.

The same corpora, benchmark files and seed give the same files.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from e2llm_plugin.autodata import questions, tasks
from e2llm_plugin.documents import read_file

from .data_builders import sources, v2
from .data_builders.handwritten import DOC_IDS as HANDWRITTEN_DOC_IDS
from .data_builders.handwritten import occurs

TEST_SHARE = 0.3  # of the family's manuals or pages
TEXT_SHARE = (0.2, 0.35)  # of its words in test: enough to ask about, most of it left to train on
N_QUESTIONS, MIN_QUESTIONS = 70, 50  # a 10-point F1 gain must stand out of the noise (about 5 points at n = 50)
HAYSTACK_SHARE = 0.25  # of the questions generated here: a short passage among 10-30 others
MIN_CONTENT_WORDS = 2  # "What can be specified?" names nothing a reader could look up
GUESSABLE_SHARE = 0.25  # an answer found in this share of the family's documents ("GNU", "Python", "two") is a guess
EXCERPT_WORDS = 3000  # as the benchmark's test sets
GENERATED_POOL = 200  # questions asked for: more than the test side holds, so sampling exhausts it
BENCHMARK_BUILD = "python -m research.data_builders --out data/v2 --version 2"
FAMILY_QUESTIONS = Path(__file__).with_name("family_questions.jsonl")  # written by hand after reading the test files


@dataclass(frozen=True)
class Family:
    name: str
    source: str  # the corpus name the benchmark's records carry
    unit: str  # what the split keeps whole
    documents: Callable[[], list[sources.Doc]]
    unit_of: Callable[[str], str]  # doc id -> its manual or page
    benchmark_sets: tuple[str, ...]  # benchmark files whose questions may be about this family, hand-written first
    pinned: tuple[str, ...] = ()  # units always in test


def _pydocs() -> list[sources.Doc]:
    return [d for d in sources.python_docs() if d.doc_id.startswith(v2.HELD_OUT_PYDOC_DIRS)]


# Pinned to test besides the hand-written set's pages: the units the question generator asks most about. It writes
# few questions over technical text (a sentence quoting a command or holding code is skipped): of its questions over
# all 20 GNU manuals (228k words) 86 pass `rejection`, 28 on nettle, 20 on gnupg, 5 on find-maint, 4 on bzip2, 17 on
# gettext (too large for test), none or one on most others; over all 34 tutorial/ and howto/ pages (125k words) 39
# (howto/unicode 9, logging-cookbook 7, functional 4, instrumentation 4).
FAMILIES = {
    "gnu": Family("gnu", "gnu_manuals", "manual", sources.gnu_manuals, lambda doc_id: doc_id.split("/")[0],
                  ("test_general_unseen_kind.jsonl",), ("bzip2", "find-maint", "gnupg", "nettle")),
    "pydocs": Family("pydocs", "python_docs", "page", _pydocs, lambda doc_id: doc_id,
                     ("test_handwritten.jsonl", "test_general_docs.jsonl"),
                     (*HANDWRITTEN_DOC_IDS["python_docs"], "howto/functional", "howto/instrumentation",
                      "howto/logging-cookbook", "howto/unicode")),
}


class SplitError(ValueError):
    """The documents cannot be split as asked (a pinned unit missing, nothing left to train on)."""


class Overlap(AssertionError):
    """Text of a test document reached the train side."""


# --- the split ------------------------------------------------------------------------------------------------

def split_units(words: dict[str, int], seed: int, share: float = TEST_SHARE, pinned: tuple[str, ...] = (),
                text_share: tuple[float, float] = TEXT_SHARE, salt: str = "") -> tuple[list[str], list[str]]:
    """(train units, test units) of units with their word counts: the pinned ones, then units in a seeded order, each
    taken into test unless it would push test past ``text_share[1]`` of the words, until test holds ``share`` of the
    units and at least ``text_share[0]`` of the words."""
    missing = sorted(set(pinned) - set(words))
    if missing:
        raise SplitError(f"units {missing} must go to test but are not among the documents")
    if not 0 < share < 1 or len(words) < 2:
        raise SplitError(f"need two units or more and a test share in (0, 1); got {len(words)} units, share {share}")
    total = sum(words.values())
    target = max(1, round(share * len(words)))
    test = sorted(set(pinned))
    taken = sum(words[u] for u in test)
    for unit in random.Random(f"families:{salt}:{seed}").sample(sorted(words), len(words)):
        if len(test) >= target and taken >= text_share[0] * total:
            break
        if unit not in test and taken + words[unit] <= text_share[1] * total:
            test.append(unit)
            taken += words[unit]
    train = sorted(set(words) - set(test))
    if not train:
        raise SplitError("every unit went to test; nothing is left to train on")
    return train, sorted(test)


def without_shared(train: list[sources.Doc], test: list[sources.Doc]) -> tuple[list[sources.Doc], dict[str, int]]:
    """The train documents without the paragraphs a test document also holds, and how many each lost."""
    held = {p for d in test for p in d.paragraphs}
    kept, dropped = [], {}
    for doc in train:
        paragraphs = [p for p in doc.paragraphs if p not in held]
        if len(paragraphs) < len(doc.paragraphs):
            dropped[doc.doc_id] = len(doc.paragraphs) - len(paragraphs)
        if paragraphs:
            kept.append(sources.Doc(doc.doc_id, doc.title, paragraphs))
    return kept, dropped


def file_name(doc_id: str) -> str:
    """``gettext/Optimized gettext`` -> ``gettext--optimized-gettext.txt``: the manual or folder, then the part."""
    return "--".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in doc_id.split("/")) + ".txt"


def document_text(doc: sources.Doc) -> str:
    return "\n\n".join(doc.paragraphs) + "\n"


def export(docs: list[sources.Doc], folder: Path) -> dict[str, str]:
    """One .txt file per document in ``folder``; doc id -> file name."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {d.doc_id: file_name(d.doc_id) for d in docs}
    clashes = [n for n, c in Counter(names.values()).items() if c > 1]
    if clashes:
        raise SplitError(f"documents with the same file name: {clashes}")
    for doc in docs:
        (folder / names[doc.doc_id]).write_text(document_text(doc), encoding="utf-8")
    return names


def check_no_overlap(train_dir: Path, test_dir: Path) -> int:
    """Raise `Overlap` if any paragraph of a test file, as `finetune --documents` reads it, is in a train file; returns
    the number of test paragraphs checked."""
    def paragraphs(folder: Path) -> dict[str, str]:
        return {p: f.name for f in sorted(folder.glob("*.txt")) for p in tasks.paragraphs_of(read_file(f).text)}

    train, test = paragraphs(train_dir), paragraphs(test_dir)
    leaked = sorted((name, p) for p, name in test.items() if p in train)
    if leaked:
        raise Overlap(f"{len(leaked)} paragraph(s) of test documents are in train files, e.g. {leaked[0][0]}: "
                      f"{leaked[0][1][:120]!r} (also in {train[leaked[0][1]]})")
    return len(test)


# --- the questions ----------------------------------------------------------------------------------------------

def needle(example: dict) -> str:
    context = example["context"]
    return context if isinstance(context, str) else context[example.get("needle_index", 0)]


def content_words(question: str) -> int:
    from spacy.lang.en.stop_words import STOP_WORDS

    return sum(1 for w in re.findall(r"[A-Za-z][\w'-]*", question) if len(w) > 2 and w.lower() not in STOP_WORDS)


def rejection(example: dict, doc_text: str, names_of_doc: tuple[str, ...], guessable: Callable[[str], bool]) -> str | None:
    """Why a generated question is not fit for the measurement, or None: its answer must occur (whole words) in its
    passage and its document, the question must name what it asks about, and the answer must not be guessable without
    reading (the family's ubiquitous names and numbers, the manual's or the document's own name)."""
    answer = example["answer"]
    if not (occurs(answer, needle(example)) and occurs(answer, doc_text)):
        return "answer not in its document"
    if content_words(example["prompt"]) < MIN_CONTENT_WORDS:
        return "vague question"
    if any(_mentions(name, answer) for name in names_of_doc):
        return "answer names its own document"
    if guessable(answer):
        return "guessable answer"
    return None


def _mentions(text: str, name: str) -> bool:
    """``name`` occurs in ``text`` as whole words, in any case."""
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


def _guessable(texts: list[str]) -> Callable[[str], bool]:
    cache: dict[str, bool] = {}

    def guessable(answer: str) -> bool:
        if answer not in cache:
            cache[answer] = sum(_mentions(t, answer) for t in texts) >= GUESSABLE_SHARE * len(texts)
        return cache[answer]

    return guessable


def _inside(passage: str, texts: list[str]) -> bool:
    """Every line of the passage is text of one of ``texts``."""
    return all(any(line in t for t in texts) for line in passage.split("\n") if line.strip())


def benchmark_lines(bench: Path, family: Family, test_ids: set[str]) -> list[dict]:
    """The benchmark's questions about the family's test documents, file by file (hand-written first)."""
    lines = []
    for name in family.benchmark_sets:
        path = bench / name
        if not path.is_file():
            raise sources.SourceMissing(f"{path} is missing; build the benchmark first: {BENCHMARK_BUILD}")
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(raw)
            if line.get("doc_id") in test_ids and line.get("source") in (family.source, "handwritten"):
                lines.append({**line, "origin": "handwritten" if line["source"] == "handwritten" else f"benchmark:{name}"})
    return lines


def rehide(example: dict, excerpts: list[tasks.Excerpt], rng: random.Random, tries: int = 10) -> dict | None:
    """The benchmark question's own passage hidden again, among passages of the family's test documents only (the
    benchmark drew them from the whole family, some of which is now training text), as the benchmark hides it."""
    for _ in range(tries):
        made = tasks.hide(example, needle(example), excerpts, rng, (3, 8), 3000, passage_words=(200, 450))
        if made and 1500 <= sum(len(c.split()) for c in made["context"]) <= 4000:
            return made
    return None


def generated_lines(excerpts: list[tasks.Excerpt], n: int, rng: random.Random) -> list[dict]:
    """Short factual questions over the test excerpts, as the benchmark's test sets make them (an entity question,
    sometimes asked from another sentence, its passage hidden among 3-8 others), plus haystacks."""
    hidden = v2.test_general(excerpts, n, rng)
    hay = tasks.repeat(lambda r: tasks.haystack(r.choice(excerpts), excerpts, r), round(n * HAYSTACK_SHARE), rng)
    step = max(1, round(1 / HAYSTACK_SHARE) - 1)
    mixed = []
    for i, line in enumerate(hidden):  # interleaved, so a cut keeps the share
        mixed.append(line)
        if (i + 1) % step == 0 and hay:
            mixed.append(hay.pop(0))
    return [{**line, "origin": "generated"} for line in mixed + hay]


def question_set(family: Family, test_docs: list[sources.Doc], texts: dict[str, str], all_texts: list[str],
                 bench: Path, seed: int, n: int = N_QUESTIONS, minimum: int = MIN_QUESTIONS) -> tuple[list[dict], dict]:
    """The family's held-out questions (see the module docstring) and what was rejected, by reason."""
    rng = random.Random(f"families:{family.name}:questions:{seed}")
    names = {d.doc_id: (family.unit_of(d.doc_id), d.title) for d in test_docs}
    guessable = _guessable(all_texts)
    test_texts = [texts[d.doc_id] for d in test_docs]
    excerpts = [ex for d in test_docs for ex in tasks.excerpts_of(d.doc_id, texts[d.doc_id], EXCERPT_WORDS, family.source)]
    for ex in excerpts:
        ex.generic = True  # technical text, as the benchmark treats these families: "what", not "who"
    rejected: Counter = Counter()
    chosen: list[dict] = []
    seen: set[str] = set()

    def take(line: dict) -> None:
        why = None if line["origin"] == "handwritten" else rejection(line, texts[line["doc_id"]], names[line["doc_id"]],
                                                                     guessable)
        if why is None and line["prompt"] in seen:
            why = "duplicate"
        if why is None and not all(_inside(c, test_texts) for c in ([line["context"]] if isinstance(line["context"], str)
                                                                    else line["context"])):
            why = "context not from the test documents"
        if why:
            rejected[why] += 1
            return
        seen.add(line["prompt"])
        chosen.append(line)

    for line in benchmark_lines(bench, family, set(names)):
        if len(chosen) >= n:
            break
        if line["origin"] != "handwritten":
            line = rehide(line, excerpts, rng)
            if line is None:
                rejected["no test passages to hide it among"] += 1
                continue
        take(line)
    if len(chosen) < n:
        tasks.parse(excerpts)
        for line in generated_lines(excerpts, GENERATED_POOL, rng):
            if len(chosen) >= n:
                break
            take({**line, "source": family.source})
    if len(chosen) < minimum:
        raise SplitError(f"{family.name}: only {len(chosen)} questions over the test documents (at least {minimum} "
                         f"wanted); rejected: {dict(rejected)}; put more text in test (--seed, TEXT_SHARE)")
    return chosen, dict(rejected.most_common())


def _folded(text: str) -> str:  # a hand-written answer may differ from the text in case and line breaks
    return " ".join(text.lower().split())


def handwritten_lines(family: Family, texts: dict[str, str], path: Path = FAMILY_QUESTIONS) -> list[dict]:
    """The family's questions of ``path`` as evaluation lines, each with its whole test document as context; raises
    `SplitError` for a question about a document not in test or an answer not in its document."""
    lines = []
    for q in (json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines() if raw.strip()):
        if q["family"] != family.name:
            continue
        text = texts.get(q["doc_id"])
        missing = q["answers"] if text is None else [a for a in q["answers"] if not occurs(_folded(a), _folded(text))]
        if missing:
            raise SplitError(f"{path.name}: {q['question']!r}: {missing} not in test document {q['doc_id']!r} "
                             f"(is the document still on the test side? has its text changed?); fix the line by hand")
        lines.append({"context": [text], "prompt": q["question"], "answer": q["answers"][0], "answers": list(q["answers"]),
                      "task": "handwritten_family", "source": "handwritten", "doc_id": q["doc_id"], "extractive": True,
                      "origin": "handwritten"})
    return lines


# --- the build ------------------------------------------------------------------------------------------------

class FamilySplit(NamedTuple):
    train_units: list[str]
    test_units: list[str]
    train: list[sources.Doc]  # without the paragraphs they share with test documents
    test: list[sources.Doc]
    dropped: dict[str, int]  # train doc id -> paragraphs left out as shared with test


def split_family(family: Family, seed: int = 0) -> FamilySplit:
    """The family's documents split by whole unit (manual or page), see `split_units` and `without_shared`."""
    docs = family.documents()
    words: Counter = Counter()
    for d in docs:
        words[family.unit_of(d.doc_id)] += sum(len(p.split()) for p in d.paragraphs)
    train_units, test_units = split_units(dict(words), seed, TEST_SHARE, family.pinned, TEXT_SHARE, family.name)
    test = [d for d in docs if family.unit_of(d.doc_id) in test_units]
    train, dropped = without_shared([d for d in docs if family.unit_of(d.doc_id) in train_units], test)
    return FamilySplit(train_units, test_units, train, test, dropped)


def build_family(family: Family, out: Path, bench: Path, seed: int = 0, n: int = N_QUESTIONS,
                 minimum: int = MIN_QUESTIONS) -> dict:
    """Write ``out/<family>/`` (see the module docstring), replacing what was there; returns its summary."""
    began = time.perf_counter()
    train_units, test_units, train_docs, test_docs, dropped = split_family(family, seed)
    target = out / family.name
    staging = out / f".{family.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        files = {"train": export(train_docs, staging / "train"), "test": export(test_docs, staging / "test")}
        checked = check_no_overlap(staging / "train", staging / "test")
        split_s = time.perf_counter() - began
        # the questions read the test files as finetune and `e2llm ask` read them
        texts = {d.doc_id: read_file(staging / "test" / files["test"][d.doc_id]).text for d in test_docs}
        all_texts = list(texts.values()) + [read_file(staging / "train" / f).text for f in files["train"].values()]
        lines, rejected = question_set(family, test_docs, texts, all_texts, bench, seed, n, minimum)
        more = handwritten_lines(family, texts)
        for name, rows in (("test.jsonl", lines), ("test_handwritten.jsonl", more)):
            (staging / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")

        def side(name: str, units: list[str], side_docs: list[sources.Doc]) -> dict:
            words = sum(len(p.split()) for d in side_docs for p in d.paragraphs)
            return {"units": units, "documents": len(side_docs), "words": words,
                    "files": {d.doc_id: f"{name}/{files[name][d.doc_id]}" for d in side_docs}}

        summary = {
            "family": family.name, "seed": seed, "unit": family.unit, "test_share": TEST_SHARE, "text_share": list(TEXT_SHARE),
            "train": side("train", train_units, train_docs), "test": side("test", test_units, test_docs),
            "train_paragraphs_dropped_as_shared_with_test": dropped, "test_paragraphs_checked_against_train": checked,
            "questions": {"n": len(lines), "by_origin": dict(Counter(x["origin"] for x in lines).most_common()),
                          "by_task": dict(Counter(x["task"] for x in lines).most_common()),
                          "by_document": dict(Counter(x["doc_id"] for x in lines).most_common()), "rejected": rejected},
            "handwritten": {"n": len(more), "by_document": dict(Counter(x["doc_id"] for x in more).most_common())},
            "benchmark": str(bench), "spacy_model": questions.pipeline_name(),
            "seconds": {"split_and_export": round(split_s, 1), "total": round(time.perf_counter() - began, 1)},
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the old files stay as they were
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.families", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for <family>/{train,test}/*.txt, test.jsonl and summary.json")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    p.add_argument("--benchmark", default="data/v2", help=f"the built benchmark ({BENCHMARK_BUILD})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=int, default=N_QUESTIONS, help="questions per family")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.families:
        try:
            s = build_family(FAMILIES[name], out, Path(a.benchmark), a.seed, a.questions)
        except (sources.SourceMissing, SplitError, Overlap) as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            return 2
        print(f"{name}: train {s['train']['documents']} documents ({s['train']['words']} words, {len(s['train']['units'])} "
              f"{s['unit']}s), test {s['test']['documents']} documents ({s['test']['words']} words, {s['test']['units']}); "
              f"{s['questions']['n']} questions {s['questions']['by_origin']}; rejected {s['questions']['rejected']}; "
              f"{s['handwritten']['n']} more hand-written; "
              f"{s['seconds']['total']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
