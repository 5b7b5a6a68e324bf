"""LlamaIndex integration: E2LLM reads every node a retriever hands it, as soft tokens, and answers.

A LlamaIndex `LLM` only ever receives one flat prompt string, so soft prompts cannot pass through one. The seam is
answer synthesis instead: `E2LLMSynthesizer` receives the nodes themselves, compresses each node once (cached by
content hash) and asks the E2LLM decoder; `E2LLMQueryEngine` is a retriever query engine built around it.
`E2LLMCustomLLM` offers the same decoder for ordinary completion and chat calls, which compress nothing, and
`E2LLMEmbedding` offers the encoder's sentence embeddings as an offline embedding model for vector indexes.

Nothing here needs `Settings.llm` or `Settings.embed_model` (whose defaults want OpenAI).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

try:
    import llama_index.core.instrumentation as instrument
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.base.llms.generic_utils import completion_response_to_chat_response as _chat_response
    from llama_index.core.base.llms.generic_utils import stream_completion_response_to_chat_response as _chat_responses
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseGen,
        LLMMetadata,
    )
    from llama_index.core.base.response.schema import RESPONSE_TYPE, AsyncStreamingResponse, Response, StreamingResponse
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.indices.base import BaseIndex
    from llama_index.core.indices.list.base import SummaryIndex
    from llama_index.core.indices.vector_store.base import VectorStoreIndex
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent, SynthesizeStartEvent
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.custom import CustomLLM
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers import BaseSynthesizer
    from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle, QueryType
    from llama_index.core.utils import get_tokenizer
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the LlamaIndex integration needs llama-index-core: pip install 'e2llm-plugin[llama-index]'"
    ) from err

from ..context import CompressedContext
from ..errors import ContextOverflowError, DocumentError, E2LLMError
from ..model import E2LLM, Answer
from .common import AnswerBatcher, ContextCache, load_model, passages_metadata

__all__ = [
    "E2LLMQueryEngine",
    "E2LLMSynthesizer",
    "E2LLMCustomLLM",
    "E2LLMEmbedding",
    "E2LLMCompressionEvent",
]

dispatcher = instrument.get_dispatcher(__name__)
get_tokenizer()  # points TIKTOKEN_CACHE_DIR at the files llama-index-core ships: stats then count cl100k tokens offline
logger = logging.getLogger(__name__)

#: Nodes a vector index hands over by default: far more than fit a small text LLM's prompt, a few hundred soft tokens.
DEFAULT_TOP_K = 64


def _bundle(query: QueryType) -> QueryBundle:
    return query if isinstance(query, QueryBundle) else QueryBundle(query_str=query)


def _turns(messages: Sequence[ChatMessage]) -> list[dict]:
    """LlamaIndex messages as turns for the decoder's own chat template."""
    return [{"role": m.role.value, "content": m.content or ""} for m in messages]


