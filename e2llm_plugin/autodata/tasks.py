"""Training lines made from documents alone: no labels, every answer read off the text (see `questions`).

From each document: restate windows (understanding lines ``{"text"}``), entity wh-questions (some asked from another
sentence than the one kept in the context), questions about the quoted or code-like terms that sentences of technical
text are about (``term_qa``), counterfactual copies (the answer entity swapped everywhere in context and
answer), whole-document questions over long excerpts, descriptive questions answered by the one to three sentences
about a topic or a section's lead, and, given several documents, haystacks (a passage hidden among other documents'
passages). Lines are the format `python -m e2llm_plugin.finetune` reads, plus ``task``, ``source`` and ``doc_id``.

Everything is seeded: the same documents and seed give the same lines.
"""
from __future__ import annotations

import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..documents import read_file
from ..errors import DocumentError, E2LLMError
from . import questions as q

DOCUMENTS_SOURCE = "documents"
PARSE_BATCH = 64


class Excerpt:
    """A contiguous stretch of one document, parsed once: the unit every example draws from.

    ``generic``: technical text, where NER's names are mostly programs or commands (questions say "what", see
    `questions.question_from`); ``allowed_labels``: the entity types asked about (None: all).
    """

    def __init__(self, source: str, doc_id: str, paragraphs: list[str], headings: set[str], title: str | None,
                 generic: bool = False, allowed_labels: set[str] | None = None):
        self.source, self.doc_id, self.paragraphs, self.headings, self.title = source, doc_id, paragraphs, headings, title
        self.generic, self.allowed_labels = generic, allowed_labels
        self.parsed: list = []
        self._candidates = None
        self._terms = None

    @property
    def words(self) -> int:
        return sum(len(p.split()) for p in self.paragraphs)

    def candidates(self) -> list:
        if self._candidates is None:
            rng = random.Random(f"cand:{self.source}:{self.doc_id}")
            allowed, generic = self.allowed_labels, self.generic
            self._candidates = [c for c in q.candidates(self.parsed, rng, generic=generic)
                                if (not allowed or c[2].label_ in allowed)
                                and not (generic and re.search(r"[$/_\\()<>{}=.]\S", c[2].text))]
        return self._candidates

    def term_candidates(self) -> list:
        """`questions.term_candidates`: questions whose answer is the term a sentence is about (technical text)."""
        if self._terms is None:
            self._terms = q.term_candidates(self.parsed, random.Random(f"terms:{self.source}:{self.doc_id}"))
        return self._terms

    def ents(self) -> list[tuple[str, str]]:
        return [(e.text, e.label_) for d in self.parsed for e in d.ents]


def parse(excerpts: list[Excerpt]) -> None:
    """spaCy over every paragraph of the excerpts, one paragraph a spaCy Doc."""
    texts = [p for e in excerpts for p in e.paragraphs]
    docs = list(q.nlp().pipe(texts, batch_size=PARSE_BATCH))
    i = 0
    for e in excerpts:
        e.parsed = docs[i:i + len(e.paragraphs)]
        i += len(e.paragraphs)


# --- example makers -----------------------------------------------------------------------------------------

def window_around(paragraphs: list[str], p: int, rng: random.Random, low: int, high: int) -> tuple[int, int]:
    """Paragraph range [a, b) containing ``p`` with a random word target in [low, high]."""
    target = rng.randint(low, high)
    a, b = p, p + 1
    words = len(paragraphs[p].split())
    while words < target and (a > 0 or b < len(paragraphs)):
        if b < len(paragraphs) and (a == 0 or rng.random() < 0.5):
            nxt = len(paragraphs[b].split())
            if words + nxt > high:
                break
            b, words = b + 1, words + nxt
        else:
            nxt = len(paragraphs[a - 1].split())
            if words + nxt > high:
                break
            a, words = a - 1, words + nxt
    return a, b


