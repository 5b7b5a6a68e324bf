"""Split documents into chunks of at most `chunk_tokens` encoder tokens and `CHARS_PER_TOKEN * chunk_tokens` characters,
cut at sentence or line ends.

Chunks tile each document: without overlap, the spans `[start, end)` of one document's chunks are contiguous
and cover every character, so no text is ever dropped (whitespace between chunks belongs to the chunk before).
Each chunk keeps its document index and character offsets, for citations.

A token budget alone is not enough: WordPiece reads any word over 100 characters (a long run without spaces, Thai,
which has none) as one unknown token and drops control characters, so a whole document could end up in one chunk.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from .errors import DocumentError, check_unicode

# English reads at 4-5 characters a WordPiece token and no vocabulary piece is much over 20 characters, so 10 characters
# a token never binds on ordinary text; it bounds what one chunk stands for where tokens are [UNK] words or are missing.
CHARS_PER_TOKEN = 10

#: Changes whenever a change to the chunking gives other chunks for the same text and settings: contexts stored whole
#: are kept under it (`E2LLM.compress_each`), so the chunks of an older version are never served.
CHUNKING_VERSION = 1

_SENTENCE_END = re.compile(r"""[.!?;:]["')\]]*$""")


@dataclass(frozen=True)
class Chunk:
    text: str
    doc_index: int
    start: int  # character offsets into the document
    end: int
    num_tokens: int
    unknown_chars: int = 0  # non-whitespace characters the encoder reads as its unknown token: text it cannot see


def unknown_share(chunks: list[Chunk]) -> float:
    """Share of the non-whitespace characters of `chunks` that the encoder reads as its unknown token (0.0 for none)."""
    visible = sum(len("".join(c.text.split())) for c in chunks)
    return sum(c.unknown_chars for c in chunks) / visible if visible else 0.0


class _Unit(NamedTuple):
    """What chunks are made of: a token and the gap after it, spanning `[start, next unit's start)`."""

    start: int
    end: int  # where the token ends (the gap runs from here)
    tokens: int
    unknown: int  # non-whitespace characters of the token, if it is the unknown token


def validate_documents(documents) -> list[str]:
    """Check that `documents` is a non-empty list of non-blank strings and return it as a list."""
    if isinstance(documents, (str, bytes)):
        documents = [documents]
    if isinstance(documents, Mapping):
        raise DocumentError("documents is a dict; pass a list of strings (its values: list(documents.values()))")
    documents = list(documents) if documents is not None else []
    if not documents:
        raise DocumentError("no documents given: pass at least one non-empty string")
    for i, doc in enumerate(documents):
        if isinstance(doc, (bytes, bytearray)):
            raise DocumentError(f"document {i} is bytes; decode it first, e.g. data.decode('utf-8')")
        if not isinstance(doc, str):
            raise DocumentError(f"document {i} is a {type(doc).__name__}, expected str")
        if not doc.strip():
            raise DocumentError(f"document {i} is empty or whitespace only")
        check_unicode(doc, f"document {i}", DocumentError)
    return documents


