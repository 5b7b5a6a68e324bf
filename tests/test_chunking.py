import itertools

import pytest
from conftest import LOREM
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm_plugin import embedded
from e2llm_plugin.chunking import Chunker
from e2llm_plugin.config import EMBEDDED_ENCODER
from e2llm_plugin.errors import DocumentError


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded.resolve(EMBEDDED_ENCODER))


def _tiles(chunks, text):
    """Without overlap, one document's chunk spans are contiguous and cover it exactly."""
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in itertools.pairwise(chunks):
        assert a.end == b.start
    assert "".join(c.text for c in chunks) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=600).filter(str.strip),
       budget=st.integers(8, 40))
def test_chunks_tile_any_text_within_budget(tokenizer, text, budget):
    chunks = Chunker(tokenizer, budget).split([text])
    _tiles(chunks, text)
    assert all(c.num_tokens <= budget for c in chunks)
    for c in chunks:  # the stored token count is the tokenizer's own count of the chunk's text
        assert len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= budget + 2


def test_cuts_at_sentence_or_line_ends(tokenizer):
    text = LOREM * 4
    chunks = Chunker(tokenizer, 30).split([text])
    assert len(chunks) > 3
    for c in chunks[:-1]:
        stripped = c.text.rstrip(" ")
        assert stripped.endswith(("\n", ".", "!", "?", ";")), repr(c.text[-30:])


def test_overlap_repeats_tokens_and_keeps_offsets(tokenizer):
    text = LOREM * 3
    chunks = Chunker(tokenizer, 30, overlap=5).split([text, "second document."])
    first_doc = [c for c in chunks if c.doc_index == 0]
    assert chunks[-1].doc_index == 1 and chunks[-1].text == "second document."
    for a, b in itertools.pairwise(first_doc):
        assert b.start < a.end  # overlapping spans
    for c in first_doc:
        assert text[c.start : c.end] == c.text
    assert first_doc[-1].end == len(text)


@pytest.mark.parametrize("bad, message", [
    ([], "no documents"), (None, "no documents"), (["  \n"], "whitespace"), ([b"bytes"], "bytes"), (["ok", 3], "int"),
])
def test_bad_documents(tokenizer, bad, message):
    with pytest.raises(DocumentError, match=message):
        Chunker(tokenizer, 20).split(bad)
