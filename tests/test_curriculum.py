"""The long-context curriculum (research.curriculum) on a tiny training file, chunked by the real encoder tokenizer."""

from __future__ import annotations

import json

import pytest

from e2llm_plugin.autodata.questions import word_pattern
from e2llm_plugin.training.data import JsonlDataset
from research import curriculum as cu

COUNTRIES = ["Finland", "Norway", "Chile", "Peru", "Kenya", "Japan"]
HOLIDAYS = ["Independence Day, 6 December (1917)", "Constitution Day, 17 May (1814)", "Independence Day, 18 September (1810)",
            "Independence Day, 28 July (1821)", "Independence Day, 12 December (1963)", "Foundation Day, 11 February"]
PLACES = ["harbour", "mill", "library", "bridge", "market", "school", "chapel", "station"]


def _prose(i: int) -> str:
    """A document of several sentences, different for every ``i``."""
    place, other = PLACES[i % len(PLACES)], PLACES[(i + 3) % len(PLACES)]
    return (f"The {place} of Elmstead was rebuilt in {1800 + 7 * i} after a long winter. Mayor Hollis Brant{i} paid "
            f"{30 + i} workers to carry stone from the {other}. The work took {i % 9 + 2} years and the town grew. "
            f"Travellers wrote that the {place} was the finest in the valley, and {i + 4} inns opened beside it.")


def _lines() -> list[str]:
    lines = []
    for i, (country, holiday) in enumerate(zip(COUNTRIES, HOLIDAYS, strict=True)):
        context = (f"{country} - Government - National holiday: {holiday}\n{country} - Geography - Climate: "
                   f"temperate in the south, cold in the north; {country} has {i + 3} large rivers and many lakes.")
        lines.append({"context": context, "prompt": f"What is the national holiday of {country}?", "answer": holiday,
                      "task": "qa", "source": "factbook", "doc_id": country[:2].lower(), "country": country,
                      "field": "National holiday", "extractive": True})
    for i in range(30):
        text = _prose(i)
        lines.append({"context": text, "prompt": f"How many workers did Mayor Hollis Brant{i} pay?", "answer": str(30 + i),
                      "task": "entity_qa", "source": "sotu", "doc_id": f"speech-{i}", "extractive": True,
                      "answer_type": "CARDINAL"})
        lines.append({"text": text + " " + _prose(i + 40), "source": "sotu", "doc_id": f"speech-{i}"})
    lines.append({"context": _prose(99), "prompt": "How often does the name \"Elmstead\" occur in the text?", "answer": "1",
                  "task": "whole_document_count", "source": "sotu", "doc_id": "speech-99", "extractive": False})
    return [json.dumps(line) + "\n" for line in lines]


@pytest.fixture(scope="module")
def count():
    return cu.chunk_counter("embedded:all-MiniLM-L6-v2", 24)


@pytest.fixture(scope="module")
def stages(count):
    return cu.build(_lines(), [8, 24, 60], [6, 6, 4], count, seed=0)


def test_contexts_grow_stage_by_stage_within_their_bounds(stages, count):
    assert [len(s) for s in stages] == [6, 6, 4]
    for low, high, records in zip((0, 8, 24), (8, 24, 60), stages, strict=True):
        for record in records:
            assert low < record["chunks"] <= high
            assert record["chunks"] == sum(count(text) for text in record["context"])  # what finetune's chunker will cut
            assert record["task"].startswith("long_") and record["stage"] == stages.index(records) + 1
    assert max(r["chunks"] for r in stages[-1]) > 3 * max(r["chunks"] for r in stages[0])


def test_the_answer_is_held_by_its_document_alone(stages):
    originals = {json.loads(line)["prompt"]: json.loads(line) for line in _lines() if "prompt" in json.loads(line)}
    records = [r for stage in stages for r in stage]
    for record in records:
        original = originals[record["prompt"]]
        assert original["task"] != "whole_document_count"  # its answer would change among other documents
        needle = record["context"][record["needle_index"]]
        assert needle == original["context"]
        holds = word_pattern(record["answer"])
        assert [i for i, text in enumerate(record["context"]) if holds.search(text)] == [record["needle_index"]]
    assert any(r["siblings"] for r in records) and any(r["variants"] for r in records)
    assert any(r["distractor_variants"] for r in records) and len({r["needle_index"] for r in records}) > 2


def test_a_sibling_answers_another_question():
    needles, _, pools = cu.load(_lines())
    finland = next(n for n in needles if n.record.get("country") == "Finland")
    assert finland.name == "Finland"
    import random

    made = [cu.sibling(finland, pools, random.Random(seed)) for seed in range(5)]
    for text in filter(None, made):
        assert "Finland" not in text and "6 December (1917)" not in text
        assert any(country in text for country in COUNTRIES[1:]) and any(h in text for h in HOLIDAYS[1:])
    assert any(made)
    variant = cu.variant(finland.text, pools["factbook:names"], random.Random(0), drop=finland.record["answer"])
    assert variant and "6 December" not in variant and "Finland" in variant  # the fact dropped, the rest kept


def test_stage_files_are_finetune_data_and_deterministic(stages, count, tmp_path):
    cu.write(tmp_path / "a", stages, [8, 24, 60], {"seed": 0})
    cu.write(tmp_path / "b", cu.build(_lines(), [8, 24, 60], [6, 6, 4], count, seed=0), [8, 24, 60], {"seed": 0})
    for i in (1, 2, 3):
        path = tmp_path / "a" / f"stage_{i}.jsonl"
        assert path.read_bytes() == (tmp_path / "b" / f"stage_{i}.jsonl").read_bytes()
        assert len(JsonlDataset(path, qa_only=True)) == len(stages[i - 1])
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["stages"]["stage_3.jsonl"]["chunks"] == [25, 60]
    assert "--max-chunks 60" in manifest["stages"]["stage_3.jsonl"]["finetune"]
    other = cu.build(_lines(), [8, 24, 60], [6, 6, 4], count, seed=1)
    assert [r["prompt"] for r in other[2]] != [r["prompt"] for r in stages[2]]


def test_stage_bounds_fit_the_window():
    assert cu.stage_bounds(None, 8192, 800, 1) == [16, 64, 256, 1024, 4096, 7392]
    assert cu.stage_bounds(None, 8192, 800, 4)[-1] == 1848
    with pytest.raises(cu.CurriculumError, match="lower it to 1848"):
        cu.stage_bounds([16, 4096], 8192, 800, 4)
    with pytest.raises(cu.CurriculumError, match="increasing"):
        cu.stage_bounds([64, 16], 8192, 800, 1)
    with pytest.raises(cu.CurriculumError, match="one per stage"):
        cu.build(_lines(), [8, 24], [3], len)


def test_command_line_writes_the_stages(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(_lines()))
    assert cu.main([str(data), "--out", str(tmp_path / "out"), "--stages", "8,24", "--per-stage", "3,2",
                    "--chunk-tokens", "24"]) == 0
    assert [len((tmp_path / "out" / f"stage_{i}.jsonl").read_text().splitlines()) for i in (1, 2)] == [3, 2]
    assert "stage_2.jsonl: 2 records of 9-24 chunks" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cu.main([str(data), "--out", str(tmp_path / "bad"), "--stages", "8,24", "--window", "20", "--reserve", "4"])
