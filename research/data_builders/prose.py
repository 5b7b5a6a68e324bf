"""Examples from running prose (speeches, novels, documentation, papers) that need no labels.

Reasoning tasks whose answer is read off the context, so they teach the decoder to *read* soft tokens:

- cloze: a sentence of the passage with 1-4 words blanked out; the answer is the missing words.
- continuation: a quote of 8-12 words; the answer is the 5-8 words right after it.

Understanding examples are plain capped windows of a document, for reconstruction training.

``unseen_kinds`` builds the generalisation test: ACL papers (a document kind absent from reasoning
training) asked cloze questions (seen kind), "in which section..." and "what is the title..." (unseen
kinds, extractive) and questions answered by aclsum's human summaries (unseen, abstractive); plus
held-out State of the Union speeches asked "which words come right before..." (an unseen kind over a
seen document kind).
"""
from __future__ import annotations

import random
import re

from e2llm_plugin.autodata.questions import split_sentences as _sentences

from .sources import Doc, Paper

_WORD = re.compile(r"\S+")
_STOPWORDS = set("""a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those he she they we you i his her their our your my me him them us not no so than then there
which who whom what when where why how all any some such can could would should will shall may might must do does
did have has had into out up over under about after before also only very more most other""".split())

CLOZE_TEMPLATES = (
    "Fill in the blank: {s}",
    "Which words fill the blank (____) in this sentence from the text? {s}",
    "Complete the sentence from the text with the missing words: {s}",
)
CONTINUATION_TEMPLATES = (
    "Which words come right after: \"{q}\"?",
    "In the text, what follows the words \"{q}\"?",
    "Continue the text after \"{q}\" with the next few words.",
)
PRECEDING_TEMPLATES = (
    "Which words come right before: \"{q}\"?",
    "In the text, which words precede \"{q}\"?",
)
SECTION_TEMPLATES = (
    "In which section of the paper does this passage appear: \"{q}\"?",
    "What is the heading of the section that contains: \"{q}\"?",
)
TITLE_TEMPLATES = ("What is the title of this paper?", "What is the paper called?")
SUMMARY_QUESTIONS = {
    "challenge": "What problem does this paper address? Answer in one sentence.",
    "approach": "What approach do the authors propose? Answer in one sentence.",
    "outcome": "What is the main outcome of this paper? Answer in one sentence.",
}


def without(doc: Doc, forbidden: re.Pattern | None) -> Doc:
    """The document minus paragraphs naming a forbidden (test-split) entity."""
    if forbidden is None:
        return doc
    return doc._replace(paragraphs=[p for p in doc.paragraphs if not forbidden.search(p)])


def split_docs(docs: list, n_eval: int, n_test: int, rng: random.Random) -> tuple[list, list, list]:
    """Train / eval / test documents: whole documents go to one split."""
    shuffled = rng.sample(docs, len(docs))
    return shuffled[n_eval + n_test:], shuffled[:n_eval], shuffled[n_eval:n_eval + n_test]


def window(paragraphs: list[str], rng: random.Random, min_words: int, max_words: int) -> str | None:
    """Consecutive paragraphs from a random start, cut at a sentence end near a random length.

    None when the document is shorter than ``min_words``.
    """
    if sum(len(p.split()) for p in paragraphs) < min_words:
        return None
    target = rng.randint(min_words, max_words)
    for _ in range(10):  # a start too close to the end leaves too few words; retry a few times
        start = rng.randrange(len(paragraphs))
        kept, words = [], 0
        for paragraph in paragraphs[start:]:
            sentences = []
            for sentence in _sentences(paragraph):
                if words + len(sentence.split()) > target:
                    break
                sentences.append(sentence)
                words += len(sentence.split())
            if sentences:
                kept.append(" ".join(sentences))
            if len(sentences) < len(_sentences(paragraph)):
                break
        if words >= min_words:
            return "\n".join(kept)
    return None


def cloze(context: str, rng: random.Random) -> tuple[str, str] | None:
    """(prompt, answer): blank 1-4 words of a sentence of the passage, including at least one content word.

    The blanked sentence is quoted whole, so it must occur once in the context to be unambiguous.
    """
    sentences = [s for s in _sentences(context.replace("\n", " ")) if 8 <= len(s.split()) <= 40]
    rng.shuffle(sentences)
    for sentence in sentences[:10]:
        if context.count(sentence) != 1:
            continue
        words = list(_WORD.finditer(sentence))
        size = rng.randint(1, 4)
        i = rng.randrange(len(words) - size + 1)
        span = sentence[words[i].start():words[i + size - 1].end()]
        lead, answer, trail = re.match(r"^(\W*)(.*?)(\W*)$", span, re.S).groups()
        if not any(len(w) > 3 and w.lower() not in _STOPWORDS for w in re.findall(r"[A-Za-z]+", answer)):
            continue
        blanked = sentence[:words[i].start()] + lead + "____" + trail + sentence[words[i + size - 1].end():]
        return rng.choice(CLOZE_TEMPLATES).format(s=blanked), answer
    return None


