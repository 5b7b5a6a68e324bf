"""The held-out document families for measuring domain adaptation (`research.families`): split by whole manual or
page, hand-written pages always in test, seeded, no test text on the train side, questions over test documents only."""

import json
import random

import pytest

from e2llm_plugin.autodata import questions as q
from e2llm_plugin.autodata import tasks
from e2llm_plugin.documents import read_file
from research import families as fam
from research.data_builders import sources


def _words(n: int, seed: int = 0) -> dict[str, int]:
    rng = random.Random(seed)
    return {f"manual{i:02d}": rng.randint(500, 20_000) for i in range(n)}


def test_split_keeps_units_whole_pins_and_bounds_the_text():
    words = _words(20)
    train, test = fam.split_units(words, seed=3, pinned=("manual07",))
    assert "manual07" in test
    assert sorted(train + test) == sorted(words) and not set(train) & set(test)
    total, in_test = sum(words.values()), sum(words[u] for u in test)
    assert len(test) >= round(fam.TEST_SHARE * len(words))
    assert fam.TEXT_SHARE[0] * total <= in_test <= fam.TEXT_SHARE[1] * total + words["manual07"]


def test_split_is_seeded():
    words = _words(20)
    assert fam.split_units(words, 1) == fam.split_units(dict(reversed(words.items())), 1)
    assert len({tuple(fam.split_units(words, seed)[1]) for seed in range(6)}) > 1


def test_split_refuses_what_it_cannot_do():
    with pytest.raises(fam.SplitError, match="nowhere"):
        fam.split_units(_words(5), 0, pinned=("nowhere",))
    with pytest.raises(fam.SplitError, match="two units"):
        fam.split_units({"only": 100}, 0)
    with pytest.raises(fam.SplitError, match="nothing is left"):
        fam.split_units({"a": 10, "b": 10}, 0, pinned=("a", "b"))


def test_train_documents_lose_the_paragraphs_they_share_with_test():
    licence = "Everyone is permitted to copy and distribute verbatim copies of this licence document."
    train = [sources.Doc("a/1", "A", ["Alpha starts here.", licence]), sources.Doc("a/2", "A", [licence])]
    test = [sources.Doc("b/1", "B", ["Beta starts here.", licence])]
    kept, dropped = fam.without_shared(train, test)
    assert [d.paragraphs for d in kept] == [["Alpha starts here."]]  # a/2 had nothing else
    assert dropped == {"a/1": 1, "a/2": 1}


def test_file_names_say_what_they_are():
    assert fam.file_name("gettext/Optimized gettext") == "gettext--optimized-gettext.txt"
    assert fam.file_name("howto/sorting") == "howto--sorting.txt"


def test_exported_files_read_back_as_their_paragraphs_and_overlap_is_caught(tmp_path):
    test_doc = sources.Doc("b/1", "Beta", ["Beta", "The beta release shipped in March 2019 with four new tools.",
                                           "Its manual was written by Ada Brandt in Lisbon."])
    train_doc = sources.Doc("a/1", "Alpha", ["Alpha", "The alpha tool compresses files with a dictionary coder."])
    names = fam.export([test_doc], tmp_path / "test")
    fam.export([train_doc], tmp_path / "train")
    text = read_file(tmp_path / "test" / names["b/1"]).text
    assert tasks.paragraphs_of(text) == test_doc.paragraphs
    assert fam.check_no_overlap(tmp_path / "train", tmp_path / "test") == 3
    fam.export([sources.Doc("a/2", "Alpha", ["Alpha 2", test_doc.paragraphs[2]])], tmp_path / "train")
    with pytest.raises(fam.Overlap, match="Ada Brandt"):
        fam.check_no_overlap(tmp_path / "train", tmp_path / "test")


def _line(prompt: str, answer: str, passage: str) -> dict:
    return {"prompt": prompt, "answer": answer, "context": ["another passage", passage], "needle_index": 1}


