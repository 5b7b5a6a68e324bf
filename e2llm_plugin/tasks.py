"""What the model learns from: the paper's two tasks, built from chunks.

* understanding: restate a window of a few chunks from their soft tokens;
* reasoning: answer a question from the soft tokens of the whole context (plus raw passages in hybrid mode).

`E2LLM.forward(tasks)` turns tasks into losses; `E2LLM.restate(chunks)` performs the understanding task.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from .chunking import Chunk
from .config import Mode


@dataclass
class Task:
    kind: Literal["understanding", "reasoning"]
    chunks: list[Chunk]
    target: str  # the restated text, or the answer
    question: str | None = None  # reasoning only
    mode: Mode | None = None  # how a reasoning task is read; None: the mode `forward` is given
    # Chunks hybrid must not read as raw passages (those holding the answer, in a share of training examples): the
    # decoder has to find the answer in their soft tokens.
    hidden: frozenset[int] = frozenset()

    def answer_chunks(self) -> frozenset[int]:
        """Indices of the chunks whose text holds the answer (empty for restating, or an answer spread over chunks)."""
        if self.kind != "reasoning":
            return frozenset()
        needle = self.target.strip().lower()
        return frozenset(i for i, c in enumerate(self.chunks) if needle and needle in c.text.lower())


def restate_task(chunks: list[Chunk], rng: random.Random, window_chunks: int) -> Task | None:
    """Restate a random window of `window_chunks` consecutive chunks; None if the window holds no text."""
    start = rng.randrange(max(1, len(chunks) - window_chunks + 1))
    window = chunks[start : start + window_chunks]
    target = "".join(c.text for c in window).strip()
    return Task("understanding", window, target) if target else None