# ---- the plain LLM ----------------------------------------------------------------------------------------------
class E2LLMCustomLLM(CustomLLM):
    """The E2LLM decoder (with its LoRA) as a plain LlamaIndex LLM, for ordinary completion and chat calls.

    It does not compress: a LlamaIndex `LLM` only receives prompt text, which the decoder reads token by token, in its
    own chat template, like any small text LLM, within its context window. A completion prompt is one user turn
    (after `system_prompt`, unless `formatted`). To read documents as soft tokens use `E2LLMSynthesizer`
    or `E2LLMQueryEngine`. Completions report their token counts (the decoder's own) in `raw["usage"]`, which
    `TokenCountingHandler` prefers over re-tokenizing.
    """

    max_new_tokens: int = Field(default=64, gt=0, description="Most tokens to generate per call.")
    _model: E2LLM = PrivateAttr()

    def __init__(self, model=None, **kwargs: Any) -> None:
        """model: an `E2LLM`, or a checkpoint directory or Hub repo id (None: the shipped checkpoint), loaded once per
        process (`integrations.common.load_model`)."""
        e2llm = load_model(model)
        kwargs.setdefault("max_new_tokens", e2llm.config.max_new_tokens)
        super().__init__(**kwargs)
        self._model = e2llm

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMCustomLLM"

    @property
    def e2llm(self) -> E2LLM:
        return self._model

    @property
    def metadata(self) -> LLMMetadata:
        # A chat model, so LlamaIndex's predict() formats prompts as messages (the decoder's chat template).
        return LLMMetadata(
            context_window=self._model.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self._model.config.decoder,
        )

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self._responses(self._prompt_turns(prompt, formatted), kwargs.get("stop"))
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._responses(self._prompt_turns(prompt, formatted), kwargs.get("stop"))

    # Chat reads the messages as the decoder's own chat turns, not as LlamaIndex's generic "user: ..." rendering.
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        *_, last = self._responses(_turns(messages), kwargs.get("stop"))
        return _chat_response(last)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return _chat_responses(self._responses(_turns(messages), kwargs.get("stop")))

    def _prompt_turns(self, prompt: str, formatted: bool) -> list[dict]:
        if formatted:
            return [{"role": "user", "content": prompt}]
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": self.completion_to_prompt(prompt)}]

    def _responses(self, turns: list[dict], stop: list[str] | None) -> Iterator[CompletionResponse]:
        """Cumulative responses, one per text piece; the last one carries the token usage. Checks run right away."""
        options = self._model.call_options(max_new_tokens=self.max_new_tokens, stop=stop)
        try:
            answer = self._model.chat(turns, options=options)
        except ContextOverflowError:
            raise ContextOverflowError(
                f"the prompt (+{self.max_new_tokens} tokens to generate) does not fit the decoder's {self._model.context_window} "
                "positions; E2LLMCustomLLM does not compress, use E2LLMQueryEngine for long documents"
            ) from None
        return self._pieces(answer)

    @staticmethod
    def _pieces(answer: Answer) -> Iterator[CompletionResponse]:
        # Held back by one piece, so that the last response can carry the usage once the count is known.
        pending = None
        for piece in answer:
            if pending is not None:
                yield pending
            pending = CompletionResponse(text=answer.text, delta=piece)
        last = pending or CompletionResponse(text="", delta="")
        last.raw = {"usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens}}
        yield last


# ---- embeddings -------------------------------------------------------------------------------------------------
class E2LLMEmbedding(BaseEmbedding):
    """The E2LLM encoder's sentence embeddings (`E2LLM.embed`: its mean-pooled states) as an offline LlamaIndex
    embedding model.

    For the shipped checkpoint that is all-MiniLM-L6-v2 with its LoRA: the same embeddings hybrid reading ranks chunks
    by (fused with BM25), so a `VectorStoreIndex` can be built and queried with no embedding service. Texts longer than
    the encoder's window are truncated, so keep nodes short (`SentenceSplitter(chunk_size=256)`) when embedding with it.
    """

    _model: E2LLM = PrivateAttr()

    def __init__(self, model=None, **kwargs: Any) -> None:
        e2llm = load_model(model)
        kwargs.setdefault("model_name", e2llm.config.encoder)
        super().__init__(**kwargs)
        self._model = e2llm

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMEmbedding"

    @property
    def e2llm(self) -> E2LLM:
        return self._model

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._model.embed(list(texts)).tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


# ---- synthesis: the seam ----------------------------------------------------------------------------------------
class E2LLMCompressionEvent(BaseEvent):
    """Sent once per question when the soft tokens are ready: what the decoder will read, and what it cost."""

    nodes: int
    compressed_nodes: int  # distinct node texts encoded for this question; the others came from the cache
    chunks: int
    soft_tokens: int
    source_tokens: int
    compression_ratio: float
    mode: str

    @classmethod
    def class_name(cls) -> str:
        return "E2LLMCompressionEvent"


@dataclass
class _Asked:
    """One question asked over the texts of the nodes kept: the context read, and the future of its answer."""

    question: str
    texts: list[str]
    context: CompressedContext
    compressed: int  # texts compressed for it; the others came from the cache
    future: Future


@dataclass
class _Synthesis:
    """One question being answered, over the texts of the nodes kept."""

    question: str
    answer: Answer
    stats: dict  # becomes response.metadata["e2llm"]
    scores: list[float | None]  # per text, where the mode ranks chunks


class E2LLMSynthesizer(BaseSynthesizer):
    """Answer synthesis by E2LLM: every node is read, compressed into soft tokens, by the decoder at once.

    Use it through `E2LLMQueryEngine`, or hand it to any index:
    ``index.as_query_engine(llm=synth.llm, response_synthesizer=synth)`` (``llm=`` only keeps LlamaIndex from
    resolving its default OpenAI LLM; E2LLM does the answering).

    Each node's text is compressed once and cached by its SHA-256 (`integrations.common.ContextCache`), so the next
    question over the same nodes encodes nothing. Nodes without text are skipped and listed in
    ``metadata["e2llm"]["skipped_nodes"]``. Questions asked at about the same time over the same nodes (concurrent
    `aquery` calls) are answered together, in one batch that shares their prompt prefix
    (`integrations.common.AnswerBatcher`); such answers arrive whole, as one piece, where a question asked alone streams.
    """

    def __init__(
        self,
        model=None,
        mode: str | None = None,
        streaming: bool = False,
        max_new_tokens: int | None = None,
        stop: list[str] | None = None,
        show_progress: bool = False,
        max_cached_nodes: int = 10_000,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        """model: an `E2LLM`, or a checkpoint directory or Hub repo id (None: the shipped checkpoint), loaded once per
        process (`integrations.common.load_model`).
        mode: "soft", "hybrid" or "rag" (default: the model's). max_cached_nodes bounds the compression cache (LRU).
        """
        self._model = load_model(model)
        self._options = self._model.call_options(mode=mode, max_new_tokens=max_new_tokens, stop=stop)  # checked now
        self._show_progress = show_progress
        self._cache = ContextCache(self._model, max_cached_nodes)
        self._batcher = AnswerBatcher(self._model)
        super().__init__(llm=E2LLMCustomLLM(self._model), callback_manager=callback_manager, streaming=streaming)

    @property
    def e2llm(self) -> E2LLM:
        return self._model

    @property
    def model(self) -> E2LLM:
        """Deprecated: the same as `e2llm`, the name every integration class uses."""
        warnings.warn("E2LLMSynthesizer.model is deprecated; use E2LLMSynthesizer.e2llm", DeprecationWarning, stacklevel=2)
        return self._model

    @property
    def llm(self) -> E2LLMCustomLLM:
        return self._llm

    def clear_cache(self) -> None:
        self._cache.clear()

    # E2LLM's prompt is fixed by its training, so there are no LlamaIndex prompt templates to expose.
    def _get_prompts(self) -> dict:
        return {}

    def _update_prompts(self, prompts_dict: dict) -> None:
        pass

    # ---- compression, cached per node ----------------------------------------------------------------------
    def _compress_each(self, texts: list[str]) -> list[CompressedContext]:
        """Compress new node texts, reported as an embedding event: compression is the encoder's pass, and
        TokenCountingHandler counts the chunks as embedding tokens."""
        with self.callback_manager.event(CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: {"model": "E2LLM"}}) as event:
            fresh = self._model.compress_each(texts, show_progress=self._show_progress)
            event.on_end(payload={EventPayload.CHUNKS: [c.text for ctx in fresh for c in ctx.chunks]})
        return fresh

    def _read_steps(self, question: str, texts: list[str]) -> _Steps:
        """Compress (or fetch) the texts and ask the question; the answer comes once the batcher has gathered the
        questions asked meanwhile over the same nodes. Nothing is generated yet."""
        asked = yield functools.partial(self._ask, question, texts)
        answer = yield asked.future
        return self._reading(asked, answer)

    def _ask(self, question: str, texts: list[str]) -> _Asked:
        question = E2LLM.check_question(question)
        if not texts:
            raise E2LLMError("nothing to read: no node with text was retrieved")
        context, compressed = self._cache.get(texts, self._compress_each)
        return _Asked(question, texts, context, compressed, self._batcher.ask(question, context, self._options))

    def _reading(self, asked: _Asked, answer: Answer) -> _Synthesis:
        question, texts, context, compressed = asked.question, asked.texts, asked.context, asked.compressed
        stats = context.stats()
        stats.pop("documents")  # each node was compressed as one document
        stats.update(mode=answer.mode, chunks_read=answer.chunks_read, nodes=len(texts), compressed_nodes=compressed,
                     prompt_tokens=answer.prompt_tokens, completion_tokens=None)
        dispatcher.event(E2LLMCompressionEvent(
            nodes=len(texts), compressed_nodes=compressed, chunks=context.num_chunks, soft_tokens=context.num_soft_tokens,
            source_tokens=context.num_source_tokens, compression_ratio=context.compression_ratio, mode=answer.mode,
        ))
        scores: list[float | None] = [None] * len(texts)
        for index, score in answer.ranking or ():  # where the reading ranked chunks, a node scores as its best chunk
            node = context.chunks[index].doc_index
            if scores[node] is None:
                scores[node] = score
        return _Synthesis(question, answer, stats, scores)

    def _pieces(self, reading: _Synthesis) -> Iterator[str]:
        """The answer's text pieces; at the end, the token counts go to the metadata and the callback handlers.

        The LLM event's prompt is a readable stand-in (the real prompt is mostly vectors); its counts come from
        `raw["usage"]`: prompt tokens are the decoder positions read (soft tokens + template + question + raw
        passages), completion tokens the answer's, both in the decoder's tokenizer.
        """
        stats = reading.stats
        read = f"{stats['soft_tokens']} soft tokens for {stats['chunks']} chunks of {stats['nodes']} nodes"
        prompt = f"[E2LLM: {read}]\n{reading.question}"
        event_id = self.callback_manager.on_event_start(CBEventType.LLM, payload={EventPayload.PROMPT: prompt})
        yield from reading.answer
        stats["completion_tokens"] = reading.answer.completion_tokens
        usage = {"prompt_tokens": reading.answer.prompt_tokens, "completion_tokens": reading.answer.completion_tokens}
        completion = CompletionResponse(text=reading.answer.text, raw={"usage": usage})
        self.callback_manager.on_event_end(
            CBEventType.LLM, payload={EventPayload.PROMPT: prompt, EventPayload.COMPLETION: completion}, event_id=event_id
        )

    @staticmethod
    async def _apieces(pieces: Iterator[str]) -> AsyncIterator[str]:
        """Decode in a worker thread, one piece at a time, so the event loop stays free."""
        done = object()
        while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
            yield piece

    # ---- LlamaIndex's synthesizer interface --------------------------------------------------------------------
    # Each verb's body is written once, as steps (`_run` below): it yields the blocking work (compressing, decoding), or
    # a future to wait for (the batched answer), and gets its result back. The sync verb does that work in place, the
    # async one in a worker thread, and awaits futures without holding one.
    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any):
        return _run(self._response_steps(query_str, text_chunks, asynchronous=False))

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any):
        return await _arun(self._response_steps(query_str, text_chunks, asynchronous=True))

    def _response_steps(self, query_str: str, text_chunks: Sequence[str], asynchronous: bool) -> _Steps:
        reading = yield from self._read_steps(query_str, [t for t in text_chunks if t.strip()])
        return (yield from self._result(reading, asynchronous))

    # synthesize() is overridden, not inherited, because the base class passes only texts to get_response, and
    # E2LLM needs the nodes: to skip and report empty ones, and to score them.
    @dispatcher.span
    def synthesize(self, query: QueryType, nodes: list[NodeWithScore],
                   additional_source_nodes: Sequence[NodeWithScore] | None = None, **response_kwargs: Any) -> RESPONSE_TYPE:
        return _run(self._synthesis_steps(query, nodes, additional_source_nodes, asynchronous=False))

    @dispatcher.span
    async def asynthesize(self, query: QueryType, nodes: list[NodeWithScore],
                          additional_source_nodes: Sequence[NodeWithScore] | None = None,
                          **response_kwargs: Any) -> RESPONSE_TYPE:
        return await _arun(self._synthesis_steps(query, nodes, additional_source_nodes, asynchronous=True))

    def _synthesis_steps(self, query: QueryType, nodes: list[NodeWithScore],
                         additional_source_nodes: Sequence[NodeWithScore] | None, asynchronous: bool) -> _Steps:
        query = _bundle(query)
        dispatcher.event(SynthesizeStartEvent(query=query))
        with self.callback_manager.event(CBEventType.SYNTHESIZE, payload={EventPayload.QUERY_STR: query.query_str}) as event:
            kept, texts, skipped = _node_texts(nodes)
            reading = yield from self._read_steps(query.query_str, texts)
            result = yield from self._result(reading, asynchronous)
            response = self._response(result, reading, kept, skipped, additional_source_nodes)
            event.on_end(payload={EventPayload.RESPONSE: response})
        dispatcher.event(SynthesizeEndEvent(query=query, response=response))
        return response

    def _result(self, reading: _Synthesis, asynchronous: bool) -> _Steps:
        """The answer: its text, or when streaming its pieces (an async iterator for the async verbs)."""
        pieces = self._pieces(reading)
        if self._streaming:
            return self._apieces(pieces) if asynchronous else pieces
        return (yield functools.partial("".join, pieces))

    def _response(self, result, reading: _Synthesis, kept: list[NodeWithScore], skipped: list[str],
                  additional_source_nodes: Sequence[NodeWithScore] | None) -> RESPONSE_TYPE:
        """A Response (or streaming one) whose sources are the nodes read, scored where the mode ranks chunks."""
        sources = [n if s is None else NodeWithScore(node=n.node, score=s) for n, s in zip(kept, reading.scores, strict=True)]
        sources += list(additional_source_nodes or [])
        stats = reading.stats
        stats["skipped_nodes"] = skipped
        stats["passages"] = passages_metadata(reading.answer, [n.node.node_id for n in kept])
        metadata = {n.node.node_id: n.node.metadata for n in sources}
        metadata["e2llm"] = stats
        if isinstance(result, str):
            return Response(result, source_nodes=sources, metadata=metadata)
        if isinstance(result, Iterator):
            return StreamingResponse(result, source_nodes=sources, metadata=metadata)
        return AsyncStreamingResponse(result, source_nodes=sources, metadata=metadata)


