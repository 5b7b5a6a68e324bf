"""`python -m e2llm_plugin.evaluate`: metrics, methods' accounting and the CLI end to end on tiny models; the repo's
milestone targets (`python -m research.targets`) on its results."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LOREM, build_tiny_model

from e2llm_plugin.errors import E2LLMError
from e2llm_plugin.evaluate import main
from e2llm_plugin.evaluation.methods import METHODS, Evaluator, Example, load_examples
from e2llm_plugin.evaluation.metrics import (
    PeakMemory,
    answer_in,
    answer_recall,
    exact_match,
    f1_score,
    loops,
    normalize_answer,
    rouge_l,
    score,
)
from research import targets
from research.data_builders.factbook import HELD_OUT_FIELD


# ---- metrics --------------------------------------------------------------------------------------------------------
def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear & the plum") == "apple pear plum"
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # SQuAD's worked example: one common token of 2 predicted and 3 gold -> P 1/2, R 1/3, F1 0.4
    assert f1_score("Denver Broncos", "the Broncos of Denver") == pytest.approx(2 * (1 / 1) * (2 / 3) / (1 + 2 / 3))
    assert f1_score("Broncos win", "Denver Broncos team") == pytest.approx(0.4)
    assert f1_score("nothing", "Denver") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("a", "Denver") == 0.0
    assert f1_score("42 42", "42") == pytest.approx(2 * 0.5 * 1 / 1.5)
    # a gold answer made of punctuation is matched by itself only, not by any other string without words
    assert f1_score(":", "':'") == 1.0 and exact_match("<<<<<<", "':'") == 0.0 and f1_score("", ":") == 0.0
    assert score("<<<<<<<<", ["a colon", "colon", "':'"])["f1"] == 0.0


def test_answer_recall_ignores_verbosity():
    gold = "National Day, 26 October (1955)"
    assert answer_recall(f"The national holiday of Austria is {gold}, a public holiday.", gold) == 1.0
    assert answer_recall("It is on 26 October.", gold) == pytest.approx(2 / 5)
    assert answer_recall("no idea", gold) == 0.0
    assert f1_score(f"The national holiday of Austria is {gold}, a public holiday.", gold) < 1.0


def test_rouge_l_rewards_words_in_order():
    gold = "The lighthouse was built in 1852. It guided ships past the reef."
    assert rouge_l(gold, gold) == 1.0
    # normalised, the longest common subsequence "lighthouse was built in 1852" is 5 of 6 predicted and 5 of 10 gold words
    assert rouge_l("A lighthouse was built there in 1852.", gold) == pytest.approx(2 * (5 / 6) * (5 / 10) / (5 / 6 + 5 / 10))
    shuffled = "reef the past ships guided it 1852 in built was lighthouse"
    assert f1_score(shuffled, gold) == 1.0 and rouge_l(shuffled, gold) < 0.2  # same words, no order
    assert rouge_l("nothing alike", gold) == 0.0 and rouge_l("", "") == 1.0
    assert score("built in 1852", [gold, "in 1852"])["rouge_l"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_answer_in_matches_whole_normalised_words():
    assert answer_in("Austria - National holiday: National Day, 26 October (1955)", "the National Day, 26 October") == 1.0
    assert answer_in("It was 1955.", "1955") == 1.0
    assert answer_in("In 11955 nothing happened.", "1955") == 0.0  # not inside another token
    assert answer_in("no date here", "26 October") == 0.0


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        block += 1
        del block
    assert memory.peak_mb > 40


# ---- methods on the tiny model --------------------------------------------------------------------------------------
def _example(copies=6, question="When is the National Day of Austria?"):
    return Example(question, "26 October", [LOREM * copies], {"field": "National holiday"})


@pytest.fixture(scope="module")
def tiny_rag_model(tiny_config):
    """A second tiny model with other LoRA weights: stands in for a checkpoint trained with finetune --mode rag."""
    return build_tiny_model(tiny_config, seed=1).eval()


def test_every_method_runs_and_reports_its_costs(tiny_model, tiny_rag_model):
    evaluator = Evaluator(tiny_model, window=1024, max_new_tokens=4, rag_model=tiny_rag_model)
    outcomes, stats = evaluator.run_example(_example())
    assert list(outcomes) == list(METHODS) and stats["chunks"] > 4
    for method, o in outcomes.items():
        assert o.ok, (method, o.note)
        assert o.ttft_s > 0 and o.total_s >= o.ttft_s and o.peak_mb >= 0 and 0 <= o.f1 <= 1
    tokens = {m: o.tokens_read for m, o in outcomes.items()}
    assert tokens["closed_book"] < tokens["soft"] < tokens["hybrid"] < tokens["full_context"]
    assert outcomes["truncation"].prediction == outcomes["full_context"].prediction  # fits: the same prompt
    assert abs(tokens["rag_base"] - tokens["hybrid"]) <= 8  # RAG reads hybrid's budget (a few wrapper tokens apart)
    assert tokens["rag_base"] == tokens["rag_tuned"] == tokens["rag_ft"]  # the same passages, other decoders
    hits = {m: o.passage_hit for m, o in outcomes.items()}
    assert all(hits[m] in (0.0, 1.0) for m in ("rag_base", "rag_tuned", "rag_ft", "hybrid"))
    assert hits["rag_base"] == hits["rag_tuned"] == hits["rag_ft"]
    assert all(hits[m] is None for m in ("closed_book", "truncation", "full_context", "soft"))
    # soft reads the same prompt as the text baselines with soft tokens in the context slot
    assert tokens["soft"] == tiny_model.answer_text(_example().question, "").prompt_tokens + stats["soft_tokens"]


def test_rag_ft_needs_a_rag_model(tiny_model):
    with pytest.raises(E2LLMError, match="--rag-model"):
        Evaluator(tiny_model).run_example(_example(), ["rag_ft"])


def test_rag_ft_reads_with_its_own_decoder(tiny_model, tiny_rag_model):
    """rag_ft decodes with the text-RAG checkpoint's LoRA, not E2LLM's: on the same prompt the logits differ."""
    prompt = _text_prompt(tiny_model, "Which river?", LOREM)
    with torch.inference_mode():
        mine = tiny_model.decoder.model(inputs_embeds=prompt.embeds).logits
        theirs = tiny_rag_model.decoder.model(inputs_embeds=prompt.embeds).logits
    assert not torch.allclose(mine, theirs)


def test_window_caps_text_baselines(tiny_model):
    window, new = 160, 4
    evaluator = Evaluator(tiny_model, window=window, max_new_tokens=new)
    outcomes, _ = evaluator.run_example(_example(copies=8), ["truncation", "full_context", "rag_base", "soft"])
    assert not outcomes["full_context"].ok and "n/a" in outcomes["full_context"].note
    assert outcomes["truncation"].tokens_read == window - new
    assert outcomes["rag_base"].tokens_read <= window - new
    assert outcomes["soft"].ok  # E2LLM is not held to the text window


def test_base_decoder_differs_from_tuned(tiny_model):
    """rag_base runs with LoRA disabled: its logits differ from rag_tuned's on the same prompt."""
    evaluator = Evaluator(tiny_model, max_new_tokens=2)
    prompt = _text_prompt(tiny_model, "Which river?", LOREM)
    tuned = tiny_model.decoder.model(inputs_embeds=prompt.embeds).logits
    with evaluator.decoder_for("rag_base"):
        base = tiny_model.decoder.model(inputs_embeds=prompt.embeds).logits
    assert not torch.allclose(tuned, base)


