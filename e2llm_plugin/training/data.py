"""Training data: JSONL in the official E2LLM format, validated up front, streamed by byte offset.

Two kinds of line:

* reasoning: ``{"context": str | [str], "prompt": str, "answer": str}`` (extra keys are ignored), with an optional
  ``"mode"`` ("soft", "hybrid" or "rag") that pins how training reads the question, over the recipe's choice (a line
  whose answer only raw text can give, such as an invented name among hundreds of other chunks, says "hybrid")
* understanding only: ``{"text": str}``

The file is never loaded whole: one pass validates it and records where each line starts; an epoch is a seeded
permutation of those offsets. The position in that permutation is the whole data state, so a resumed run reads
exactly the examples the interrupted one would have.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import MODES
from ..decoder import RESTATE_INSTRUCTION
from ..errors import ContextOverflowError, E2LLMError, check_unicode
from ..reading import reader_for
from ..tasks import Task, restate_task


class DataError(E2LLMError):
    """A training file is malformed; the message names the file and line."""


@dataclass
class Record:
    context: list[str]
    prompt: str | None = None  # None for understanding-only lines
    answer: str | None = None
    mode: str | None = None  # how training reads the question; None: as the run's recipe draws it


def _check_text(value: str, where: str, field: str) -> None:
    """A JSON escape such as \\ud800 decodes to half of a surrogate pair, which no tokenizer can read."""
    check_unicode(value, f"{where}: {field}", DataError)


def parse_line(line: str, where: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "text" in obj and "context" not in obj:
        text = obj["text"]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        _check_text(text, where, "'text'")
        return Record([text])
    missing = [k for k in ("context", "prompt", "answer") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; a line is {{'context', 'prompt', 'answer'}} or {{'text'}}")
    context = obj["context"]
    if isinstance(context, str):
        context = [context]
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise DataError(f"{where}: 'context' must be a string or a list of strings")
    if not any(c.strip() for c in context):
        raise DataError(f"{where}: 'context' is empty")
    for i, c in enumerate(context):
        _check_text(c, where, "'context'" if isinstance(obj["context"], str) else f"'context'[{i}]")
    for key in ("prompt", "answer"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string")
        _check_text(obj[key], where, f"'{key}'")
    mode = obj.get("mode")
    if mode is not None and mode not in MODES:
        raise DataError(f"{where}: 'mode' must be one of {list(MODES)} (how training reads the question), got {mode!r}; "
                        "leave it out to let the run's recipe choose")
    return Record([c for c in context if c.strip()], obj["prompt"].strip(), obj["answer"].strip(), mode)


def _parse_raw(raw: bytes, where: str) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: not UTF-8") from None
    return parse_line(line, where)


class JsonlDataset:
    """Validates a JSONL file in one streaming pass, then reads lines by offset; `qa_only` keeps reasoning lines."""

    def __init__(self, path: str | Path, qa_only: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        offsets, numbers = [], []
        with self.path.open("rb") as f:
            offset = 0
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    record = _parse_raw(raw, f"{self.path}:{number}")
                    if record.prompt is not None or not qa_only:
                        offsets.append(offset)
                        numbers.append(number)
                offset += len(raw)
        if not offsets:
            wanted = "QA lines ({context, prompt, answer})" if qa_only else "examples"
            raise DataError(f"{self.path}: no {wanted}")
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.numbers = np.asarray(numbers, dtype=np.int64)  # line numbers, so every message can say file:line

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, index: int) -> str:
        """`file:line` of example `index`."""
        return f"{self.path}:{int(self.numbers[index])}"

    def read(self, index: int) -> Record:
        with self.path.open("rb") as f:
            return self._read(f, index)

    def records(self) -> Iterator[tuple[str, Record]]:
        """(file:line, record) of every example, in file order, through one open file."""
        with self.path.open("rb") as f:
            for index in range(len(self)):
                yield self.where(index), self._read(f, index)

    def _read(self, f, index: int) -> Record:
        f.seek(int(self.offsets[index]))
        return _parse_raw(f.readline(), self.where(index))  # checked again: the file may have changed since

    def order(self, epoch: int, seed: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(self))


def decoder_positions(model, mode: str, question: str | None, target: str, num_chunks: int) -> int:
    """Decoder positions a task needs: the prompt template around its question (None: the restate task), the context of
    `num_chunks` chunks as `mode`'s reader reads it (soft tokens, raw passages: their whole budget), and the target with
    its end token. Measured through the model's verbs: exact in soft mode; in the others a few positions over, never under."""
    if question is None:  # the restate task reads the chunks' soft tokens alone
        context = num_chunks * model.config.soft_tokens_per_chunk
    else:
        context = reader_for(mode).positions(model, num_chunks)
    rest = context + model.count_tokens(target) + 1  # +1: the end-of-answer token
    question = question or RESTATE_INSTRUCTION  # asked as a question: a few positions over the restate prompt
    words = model.count_tokens(question)
    if words + rest > model.context_window:  # over already: spare building the prompt of a huge question
        return words + rest
    try:
        return model.answer_text(question, "", max_new_tokens=1).prompt_tokens + rest
    except ContextOverflowError:  # answer_text refuses a prompt that leaves no room to answer: the template fills the window
        return model.context_window + rest


def check_fits(dataset: JsonlDataset, model, mode: str) -> None:
    """Refuse, by file:line, a QA line that cannot fit the decoder's window even with one chunk of context: drawn, it
    would stop the run, and every `--resume` after. Lines too long only for their many chunks are skipped at run time."""
    window = model.context_window
    for where, record in dataset.records():
        if record.prompt is None:
            continue
        need = decoder_positions(model, mode, record.prompt, record.answer, num_chunks=1)
        if need > window:
            reads_raw = reader_for(mode).reads_raw
            raw = f", {model.config.hybrid_raw_tokens} tokens of raw passages" if reads_raw else ""
            raise DataError(
                f"{where}: the prompt ({model.count_tokens(record.prompt)} tokens) and answer "
                f"({model.count_tokens(record.answer)} tokens) need {need} decoder positions with the prompt template{raw} "
                f"and one chunk's soft tokens, but the decoder reads at most {window}; shorten the answer (or the prompt), "
                + ("lower --hybrid-raw-tokens, " if reads_raw else "") + "or use a decoder with a longer window"
            )


def make_tasks(record: Record, model, rng: random.Random, understanding_ratio: float, window_chunks: int) -> list[Task]:
    """The paper's two tasks from one record, chunked by `model`. Text-only records always give an understanding task."""
    chunks = model.chunk(record.context)
    tasks = []
    if record.prompt is not None:
        tasks.append(Task("reasoning", chunks, record.answer, record.prompt, mode=record.mode))
    if record.prompt is None or rng.random() < understanding_ratio:
        restate = restate_task(chunks, rng, window_chunks)
        if restate is not None:
            tasks.append(restate)
    return tasks