#: A verb's body as steps: it yields blocking work (a callable taking no argument) or a future to wait for, is sent its
#: result, returns the value.
_Steps = Generator[Callable[[], Any] | Future, Any, Any]


def _run(steps: _Steps) -> Any:
    """Run a verb's steps, doing each piece of work in place; an error in it is raised where the body yielded it."""
    result, error = None, None
    while True:
        try:
            work = steps.throw(error) if error is not None else steps.send(result)
        except StopIteration as done:
            return done.value
        try:
            result, error = (work.result() if isinstance(work, Future) else work()), None
        except Exception as err:
            result, error = None, err


async def _arun(steps: _Steps) -> Any:
    """Run a verb's steps, doing each piece of work in a worker thread so the event loop stays free, and awaiting each
    future in none, so that concurrent calls all reach the batcher."""
    result, error = None, None
    while True:
        try:
            work = steps.throw(error) if error is not None else steps.send(result)
        except StopIteration as done:
            return done.value
        try:
            result, error = await (asyncio.wrap_future(work) if isinstance(work, Future) else asyncio.to_thread(work)), None
        except Exception as err:
            result, error = None, err


def _node_texts(nodes: Sequence[NodeWithScore]) -> tuple[list[NodeWithScore], list[str], list[str]]:
    """The nodes with text, their texts as a text LLM would see them (with LLM metadata), and the ids of the rest."""
    kept, texts, skipped = [], [], []
    for n in nodes:
        if n.node.get_content(metadata_mode=MetadataMode.NONE).strip():
            kept.append(n)
            texts.append(n.node.get_content(metadata_mode=MetadataMode.LLM))
        else:
            skipped.append(n.node.node_id)
    if skipped:
        logger.warning("E2LLM skipped %d node(s) without text: %s", len(skipped), ", ".join(skipped))
    return kept, texts, skipped


