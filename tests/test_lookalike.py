"""Questions among look-alike passages (research.lookalike): the added passages share the question's words, come from
other documents of the same source, and never hold the answer."""

from __future__ import annotations

import json

from research.lookalike import lookalike, main

KEEPERS = ["Brant", "Holloway", "Marsh", "Tindall", "Oakes", "Pryor", "Quarles", "Rudd"]


def _records() -> list[dict]:
    records = []
    for i, keeper in enumerate(KEEPERS):
        context = (f"The lighthouse at Elm Point was kept by {keeper} for {i + 3} years, and the lamp burned every "
                   f"night of the winter.\nFarmers of the valley sold {20 + i} carts of grain at the autumn market, "
                   f"more than in any year before.")
        records.append({"context": context, "prompt": "Who kept the lighthouse at Elm Point?", "answer": keeper,
                        "task": "entity_qa", "source": "sotu", "doc_id": f"speech-{i}", "answer_type": "PERSON"})
        # a counterfactual copy: the same paragraph with the name swapped, which must not serve as a look-alike
        records.append({**records[-1], "context": context.replace(keeper, "Zebedee"), "answer": "Zebedee",
                        "task": "entity_qa_counterfactual", "counterfactual": True})
    records.append({"context": "The lighthouse keepers of Elm Point met in the chapel of the town every spring to "
                    "elect a warden for the harbour.", "prompt": "Where did the keepers meet?", "answer": "the chapel",
                    "task": "entity_qa", "source": "austen", "doc_id": "novel-1", "answer_type": "LOC"})
    return records


def test_lookalike_adds_other_documents_passages_of_the_same_source_without_the_answer():
    made = lookalike(_records(), n=20, seed=0, negatives=(3, 5))
    assert made, "every sotu question has seven other speeches to draw look-alikes from"
    for r in made:
        assert r["task"].startswith("lookalike_entity_qa")
        own = r["context"][r["needle_index"]]
        assert r["answer"] in own
        others = [c for i, c in enumerate(r["context"]) if i != r["needle_index"]]
        assert 3 <= len(others) <= 5 and len(others) == r["n_docs"] - 1
        for text in others:
            assert r["answer"] not in text and "Zebedee" not in text and "chapel" not in text  # same source, real
            assert "lighthouse" in text  # ranked for the question's words
    # the austen question has no other document of its source: skipped, not padded with another source's passages
    assert not any(r["source"] == "austen" for r in made)


def test_lookalike_cli_writes_jsonl(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    out = tmp_path / "lookalike.jsonl"
    assert main([str(data), "--n", "3", "--seed", "1", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(isinstance(r["context"], list) for r in lines)