def entity_qa(ex: Excerpt, rng: random.Random, low: int = 300, high: int = 1200, other_sentence: float = 0.5,
              terms: bool = False) -> dict | None:
    """A question whose answer is an entity of the excerpt (or, with ``terms``, the term a sentence of technical text is
    about: task ``term_qa``), over a window of ``low``-``high`` words around it; some asked from another sentence."""
    cands = ex.term_candidates() if terms else ex.candidates()
    if not cands:
        return None
    p, sent, ent, question = rng.choice(cands)
    a, b = window_around(ex.paragraphs, p, rng, low, high)
    paragraphs = ex.paragraphs[a:b]
    task = "term_qa" if terms else "entity_qa"
    if rng.random() < other_sentence:
        support = q.support_sentence(ex.parsed[a:b], sent, ent, question)
        if support is not None:
            local = p - a
            cut = paragraphs[local].replace(sent.text, "", 1)
            paragraphs = paragraphs[:local] + ([" ".join(cut.split())] if cut.strip() else []) + paragraphs[local + 1:]
            task += "_other_sentence"
    context = "\n".join(paragraphs)
    if ent.text not in context:
        return None
    return {"context": context, "prompt": question, "answer": ent.text, "task": task, "source": ex.source,
            "doc_id": ex.doc_id, "extractive": True, "answer_type": ent.label_}


def whole_doc(ex: Excerpt, kind: str, rng: random.Random) -> dict | None:
    if ex.words < 1000:
        return None
    made = q.whole_document(kind, ex.paragraphs, ex.ents(), rng, ex.headings, ex.title)
    if not made:
        return None
    return {"context": "\n".join(ex.paragraphs), "prompt": made[0], "answer": made[1], "task": f"whole_document_{kind}",
            "source": ex.source, "doc_id": ex.doc_id, "extractive": made[2]}


def descriptive(ex: Excerpt, rng: random.Random, low: int = 300, high: int = 1200) -> dict | None:
    """"Describe X." over a window of the excerpt, answered by the sentences of that window that mention X."""
    p = rng.randrange(len(ex.paragraphs))
    a, b = window_around(ex.paragraphs, p, rng, low, high)
    made = q.describe(ex.parsed[a:b], rng)
    if made is None:
        return None
    return {"context": "\n".join(ex.paragraphs[a:b]), "prompt": made[0], "answer": made[1], "task": "describe",
            "source": ex.source, "doc_id": ex.doc_id, "extractive": False, "topic": made[2]}


def section_lead(ex: Excerpt, rng: random.Random, low: int = 300, high: int = 1200) -> dict | None:
    """"Summarize the section on Y." over a window holding the heading Y, answered by the section's lead sentences."""
    places = [i for i, p in enumerate(ex.paragraphs) if p in ex.headings]
    if not places:
        return None
    a, b = window_around(ex.paragraphs, rng.choice(places), rng, low, high)
    made = q.section_summary(ex.paragraphs[a:b], ex.headings, rng)
    if made is None:
        return None
    return {"context": "\n".join(ex.paragraphs[a:b]), "prompt": made[0], "answer": made[1], "task": "summarize_section",
            "source": ex.source, "doc_id": ex.doc_id, "extractive": True, "heading": made[2]}


def passage(ex: Excerpt, rng: random.Random, p: int | None = None, low: int = 80, high: int = 200) -> str:
    p = rng.randrange(len(ex.paragraphs)) if p is None else p
    a, b = window_around(ex.paragraphs, p, rng, low, high)
    return "\n".join(ex.paragraphs[a:b])


def hide(example: dict, needle: str, others: list[Excerpt], rng: random.Random, n_docs: tuple[int, int],
         max_words: int, passage_words: tuple[int, int] = (80, 200)) -> dict | None:
    """The example's context becomes a shuffled list of passages from other documents plus ``needle``."""
    answer = q.word_pattern(example["answer"])
    k = rng.randint(*n_docs)
    pool = [o for o in others if o.doc_id != example["doc_id"]]
    docs, words = [needle], len(needle.split())
    for other in rng.sample(pool, min(len(pool), 3 * k)):
        if len(docs) >= k:
            break
        text = passage(other, rng, None, *passage_words)
        if answer.search(text) or words + len(text.split()) > max_words:
            continue
        docs.append(text)
        words += len(text.split())
    if len(docs) < min(n_docs[0], len(pool) + 1):
        return None
    rng.shuffle(docs)
    return {**example, "context": docs, "needle_index": docs.index(needle), "n_docs": len(docs)}


