"""`CompressedContext`: documents after compression, reusable across any number of questions."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .chunking import Chunk, unknown_share
from .ranking import Bm25
from .store import entry_problem


class PrefixCache:
    """Decoder KV caches of prompt prefixes ([template · soft tokens]) over one context, by content: a question asked
    again over the same context prefills only its own tokens. A few are kept (a prefix per history, say), LRU. The model
    backs them with its store where one holds the whole context, so another process reads it instead of prefilling."""

    def __init__(self, size: int = 4):
        self.size = size
        self._caches: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._caches:
                self._caches.move_to_end(key)
            return self._caches.get(key)

    def put(self, key, cache) -> None:
        with self._lock:
            self._caches[key] = cache
            while len(self._caches) > self.size:
                self._caches.popitem(last=False)

    def __len__(self) -> int:
        return len(self._caches)


@dataclass
class CompressedContext:
    chunks: list[Chunk]
    soft_tokens: torch.Tensor | None  # (num_chunks, k, decoder_dim); None where only raw text is read (rag training)
    num_documents: int
    num_source_tokens: int  # decoder tokens the raw text would have cost
    num_source_tokens_cl100k: int | None = None  # the same in OpenAI's cl100k tokens, where tiktoken's files exist
    # Unit-length sentence embeddings of the chunks, computed on first use by hybrid reading.
    retrieval_embeddings: torch.Tensor | None = field(default=None, repr=False)
    # BM25 statistics of the chunks' words, built on first use by fused ranking (never joined by `concat`: they depend
    # on every chunk of the context).
    lexical_index: Bm25 | None = field(default=None, repr=False, compare=False)
    prefix_cache: PrefixCache = field(default_factory=PrefixCache, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def ensure_retrieval_embeddings(self, embed: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """The chunks' retrieval embeddings, computed by `embed` once even when threads ask together."""
        with self._lock:
            if self.retrieval_embeddings is None:
                self.retrieval_embeddings = embed([c.text for c in self.chunks])
            return self.retrieval_embeddings

    def ensure_lexical_index(self) -> Bm25:
        """The chunks' BM25 index, built once even when threads ask together."""
        with self._lock:
            if self.lexical_index is None:
                self.lexical_index = Bm25([c.text for c in self.chunks])
            return self.lexical_index

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def num_soft_tokens(self) -> int:
        return 0 if self.soft_tokens is None else self.soft_tokens.shape[0] * self.soft_tokens.shape[1]

    @property
    def unknown_share(self) -> float:
        """Share of the text the encoder read as its unknown token (scripts or strings its vocabulary lacks)."""
        return unknown_share(self.chunks)

    @property
    def compression_ratio(self) -> float:
        """Source decoder tokens per soft token the decoder actually reads."""
        return self.num_source_tokens / max(1, self.num_soft_tokens)

    def stats(self) -> dict:
        stats = {
            "documents": self.num_documents,
            "chunks": self.num_chunks,
            "soft_tokens": self.num_soft_tokens,
            "source_tokens": self.num_source_tokens,
            "compression_ratio": round(self.compression_ratio, 2),
            "unknown_share": round(self.unknown_share, 4),
        }
        if self.num_source_tokens_cl100k is not None:
            stats["source_tokens_cl100k"] = self.num_source_tokens_cl100k
        return stats

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the store keeps of a one-document context, from which `from_tensors` rebuilds it with the document's
        text: "spans", each chunk's (start, end, encoder tokens, unknown characters); "soft" and "embedding", its soft
        tokens and retrieval embeddings; "counts", the document's decoder tokens and cl100k tokens (-1: not counted)."""
        if self.num_documents != 1 or self.soft_tokens is None or self.retrieval_embeddings is None:
            raise ValueError("only a one-document context with soft tokens and retrieval embeddings is stored whole")
        spans = [[c.start, c.end, c.num_tokens, c.unknown_chars] for c in self.chunks]
        cl100k = -1 if self.num_source_tokens_cl100k is None else self.num_source_tokens_cl100k
        return {"spans": torch.tensor(spans, dtype=torch.long), "soft": self.soft_tokens,
                "embedding": self.retrieval_embeddings,
                "counts": torch.tensor([self.num_source_tokens, cl100k], dtype=torch.long)}

    @classmethod
    def from_tensors(cls, document: str, named: dict[str, torch.Tensor], device: torch.device) -> CompressedContext:
        """The context `tensors` took apart, over `document` (check them first: `stored_context_problem`)."""
        chunks = [Chunk(document[start:end], 0, start, end, tokens, unknown)
                  for start, end, tokens, unknown in named["spans"].tolist()]
        tokens, cl100k = named["counts"].tolist()
        return cls(chunks=chunks, soft_tokens=named["soft"].to(device), num_documents=1, num_source_tokens=tokens,
                   num_source_tokens_cl100k=count_cl100k([document]) if cl100k < 0 else cl100k,
                   retrieval_embeddings=named["embedding"].to(device))

    @classmethod
    def concat(cls, contexts: list[CompressedContext]) -> CompressedContext:
        """Join contexts compressed separately (say, one per cached node) into one, documents renumbered."""
        if not contexts:
            raise ValueError("nothing to concatenate")
        chunks, offset = [], 0
        for ctx in contexts:
            chunks.extend(replace(c, doc_index=c.doc_index + offset) for c in ctx.chunks)
            offset += ctx.num_documents
        retrieval = None
        if all(c.retrieval_embeddings is not None for c in contexts):
            retrieval = torch.cat([c.retrieval_embeddings for c in contexts])
        cl100k = [c.num_source_tokens_cl100k for c in contexts]
        return cls(
            chunks=chunks,
            soft_tokens=torch.cat([c.soft_tokens for c in contexts]),
            num_documents=offset,
            num_source_tokens=sum(c.num_source_tokens for c in contexts),
            num_source_tokens_cl100k=None if None in cl100k else sum(cl100k),
            retrieval_embeddings=retrieval,
        )


