"""What both integrations share, so they behave alike: which model a `model=` argument means, and how compressed
documents are remembered between questions.

- `load_model(model)`: an `E2LLM` is used as given; a checkpoint directory, a Hub repo id or None (the shipped
  checkpoint) is loaded once per process and shared by every engine, synthesizer and chat model that names it
  (loading takes seconds and each copy holds both base models).
- `ContextCache`: each document (a node's text, a LangChain Document, a long chat message) is compressed once and
  remembered by the SHA-256 of its text, least recently used first out; documents asked about together are joined
  into one context, which is remembered too, so follow-up questions over the same documents encode nothing and
  rank chunks with embeddings already computed.
- `AnswerBatcher`: questions asked at about the same time over the same context (LangChain's `batch`, concurrent
  LlamaIndex `aquery` calls) answered together, by one `E2LLM.answer_many`.
- `passages_metadata(answer, sources)`: the passages an answer read as raw text, shaped alike for both frameworks.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from ..config import CallOptions
from ..context import CompressedContext
from ..errors import E2LLMError
from ..model import E2LLM, Answer

#: How long a question waits for others over the same context before they are answered together, and again while more
#: keep coming: long enough for the requests of one `batch` or `asyncio.gather` to arrive, short beside an answer.
GATHER_S = 0.005
#: The longest a question waits while others keep arriving.
GATHER_MAX_S = 0.05

_models: dict[str, E2LLM] = {}
_models_lock = threading.Lock()


def check_model_argument(model) -> None:
    """Refuse what `load_model` cannot load, without loading anything (for lazy integrations)."""
    if not (model is None or isinstance(model, (E2LLM, str, os.PathLike))):
        raise E2LLMError(f"model must be an E2LLM, a checkpoint directory or a Hub repo id, got {type(model).__name__}")


def load_model(model) -> E2LLM:
    """An `E2LLM` as given; a checkpoint directory or Hub id (None: the shipped checkpoint) loaded once per process."""
    check_model_argument(model)
    if isinstance(model, E2LLM):
        return model
    key = str(model)
    with _models_lock:
        if key not in _models:
            _models[key] = E2LLM.from_pretrained(model)
        return _models[key]


class ContextCache:
    """Compressed documents by content hash, at most `max_documents` of them (LRU); thread-safe."""

    def __init__(self, model: E2LLM, max_documents: int = 10_000):
        if not isinstance(max_documents, int) or max_documents < 1:
            raise E2LLMError(f"max_documents must be a positive integer, got {max_documents!r}")
        self.model, self.max_documents = model, max_documents
        self._documents: OrderedDict[str, CompressedContext] = OrderedDict()
        self._joined: tuple[tuple[str, ...], CompressedContext] | None = None
        self._lock = threading.Lock()
        self._compressing = threading.Lock()  # threads asking about the same new documents at once compress them once

    def get(self, texts: list[str], compress_each=None) -> tuple[CompressedContext, int]:
        """The context for these documents, and how many of them had to be compressed now.

        `compress_each(texts) -> list[CompressedContext]` compresses the new ones (default: the model's `compress_each`
        without a progress bar); an integration wraps it to report compression to its callbacks."""
        keys = tuple(hashlib.sha256(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts)
        with self._lock:
            if self._joined is not None and self._joined[0] == keys:
                return self._joined[1], 0
        with self._compressing:
            with self._lock:
                if self._joined is not None and self._joined[0] == keys:  # joined by another thread meanwhile
                    return self._joined[1], 0
                found = {k: self._documents[k] for k in keys if k in self._documents}
                for k in found:
                    self._documents.move_to_end(k)
            missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
            if missing:
                compress_each = compress_each or (lambda new: self.model.compress_each(new, show_progress=False))
                # One call for all the new documents: their chunks are encoded in shared batches.
                found.update(zip(missing, compress_each(list(missing.values())), strict=True))
            context = CompressedContext.concat([found[k] for k in keys])
            with self._lock:
                self._documents.update((k, found[k]) for k in missing)
                while len(self._documents) > self.max_documents:
                    self._documents.popitem(last=False)
                self._joined = (keys, context)
        return context, len(missing)

    def clear(self) -> None:
        with self._lock:
            self._documents.clear()
            self._joined = None

    def __len__(self) -> int:
        return len(self._documents)


@dataclass
class Question:
    """A question sent to an `AnswerBatcher`, and the future of its answer."""

    question: str
    context: CompressedContext
    options: CallOptions
    history: list[dict]
    future: Future


class AnswerBatcher:
    """Questions asked at about the same time over the same context, answered together.

    Each question waits a few milliseconds (GATHER_S, longer while others keep arriving, up to GATHER_MAX_S) in a
    worker thread; then the questions over the same context (the same object: `ContextCache` gives one per set of
    documents), chat history and options go through one `E2LLM.answer_many`, decoded in batches that share the
    context's prompt prefix, and a question asked alone through `E2LLM.answer`, which streams. `ask` returns a
    `concurrent.futures.Future` of the `Answer` (`asyncio.wrap_future` awaits it); one question's error (a question too
    long for the window, say) is its future's alone: the others are then answered one by one."""

    def __init__(self, model: E2LLM):
        self.model = model
        self._waiting: list[Question] = []
        self._lock = threading.Lock()
        self._serving = False

    def ask(self, question: str, context: CompressedContext, options: CallOptions,
            history: list[dict] | None = None) -> Future:
        asked = Question(question, context, options, list(history or []), Future())
        with self._lock:
            self._waiting.append(asked)
            if not self._serving:  # a worker runs while questions wait, and ends when none do
                self._serving = True
                threading.Thread(target=self._serve, name="e2llm-answer-batcher", daemon=True).start()
        return asked.future

    def _serve(self) -> None:
        while True:
            seen, deadline = -1, time.monotonic() + GATHER_MAX_S
            while seen != len(self._waiting) and time.monotonic() < deadline:
                seen = len(self._waiting)
                time.sleep(GATHER_S)
            with self._lock:
                taken, self._waiting = self._waiting, []
                if not taken:
                    self._serving = False
                    return
            taken = [asked for asked in taken if asked.future.set_running_or_notify_cancel()]  # not those cancelled
            groups: list[list[Question]] = []
            for asked in taken:
                group = next((g for g in groups if g[0].context is asked.context and g[0].history == asked.history
                              and g[0].options == asked.options), None)
                if group is None:
                    groups.append([asked])
                else:
                    group.append(asked)
            for group in groups:
                self._answer(group)

    def _answer(self, group: list[Question]) -> None:
        first = group[0]
        try:
            if len(group) == 1:
                answers = [self.model.answer(first.question, context=first.context, history=first.history,
                                             options=first.options)]
            else:
                answers = self.model.answer_many([asked.question for asked in group], context=first.context,
                                                 history=first.history, options=first.options)
        except Exception as err:
            if len(group) == 1:
                first.future.set_exception(err)
            else:
                for asked in group:  # whose fault it was is each one's own answer
                    self._answer([asked])
            return
        for asked, answer in zip(group, answers, strict=True):
            asked.future.set_result(answer)


def passages_metadata(answer: Answer, sources: Sequence[str | None] | None = None) -> list[dict]:
    """The chunks `answer` read as raw text (hybrid and rag modes; none in soft), in the order read, each as
    ``{"document", "source", "start", "end", "score", "text"}``: the index of the text it comes from among those read
    (a node, a Document, a long message), that text's id where the framework gives one (`sources[document]`, a node id;
    else None), the passage's character span in that text, its ranking score for the question (`E2LLM.rank_chunks`, 4
    decimals), and the passage itself."""
    chunks = answer.context.chunks if answer.context is not None else []
    metadata = []
    for index, score in answer.passages:
        chunk = chunks[index]
        source = sources[chunk.doc_index] if sources is not None and chunk.doc_index < len(sources) else None
        metadata.append({"document": chunk.doc_index, "source": source, "start": chunk.start, "end": chunk.end,
                         "score": round(score, 4), "text": chunk.text})
    return metadata