def haystack(ex: Excerpt, others: list[Excerpt], rng: random.Random, n_docs=(10, 30), max_words=3000) -> dict | None:
    example = entity_qa(ex, rng, 80, 200, other_sentence=0.3)
    if example is None:
        return None
    made = hide(example, example["context"], others, rng, n_docs, max_words)
    return made and {**made, "task": "haystack_" + example["task"]}


def entity_pool(excerpts: list[Excerpt]) -> dict[str, dict[str, list[str]]]:
    """Swap candidates by source and entity type: names that look like names (capitalised words, or numbers)."""
    pool: dict[str, dict[str, set[str]]] = {}
    for ex in excerpts:
        for text, label in ex.ents():
            if label in q.SWAP_LABELS and 1 <= len(text.split()) <= 4 and text.lower() not in q.PRONOUNS and \
                    re.fullmatch(r"[A-Z0-9][\w.,' -]*[\w.]", text) and (label in ("DATE", "CARDINAL", "MONEY")
                                                                     or all(w[:1].isupper() for w in text.split()
                                                                            if w not in ("of", "the", "and"))):
                pool.setdefault(ex.source, {}).setdefault(label, set()).add(text)
    return {s: {k: sorted(v) for k, v in labels.items()} for s, labels in pool.items()}


def counterfactuals(examples: list[dict], pool, share: float, rng: random.Random, technical=frozenset()) -> list[dict]:
    """Copies of about ``share`` of the examples with the answer entity swapped everywhere (``technical`` sources:
    only dates, numbers and people, NER being noisy on code)."""
    out = []
    for e in examples:
        labels = ("DATE", "CARDINAL", "PERSON") if e["source"] in technical else q.SWAP_LABELS
        if e.get("answer_type") in labels and rng.random() < share * 1.6:
            made = q.counterfactual(e, e["answer_type"], pool.get(e["source"], {}), rng)
            if made:
                out.append({**made, "task": made["task"] + "_counterfactual"})
    rng.shuffle(out)
    return out[: round(share * len(examples))]


def repeat(make, n: int, rng: random.Random, tries: int = 6) -> list[dict]:
    """Up to ``n`` examples from ``make(rng)`` (which may return None), giving up after ``tries * n + 20`` calls."""
    out, attempts = [], 0
    while len(out) < n and attempts < tries * n + 20:
        attempts += 1
        made = make(rng)
        if made:
            out.append(made)
    return out


# --- documents -> excerpts ----------------------------------------------------------------------------------

def is_heading(paragraph: str) -> bool:
    words = paragraph.split()
    return 1 <= len(words) <= 8 and paragraph[:1].isupper() and paragraph[-1] not in ".:;,?!)" and \
        sum(c.isalpha() for c in paragraph) >= 0.6 * len(paragraph)


def is_prose(paragraph: str) -> bool:
    """Paragraphs that read as text: PDF tables, formulas and page furniture are mostly not letters."""
    chars = "".join(paragraph.split())
    return len(paragraph.split()) >= 5 and sum(c.isalpha() for c in chars) >= 0.6 * len(chars)


def paragraphs_of(text: str, max_words: int = 400) -> list[str]:
    """One-line paragraphs and headings of a text file or a PDF's extracted text.

    Blank lines separate paragraphs; inside a block (a PDF page often has no blank lines) a short line ending a
    sentence ends its paragraph, and a short line that reads as a heading stands alone. Markdown ``#`` headings lose
    their marks; words hyphenated across lines are joined; paragraphs over ``max_words`` are cut at sentence ends.
    """
    out: list[str] = []

    def flush(lines: list[str]) -> None:
        joined = ""
        for line in lines:
            if joined.endswith("-") and joined[-2:-1].isalpha() and line[:1].islower():
                joined = joined[:-1] + line
            else:
                joined = f"{joined} {line}" if joined else line
        joined = " ".join(joined.split())
        if joined:
            out.extend(_cut(joined, max_words))
        lines.clear()

    for block in re.split(r"\n\s*\n", text):
        lines = [" ".join(line.split()) for line in block.splitlines() if line.strip()]
        width = max((len(line) for line in lines), default=0)
        current: list[str] = []
        for line in lines:
            if not re.search(r"\w", line):  # a rule or an underline (----, ****): a break, no text
                flush(current)
                continue
            marked = re.fullmatch(r"#{1,6}\s+(.+?)\s*#*", line)
            if marked or (is_heading(line) and (len(lines) == 1 or len(line) < 0.6 * width)):
                flush(current)
                out.append(marked.group(1) if marked else line)
                continue
            current.append(line)
            if re.search(r"[.!?:][\"')\]]*$", line) and len(line) < 0.8 * width:
                flush(current)
        flush(current)
    return out