def stored_context_problem(document: str, named: dict[str, torch.Tensor],
                           chunk_layout: dict[str, tuple[tuple[int, ...], torch.dtype]], overlap: bool) -> str | None:
    """Why a stored context (`CompressedContext.tensors`) cannot stand for `document` compressed now, or None:
    `chunk_layout` maps "soft" and "embedding" to the (shape, dtype) of one chunk's. Beyond `entry_problem`'s names,
    shapes, dtypes and finite values, its chunks must tile the document as the chunker's do: none empty, the first
    starting at 0, the last ending at its end, each starting after the one before, and where the chunks do not
    `overlap`, where it ends (else no later)."""
    spans = named.get("spans")
    if not isinstance(spans, torch.Tensor) or spans.dtype != torch.long or spans.ndim != 2 or spans.shape[1:] != (4,) \
            or len(spans) == 0:
        return "no 'spans' tensor of (chunks, 4) int64"
    n = len(spans)
    expected = {name: ((n, *shape), dtype) for name, (shape, dtype) in chunk_layout.items()}
    problem = entry_problem(named, {**expected, "counts": ((2,), torch.long)})
    if problem is not None:
        return problem
    start, end, tokens, unknown = spans.unbind(1)
    joined = start[1:] <= end[:-1] if overlap else start[1:] == end[:-1]
    tiled = (start[0] == 0 and end[-1] == len(document) and bool((end > start).all())
             and bool((start[1:] > start[:-1]).all()) and bool(joined.all()))
    if not tiled:
        return "its chunks do not tile the document"
    if (tokens < 0).any() or (unknown < 0).any() or (unknown > end - start).any() or named["counts"][0] < 0 \
            or named["counts"][1] < -1:
        return "it holds negative or impossible counts"
    return None


_encodings: dict = {}  # cl100k, once found; a miss is not remembered (the cache may be named later)


def _cl100k():
    """tiktoken's cl100k encoding where its files are already in a cache tiktoken reads, else None.

    tiktoken downloads its files on first use, which fails offline; so the count is made only where a cache is named
    (`TIKTOKEN_CACHE_DIR`: llama-index-core's `get_tokenizer()` points it at the files it ships, and the LlamaIndex
    integration calls it). Without the files the figure is left out rather than fail."""
    if "cl100k" in _encodings or not (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")):
        return _encodings.get("cl100k")
    try:
        import tiktoken

        _encodings["cl100k"] = tiktoken.get_encoding("cl100k_base")
    except Exception:  # no files and no network: leave the figure out
        return None
    return _encodings["cl100k"]


def count_cl100k(texts: list[str]) -> int | None:
    encoding = _cl100k()
    if encoding is None:
        return None
    return sum(len(ids) for ids in encoding.encode_ordinary_batch(texts))
