"""Questions among other documents (research.distractors): the question's own document kept whole, the others
never its own, never holding the answer nor from an excluded source, long enough, and pinned to hybrid reading."""

from __future__ import annotations

import json

import pytest

from e2llm_plugin.training.data import JsonlDataset
from research.distractors import distractors, main

KEEPERS = ["Brant", "Holloway", "Marsh", "Tindall"]


def _records() -> list[dict]:
    records = []
    for i, keeper in enumerate(KEEPERS):
        context = (f"The lighthouse at Elm Point was kept by {keeper} for {i + 3} years, and the lamp burned every "
                   f"night of the winter.\nFarmers of the valley sold {20 + i} carts of grain at the autumn market, "
                   f"more than in any year before.")
        records.append({"context": context, "prompt": "Who kept the lighthouse at Elm Point?", "answer": keeper,
                        "task": "entity_qa", "source": "novels", "doc_id": f"novel-{i}", "answer_type": "PERSON"})
    for i in range(30):  # other sources: papers name one of the keepers now and then, the speeches are excluded
        name = KEEPERS[i % 4] if i % 5 == 0 else "the committee"
        records.append({"context": f"Paper {i} reports that the measurements were checked by {name} twice, and the "
                        "error of the instrument stayed below one part in a thousand over the whole season.",
                        "prompt": "Who checked the measurements?", "answer": name, "task": "qa_other",
                        "source": "papers", "doc_id": f"paper-{i}"})
        records.append({"context": f"Speech {i}: the nation stands strong, and the Congress has done its work this "
                        "year with the help of every citizen who served in the war and in the peace after it.",
                        "prompt": "Who helped?", "answer": "every citizen", "task": "qa_other", "source": "sotu",
                        "doc_id": f"speech-{i}"})
    return records


def test_distractors_are_other_documents_without_the_answer_up_to_the_drawn_length():
    made = distractors(_records(), n=10, seed=0, words=(300, 600))
    assert len(made) == len(KEEPERS)  # only the entity questions
    for r in made:
        assert r["task"] == "distractors_entity_qa" and r["mode"] == "hybrid" and r["source"] == "novels"
        own = r["context"][r["needle_index"]]
        assert r["answer"] in own and "lighthouse" in own
        others = [c for i, c in enumerate(r["context"]) if i != r["needle_index"]]
        assert len(others) == r["n_docs"] - 1 and sum(len(c.split()) for c in others) >= 300
        assert all(r["answer"] not in c and "Speech" not in c for c in others)  # no second answer, no speech
    # the other novels' chapters serve too: other keepers of the lighthouse, as the probe's speeches name other people
    assert any("lighthouse" in c for r in made for i, c in enumerate(r["context"]) if i != r["needle_index"])


def test_a_question_too_long_for_the_pool_is_skipped_not_padded():
    assert distractors(_records(), n=10, seed=0, words=(10**6, 10**6)) == []


def test_distractors_cli_writes_lines_the_trainer_reads(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    out = tmp_path / "distractors.jsonl"
    assert main([str(data), "--n", "2", "--words", "60:120", "--seed", "1", "--out", str(out)]) == 0
    dataset = JsonlDataset(out)
    assert len(dataset) == 2 and all(r.mode == "hybrid" and len(r.context) >= 2 for _, r in dataset.records())
    with pytest.raises(SystemExit, match="--words"):
        main([str(data), "--words", "200:100", "--out", str(out)])