def _cut(paragraph: str, max_words: int) -> list[str]:
    if len(paragraph.split()) <= max_words:
        return [paragraph]
    parts, current = [], []
    for sentence in q.split_sentences(paragraph):
        if current and len(" ".join(current + [sentence]).split()) > max_words:
            parts.append(" ".join(current))
            current = []
        current.append(sentence)
    parts.append(" ".join(current))
    return [p for part in parts for p in ([part] if len(part.split()) <= max_words else _hard_cut(part, max_words))]


def _hard_cut(text: str, max_words: int) -> list[str]:
    words = text.split()
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]


def looks_technical(text: str) -> bool:
    """Code, commands and markup in the prose (manuals, API docs): their NER labels are unreliable."""
    words = text.split()
    code = sum(bool(re.search(r"[_{}<>=\\]|\(\)|^--?\w|\w/\w|\.\w+\(", w)) for w in words)
    return bool(words) and code >= 0.02 * len(words)


def excerpts_of(doc_id: str, text: str, max_words: int = 2500, source: str = DOCUMENTS_SOURCE) -> list[Excerpt]:
    """The whole document as consecutive excerpts of at most ``max_words`` (prose paragraphs and headings)."""
    paragraphs = [p for p in paragraphs_of(text) if is_prose(p) or is_heading(p)]
    title = paragraphs[0] if paragraphs and is_heading(paragraphs[0]) else None
    generic = looks_technical(text)
    out, current, words = [], [], 0
    for p in paragraphs + [None]:
        if p is None or (current and words + len(p.split()) > max_words):
            if any(not is_heading(c) for c in current):
                out.append(Excerpt(source, doc_id, current, {c for c in current if is_heading(c)},
                                   title if not out and current[0] == title else None, generic))
            current, words = [], 0
        if p is not None:
            current.append(p)
            words += len(p.split())
    return out