def test_rejection_rules():
    passage = "Nettle uses GMP for big numbers. The DSA standard was published by NIST in 1994. There are two modes."
    doc = "Introduction\n\n" + passage
    common = {"two"}

    def why(prompt, answer):
        return fam.rejection(_line(prompt, answer, passage), doc, ("nettle", "Introduction"), lambda a: a.lower() in common)

    assert why("Which agency published the DSA standard?", "NIST") is None
    assert why("Which agency published the DSA standard?", "IEEE") == "answer not in its document"
    assert why("Which agency published the DSA standard?", "NIS") == "answer not in its document"  # whole words only
    assert why("What was published?", "NIST") == "vague question"
    assert why("What uses GMP for big numbers?", "Nettle") == "answer names its own document"
    assert why("How many modes does the library offer here?", "two") == "guessable answer"


# --- a whole build over a toy family (spaCy's English pipeline) -----------------------------------------------

PEOPLE = ["Ada Brandt", "Hugo Silva", "Maria Costa", "Joao Pereira", "Helena Gomes", "Tomas Weber", "Ines Moreau",
          "Pavel Novak", "Lena Berg", "Omar Haddad", "Rosa Lind", "Karl Vogel"]
PLACES = ["Lisbon", "Porto", "Hamburg", "Lyon", "Genoa", "Glasgow", "Madrid", "Vienna", "Oslo", "Prague", "Dublin", "Turin"]