def _text_prompt(model, question, text):
    return model.decoder.build_prompt(model.decoder.text_embeddings(text), f"Answer the question: {question}")


def test_another_chunk_size_is_read_without_changing_the_model(tiny_model):
    before = len(tiny_model.compress([LOREM * 4]).chunks)
    assert len(tiny_model.compress([LOREM * 4], chunk_tokens=12).chunks) > before
    assert len(tiny_model.compress([LOREM * 4]).chunks) == before
    with pytest.raises(E2LLMError, match="chunk_tokens"):
        tiny_model.compress([LOREM], chunk_tokens=4)


# ---- research.targets -----------------------------------------------------------------------------------------------
def _row(**f1s):
    def outcome(f1, tokens):
        return {"prediction": "x", "em": 0.0, "f1": f1, "recall": f1, "ttft_s": 1.0, "total_s": 1.0, "tokens_read": tokens,
                "peak_mb": 1.0}

    tokens = {"full_context": 1000, "soft": 50}
    return {"methods": {m: outcome(v, tokens.get(m, 300)) for m, v in f1s.items()}}


def test_targets_are_judged_on_paired_questions():
    files = {
        "short.jsonl": {"examples": [_row(closed_book=0.1, soft=0.6, hybrid=0.7, rag_base=0.6, rag_tuned=0.68,
                                          rag_ft=0.64, full_context=0.65)] * 3},
        "heldout.jsonl": {"examples": [{**_row(closed_book=0.1, soft=0.2), "field": HELD_OUT_FIELD}]},
    }
    found = targets.targets(files)
    # +50 F1; +10/+10 over rag_base; only +2 over rag_tuned; +6/+6 over rag_ft; 92% of full context at 20x fewer
    # tokens; held out only +10
    assert [t["met"] for t in found] == [True, True, False, True, True, False]
    assert list(found[0]["per_file"]) == ["short.jsonl"] and list(found[5]["per_file"]) == ["heldout.jsonl"]
    # full context n/a on a question: the comparison uses only the questions where both ran
    files["short.jsonl"]["examples"] = [_row(soft=0.6, full_context=0.65), _row(soft=0.0, full_context=None)]
    files["short.jsonl"]["examples"][1]["methods"]["full_context"] = {"prediction": None}
    assert targets.targets(files)[4]["met"] is True
    assert targets.targets({"a.jsonl": {"examples": [_row(soft=1.0)]}})[0]["met"] is None  # closed book never ran


