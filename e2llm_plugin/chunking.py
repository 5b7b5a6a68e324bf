"""Split documents into chunks of at most `chunk_tokens` encoder tokens, cut at sentence or line ends.

Chunks tile each document: without overlap, the spans `[start, end)` of one document's chunks are contiguous
and cover every character, so no text is ever dropped (whitespace between chunks belongs to the chunk before).
Each chunk keeps its document index and character offsets, for citations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import DocumentError

_SENTENCE_END = re.compile(r"""[.!?;:]["')\]]*$""")


@dataclass(frozen=True)
class Chunk:
    text: str
    doc_index: int
    start: int  # character offsets into the document
    end: int
    num_tokens: int


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
    return documents


class Chunker:
    """Token-budgeted chunking with a Hugging Face fast tokenizer (the encoder's, so budgets are exact)."""

    def __init__(self, tokenizer, chunk_tokens: int = 100, overlap: int = 0):
        if not getattr(tokenizer, "is_fast", False):
            raise DocumentError("the chunker needs a fast tokenizer (one that returns character offsets)")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    def split(self, documents) -> list[Chunk]:
        documents = validate_documents(documents)
        chunks: list[Chunk] = []
        for doc_index, text in enumerate(documents):
            chunks.extend(self._split_one(text, doc_index))
        return chunks

    def _split_one(self, text: str, doc_index: int) -> list[Chunk]:
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
        offsets = [(s, e) for s, e in offsets if e > s]
        if not offsets:  # text the tokenizer ignores entirely (control characters, say): keep it as one chunk
            return [Chunk(text, doc_index, 0, len(text), 0)]
        n = len(offsets)
        chunks = []
        first = 0  # index of the first token of the current chunk
        span_start = 0  # character where the current chunk's span starts
        while first < n:
            last = min(first + self.chunk_tokens, n)  # exclusive
            if last < n:
                last = self._cut(text, offsets, first, last)
            span_end = len(text) if last == n else offsets[last][0]
            chunks.append(Chunk(text[span_start:span_end], doc_index, span_start, span_end, last - first))
            if last == n:
                break
            next_first = max(last - self.overlap, first + 1)
            span_start = span_end if next_first == last else offsets[next_first][0]
            first = next_first
        return chunks

    def _cut(self, text: str, offsets, first: int, limit: int) -> int:
        """Best end (exclusive token index) in (first, limit]: a sentence or line end, else a word end."""
        floor = first + max(1, (limit - first) // 2)  # never make a chunk smaller than half the budget
        word_end = None
        for last in range(limit, floor - 1, -1):
            end, next_start = offsets[last - 1][1], offsets[last][0]
            gap = text[end:next_start]
            if "\n" in gap or (gap and _SENTENCE_END.search(text[max(0, end - 3) : end])):
                return last
            if word_end is None and gap:
                word_end = last
        return word_end or limit
