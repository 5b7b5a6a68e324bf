"""Training data: JSONL in the official E2LLM format, validated up front, streamed by byte offset.

Two kinds of line:

* reasoning: ``{"context": str | [str], "prompt": str, "answer": str}`` (extra keys are ignored)
* understanding only: ``{"text": str}``

The file is never loaded whole: one pass validates it and records where each line starts; an epoch is a seeded
permutation of those offsets. The position in that permutation is the whole data state, so a resumed run reads
exactly the examples the interrupted one would have.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import E2LLMError
from ..tasks import Task, restate_task


class DataError(E2LLMError):
    """A training file is malformed; the message names the file and line."""


@dataclass
class Record:
    context: list[str]
    prompt: str | None = None  # None for understanding-only lines
    answer: str | None = None


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
    for key in ("prompt", "answer"):
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string")
    return Record([c for c in context if c.strip()], obj["prompt"].strip(), obj["answer"].strip())


class JsonlDataset:
    """Validates a JSONL file in one streaming pass, then reads lines by offset; `qa_only` keeps reasoning lines."""

    def __init__(self, path: str | Path, qa_only: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        offsets = []
        with self.path.open("rb") as f:
            offset = 0
            for number, raw in enumerate(f, start=1):
                if raw.strip():
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataError(f"{self.path}:{number}: not UTF-8") from None
                    record = parse_line(line, f"{self.path}:{number}")
                    if record.prompt is not None or not qa_only:
                        offsets.append(offset)
                offset += len(raw)
        if not offsets:
            wanted = "QA lines ({context, prompt, answer})" if qa_only else "examples"
            raise DataError(f"{self.path}: no {wanted}")
        self.offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, index: int) -> Record:
        with self.path.open("rb") as f:
            f.seek(int(self.offsets[index]))
            return parse_line(f.readline().decode("utf-8"), f"{self.path}:?")

    def order(self, epoch: int, seed: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(self))


def make_tasks(record: Record, model, rng: random.Random, understanding_ratio: float, window_chunks: int) -> list[Task]:
    """The paper's two tasks from one record, chunked by `model`. Text-only records always give an understanding task."""
    chunks = model.chunk(record.context)
    tasks = []
    if record.prompt is not None:
        tasks.append(Task("reasoning", chunks, record.answer, record.prompt))
    if record.prompt is None or rng.random() < understanding_ratio:
        restate = restate_task(chunks, rng, window_chunks)
        if restate is not None:
            tasks.append(restate)
    return tasks
