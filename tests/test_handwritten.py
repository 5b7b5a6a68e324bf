"""The hand-written held-out test set: shape, split hygiene, and every answer still in its document.

The shape tests need no corpus; the document-backed tests skip, naming the install command, when the
corpus of a source is not installed (as ``tests/test_data_builders.py`` does).
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

from research.data_builders import handwritten as hw
from research.data_builders import sources

# The held-out test speeches of the data builders (seed 0), see the manifest's ``test_speeches``.
TEST_SPEECHES = {"1828-Adams-1", "1831-Jackson-1", "1851-Fillmore-1", "1860-Buchanan-1", "1866-Johnson-1", "1879-Hayes-1",
                 "1898-McKinley-1", "1926-Coolidge-1", "1944-Roosevelt-1", "1973-Nixon-10", "1973-Nixon-5", "2020-Trump-1"}
HELD_OUT_DOC_DIRS = ("tutorial/", "howto/")


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    return hw.load_questions()


def _texts_or_skip(source: str) -> dict[str, str]:
    try:
        return {doc_id: hw.document_text(source, doc_id) for doc_id in hw.DOC_IDS[source]}
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")


# --- no corpus needed -----------------------------------------------------------------------------------

def test_at_least_60_questions_of_every_kind(questions):
    assert len(questions) >= 60
    kinds = Counter(q["kind"] for q in questions)
    assert set(kinds) == set(hw.KINDS), kinds
    assert all(kinds[k] >= 3 for k in hw.KINDS), kinds


def test_no_duplicate_questions(questions):
    seen = Counter(" ".join(q["question"].lower().split()) for q in questions)
    assert [q for q, n in seen.items() if n > 1] == []


def test_answers_are_short_and_distinct(questions):
    for q in questions:
        assert all(len(a.split()) <= 8 for a in q["answers"]), q
        assert len(set(q["answers"])) == len(q["answers"]), q


def test_doc_ids_match_the_questions(questions):
    used = {(q["source"], q["doc_id"]) for q in questions}
    declared = {(s, d) for s, ids in hw.DOC_IDS.items() for d in ids}
    assert used == declared


def test_doc_ids_are_held_out_speeches_and_doc_pages():
    assert set(hw.DOC_IDS["sotu"]) <= TEST_SPEECHES
    assert all(d.startswith(HELD_OUT_DOC_DIRS) for d in hw.DOC_IDS["python_docs"])


def test_check_raises_when_an_answer_is_gone():
    q = {"source": "sotu", "doc_id": "x", "question": "Who?", "answers": ["Tim Scott", "Scott"]}
    hw.check(q, "a plan spearheaded by Senator Tim Scott.")
    with pytest.raises(hw.AnswerNotInDocument, match="Tim Scott"):
        hw.check(q, "a plan spearheaded by Senator Scott.")
    with pytest.raises(hw.AnswerNotInDocument):  # inside a longer word does not count
        hw.check({**q, "answers": ["Scott"]}, "Scottish")


def test_build_raises_when_a_document_text_changed(monkeypatch):
    monkeypatch.setattr(hw, "document_text", lambda source, doc_id: "a text with none of the answers")
    with pytest.raises(hw.AnswerNotInDocument, match="not in"):
        hw.build()


# --- on the real corpora --------------------------------------------------------------------------------

@pytest.mark.parametrize("source", hw.SOURCES)
def test_every_answer_is_in_its_document(questions, source):
    texts = _texts_or_skip(source)
    missing = [(q["doc_id"], a) for q in questions if q["source"] == source
               for a in q["answers"] if not hw.occurs(a, texts[q["doc_id"]])]
    assert missing == []


def test_acl_papers_are_from_the_test_split():
    try:
        split = {p.paper_id: p.split for p in sources.acl_papers()}
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")
    assert {d: split.get(d) for d in hw.DOC_IDS["acl"]} == {d: "test" for d in hw.DOC_IDS["acl"]}


def test_build_lines_load_as_evaluation_examples(tmp_path, questions):
    try:
        lines = hw.build()
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")
    assert len(lines) == len(questions)
    for line, q in zip(lines, questions, strict=True):
        assert line["prompt"] == q["question"] and line["answer"] == q["answers"][0] and line["answers"] == q["answers"]
        assert line["task"] == "handwritten_" + q["kind"] and line["source"] == "handwritten" and line["extractive"] is True
        assert isinstance(line["context"], list) and len(line["context"]) == 1 and line["answer"] in line["context"][0]
    path = tmp_path / "handwritten.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    from e2llm_plugin.evaluation.methods import load_examples

    examples = load_examples(path)
    assert len(examples) == len(lines)
    assert examples[0].meta["task"].startswith("handwritten_") and examples[0].documents == lines[0]["context"]