# ---- the command line -----------------------------------------------------------------------------------------------
@pytest.fixture
def data_files(tmp_path):
    short, held = tmp_path / "short.jsonl", tmp_path / "held.jsonl"
    rows = [{"context": LOREM * n, "prompt": f"Question {n}: when is the National Day?", "answer": "26 October",
             "field": "National holiday"} for n in (3, 5, 40)]
    short.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"text": "understanding only"}) + "\n")
    held.write_text(json.dumps({"context": [LOREM, LOREM * 2], "prompt": "When was independence?", "answer": "1955",
                                "field": "Independence"}) + "\n")
    return short, held


def test_cli_writes_json_markdown_and_plot(tiny_checkpoint, data_files, tmp_path, capsys):
    short, held = data_files
    out = tmp_path / "eval"
    code = main(["--model", str(tiny_checkpoint), "--data", str(short), str(held), "--out", str(out), "--window", "600",
                 "--max-new-tokens", "3", "--reconstruction", str(short), "--reconstruction-windows", "2",
                 "--ratio-sweep", "12,48", "--sweep-models", str(tiny_checkpoint), "--sweep-questions", "2"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["files"]) == {"short.jsonl", "held.jsonl"}
    summary = results["files"]["short.jsonl"]["summary"]
    assert summary["soft"]["n"] == 3 and summary["full_context"]["n"] == 2  # the 40x context does not fit 600 tokens
    assert "rouge_l" in summary["soft"] and "rouge_l" in results["files"]["short.jsonl"]["examples"][0]["methods"]["soft"]
    assert results["reconstruction"]["windows"] == 2
    assert [p["chunk_tokens"] for p in results["sweep"]] == [12, 24, 48, 24]
    ratios = [p["compression_ratio"] for p in results["sweep"][:3]]
    assert ratios == sorted(ratios)
    assert "rag_ft" not in summary
    md = (out / "results.md").read_text()
    assert "| soft |" in md and "short.jsonl" in md and md in capsys.readouterr().out
    assert "## Targets" not in md  # the milestone targets are the repo's, not the package's
    assert (out / "compression.png").read_bytes()[:4] == b"\x89PNG"
    # the targets, from the written results.json alone: held.jsonl asks only the held-out field
    assert targets.main([str(out / "results.json")]) == 0
    assert capsys.readouterr().out.startswith("## Targets\n")
    found = targets.targets(results["files"])
    assert len(found) == 6 and list(found[5]["per_file"]) == ["held.jsonl"] and list(found[0]["per_file"]) == ["short.jsonl"]
    assert found[3]["met"] is None  # no --rag-model: not measured


def test_cli_rejects_unknown_methods(tiny_checkpoint, data_files, tmp_path, capsys):
    argv = ["--model", str(tiny_checkpoint), "--data", str(data_files[0]), "--out", str(tmp_path), "--methods", "soft,oracle"]
    assert main(argv) == 2
    assert "oracle" in capsys.readouterr().err
    assert main(argv[:-1] + ["rag_ft"]) == 2
    assert "--rag-model" in capsys.readouterr().err


def test_cli_runs_the_text_rag_baseline_from_its_own_checkpoint(tiny_checkpoint, data_files, tmp_path):
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_checkpoint), "--rag-model", str(tiny_checkpoint), "--data", str(data_files[0]),
            "--out", str(out), "--methods", "rag_tuned,rag_ft,hybrid", "--max-questions", "2", "--max-new-tokens", "3"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["rag_model"] == str(tiny_checkpoint)
    for row in results["files"]["short.jsonl"]["examples"]:  # the same weights read the same passages: same answer
        assert row["methods"]["rag_ft"]["prediction"] == row["methods"]["rag_tuned"]["prediction"]


