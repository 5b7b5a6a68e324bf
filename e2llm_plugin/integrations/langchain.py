"""LangChain integration: `ChatE2LLM` reads the long text in a conversation as soft prompts; `create_e2llm_chain`
answers a question over whole documents (all pages of a PDF, say) and streams the answer.

How `ChatE2LLM` reads a conversation:

- long text is compressed to soft tokens, one per chunk: every `text-plain` content block (LangChain's block for a
  plain-text document), and every other text piece longer than `long_text_tokens` decoder tokens (a system message
  stuffed with documents, a pasted report). A last user message that is one long string ending in a short paragraph
  ("...context...\\n\\nQuestion: ...", the usual one-message prompt) keeps that paragraph as the question;
- the rest is the chat, which must end with a user message: the question. Earlier turns (system ones included) stay
  real chat turns; the soft tokens sit in the last user turn, in the paper's prompt ("Given the contexts: ...
  Please follow the instruction: Answer the question: ...");
- with no long text at all, the decoder answers as the plain chat model it is, through its own chat template.

Questions asked at about the same time over the same long text (`batch`, `abatch`, concurrent calls) are answered
together, in one batch that shares its prompt prefix (`integrations.common.AnswerBatcher`); such answers arrive whole,
as one piece, where a question asked alone streams.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.documents import Document
    from langchain_core.language_models import BaseChatModel, LangSmithParams
    from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
    from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, convert_to_messages
    from langchain_core.outputs import ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable, RunnableConfig, RunnableGenerator
    from langchain_core.runnables.config import get_config_list
    from langchain_core.runnables.utils import AddableDict
    from pydantic import ConfigDict, Field, PrivateAttr, model_validator
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the LangChain integration needs langchain-core: pip install 'e2llm-plugin[langchain]'") from err

from ..config import CallOptions, Mode
from ..context import CompressedContext
from ..documents import read_pdf_pages
from ..errors import ConfigError, DocumentError, E2LLMError
from ..model import E2LLM, SHIPPED_CHECKPOINTS, Answer
from .common import AnswerBatcher, ContextCache, check_model_argument, load_model, passages_metadata

__all__ = ["ChatE2LLM", "create_e2llm_chain", "load_pdf"]

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}
_CALL_ARGUMENTS = ("mode", "max_new_tokens", "max_tokens")  # max_tokens: LangChain's name for max_new_tokens
_DOCUMENTS_KEPT = 1_000  # long texts kept compressed per ChatE2LLM (LRU), so follow-up questions encode nothing
_BATCH_WORKERS = 64  # `batch` runs this many inputs at once unless told otherwise, so they can be answered together

def _default_model_name(model) -> str:
    if model is None:
        return SHIPPED_CHECKPOINTS[-1].name
    if isinstance(model, E2LLM):
        decoder = model.config.decoder
        return "e2llm-" + decoder.rsplit("/", 1)[-1].split(":")[-1]
    path = Path(model).expanduser()
    return path.name if path.is_dir() else str(model)  # a Hub id names itself


# ---- reading a conversation -----------------------------------------------------------------------------------


def _text_pieces(message: BaseMessage) -> Iterator[tuple[str, bool]]:
    """(text, is_document) for each piece of a message. Anything but text is refused, never skipped."""
    if isinstance(message.content, str):
        yield message.content, False
        return
    for block in message.content:
        kind = "text" if isinstance(block, str) else block.get("type")
        text = block if isinstance(block, str) else block.get("text")
        if kind not in ("text", "text-plain") or not isinstance(text, str):
            raise E2LLMError(
                f"ChatE2LLM reads text only, but a {message.type} message holds a {kind!r} block"
                + (" without inline text" if kind == "text-plain" else "")
            )
        yield text, kind == "text-plain"


# ---- the chat model -------------------------------------------------------------------------------------------


class ChatE2LLM(BaseChatModel):
    """E2LLM as a LangChain chat model: long text in the conversation becomes soft tokens, the rest is the chat.

    `ChatE2LLM()` uses the checkpoint shipped with the package; `model=` takes an `E2LLM`, a checkpoint directory or
    a Hub repo id. Weights load on first use, once per process for each checkpoint. Decoding is greedy. Tool calling
    and structured output are not offered: the small decoder was never trained for them.
    """

    # Unknown settings are errors, not silently ignored: a local model has no api_key, timeout or retries. Fields are
    # set by name or alias (`max_tokens`, LangChain's usual name for `max_new_tokens`).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: Any = None
    """An `E2LLM`, a checkpoint directory or a Hub repo id; None: the checkpoint shipped with the package."""
    model_name: str | None = None
    """Reported in `response_metadata` and traces; defaults to the checkpoint's name."""
    max_new_tokens: int | None = Field(default=None, gt=0, strict=True, alias="max_tokens")
    """Longest answer, in decoder tokens; None: the checkpoint's `max_new_tokens`. `max_tokens` (LangChain's name) is
    accepted for it, at construction and per call."""
    stop: list[str] | None = None
    """Stop sequences; the answer ends right before the first one. A per-call `stop` replaces these."""
    temperature: float | None = None
    """Only None or 0: decoding is greedy (accepted because LangChain code commonly passes temperature=0)."""
    mode: Mode | None = None
    """"soft": long text as soft tokens only (the paper); "hybrid": plus the raw text of the passages ranked
    best for the question; "rag": those passages' raw text only. None: the checkpoint's default."""
    long_text_tokens: int = Field(default=256, ge=0)
    """Text pieces longer than this many decoder tokens are compressed; shorter ones stay in the chat."""
    streaming: bool = False
    """Whether `invoke` reports each text piece to callbacks as it is decoded (`stream` always does)."""

    # Compressed long texts by content (`integrations.common.ContextCache`) and the questions' batcher, made with the
    # model on first use.
    _cache: ContextCache | None = PrivateAttr(default=None)
    _batcher: AnswerBatcher | None = PrivateAttr(default=None)
    _cache_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check(self) -> ChatE2LLM:
        check_model_argument(self.model)
        if self.temperature:
            raise ValueError(f"ChatE2LLM decodes greedily; temperature must be 0 or None, got {self.temperature}")
        if self.model_name is None:
            self.model_name = _default_model_name(self.model)
        return self

    @property
    def e2llm(self) -> E2LLM:
        """The E2LLM model, loaded on first use (constructing a ChatE2LLM loads nothing)."""
        return load_model(self.model)

    @property
    def max_tokens(self) -> int | None:
        """`max_new_tokens` under LangChain's usual name."""
        return self.max_new_tokens

    @property
    def _llm_type(self) -> str:
        return "e2llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_new_tokens": self.max_new_tokens, "stop": self.stop, "mode": self.mode,
                "long_text_tokens": self.long_text_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        # Traces name a per-call `model` as LangChain expects; answering refuses one (_call_settings).
        params = LangSmithParams(ls_provider="e2llm", ls_model_name=kwargs.get("model") or self.model_name,
                                 ls_model_type="chat", ls_temperature=0.0)
        max_tokens = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_new_tokens
        if max_tokens:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # ---- answering --------------------------------------------------------------------------------------------
    def batch(self, inputs: list, config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list:
        """LangChain's `batch`, with every input in flight at once (up to 64, unless the config's `max_concurrency`
        says otherwise), so that the questions over the same long text are answered together, in one batch."""
        configs = get_config_list(config, len(inputs))
        if configs and configs[0].get("max_concurrency") is None:
            configs[0] = {**configs[0], "max_concurrency": min(len(inputs), _BATCH_WORKERS)}
        return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager if self.streaming else None, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager if self.streaming else None, **kwargs))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        future, context = self._ask(messages, stop, kwargs)
        answer = future.result()
        for piece in answer:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(answer, context)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        # The blocking work in worker threads; waiting for the batch in none, so a gather of many calls sends them all.
        future, context = await asyncio.to_thread(self._ask, messages, stop, kwargs)
        answer = await asyncio.wrap_future(future)
        pieces, done = iter(answer), object()
        while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(answer, context)

    def _last_chunk(self, answer: Answer, context: CompressedContext | None) -> ChatGenerationChunk:
        """Usage and metadata ride on the last chunk only: LangChain adds chunks up, and would double them."""
        prompt_tokens, output_tokens = answer.prompt_tokens, answer.completion_tokens
        compression = {**context.stats(), "chunks_read": answer.chunks_read} if context else None
        metadata = {"mode": answer.mode, "compression": compression, "passages": passages_metadata(answer)}
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", chunk_position="last",
            usage_metadata={"input_tokens": prompt_tokens, "output_tokens": output_tokens,
                            "total_tokens": prompt_tokens + output_tokens},
            response_metadata={"model_name": self.model_name, **metadata},
        ))

    def _call_options(self, kwargs: dict, stop: list[str] | None) -> CallOptions:
        """This call's options: its arguments over the instance's settings, over the checkpoint's defaults."""
        unknown = sorted(set(kwargs) - set(_CALL_ARGUMENTS))
        if unknown:
            hint = " (the checkpoint is chosen when constructing ChatE2LLM)" if "model" in unknown else ""
            raise E2LLMError(f"ChatE2LLM got unknown call arguments {unknown}{hint}; it takes {list(_CALL_ARGUMENTS)}")
        if "max_new_tokens" in kwargs and "max_tokens" in kwargs:
            raise ConfigError("pass max_new_tokens or its alias max_tokens, not both")
        max_new_tokens = kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))
        return self.e2llm.call_options(mode=kwargs.get("mode", self.mode), max_new_tokens=max_new_tokens, stop=stop)

    def _ask(self, messages: list[BaseMessage], stop: list[str] | None,
             kwargs: dict) -> tuple[Future, CompressedContext | None]:
        """Read a conversation (its long text compressed) and ask its question: the future of the answer (asked
        together with the questions asked meanwhile over the same text), and the context it reads."""
        options = self._call_options(kwargs, self.stop if stop is None else stop)
        long_texts, chat = self._split(messages)
        if not chat or chat[-1]["role"] != "user":
            found = f"ends with a turn by the {chat[-1]['role']}" if chat else "is all long context"
            raise E2LLMError(
                f"nothing to answer: the conversation {found}; end it with a short user message (the question)"
                + (f", or raise long_text_tokens (now {self.long_text_tokens})" if long_texts else "")
            )
        if not long_texts:  # no context: the decoder answers as a plain chat model
            future: Future = Future()
            future.set_result(self.e2llm.chat(chat, options=options))
            return future, None
        context, batcher = self._compress(long_texts)
        return batcher.ask(chat[-1]["content"], context, options, history=chat[:-1]), context

    def _split(self, messages: list[BaseMessage]) -> tuple[list[str], list[dict]]:
        """Long texts to compress, in conversation order, and the rest as chat turns."""
        count = self.e2llm.count_tokens
        long_texts, chat = [], []
        for position, message in enumerate(messages):
            kind = getattr(message, "role", message.type)  # a ChatMessage names its role
            role = _ROLES.get(kind, kind)
            if role not in ("system", "user", "assistant"):
                raise E2LLMError(f"ChatE2LLM reads system, human and AI messages (it calls no tools), got a {role!r} message")
            kept = []
            for text, is_document in _text_pieces(message):
                if is_document or count(text) > self.long_text_tokens:
                    long_texts.append(text)
                elif text.strip():
                    kept.append(text.strip())
            if not kept and role == "user" and position == len(messages) - 1 and isinstance(message.content, str):
                head, _, question = message.content.rpartition("\n\n")
                if head.strip() and question.strip() and count(question) <= self.long_text_tokens:
                    long_texts[-1], kept = head, [question.strip()]
            if kept:
                chat.append({"role": role, "content": "\n\n".join(kept)})
        return long_texts, chat

    def _compress(self, texts: list[str]) -> tuple[CompressedContext, AnswerBatcher]:
        with self._cache_lock:
            if self._cache is None:
                self._cache, self._batcher = ContextCache(self.e2llm, _DOCUMENTS_KEPT), AnswerBatcher(self.e2llm)
        return self._cache.get(texts)[0], self._batcher