def _quote_and_neighbour(context: str, rng: random.Random, after: bool) -> tuple[str, str] | None:
    """A unique 8-12-word quote and the 5-8 words after (or before) it, all within one paragraph."""
    words = list(_WORD.finditer(context))
    for _ in range(10):
        q, k = rng.randint(8, 12), rng.randint(5, 8)
        if len(words) < q + k + 2:
            return None
        i = rng.randrange(1, len(words) - q - k)
        quote_words, other_words = (words[i:i + q], words[i + q:i + q + k]) if after else \
            (words[i + k:i + k + q], words[i:i + k])
        quote = context[quote_words[0].start():quote_words[-1].end()]
        answer = context[other_words[0].start():other_words[-1].end()].strip(" ,;:-\"'(")
        if "\n" in context[words[i].start():words[i + q + k - 1].end()] or context.count(quote) != 1:
            continue
        if answer and re.search(r"[A-Za-z]", answer):
            return quote, answer
    return None


def continuation(context: str, rng: random.Random) -> tuple[str, str] | None:
    found = _quote_and_neighbour(context, rng, after=True)
    return found and (rng.choice(CONTINUATION_TEMPLATES).format(q=found[0]), found[1])


def preceding(context: str, rng: random.Random) -> tuple[str, str] | None:
    found = _quote_and_neighbour(context, rng, after=False)
    return found and (rng.choice(PRECEDING_TEMPLATES).format(q=found[0]), found[1])


TASKS = {"cloze": cloze, "continuation": continuation}


def reasoning(pools: dict[str, list[Doc]], task: str, n: int, rng: random.Random,
              min_words: int = 600, max_words: int = 1500) -> list[dict]:
    """``n`` cloze or continuation examples over short passages, sources drawn evenly."""
    sources = sorted(name for name, docs in pools.items() if docs)
    out, attempts = [], 0
    while len(out) < n and attempts < 20 * n + 100:
        attempts += 1
        source = rng.choice(sources)
        doc = rng.choice(pools[source])
        context = window(doc.paragraphs, rng, min_words, max_words)
        made = context and TASKS[task](context, rng)
        if made:
            out.append({"context": context, "prompt": made[0], "answer": made[1], "task": task,
                        "source": source, "doc_id": doc.doc_id, "extractive": True})
    return out


def understanding(pools: dict[str, list[Doc]], rng: random.Random, max_words: int, min_words: int = 150) -> list[dict]:
    """One capped window per document, for reconstruction training."""
    out = []
    for source, docs in sorted(pools.items()):
        for doc in docs:
            text = window(doc.paragraphs, rng, min(min_words, max_words), max_words)
            if text:
                out.append({"text": text, "source": source, "doc_id": doc.doc_id})
    return out


def paper_text(paper: Paper, max_words: int) -> str:
    """Title, then paragraphs with a heading line wherever the section changes; capped in words."""
    lines, section, words = [paper.title], None, 0
    for heading, paragraph in paper.sections:
        if words + len(paragraph.split()) > max_words:
            break
        if heading and heading != section:
            lines.append(heading)
        section = heading or section
        lines.append(paragraph)
        words += len(paragraph.split())
    return "\n".join(lines)


def _section_question(paper: Paper, context: str, rng: random.Random) -> tuple[str, str] | None:
    candidates = [(h, p) for h, p in paper.sections
                  if h and 1 <= len(h.split()) <= 8 and len(p.split()) >= 20 and p in context and
                  re.search(r"[A-Za-z]", h)]
    for heading, paragraph in rng.sample(candidates, min(5, len(candidates))):
        words = paragraph.split()
        q = rng.randint(10, 15)
        start = rng.randrange(len(words) - q + 1)
        quote = " ".join(words[start:start + q])
        if context.count(quote) == 1 and context.count("\n" + heading + "\n") >= 1:
            return rng.choice(SECTION_TEMPLATES).format(q=quote), heading
    return None


def unseen_kinds(papers: list[Paper], speeches: list[Doc], n: int, rng: random.Random,
                 max_words: int = 6000) -> list[dict]:
    """The generalisation test set (see the module docstring), about ``n`` questions in five kinds."""
    shares = {"acl_cloze": 0.2, "acl_section": 0.2, "acl_title": 0.15, "acl_summary": 0.2, "sotu_preceding": 0.25}
    out = []
    for kind, share in shares.items():
        quota, made = max(1, round(share * n)), []
        docs = speeches if kind == "sotu_preceding" else papers
        order = rng.sample(docs, len(docs))  # distinct documents first, then around again
        for attempt in range(5 * quota if docs else 0):
            example = _unseen_example(kind, order[attempt % len(order)], rng, max_words)
            if example:
                made.append(example)
            if len(made) >= quota:
                break
        out += made
    return out


def _unseen_example(kind: str, doc, rng: random.Random, max_words: int) -> dict | None:
    if kind == "sotu_preceding":
        context = window(doc.paragraphs, rng, min(2000, max_words), max_words)
        made, task, source = context and preceding(context, rng), "preceding", "sotu"
    else:
        context, source = paper_text(doc, max_words), "acl"
        if kind == "acl_cloze":
            made, task = cloze(context, rng), "cloze"
        elif kind == "acl_section":
            made, task = _section_question(doc, context, rng), "qa"
        elif kind == "acl_title":
            made, task = (rng.choice(TITLE_TEMPLATES), doc.title), "qa"
        else:
            part = rng.choice(sorted(doc.summary))
            made, task = (SUMMARY_QUESTIONS[part], doc.summary[part]), "summary"
    if not made:
        return None
    return {"context": context, "prompt": made[0], "answer": made[1], "task": task, "source": source,
            "doc_id": doc.doc_id if isinstance(doc, Doc) else doc.paper_id, "kind": kind,
            "extractive": task != "summary"}
