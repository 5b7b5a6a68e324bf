"""Chunk ranking: BM25 over the chunks' words fused with the encoder's cosine similarity (`ranking="fused"`, the
default), against the cosine alone (`ranking="dense"`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import configured
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM, E2LLMConfig
from e2llm_plugin.context import CompressedContext
from e2llm_plugin.errors import ConfigError
from e2llm_plugin.ranking import Bm25, fuse, ranks, words

# Many lines alike, as in a Factbook profile: a dense embedding sees them all as "Finland - Government".
FIELDS = ["Capital: Helsinki", "Constitution: 1 March 2000", "Legal system: civil law", "Suffrage: 18 years of age",
          "Executive branch: chief of state President", "Legislative branch: unicameral Parliament",
          "Judicial branch: Supreme Court", "Political parties: Centre Party",
          "National holiday: Independence Day, 6 December (1917)",
          "Flag description: white with a blue cross", "National symbol: lion", "National anthem: Maamme",
          "Citizenship: by descent only", "Administrative divisions: 19 regions", "Independence: 6 December 1917"]
QUESTION = "What is the national holiday of Finland?"



def profile(model: E2LLM) -> CompressedContext:
    """One chunk per line (each line its own document), compressed by the tiny model."""
    return model.compress([f"Finland - Government - {line}" for line in FIELDS])


def test_words_are_the_same_for_chunks_and_questions():
    assert words("What is the NATIONAL holiday of Finland?") == ["national", "holiday", "finland"]
    assert words("Finland - Government - National holiday: Independence Day") == \
        ["finland", "government", "national", "holiday", "independence", "day"]
    assert words("") == words("what is the") == []


def test_bm25_scores_the_texts_that_share_the_rarest_words_highest():
    texts = ["the national anthem", "the national holiday is in December", "a holiday at the lake", "cats"]
    scores = Bm25(texts).scores("national holiday")
    assert max(range(4), key=scores.__getitem__) == 1
    assert scores[3] == 0.0 and all(s > 0 for s in scores[:3])
    assert Bm25(texts).scores("what is it?") == [0.0] * 4  # stopwords only: no lexical evidence
    assert Bm25([]).scores("anything") == []
    assert Bm25(["", ""]).scores("anything") == [0.0, 0.0]


def test_equal_scores_share_a_rank():
    assert ranks([0.5, 2.0, 0.5, 0.0, 0.0]) == [2, 1, 2, 4, 4]
    assert ranks([]) == []


def test_fusion_ranks_first_what_both_rank_first_and_leaves_the_dense_order_where_lexical_says_nothing():
    assert fuse([0.9, 0.1, 0.5], [3.0, 0.0, 1.0]) == [(0, 1.0), (2, pytest.approx(61 / 62)), (1, pytest.approx(61 / 63))]
    cosine = [0.2, 0.9, 0.4, 0.4]
    assert [i for i, _ in fuse(cosine, [0.0] * 4)] == [1, 2, 3, 0]  # dense order; a cosine tie goes to the earlier chunk
    assert fuse([], []) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab cdé\n-", max_size=30), max_size=12), st.text(alphabet="ab cdé?", max_size=12),
       st.data())
def test_fused_ranking_is_a_permutation_of_every_chunk(texts, question, data):
    cosine = data.draw(st.lists(st.floats(-1, 1), min_size=len(texts), max_size=len(texts)))
    fused = fuse(cosine, Bm25(texts).scores(question))
    assert sorted(i for i, _ in fused) == list(range(len(texts)))
    assert all(0 < score <= 1 for _, score in fused)
    assert [score for _, score in fused] == sorted((score for _, score in fused), reverse=True)


def test_a_question_naming_a_lines_words_ranks_that_line_first_where_dense_alone_does_not(tiny_model):
    ctx = profile(tiny_model)
    holiday = next(i for i, c in enumerate(ctx.chunks) if "National holiday" in c.text)
    with configured(tiny_model, ranking="dense"):
        dense = tiny_model.rank_chunks(QUESTION, ctx)
    assert dense[0][0] != holiday  # the tiny encoder is random: only the words can find it
    cosine = dict(dense)
    assert [s for _, s in dense] == sorted(cosine.values(), reverse=True)  # dense reports the cosine itself
    fused = tiny_model.rank_chunks(QUESTION, ctx)  # the default
    assert fused[0][0] == holiday
    assert sorted(i for i, _ in fused) == list(range(ctx.num_chunks))
    assert holiday in {i for i, _ in tiny_model.select_passages(QUESTION, ctx, tiny_model.config.hybrid_raw_tokens)}
    answer = tiny_model.answer(QUESTION, context=ctx, mode="rag", max_new_tokens=1)
    "".join(answer)
    assert answer.ranking == fused and holiday in {i for i, _ in answer.passages}


def test_the_lexical_index_is_built_once_per_context(tiny_model):
    ctx = profile(tiny_model)
    assert ctx.lexical_index is None  # nothing is built until a question is ranked
    tiny_model.rank_chunks(QUESTION, ctx)
    index = ctx.lexical_index
    tiny_model.rank_chunks("What is the capital?", ctx)
    assert ctx.lexical_index is index
    joined = CompressedContext.concat([ctx, tiny_model.compress(["Cats sleep a lot."])])
    assert joined.lexical_index is None  # its statistics span every chunk: built anew for the joined context
    assert joined.ensure_lexical_index().size == ctx.num_chunks + 1


def test_one_chunk_and_no_chunks(tiny_model):
    one = tiny_model.compress(["Austria's National Day is 26 October."])
    assert one.num_chunks == 1
    assert tiny_model.rank_chunks("When is the National Day?", one) == [(0, 1.0)]
    empty = CompressedContext([], None, 0, 0)
    assert tiny_model.rank_chunks("When is the National Day?", empty) == []
    assert tiny_model.select_passages("When is the National Day?", empty, 100) == []


def test_ranking_is_a_checked_reading_option_and_old_checkpoints_get_the_default(tiny_model, tiny_checkpoint, tmp_path):
    from e2llm_plugin.finetune import config_flags

    assert E2LLMConfig().ranking == "fused"
    assert E2LLMConfig.from_dict(E2LLMConfig(ranking="dense").to_dict()).ranking == "dense"
    with pytest.raises(ConfigError, match="ranking"):
        E2LLMConfig(ranking="bm25")
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("ranking")  # a checkpoint saved before the option existed
    (old / "config.json").write_text(json.dumps(config))
    assert E2LLM.from_pretrained(old).config.ranking == "fused"
    dense = E2LLM.from_pretrained(old, ranking="dense")
    dense.save_pretrained(tmp_path / "dense")
    assert E2LLM.from_pretrained(tmp_path / "dense").config.ranking == "dense"
    flag = next(f for f in config_flags() if f.name == "ranking")
    assert flag.group == "reading" and flag.choices == ("fused", "dense")
    ctx = profile(tiny_model)
    with configured(tiny_model, ranking="bm25"), pytest.raises(ConfigError, match="ranking"):  # set after validation
        tiny_model.rank_chunks(QUESTION, ctx)


@pytest.mark.slow
def test_the_quick_start_questions_answer_line_is_among_the_hybrid_passages():
    """The README's question over the Factbook profile: dense ranking put the holiday's chunk 6th, past the 5 that fit
    hybrid's raw budget; fused ranking puts it among them (first with rounds 12 and 18, second with round 17)."""
    model = E2LLM.from_pretrained()
    ctx = model.compress([(Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text(encoding="utf-8")])
    reading = model.read(QUESTION, ctx, "hybrid")
    assert any("National holiday: Independence Day, 6 December (1917)" in ctx.chunks[i].text for i, _ in reading.passages)
    assert any("6 December (1917)" in ctx.chunks[i].text for i, _ in reading.ranking[:2])