# ---- PDFs and the chain ---------------------------------------------------------------------------------------


def load_pdf(path: str | os.PathLike) -> list[Document]:
    """One Document per page that has text, with PyPDFLoader's metadata (`source`, 0-based `page`, `page_label`,
    `total_pages`) so answers can cite pages. Pages without text are left out with a warning that names them;
    a PDF with no text at all (a scan) raises `DocumentError`."""
    pages = read_pdf_pages(path)
    blank = [i + 1 for i, text in enumerate(pages) if not text.strip()]
    if blank:
        warnings.warn(f"{path}: page(s) {blank} have no extractable text and are left out", stacklevel=2)
    metadata = {"source": str(path), "total_pages": len(pages)}
    return [Document(page_content=text, metadata={**metadata, "page": i, "page_label": str(i + 1)})
            for i, text in enumerate(pages) if text.strip()]


def _chain_inputs(inputs) -> tuple[str, list[Document], list[BaseMessage]]:
    if not isinstance(inputs, dict) or "input" not in inputs or "context" not in inputs:
        raise E2LLMError('the E2LLM chain takes {"input": question, "context": list of Documents}')
    question, documents = inputs["input"], inputs["context"]
    if not isinstance(question, str) or not question.strip():
        raise E2LLMError('"input" must be a non-empty question string')
    if not isinstance(documents, Sequence) or isinstance(documents, str):
        raise DocumentError(f'"context" must be a list of Documents, got {type(documents).__name__}')
    if not documents:
        raise DocumentError('"context" is empty: pass the Documents to read (e.g. all pages of a PDF)')
    for i, document in enumerate(documents):
        if not isinstance(document, Document):
            raise DocumentError(f'"context"[{i}] is a {type(document).__name__}, expected a langchain_core Document')
    blank = [i for i, document in enumerate(documents) if not document.page_content.strip()]
    if len(blank) == len(documents):
        raise DocumentError(f'none of the {len(documents)} Documents in "context" has text (a scanned PDF?); run OCR first')
    if blank:
        where = ", ".join(f"{i} ({documents[i].metadata.get('source', '?')} page {documents[i].metadata.get('page', '?')})"
                          for i in blank[:5])
        more = "..." if len(blank) > 5 else ""
        raise DocumentError(f'Documents in "context" have no text: {where}{more}; leave them out or OCR them')
    return question.strip(), list(documents), convert_to_messages(inputs.get("chat_history") or [])


