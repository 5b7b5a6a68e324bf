"""`CompressedContext`: documents after compression, reusable across any number of questions."""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .chunking import Chunk


@dataclass
class CompressedContext:
    chunks: list[Chunk]
    soft_tokens: torch.Tensor | None  # (num_chunks, k, decoder_dim); None where only raw text is read (rag training)
    num_documents: int
    num_source_tokens: int  # decoder tokens the raw text would have cost
    num_source_tokens_cl100k: int | None = None  # the same in OpenAI's cl100k tokens, where tiktoken's files exist
    # Unit-length sentence embeddings of the chunks, computed on first use by hybrid reading.
    retrieval_embeddings: torch.Tensor | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    @property
    def num_soft_tokens(self) -> int:
        return 0 if self.soft_tokens is None else self.soft_tokens.shape[0] * self.soft_tokens.shape[1]

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
        }
        if self.num_source_tokens_cl100k is not None:
            stats["source_tokens_cl100k"] = self.num_source_tokens_cl100k
        return stats

    @classmethod
    def concat(cls, contexts: list["CompressedContext"]) -> "CompressedContext":
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


@functools.lru_cache(maxsize=1)
def _cl100k():
    """tiktoken's cl100k encoding from files already on disk (llama-index-core ships them), or None."""
    try:
        import tiktoken

        if "TIKTOKEN_CACHE_DIR" not in os.environ:
            import importlib.util

            spec = importlib.util.find_spec("llama_index.core")
            if spec is None or spec.origin is None:
                return None
            cache = Path(spec.origin).parent / "_static" / "tiktoken_cache"
            if not cache.is_dir():
                return None
            os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
        return tiktoken.get_encoding("cl100k_base")
    except Exception:  # no files and no network: leave the figure out rather than fail
        return None


def count_cl100k(texts: list[str]) -> int | None:
    encoding = _cl100k()
    if encoding is None:
        return None
    return sum(len(ids) for ids in encoding.encode_ordinary_batch(texts))
