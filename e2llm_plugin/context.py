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
