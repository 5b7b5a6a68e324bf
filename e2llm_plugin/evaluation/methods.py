"""The methods compared, run on one question at a time, and the reconstruction and compression measurements.

Every method reads the paper's prompt in the decoder's chat template, ``Given the contexts: [...] Please follow the
instruction: Answer the question: {question}``; the text baselines put decoder token embeddings of raw text where
E2LLM puts soft tokens (``E2LLM.answer_text``, ``E2LLM.answer(mode="rag")``), and every method decodes greedily through
the same `Answer`. Closed book reads ``Answer the question: {question}`` alone, with no context slot.

Decoders: closed book, truncation, full context and ``rag_base`` read with the LoRA adapter disabled (the base
decoder); ``rag_tuned``, soft and hybrid with it on. That decoder was fine-tuned on QA with soft prompts (and raw
passages, if trained with ``--mode hybrid``), never on raw passages alone; ``rag_ft`` is the text baseline: a
separate checkpoint whose decoder LoRA was fine-tuned on the same QA data as text RAG (``finetune --mode rag``),
given with ``--rag-model``.
Every RAG method reads the same passages (E2LLM's "rag" mode: the chunks `E2LLM.rank_chunks` ranks best for the
question, raw text, in as many decoder positions as hybrid reads).

Cost accounting: a context is chunked and compressed once and shared. Each method's time to first token counts the
shared stages it needs (compression for soft/hybrid; chunking and the chunks' retrieval embeddings for RAG and
hybrid) plus its own prompt building, prefill and first decoded token. Its peak memory is the largest of those
stages' peaks. Decoder tokens read = prompt positions before the answer (soft tokens count one each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..decoder import ANSWER_INSTRUCTION
from ..errors import E2LLMError
from ..model import Answer
from ..reading import reader_for
from ..tasks import restate_task
from .metrics import PeakMemory, answer_in, f1_score, loops, score

METHODS = ("closed_book", "truncation", "full_context", "rag_base", "rag_tuned", "rag_ft", "soft", "hybrid")
RAG_METHODS = ("rag_base", "rag_tuned", "rag_ft")
#: The reading mode of each method that reads a compressed context (see `e2llm_plugin.reading`).
READS = {"rag_base": "rag", "rag_tuned": "rag", "rag_ft": "rag", "soft": "soft", "hybrid": "hybrid"}
BASE_DECODER_METHODS = ("closed_book", "truncation", "full_context", "rag_base")
DESCRIPTIONS = {
    "closed_book": "base decoder, the question alone (no context)",
    "truncation": "base decoder, the first context tokens that fit the window",
    "full_context": "base decoder, the whole context as text (only where it fits the window, else n/a)",
    "rag_base": "base decoder, top chunks by the model's ranking (config ranking), raw text, at hybrid's decoder-token budget",
    "rag_tuned": "the same passages read by the E2LLM LoRA decoder (fine-tuned on QA with soft prompts, never on raw passages "
                 "alone)",
    "rag_ft": "the same passages read by a decoder LoRA fine-tuned for text RAG on the same QA data (--rag-model)",
    "soft": "E2LLM: every chunk as soft tokens",
    "hybrid": "E2LLM: every chunk as soft tokens plus the raw text of the best-ranked chunks",
}


@dataclass
class Example:
    question: str
    answer: str
    documents: list[str]
    meta: dict = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)  # every accepted answer, `answer` first

    def __post_init__(self) -> None:
        self.answers = [self.answer, *(a for a in self.answers if a != self.answer)]


def load_examples(path: str | Path, limit: int | None = None, seed: int | None = None) -> list[Example]:
    """QA lines (``context``, ``prompt``, ``answer``) of a JSONL file; a seed shuffles before the first ``limit``."""
    examples = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            if not (row.get("prompt") and row.get("answer") and row.get("context")):
                continue  # understanding-only lines
            docs = [row["context"]] if isinstance(row["context"], str) else list(row["context"])
            meta = {k: row[k] for k in ("doc_id", "country", "field", "task", "source") if k in row}
            accepted = [a.strip() for a in row.get("answers", []) if isinstance(a, str) and a.strip()]
            examples.append(Example(row["prompt"].strip(), row["answer"].strip(), [d for d in docs if d.strip()], meta, accepted))
    if seed is not None:
        random.Random(seed).shuffle(examples)
    return examples[:limit] if limit is not None else examples


def load_texts(path: str | Path) -> list[str]:
    """Texts for reconstruction: ``text`` lines, else the contexts of QA lines."""
    texts, contexts = [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                if row.get("text"):
                    texts.append(row["text"])
                elif row.get("context"):
                    contexts.append(row["context"] if isinstance(row["context"], str) else "\n".join(row["context"]))
    return texts or contexts


@dataclass
class Outcome:
    prediction: str | None = None  # None: not applicable (see note)
    ttft_s: float | None = None
    total_s: float | None = None
    tokens_read: int | None = None  # decoder positions before the answer (hidden ones included)
    chunks_read: int | None = None  # chunks read as soft tokens (rag: passages read; `Answer.chunks_read`)
    peak_mb: float | None = None
    em: float | None = None
    f1: float | None = None
    recall: float | None = None
    rouge_l: float | None = None
    passage_hit: float | None = None  # methods that read raw passages: 1.0 if the gold answer is in them
    loops: bool | None = None  # the answer repeats itself (see metrics.loops)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.prediction is not None


@dataclass
class _Stage:
    seconds: float
    peak_mb: float


class Evaluator:
    """Runs the methods on one example at a time; `window` caps the text baselines' prompts; `rag_model` (a checkpoint
    trained with ``finetune --mode rag``) reads the passages for ``rag_ft``."""

    def __init__(self, model, window: int | None = None, max_new_tokens: int = 32, rag_model=None):
        self.model, self.rag_model = model, rag_model
        self.window = min(window or model.context_window, model.context_window)
        self.max_new_tokens = max_new_tokens

    def text_budget(self, question: str) -> int:
        """Context tokens a text prompt can hold within the window, leaving room for the answer."""
        return self.window - self.model.answer_text(question, "", max_new_tokens=1).prompt_tokens - self.max_new_tokens

    # ---- generation ----------------------------------------------------------------------------------------
    def decoder_for(self, method: str):
        """The decoder `method` reads with: the base one (LoRA off) for the baselines, else the tuned one."""
        return self.model.base_decoder() if method in BASE_DECODER_METHODS else contextlib.nullcontext()

    def _consume(self, answer: Answer, start: float, outcome: Outcome) -> None:
        text, first = [], None
        for piece in answer:
            if first is None:
                first = time.perf_counter() - start
            text.append(piece)
        outcome.total_s = time.perf_counter() - start
        outcome.ttft_s = first if first is not None else outcome.total_s
        outcome.prediction = "".join(text).strip()

    def _run(self, method: str, example: Example, build, stages: list[_Stage] = ()) -> Outcome:
        """Time and measure `build() -> Answer` then decoding, with the shared stages added."""
        outcome = Outcome()
        try:
            with PeakMemory(self.model.device) as memory, self.decoder_for(method):
                start = time.perf_counter()
                answer = build()
                outcome.tokens_read, outcome.chunks_read = answer.prompt_tokens, answer.chunks_read
                self._consume(answer, start, outcome)
        except _NotApplicable as why:
            return Outcome(note=str(why))
        except E2LLMError as err:
            return Outcome(note=f"n/a: {err}")
        shared = sum(s.seconds for s in stages)
        outcome.ttft_s += shared
        outcome.total_s += shared
        outcome.peak_mb = max([memory.peak_mb] + [s.peak_mb for s in stages])
        outcome.__dict__.update(score(outcome.prediction, example.answers),
                                loops=loops(outcome.prediction, "\n".join(example.documents)))
        if method in READS and reader_for(READS[method]).reads_raw:
            # Untimed diagnostic: whether the passages read verbatim hold the answer (retrieval, not reading, failed if not).
            text = " ".join(answer.context.chunks[i].text for i, _ in answer.passages)
            outcome.passage_hit = max(answer_in(text, gold) for gold in example.answers)
        return outcome

    def warm_up(self, methods=METHODS) -> None:
        """Run every method once on a tiny example, so one-time costs (lazy imports, thread pools, first
        allocations, tiktoken's tables) do not land on the first question's time and memory."""
        example = Example("What is this?", "a warm-up", ["A short warm-up text. It has two sentences."])
        saved, self.max_new_tokens = self.max_new_tokens, 2
        try:
            self.run_example(example, methods)
        finally:
            self.max_new_tokens = saved

    # ---- one example ---------------------------------------------------------------------------------------
    def run_example(self, example: Example, methods=METHODS) -> tuple[dict[str, Outcome], dict]:
        """The outcome of each method, and the compressed context's statistics (empty if nothing compressed)."""
        model, q, n = self.model, example.question, self.max_new_tokens
        results: dict[str, Outcome] = {}
        stages: dict[str, _Stage] = {}

        def stage(name, fn):
            with PeakMemory(model.device) as memory:
                start = time.perf_counter()
                value = fn()
            stages[name] = _Stage(time.perf_counter() - start, memory.peak_mb)
            return value

        if "rag_ft" in methods and self.rag_model is None:
            raise E2LLMError("rag_ft needs a text-RAG checkpoint: pass rag_model (--rag-model), trained with finetune --mode rag")
        rag = [m for m in RAG_METHODS if m in methods]
        uses_chunks = set(READS) & set(methods)
        retrieval = {m for m in uses_chunks if reader_for(READS[m]).reads_raw}
        ctx = None
        if uses_chunks:
            if retrieval:  # RAG is charged for chunking, not for compression
                stage("chunk", lambda: model.chunk(example.documents))
            ctx = stage("compress", lambda: model.compress(example.documents, show_progress=False))
            if retrieval:
                stage("index", lambda: ctx.ensure_retrieval_embeddings(model.embed))

        if "closed_book" in methods:
            turn = [{"role": "user", "content": ANSWER_INSTRUCTION.format(question=q)}]  # no context slot at all
            results["closed_book"] = self._run("closed_book", example, lambda: model.chat(turn, max_new_tokens=n))

        if {"truncation", "full_context"} & set(methods):
            budget = self.text_budget(q)
            text = "\n\n".join(example.documents)
            length = model.count_tokens(text)
            fits = length <= budget

            def full():
                if not fits:
                    raise _NotApplicable(f"n/a: context is {length} tokens, the window holds {budget}")
                return model.answer_text(q, text, max_new_tokens=n)

            if "full_context" in methods:
                results["full_context"] = self._run("full_context", example, full)
            if "truncation" in methods:
                if fits and "full_context" in methods:  # the same prompt: reuse rather than decode it again
                    results["truncation"] = dataclasses.replace(results["full_context"],
                                                                note="whole context fits: same as full_context")
                else:
                    results["truncation"] = self._run("truncation", example,
                                                      lambda: model.answer_text(q, text, budget, max_new_tokens=n))

        if rag:
            # Equal budget: as many decoder positions as hybrid reads, within the text baselines' window.
            rag_budget = min(model.rag_budget(ctx), self.text_budget(q))
            for method in rag:
                reader = self.rag_model if method == "rag_ft" else model

                def build(r=reader, m=method):
                    return r.answer(q, context=ctx, mode=READS[m], max_new_tokens=n, raw_tokens=rag_budget)

                results[method] = self._run(method, example, build, [stages["chunk"], stages["index"]])

        for method in (m for m in READS if m in uses_chunks and m not in rag):  # E2LLM's own: charged for compression
            needs = [stages["compress"]] + ([stages["index"]] if method in retrieval else [])

            def answer(m=method):
                return model.answer(q, context=ctx, mode=READS[m], max_new_tokens=n)

            results[method] = self._run(method, example, answer, needs)
        return {m: results[m] for m in methods}, (ctx.stats() if ctx is not None else {})


class _NotApplicable(Exception):
    pass


# ---- reconstruction and compression ------------------------------------------------------------------------------
@torch.inference_mode()
def reconstruction(model, texts: list[str], windows: int, window_chunks: int = 2, seed: int = 0,
                   chunk_tokens: int | None = None) -> dict:
    """Restate windows of `window_chunks` chunks from their soft tokens (as in training); token F1 against the text."""
    rng = random.Random(seed)
    order = rng.sample(range(len(texts)), len(texts))
    rows = []
    for attempt in range(2 * windows):  # texts in a seeded order, reused (at other starts) if there are few
        if len(rows) >= windows or not texts:
            break
        index = order[attempt % len(order)]
        task = restate_task(model.chunk([texts[index]], chunk_tokens), rng, window_chunks)
        if task is None:
            continue
        began = time.perf_counter()
        restated = model.restate(task.chunks, max_new_tokens=model.count_tokens(task.target) + 16).strip()
        rows.append({"text_index": index, "target": task.target, "restated": restated, "f1": f1_score(restated, task.target),
                     "seconds": time.perf_counter() - began})
    mean = sum(r["f1"] for r in rows) / len(rows) if rows else None
    return {"windows": len(rows), "window_chunks": window_chunks, "f1": None if mean is None else 100 * mean, "rows": rows}


def soft_f1_and_ratio(model, examples: list[Example], max_new_tokens: int, chunk_tokens: int | None = None) -> dict:
    """E2LLM soft F1 and mean compression ratio (source decoder tokens per soft token) over examples."""
    f1s, ratios = [], []
    for example in examples:
        ctx = model.compress(example.documents, show_progress=False, chunk_tokens=chunk_tokens)
        prediction = model.generate(example.question, context=ctx, mode="soft", max_new_tokens=max_new_tokens)
        f1s.append(f1_score(prediction, example.answer))
        ratios.append(ctx.compression_ratio)
    return {"f1": 100 * sum(f1s) / len(f1s), "compression_ratio": sum(ratios) / len(ratios), "n": len(f1s)}