def _chain_messages(question: str, documents: list[Document], history: list[BaseMessage]) -> list[BaseMessage]:
    """Documents first, as `text-plain` blocks (so document i is soft-prompt document i), then the chat."""
    blocks = [{"type": "text-plain", "mime_type": "text/plain", "text": d.page_content} for d in documents]
    return [SystemMessage(content=blocks), *history, HumanMessage(content=question)]


def _chain_parts(documents: list[Document], message: AIMessageChunk) -> AddableDict:
    """The last part of a chain's output: stats, and the passages read as raw text (hybrid mode), as cited Documents."""
    metadata = message.response_metadata
    passages = [
        Document(page_content=documents[p["document"]].page_content[p["start"] : p["end"]],
                 metadata={**documents[p["document"]].metadata, "score": p["score"]})
        for p in metadata.get("passages", [])
        if p["document"] < len(documents)  # later ones come from long chat_history messages
    ]
    stats = {"mode": metadata.get("mode"), **(metadata.get("compression") or {}), **(message.usage_metadata or {})}
    return AddableDict(stats=stats, passages=passages)


def create_e2llm_chain(llm: ChatE2LLM) -> Runnable:
    """A Runnable: `{"input": question, "context": list[Document], "chat_history"?: messages}` ->
    `{"input", "context", "answer", "stats", "passages"}`, reading every Document whole, as soft tokens.

    `stream`/`astream` yield the answer as it is decoded (`{"answer": piece}` parts). Inside `create_retrieval_chain`,
    whose combine step must return the answer string, use `create_e2llm_chain(llm).pick("answer")`.
    """
    if not isinstance(llm, ChatE2LLM):
        raise TypeError(f"create_e2llm_chain needs a ChatE2LLM (the soft prompts are E2LLM's own), got {type(llm).__name__}")

    def answer(inputs: Iterator[dict], config: RunnableConfig) -> Iterator[AddableDict]:
        run = _ChainRun(_gather(inputs))
        yield run.head()
        for chunk in llm.stream(run.messages, config):
            yield from run.add(chunk)
        yield run.tail()

    async def aanswer(inputs: AsyncIterator[dict], config: RunnableConfig) -> AsyncIterator[AddableDict]:
        run = _ChainRun(_gather([item async for item in inputs]))
        yield run.head()
        async for chunk in llm.astream(run.messages, config):
            for part in run.add(chunk):
                yield part
        yield run.tail()

    return RunnableGenerator(answer, aanswer, name="e2llm_chain")


class _ChainRun:
    """One run of the chain, shared by its sync and async forms: the input checked, the parts of the output it yields
    (the input first, then the answer piece by piece, then the stats and passages), the answer's chunks added up."""

    def __init__(self, inputs) -> None:
        self.question, self.documents, history = _chain_inputs(inputs)
        self.messages = _chain_messages(self.question, self.documents, history)
        self.message: AIMessageChunk | None = None

    def head(self) -> AddableDict:
        return AddableDict(input=self.question, context=self.documents, answer="")

    def add(self, chunk: AIMessageChunk) -> Iterator[AddableDict]:
        self.message = chunk if self.message is None else self.message + chunk
        if chunk.text:
            yield AddableDict(answer=chunk.text)

    def tail(self) -> AddableDict:
        return _chain_parts(self.documents, self.message)


def _gather(parts) -> dict:
    """The input dict, whole: a streaming upstream (RunnablePassthrough.assign, say) sends it in addable parts."""
    whole = None
    for part in parts:
        whole = part if whole is None else whole + part
    return whole