def _toy_docs() -> list[sources.Doc]:
    docs = []
    for d in range(12):
        paragraphs = [f"Station {d}"]
        for i in range(24):
            k = d * 24 + i
            paragraphs.append(
                f"The {['north', 'south', 'east', 'west'][k % 4]} gauge of station {d} was installed by "
                f"{PEOPLE[k % 12]} in {1850 + k}. The instrument was shipped from {PLACES[(k + d) % 12]} on a cargo "
                f"boat. Readings from the gauge were sent to the weather office every morning for {k + 3} years, "
                f"and the records of the tide were kept in a ledger at the harbour of {PLACES[(k + 5) % 12]}.")
        docs.append(sources.Doc(f"toy/station{d}", f"Station {d}", paragraphs))
    return docs


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    if not q.available():
        pytest.skip(f"spaCy's English pipeline is not installed ({q.INSTALL})")
    docs = _toy_docs()
    family = fam.Family("toy", "toy_source", "page", lambda: docs, lambda doc_id: doc_id, ("bench.jsonl",),
                        ("toy/station3",))
    bench = tmp_path_factory.mktemp("bench")
    # the benchmark's question about a test document and one about a train document, each over a ~700-word passage
    about = {"toy/station3": docs[3].paragraphs[1:12], "toy/station0": docs[0].paragraphs[1:12]}
    lines = [{"context": ["filler text", "\n".join(passage)], "prompt": f"When was the first gauge of {doc_id} installed?",
              "answer": passage[0].split(" in ")[1][:4], "task": "entity_qa",
              "source": "toy_source", "doc_id": doc_id, "extractive": True, "needle_index": 1}
             for doc_id, passage in about.items()]
    (bench / "bench.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path_factory.mktemp("built")
    summary = fam.build_family(family, out, bench, seed=0, n=12, minimum=1)
    return family, bench, out, summary


def test_build_asks_only_about_test_documents(toy):
    family, bench, built, summary = toy
    out = built / "toy"
    test_ids = set(summary["test"]["files"])
    assert "toy/station3" in test_ids and not test_ids & set(summary["train"]["files"])
    lines = [json.loads(x) for x in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines and {x["doc_id"] for x in lines} <= test_ids
    assert summary["questions"]["n"] == len(lines)
    test_texts = [p.read_text(encoding="utf-8") for p in (out / "test").glob("*.txt")]
    for line in lines:
        assert q.word_pattern(line["answer"]).search(fam.needle(line))
        assert all(fam._inside(c, test_texts) for c in line["context"])  # distractors too: test text only
    origins = {x["origin"] for x in lines}
    assert origins == {"generated", "benchmark:bench.jsonl"}  # the question about a train document (station0) left out
    assert [x["doc_id"] for x in lines if x["origin"] != "generated"] == ["toy/station3"]
    assert summary["seed"] == 0 and sorted(p.name for p in out.iterdir()) == ["summary.json", "test", "test.jsonl",
                                                                             "test_handwritten.jsonl", "train"]
    assert summary["handwritten"]["n"] == 0  # the hand-written file asks nothing about the toy family


def test_handwritten_questions_read_their_whole_document_and_a_wrong_answer_is_an_error(tmp_path):
    family = fam.Family("toy", "toy_source", "page", list, lambda doc_id: doc_id, (), ())
    texts = {"toy/a": "The gauge was installed by\nMary Anning in 1850.", "toy/b": "Other text."}
    questions = tmp_path / "questions.jsonl"
    rows = [{"family": "toy", "doc_id": "toy/a", "question": "Who installed the gauge?", "answers": ["Mary Anning"]},
            {"family": "other", "doc_id": "x/y", "question": "Not ours?", "answers": ["no"]}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    [line] = fam.handwritten_lines(family, texts, questions)
    assert line["context"] == [texts["toy/a"]] and line["answer"] == "Mary Anning" and line["origin"] == "handwritten"
    for wrong in ({"doc_id": "toy/a", "answers": ["Mary Annings"]}, {"doc_id": "toy/c", "answers": ["Mary Anning"]}):
        questions.write_text(json.dumps({**rows[0], **wrong}) + "\n", encoding="utf-8")
        with pytest.raises(fam.SplitError, match="fix the line by hand"):
            fam.handwritten_lines(family, texts, questions)


def test_build_is_deterministic(toy, tmp_path):
    family, bench, built, _ = toy
    fam.build_family(family, tmp_path, bench, seed=0, n=12, minimum=1)
    for name in ("test.jsonl", "train/toy--station0.txt", "test/toy--station3.txt"):
        assert (tmp_path / "toy" / name).read_bytes() == (built / "toy" / name).read_bytes()


def test_too_few_questions_is_an_error_that_leaves_the_old_build(toy):
    family, bench, built, _ = toy
    before = (built / "toy" / "test.jsonl").read_bytes()
    with pytest.raises(fam.SplitError, match="at least 500"):
        fam.build_family(family, built, bench, seed=0, n=2, minimum=500)
    assert (built / "toy" / "test.jsonl").read_bytes() == before
    assert sorted(p.name for p in built.iterdir()) == ["toy"]  # no staging left behind


# --- the real families (the corpora are read, not parsed: seconds) --------------------------------------------

@pytest.mark.parametrize("name", sorted(fam.FAMILIES))
def test_real_families_split_by_unit_with_handwritten_pages_in_test(name):
    family = fam.FAMILIES[name]
    try:
        split = fam.split_family(family, seed=0)
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")
    assert set(family.pinned) <= set(split.test_units)
    assert {family.unit_of(d.doc_id) for d in split.test} == set(split.test_units)
    assert {family.unit_of(d.doc_id) for d in split.train} <= set(split.train_units)
    test_paragraphs = {p for d in split.test for p in d.paragraphs}
    assert not any(p in test_paragraphs for d in split.train for p in d.paragraphs)
    words = {side: sum(len(p.split()) for d in docs for p in d.paragraphs) for side, docs in (("train", split.train),
                                                                                             ("test", split.test))}
    assert words["test"] < words["train"]
    assert fam.split_family(family, seed=0) == split
    texts = {d.doc_id: fam.document_text(d) for d in split.test}
    handwritten = fam.handwritten_lines(family, texts)  # every answer in its test document, or an error
    assert len(handwritten) >= 50 and len({x["prompt"] for x in handwritten}) == len(handwritten)