def test_load_examples_skips_understanding_lines_and_shuffles(data_files):
    short, _ = data_files
    assert len(load_examples(short)) == 3
    assert sorted(e.question for e in load_examples(short, seed=1)) == sorted(e.question for e in load_examples(short))
    assert len(load_examples(short, 2)) == 2


def test_the_best_accepted_answer_counts():
    assert score("It was 5 of them", ["five", "5"])["f1"] > 0 == score("It was 5 of them", ["five"])["f1"]
    assert score("five", "five") == {"em": 1.0, "f1": 1.0, "recall": 1.0, "rouge_l": 1.0}
    example = Example("How many?", "five", ["text"], answers=["5", "five"])
    assert example.answers == ["five", "5"]  # the canonical answer first, never twice


def test_looping_answers_are_told_from_short_and_listing_ones():
    assert loops("We're growing too fast. We're growing too slow. We're growing too fast. We're growing too slow.")
    assert loops("yes yes yes yes yes yes")
    assert not loops("Independence Day, 6 December (1917)")
    assert not loops("red, green and blue; red and green")
    quoted = "The policy that will work best is local. The policy that will work best is shared."
    assert loops(quoted) and not loops(quoted, source="Words. " + quoted)  # the document says it twice: a quote
    assert loops(quoted + " The policy that will work best", source=quoted)  # once more than the document: a loop


def test_load_examples_keeps_every_accepted_answer(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"context": "x", "prompt": "q?", "answer": "five", "answers": ["five", "5", " "]}) + "\n")
    assert load_examples(path)[0].answers == ["five", "5"]


def _results(path, rows):
    """A results.json as the evaluation writes it, with the fields `--combine` reads."""
    examples = [{"question": q, "answer": a, "task": task, "methods": {
        m: {"prediction": p, "em": 0.0, "f1": 0.0, "recall": 0.0, "ttft_s": 1.0, "total_s": 1.0, "tokens_read": 9,
            "peak_mb": 1.0, "passage_hit": hit if m != "soft" else None} for m, p in preds.items()}}
        for q, a, task, hit, preds in rows]
    return {"files": {"set.jsonl": {"path": str(path), "summary": {m: {} for m in rows[0][4]}, "examples": examples}}}


def test_combine_rescores_against_accepted_answers_and_adds_the_subsets(tmp_path, capsys):
    data = tmp_path / "set.jsonl"
    data.write_text(json.dumps({"context": "x", "prompt": "How many?", "answer": "five", "answers": ["five", "5"]}) + "\n"
                    + json.dumps({"context": "x", "prompt": "Which part?", "answer": "the end"}) + "\n")
    rows = [("How many?", "five", "qa", 0.0, {"rag_tuned": "ten", "hybrid": "5"}),
            ("Which part?", "the end", "whole_document_section", 1.0,
             {"rag_tuned": "the end", "hybrid": "so on and so on and so on and so on"})]
    for label in ("new", "old"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "results.json").write_text(json.dumps(_results(data, rows)))
    out = tmp_path / "bench"
    assert main(["--combine", f"new={tmp_path / 'new'}", f"old={tmp_path / 'old'}", "--out", str(out)]) == 0
    table = json.loads((out / "benchmark.json").read_text())
    assert table["set.jsonl"]["new:hybrid"]["f1"] == 50.0  # "5" is an accepted answer; the looping one scores 0
    assert table["set.jsonl"]["new:rag_tuned"]["f1"] == 50.0
    assert table["ranking missed the answer"]["new:hybrid"]["n"] == 1  # hybrid's passages missed "How many?"
    assert table["ranking missed the answer"]["new:hybrid"]["f1"] == 100.0
    assert table["whole-document questions"]["new:rag_tuned"]["f1"] == 100.0
    md = (out / "benchmark.md").read_text()
    assert "| looping answers (all sets) | 0 | 1 | 0 | 1 |" in md and md in capsys.readouterr().out
    assert main(["--combine", str(tmp_path / "new"), "--out", str(out)]) == 2  # no LABEL=
    assert main(["--out", str(out)]) == 2  # neither --data nor --combine