#: Characters tokenized at a time: far above any chunk, small enough that a book-length text never sits in memory as
#: millions of token offsets at once.
SEGMENT_CHARS = 100_000


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[tuple[int, int]]:
    """`text` as consecutive (start, end) spans of at most `max_chars`, cut after a line break where there is one in the
    second half of the span, else after a space, else anywhere. They tile the text."""
    spans, start = [], 0
    while len(text) - start > max_chars:
        window = text[start + max_chars // 2 : start + max_chars]
        cut = max(window.rfind("\n"), -1)
        if cut < 0:
            cut = max(window.rfind(" "), -1)
        end = start + max_chars // 2 + cut + 1 if cut >= 0 else start + max_chars
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    return spans


class Chunker:
    """Token-budgeted chunking with a Hugging Face fast tokenizer (the encoder's, so budgets are exact), capped at
    `max_chars` characters a chunk. `overlap` counts tokens (a piece of a cut [UNK] word is one) repeated by the next chunk."""

    def __init__(self, tokenizer, chunk_tokens: int = 100, overlap: int = 0):
        if not getattr(tokenizer, "is_fast", False):
            raise DocumentError("the chunker needs a fast tokenizer (one that returns character offsets)")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.max_chars = CHARS_PER_TOKEN * chunk_tokens
        self.overlap = overlap

    def split(self, documents) -> list[Chunk]:
        documents = validate_documents(documents)
        chunks: list[Chunk] = []
        for doc_index, text in enumerate(documents):
            chunks.extend(self._split_one(text, doc_index))
        return chunks

    def _split_one(self, text: str, doc_index: int) -> list[Chunk]:
        # A long document is chunked a segment at a time, so memory stays bounded whatever its length.
        return [chunk for lo, hi in segments(text) for chunk in self._split_range(text, lo, hi, doc_index)]

    def _split_range(self, text: str, lo: int, hi: int, doc_index: int) -> list[Chunk]:
        units = self._units(text, lo, hi)
        n = len(units)
        bounds = [u.start for u in units] + [hi]
        ends = [u.end for u in units]
        tokens = [0]  # tokens[i]: tokens in the units before unit i
        for u in units:
            tokens.append(tokens[-1] + u.tokens)
        chunks = []
        first = 0  # index of the first unit of the current chunk
        while first < n:
            # The most units that keep both budgets; at least one (no unit is longer than max_chars).
            fit_tokens = bisect_right(tokens, tokens[first] + self.chunk_tokens) - 1
            fit_chars = bisect_right(bounds, bounds[first] + self.max_chars) - 1
            last = max(first + 1, min(fit_tokens, fit_chars))  # exclusive
            if last < n:
                last = self._cut(text, ends, bounds, first, last)
            unknown = sum(u.unknown for u in units[first:last])
            chunks.append(Chunk(text[bounds[first] : bounds[last]], doc_index, bounds[first], bounds[last],
                                tokens[last] - tokens[first], unknown))
            if last == n:
                break
            first = max(last - self.overlap, first + 1)
        return chunks

    def _units(self, text: str, lo: int, hi: int) -> list[_Unit]:
        """`text[lo:hi]` as units, the first taking any leading gap. A unit longer than `max_chars` (a long [UNK] word,
        a long run of whitespace or control characters) is cut into near-equal pieces, each tokenized again."""
        encoded = self.tokenizer(text[lo:hi], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        unk = self.tokenizer.unk_token_id
        units: list[_Unit] = []
        for token_id, (s, e) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
            if e <= s:
                continue
            # Offsets can span characters the tokenizer dropped; count what unknown_share divides by: non-whitespace.
            unknown = len("".join(text[lo + s : lo + e].split())) if token_id == unk else 0
            if units and units[-1].start == lo + s:  # one character read as several tokens (a Hangul syllable as jamo)
                u = units[-1]
                units[-1] = _Unit(u.start, max(u.end, lo + e), u.tokens + 1, max(u.unknown, unknown))
            else:
                units.append(_Unit(lo + s, lo + e, 1, unknown))
        if not units:  # text the tokenizer ignores entirely (whitespace, control characters): a unit of no tokens
            units = [_Unit(lo, lo, 0, 0)]
        units[0] = units[0]._replace(start=lo)
        bounds = [u.start for u in units] + [hi]
        result = []
        for u, (start, stop) in zip(units, itertools.pairwise(bounds), strict=True):
            if stop - start <= self.max_chars:
                result.append(u)
                continue
            pieces = -(-(stop - start) // self.max_chars)
            cuts = [start + (stop - start) * k // pieces for k in range(pieces + 1)]
            for a, b in itertools.pairwise(cuts):
                result.extend(self._units(text, a, b))
        return result

    def _cut(self, text: str, ends: list[int], bounds: list[int], first: int, limit: int) -> int:
        """Best end (exclusive unit index) in (first, limit]: a sentence or line end, else a word end."""
        floor = first + max(1, (limit - first) // 2)  # never make a chunk smaller than half the budget
        word_end = None
        for last in range(limit, floor - 1, -1):
            end, next_start = ends[last - 1], bounds[last]
            gap = text[end:next_start]
            if "\n" in gap or (gap and _SENTENCE_END.search(text[max(0, end - 3) : end])):
                return last
            if word_end is None and gap:
                word_end = last
        return word_end or limit