# --- the build ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """How many lines of each kind to make, per 1,000 words of document (whole-document questions: per excerpt).

    ``sentence_share``: the most that questions answered by whole sentences (describe, summarize a section) may be of all
    question lines. Technical text yields few entity questions and many sentence ones; trained on such a mix, the model
    answers short questions with sentences too (measured on the GNU manuals: F1 46 -> 37, answers 2 -> 5 words).

    ``same_answer_share``: the most that the lines giving one answer may be of the short-answer question lines (at least
    ``SAME_ANSWER_FLOOR`` of them). A document that names its subject on every page makes it the answer of many
    questions; trained on them, the model answers it to questions about other documents (the Python docs: 29 of 225
    question lines answered "Argument Clinic", a train page; a model fine-tuned on them gave it to 5 of 52 held-out
    questions, and none with the cap: docs/eval/families).
    """

    entity_per_1000: float = 20.0
    term_per_1000: float = 4.0  # as many as there are: sentences about a quoted or code-like term are rare outside manuals
    describe_per_1000: float = 6.0
    section_per_1000: float = 2.0
    haystack_per_1000: float = 2.0
    whole_per_excerpt: int = 2
    counterfactual_share: float = 0.2
    restate_words: tuple[int, int] = (300, 1000)
    excerpt_words: int = 2500
    sentence_share: float = 0.2
    same_answer_share: float = 0.02


def restate_windows(ex: Excerpt, rng: random.Random, low: int, high: int) -> list[dict]:
    """The excerpt cut into consecutive windows of ``low``-``high`` words, each an understanding line."""
    out, current, words, target = [], [], 0, rng.randint(low, high)
    for p in ex.paragraphs:
        current.append(p)
        words += len(p.split())
        if words >= target:
            out.append(current)
            current, words, target = [], 0, rng.randint(low, high)
    if current and (words >= low or not out):
        out.append(current)
    elif current:
        out[-1] += current
    return [{"text": "\n".join(w), "task": "restate", "source": ex.source, "doc_id": ex.doc_id} for w in out]


def _quota(rate: float, words: int, rng: random.Random) -> int:
    """``rate`` per 1,000 words, the fraction drawn, so short documents still get their share on average."""
    expected = rate * words / 1000
    return int(expected) + (rng.random() < expected - int(expected))


def lines_from(excerpts: list[Excerpt], seed: int = 0, recipe: Recipe = Recipe()) -> list[dict]:
    """Every kind of line from parsed excerpts, excerpt by excerpt, each from its own seeded stream; no line twice."""
    technical = {ex.source for ex in excerpts if ex.generic}
    pool = entity_pool(excerpts)
    out, seen = [], set()
    for i, ex in enumerate(excerpts):
        rng = random.Random(f"{seed}:{ex.source}:{ex.doc_id}:{i}")
        for line in _excerpt_lines(ex, excerpts, pool, technical, rng, recipe):
            key = (line["task"], line["doc_id"], line.get("prompt"), line.get("answer"), line.get("text"))
            if key not in seen:  # the same question and answer twice (in other windows) teaches little new
                seen.add(key)
                out.append(line)
    out = cap_same_answers(out, recipe.same_answer_share, random.Random(f"{seed}:answers"))
    return cap_sentence_answers(out, recipe.sentence_share, random.Random(f"{seed}:sentences"))


SENTENCE_TASKS = ("describe", "summarize_section")
SAME_ANSWER_FLOOR = 3  # lines one answer may always keep: a small document's few questions are never thinned


def cap_same_answers(lines: list[dict], share: float, rng: random.Random) -> list[dict]:
    """A seeded draw of the lines that give one short answer (compared without case), dropped until each answer has at
    most ``share`` of the short-answer question lines or ``SAME_ANSWER_FLOOR`` of them, whichever is more."""
    by_answer: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if "prompt" in line and line.get("task") not in SENTENCE_TASKS:
            by_answer.setdefault(str(line.get("answer", "")).strip().lower(), []).append(i)
    most = max(SAME_ANSWER_FLOOR, int(share * sum(map(len, by_answer.values()))))
    drop = {i for same in by_answer.values() if len(same) > most for i in rng.sample(same, len(same) - most)}
    return [line for i, line in enumerate(lines) if i not in drop]


def cap_sentence_answers(lines: list[dict], share: float, rng: random.Random) -> list[dict]:
    """A seeded draw of the sentence-answer lines, dropped until they are at most ``share`` of the question lines."""
    sentence = [i for i, line in enumerate(lines) if line.get("task") in SENTENCE_TASKS]
    others = sum("prompt" in line for line in lines) - len(sentence)
    keep = min(len(sentence), int(share * others / (1 - share))) if share < 1 else len(sentence)
    drop = set(rng.sample(sentence, len(sentence) - keep))
    return [line for i, line in enumerate(lines) if i not in drop]


def _excerpt_lines(ex: Excerpt, excerpts: list[Excerpt], pool, technical: set[str], rng: random.Random,
                   recipe: Recipe) -> list[dict]:
    words = ex.words
    made = restate_windows(ex, rng, *recipe.restate_words)
    qa = repeat(lambda r: entity_qa(ex, r), _quota(recipe.entity_per_1000, words, rng), rng)
    qa += repeat(lambda r: entity_qa(ex, r, terms=True), _quota(recipe.term_per_1000, words, rng), rng)
    # An excerpt has few askable sentences, so draws repeat questions (later dropped as duplicates): the copies are a
    # share of the distinct questions, else they outnumber them (43 % of the lines over 600k words of prose).
    distinct: dict[tuple, dict] = {}
    for e in qa:
        distinct.setdefault((e["task"], e["prompt"], e["answer"]), e)
    qa = list(distinct.values())
    made += qa + counterfactuals(qa, pool, recipe.counterfactual_share, rng, technical)
    made += repeat(lambda r: descriptive(ex, r), _quota(recipe.describe_per_1000, words, rng), rng)
    made += repeat(lambda r: section_lead(ex, r), _quota(recipe.section_per_1000, words, rng), rng)
    made += repeat(lambda r: whole_doc(ex, r.choice(q.WHOLE_KINDS), r), recipe.whole_per_excerpt, rng, 12)
    others = [o for o in excerpts if o.doc_id != ex.doc_id]
    if len({o.doc_id for o in others}) >= 2:  # a haystack hides the passage among other documents' passages
        made += repeat(lambda r: haystack(ex, others, r, (3, 12), 2500), _quota(recipe.haystack_per_1000, words, rng), rng)
    return made


def build_lines(documents: list[tuple[str, str]], seed: int = 0, recipe: Recipe = Recipe()) -> list[dict]:
    """Training lines from ``(doc_id, text)`` documents (see the module docstring); spaCy parses them here."""
    excerpts = [ex for doc_id, text in documents for ex in excerpts_of(doc_id, text, recipe.excerpt_words)]
    parse(excerpts)
    return lines_from(excerpts, seed, recipe)


def split_documents(doc_ids: list[str], share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded ``share`` of whole documents held out, at least one when there are two or more
    (and the share is not 0), never all of them."""
    if not 0 <= share < 1:
        raise E2LLMError(f"the held-out share must be at least 0 and below 1, got {share}")
    order = random.Random(f"heldout:{seed}").sample(sorted(doc_ids), len(doc_ids))
    n = 0 if len(order) < 2 or share == 0 else min(len(order) - 1, max(1, round(share * len(order))))
    held = set(order[:n])
    return [d for d in doc_ids if d not in held], [d for d in doc_ids if d in held]