def test_compare_methods_pools_paired_differences_by_kind_of_set(capsys):
    from research import compare

    def run(name, f1s):
        examples = [{"question": str(i), "methods": {"rag_tuned": {"f1": a}, "hybrid": {"f1": b}}}
                    for i, (a, b) in enumerate(f1s)]
        return {"files": {name: {"examples": examples}}}

    runs = [run("test_general_novels.jsonl", [(1.0, 0.5), (0.0, 0.5)]),
            run("test_factbook_short.jsonl", [(1.0, 0.0), (1.0, 0.0)])]
    pooled = compare.compare_methods(runs, "hybrid", "rag_tuned")
    assert pooled == {"general sets": [50.0, -50.0], "Factbook sets": [100.0, 100.0]}
    out = capsys.readouterr().out
    assert "general sets (n=2): rag_tuned - hybrid: F1 +0.0 ± 98.0" in out and "Factbook sets (n=2)" in out
    runs[0]["files"]["test_general_novels.jsonl"]["examples"][0]["methods"]["hybrid"]["rouge_l"] = 0.25
    runs[0]["files"]["test_general_novels.jsonl"]["examples"][0]["methods"]["rag_tuned"]["rouge_l"] = 0.75
    assert compare.compare_methods(runs, "hybrid", "rag_tuned", metric="rouge_l") == {"general sets": [50.0],
                                                                                       "Factbook sets": []}
    with pytest.raises(SystemExit):
        compare.main(["one.json"])  # neither two runs nor --methods
    with pytest.raises(SystemExit, match="these results hold: hybrid, rag_tuned"):
        compare.compare_methods(runs, "hybrid", "rag")  # a method the runs do not have