# ---- the query engine -------------------------------------------------------------------------------------------
class E2LLMQueryEngine(RetrieverQueryEngine):
    """A LlamaIndex query engine that answers with E2LLM reading every retrieved node, instead of a top-k prompt.

    Over a `SummaryIndex` (what `from_documents` builds) that is every node of every document; over a
    `VectorStoreIndex`, its top `similarity_top_k` nodes (64 by default: many more than a text LLM's prompt holds).
    Responses carry `source_nodes` and `metadata["e2llm"]` (chunks, chunks_read, soft_tokens, source_tokens,
    compression_ratio, mode, nodes, compressed_nodes, prompt_tokens, completion_tokens, skipped_nodes, passages).
    """

    def __init__(self, retriever, response_synthesizer: E2LLMSynthesizer, node_postprocessors=None,
                 callback_manager: CallbackManager | None = None) -> None:
        if not isinstance(response_synthesizer, E2LLMSynthesizer):
            raise E2LLMError("E2LLMQueryEngine answers through an E2LLMSynthesizer; for others use RetrieverQueryEngine")
        super().__init__(retriever, response_synthesizer, node_postprocessors, callback_manager)

    @property
    def synthesizer(self) -> E2LLMSynthesizer:
        return self._response_synthesizer

    @property
    def e2llm(self) -> E2LLM:
        return self._response_synthesizer.e2llm

    @classmethod
    def from_documents(cls, documents, model=None, streaming: bool = False, mode: str | None = None, *,
                       transformations=None, show_progress: bool = False, **kwargs: Any) -> E2LLMQueryEngine:
        """An engine reading all of `documents` (LlamaIndex `Document`s), through a `SummaryIndex`.

        transformations default to a `SentenceSplitter` without overlap (E2LLM reads every node anyway, so an
        overlap would only be read twice) that ends nodes at line ends: a node cut inside a line parts a label from its
        value ("National holiday: " | "Independence Day, ..."), and the ranking finds the label's chunk, not the value's.
        Other keyword arguments go to `from_index`.
        """
        documents = _check_documents(documents)
        if transformations is None:
            transformations = [SentenceSplitter(chunk_overlap=0, paragraph_separator="\n")]
        index = SummaryIndex.from_documents(documents, transformations=transformations, show_progress=show_progress,
                                            callback_manager=kwargs.get("callback_manager"))
        return cls.from_index(index, model, streaming, mode, show_progress=show_progress, **kwargs)

    @classmethod
    def from_index(cls, index, model=None, streaming: bool = False, mode: str | None = None, *,
                   show_progress: bool = False, max_new_tokens: int | None = None, stop: list[str] | None = None,
                   node_postprocessors=None, callback_manager: CallbackManager | None = None,
                   **retriever_kwargs: Any) -> E2LLMQueryEngine:
        """An engine over any index: E2LLM reads whatever `index.as_retriever(**retriever_kwargs)` returns."""
        if not isinstance(index, BaseIndex):
            raise E2LLMError(f"from_index needs a LlamaIndex index (a SummaryIndex, say), got {type(index).__name__}")
        if isinstance(index, VectorStoreIndex):
            retriever_kwargs.setdefault("similarity_top_k", DEFAULT_TOP_K)
        synthesizer = E2LLMSynthesizer(model, mode=mode, streaming=streaming, max_new_tokens=max_new_tokens, stop=stop,
                                       show_progress=show_progress, callback_manager=callback_manager)
        return cls(index.as_retriever(**retriever_kwargs), synthesizer, node_postprocessors, callback_manager)

    # The question is checked before retrieval, so an empty one fails clearly instead of being embedded.
    def retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        E2LLM.check_question(query_bundle.query_str)
        return super().retrieve(query_bundle)

    async def aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        E2LLM.check_question(query_bundle.query_str)
        return await super().aretrieve(query_bundle)


def _check_documents(documents) -> list[BaseNode]:
    if isinstance(documents, BaseNode):
        documents = [documents]
    if isinstance(documents, (str, bytes)):
        raise DocumentError("pass LlamaIndex Documents, e.g. [Document(text=...)], not a string")
    documents = list(documents or [])
    if not documents:
        raise DocumentError("no documents given: pass at least one LlamaIndex Document")
    for i, doc in enumerate(documents):
        if not isinstance(doc, BaseNode):
            raise DocumentError(f"document {i} is a {type(doc).__name__}, not a LlamaIndex Document: use Document(text=...)")
        if not doc.get_content(metadata_mode=MetadataMode.NONE).strip():
            raise DocumentError(f"document {i} ({doc.node_id}) is empty or whitespace only")
    return documents