def task_counts(lines: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(line.get("task", "restate" if "text" in line else "qa") for line in lines).items()))


@dataclass
class DocumentLines:
    """Lines made from files: training lines from some documents, evaluation lines from the others (whole documents)."""

    train: list[dict]
    eval: list[dict]
    train_docs: list[str]
    eval_docs: list[str]
    skipped: list[str] = field(default_factory=list)  # "path: why" of files that could not be read


def from_files(files: list[Path], heldout_share: float = 0.1, seed: int = 0, recipe: Recipe = Recipe()) -> DocumentLines:
    """Read the files (txt, md, pdf: `e2llm_plugin.documents`), hold out a seeded share of whole documents for
    evaluation, and make each side's lines from its own documents only. A file that cannot be read is skipped and
    named in ``skipped`` (one scanned PDF should not stop a folder); none readable is an error."""
    files = [Path(f) for f in files]
    root = Path(os.path.commonpath([f.resolve().parent for f in files])) if files else Path()
    texts, skipped = {}, []
    for file in files:
        try:
            texts[file.resolve().relative_to(root).as_posix()] = read_file(file).text
        except (DocumentError, OSError) as err:  # as compress does: one unreadable file never stops a folder
            skipped.append(f"{file}: {err}" if isinstance(err, OSError) else str(err))
    if not texts:
        raise DocumentError("none of the documents could be read:\n  " + "\n  ".join(skipped or ["(no files)"]))
    train_ids, eval_ids = split_documents(sorted(texts), heldout_share, seed)
    excerpts = {doc_id: excerpts_of(doc_id, texts[doc_id], recipe.excerpt_words) for doc_id in texts}
    empty = [d for d, e in excerpts.items() if not e]
    if len(empty) == len(excerpts):
        raise DocumentError(f"no paragraph of prose in {', '.join(sorted(texts))}: nothing to make training tasks from")
    parse([e for doc_id in sorted(excerpts) for e in excerpts[doc_id]])

    def lines(ids: list[str]) -> list[dict]:
        return lines_from([e for doc_id in ids for e in excerpts[doc_id]], seed, recipe)

    skipped += [f"{d}: no paragraph of prose" for d in empty]
    return DocumentLines(lines(train_ids), lines(eval_ids), train_ids, eval_ids, skipped)
