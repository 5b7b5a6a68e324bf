import base64
import itertools
import random
from pathlib import Path

import pytest
from conftest import LOREM
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm_plugin import embedded
from e2llm_plugin.chunking import CHARS_PER_TOKEN, Chunker, unknown_share, validate_documents
from e2llm_plugin.config import EMBEDDED_ENCODER
from e2llm_plugin.errors import DocumentError

EXAMPLE = Path(__file__).parent.parent / "examples" / "factbook_finland.txt"


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


def _sparse_base64() -> str:
    """Base64 of a mostly zero binary (an uncompressed bitmap, say): long runs of 'A' the tokenizer reads as one [UNK]."""
    data = bytearray(30_000)
    rng = random.Random(0)
    for i in range(0, len(data), 997):
        data[i] = rng.randrange(256)
    return base64.b64encode(bytes(data)).decode()


# Text the encoder cannot read: WordPiece makes each run without spaces one [UNK] (over 100 characters, or in a
# script its vocabulary lacks), so a token budget alone put each of these whole into one chunk.
UNREADABLE = {
    "a 20,000-character word": "z" * 20_000,
    "a base64 blob": _sparse_base64(),
    "Thai (no spaces between words)": "ภาษาไทยเขียนติดกันโดยไม่เว้นวรรคระหว่างคำ" * 400,
    "a long URL": "https://example.com/download?session=" + random.Random(1).randbytes(6000).hex() + "&next=/reports/2024/q3",
    "Japanese katakana": "ニホンゴノブンショウハカタカナダケデカクトタンゴノアイダニクウハクガナイ" * 200,
    "emoji": "😀🎉🚀" * 3000,
}
# Text the tokenizer reads in part or drops (whitespace, control characters): chunks stay bounded all the same.
OTHER = {
    "Chinese": "中华人民共和国位于亚洲东部，太平洋西岸。首都是北京，最大的城市是上海。" * 200,
    "a random base64 blob": base64.b64encode(random.Random(2).randbytes(15_000)).decode(),
    "a run of control characters": "start " + "\x00" * 5000 + "\u200b" * 5000 + " end.",
    "a run of spaces": "start" + " " * 20_000 + "end",
}


@pytest.mark.parametrize("name", [*UNREADABLE, *OTHER])
def test_no_chunk_exceeds_the_character_cap(tokenizer, name):
    text = {**UNREADABLE, **OTHER}[name]
    chunker = Chunker(tokenizer, 100)
    assert chunker.max_chars == CHARS_PER_TOKEN * 100
    chunks = chunker.split([text])
    _tiles(chunks, text)
    assert len(chunks) >= len(text) // chunker.max_chars
    assert all(len(c.text) <= chunker.max_chars and c.num_tokens <= 100 for c in chunks)
    assert 0.0 <= unknown_share(chunks) <= 1.0


@pytest.mark.parametrize("name", UNREADABLE)
def test_unreadable_text_is_measured(tokenizer, name):
    chunks = Chunker(tokenizer, 100).split(["A readable first sentence.\n", UNREADABLE[name]])
    assert chunks[0].unknown_chars == 0
    assert unknown_share([c for c in chunks if c.doc_index == 1]) > 0.9


@pytest.mark.parametrize("text", [EXAMPLE.read_text(), LOREM * 4])
def test_english_is_read_whole(tokenizer, text):
    chunks = Chunker(tokenizer, 100).split([text])
    assert unknown_share(chunks) < 0.01
    assert unknown_share([]) == 0.0


def test_a_long_word_is_cut_between_readable_text(tokenizer):
    text = "The report begins here. " + "q" * 5000 + " The report ends here."
    chunks = Chunker(tokenizer, 50).split([text])
    _tiles(chunks, text)
    assert chunks[0].text == "The report begins here. "  # not glued to a piece of the word
    assert chunks[-1].text.endswith("The report ends here.")
    assert all(len(c.text) <= 500 for c in chunks)
    assert sum(c.unknown_chars for c in chunks) == 5000


def test_overlap_with_a_long_word_repeats_pieces_not_the_word(tokenizer):
    text = "Intro sentence here. " + "w" * 8000 + " Outro."
    chunks = Chunker(tokenizer, 30, overlap=5).split([text])
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start <= a.end
    assert all(text[c.start : c.end] == c.text and len(c.text) <= 300 for c in chunks)


_RUNS = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "7", "ก", "ア", "😀", " ", "\n", "\x00", "\u200b", "é", "가"]),
                  st.integers(50, 1500))
_ANY_TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80), _RUNS),
                     min_size=1, max_size=6).map("".join).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(text=_ANY_TEXT, budget=st.integers(8, 40))
def test_chunks_tile_any_text_within_both_caps(tokenizer, text, budget):
    chunks = Chunker(tokenizer, budget).split([text])
    _tiles(chunks, text)
    for c in chunks:
        assert c.text and len(c.text) <= CHARS_PER_TOKEN * budget and c.num_tokens <= budget
        assert 0 <= c.unknown_chars <= len("".join(c.text.split()))
        assert len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= budget + 2
    assert 0.0 <= unknown_share(chunks) <= 1.0


@pytest.mark.parametrize("documents, index, position", [
    (["\ud800 at the start"], 0, 0),
    (["in the mid\udfffdle"], 0, 10),
    (["at the end \udbff"], 0, 11),
    (["a fine first document", "the second \udc00 one"], 1, 11),
    (["an emoji split into its UTF-16 halves: \ud83d\ude00"], 0, 39),
])
def test_lone_surrogates_are_refused_where_they_are(tokenizer, documents, index, position):
    expected = f"document {index} holds a lone surrogate .* at character {position}, .*; decode the source with errors='replace'"
    for call in (validate_documents, Chunker(tokenizer, 20).split):
        with pytest.raises(DocumentError, match=expected):
            call(documents)