def test_compare_runs_pairs_two_benchmark_folders_set_by_set_and_pools_them(tmp_path, capsys):
    from research import compare

    def store(folder, name, f1s):
        examples = [{"question": str(i), "methods": {"hybrid": {"f1": f1, "prediction": str(f1)}}} for i, f1 in enumerate(f1s)]
        (tmp_path / folder / name).mkdir(parents=True)
        (tmp_path / folder / name / "results.json").write_text(json.dumps({"files": {f"{name}.jsonl": {"examples": examples}}}))

    for folder, novels, papers in (("old", [0.0, 1.0], [0.5, 0.5]), ("new", [1.0, 1.0], [0.5, 1.0])):
        store(folder, "test_general_novels", novels)
        store(folder, "test_general_papers", papers)
    assert compare.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "test_general_novels.jsonl hybrid: 1/2 answers identical; F1 +50.0" in out
    assert "general sets hybrid (n=4): F1 +37.5" in out
    assert compare.main(["--metric", "rouge_l", str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    assert "ROUGE-L" not in capsys.readouterr().out  # no answer carries it: nothing to pair
    with pytest.raises(SystemExit, match="no \\*/results.json"):
        compare.main([str(tmp_path), str(tmp_path / "new")])


def test_generation_options_reach_every_method(tiny_checkpoint, data_files, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["--model", str(tiny_checkpoint), "--data", str(data_files[1]), "--out", str(out), "--methods", "closed_book,hybrid",
            "--max-new-tokens", "6", "--generation", "no_repeat_ngram_size=1"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["generation"]["no_repeat_ngram_size"] == 1
    assert "no_repeat_ngram_size=1" in (out / "results.md").read_text()
    assert main(argv[:-1] + ["temprature=1"]) == 2 and "temprature" in capsys.readouterr().err
    assert main(argv[:-1] + ["no_repeat_ngram_size"]) == 2


def test_hybrid_expansion_is_chosen_per_run(tiny_checkpoint, data_files, tmp_path):
    argv = ["--model", str(tiny_checkpoint), "--data", str(data_files[1]), "--methods", "hybrid", "--max-new-tokens", "2"]
    for expansion in ("duplicate", "replace"):
        assert main([*argv, "--out", str(tmp_path / expansion), "--hybrid-expansion", expansion]) == 0
        assert json.loads((tmp_path / expansion / "results.json").read_text())["config"]["hybrid_expansion"] == expansion


def test_ranking_is_chosen_per_run(tiny_checkpoint, data_files, tmp_path):
    argv = ["--model", str(tiny_checkpoint), "--data", str(data_files[1]), "--methods", "rag_tuned", "--max-new-tokens", "2"]
    for ranking in ("dense", "fused"):
        assert main([*argv, "--out", str(tmp_path / ranking), "--ranking", ranking]) == 0
        assert json.loads((tmp_path / ranking / "results.json").read_text())["config"]["ranking"] == ranking


def test_soft_chunk_cap_is_chosen_per_run(tiny_checkpoint, data_files, tmp_path):
    argv = ["--model", str(tiny_checkpoint), "--data", str(data_files[1]), "--methods", "soft", "--max-new-tokens", "2"]
    read = {}
    for cap in (1, 0):
        assert main([*argv, "--out", str(tmp_path / str(cap)), "--max-soft-chunks", str(cap)]) == 0
        results = json.loads((tmp_path / str(cap) / "results.json").read_text())
        assert results["config"]["max_soft_chunks"] == cap
        read[cap] = [e["methods"]["soft"]["chunks_read"] for f in results["files"].values() for e in f["examples"]]
    assert all(capped == 1 < whole for capped, whole in zip(read[1], read[0], strict=True))  # one chunk, not all
    assert main([*argv, "--out", str(tmp_path / "bad"), "--max-soft-chunks", "-1"]) != 0


@pytest.mark.slow
def test_shipped_checkpoint_end_to_end(tmp_path):
    from pathlib import Path

    data = Path(__file__).parent.parent / "data" / "v1" / "test_factbook_short.jsonl"
    if not data.exists():
        pytest.skip("data/v1 not built: python -m research.data_builders --out data/v1")
    out = tmp_path / "eval"
    argv = ["--data", str(data), "--out", str(out), "--max-questions", "2", "--window", "2048", "--max-new-tokens", "16"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["files"]["test_factbook_short.jsonl"]["summary"]
    assert all(summary[m]["n"] == 2 for m in ("closed_book", "rag_base", "soft", "hybrid"))
    assert summary["soft"]["tokens_read"] * 5 < summary["truncation"]["tokens_read"]


def test_combine_keeps_apart_one_question_asked_of_two_documents(tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text("".join(json.dumps({"context": c, "prompt": "Who gave this address?", "answer": a}) + "\n"
                            for c, a in (("x", "Lincoln"), ("y", "Grant"))))
    rows = [("Who gave this address?", "Lincoln", "qa", 1.0, {"hybrid": "Lincoln"}),
            ("Who gave this address?", "Grant", "qa", 1.0, {"hybrid": "Grant"})]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(_results(data, rows)))
    assert main(["--combine", f"run={tmp_path / 'run'}", "--out", str(tmp_path / "bench")]) == 0
    table = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert table["set.jsonl"]["run:hybrid"]["f1"] == 100.0


def test_combine_merges_directories_given_the_same_label(tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text(json.dumps({"context": "x", "prompt": "q?", "answer": "a"}) + "\n")
    for name, method in (("one", "soft"), ("two", "hybrid")):
        (tmp_path / name).mkdir()
        results = _results(data, [("q?", "a", "qa", 1.0, {method: "a"})])
        results["files"] = {f"{name}.jsonl": results["files"]["set.jsonl"]}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    assert main(["--combine", f"run={tmp_path / 'one'}", f"run={tmp_path / 'two'}", "--out", str(tmp_path / "b")]) == 0
    table = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert table["one.jsonl"]["run:soft"]["f1"] == table["two.jsonl"]["run:hybrid"]["f1"] == 100.0
