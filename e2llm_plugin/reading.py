"""Reading modes: how a question over a compressed context becomes the decoder's prompt.

Each mode is one `Reader` that owns its whole logic (peft's LoRA variants are the model): which chunks it reads as
soft tokens, which as raw passages, how many positions that takes. `READERS` maps each `Mode` to its reader, and every
caller goes through it: answering (`E2LLM.read`, `E2LLM.answer`), the training loss (`E2LLM.forward`, its distillation
teacher included), the training data's size estimate (`training.data.decoder_positions`), the evaluation and the
bench. A new mode is one reader class and one line in `READERS`.

- ``soft``: every chunk as its soft tokens (the paper); past `max_soft_chunks`, the chunks ranked best for the
  question, the others' soft tokens kept in the cacheable prefix and hidden from the question (as hybrid's expanded
  ones below); past the decoder's window, only the best ranked that fit.
- ``hybrid``: the same, plus the raw text of the best-ranked chunks within a token budget, after the soft tokens.
  A chunk read as raw text is read once (`hybrid_expansion="replace"`, REFRAG's expansion): its soft tokens stay in
  the cacheable [template · soft tokens] prefix, computed as they are, and are hidden from every position after it
  (`Prompt.hidden_prefix_positions`), so one prefix KV cache serves every question. `"duplicate"` reads it both ways.
- ``rag``: only the raw text of the best-ranked chunks, in the soft tokens' place (the classic baseline).

A reader returns a `Reading`: the prompt, the passages read as raw text, how many chunks it read, and every chunk as
`E2LLM.rank_chunks` ranked it for the question, where it ranked them (so nothing downstream ranks a second time).
Readers use only the public verbs of `E2LLM` and its `Decoder`.
"""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from .config import Expansion, Mode, PassageOrder, check_mode
from .decoder import ANSWER_INSTRUCTION, PASSAGES_HEADING, Prompt
from .errors import ConfigError, ContextOverflowError, E2LLMError

if TYPE_CHECKING:
    from .context import CompressedContext
    from .model import E2LLM

logger = logging.getLogger(__name__)

Ranking = list[tuple[int, float]]  # (chunk index, score), best first (`E2LLM.rank_chunks`)


@dataclass(frozen=True)
class Reading:
    """What the decoder reads for one question over one context."""

    mode: Mode
    prompt: Prompt
    passages: Ranking  # (chunk index, score) read as raw text, in the order read (the config's passage_order)
    chunks_read: int  # chunks read as soft tokens (rag: passages read)
    ranking: Ranking | None  # every chunk, best first; None where the reading ranked none (soft, all fit)
    prefix_chunks: int = 0  # chunks whose soft tokens the prompt holds, read or hidden (all: one prefix for every question)


class Reader:
    """One reading mode. `read` builds the prompt; `positions` bounds its size for the training data's estimate."""

    mode: ClassVar[Mode]
    #: Whether the prompt holds the context's soft tokens (so a training context needs them, and a teacher can read it).
    reads_soft: ClassVar[bool] = True
    #: Whether it reads raw passages (within the `hybrid_raw_tokens` budget).
    reads_raw: ClassVar[bool] = False

    def read(self, model: E2LLM, question: str, context: CompressedContext, *, max_new_tokens: int = 0,
             target: str | None = None, history: list[dict] | None = None, raw_tokens: int | None = None,
             exclude: Collection[int] = frozenset(), include: Collection[int] = frozenset()) -> Reading:
        """The prompt for `question` over `context`. `target`: the training target (labels, no KV-cache prefix);
        `raw_tokens`: the raw-passage budget instead of the config's; `exclude` and `include` steer which passages
        training reads (never / first)."""
        raise NotImplementedError

    def positions(self, model: E2LLM, num_chunks: int) -> int:
        """Decoder positions the context of `num_chunks` chunks takes in this mode, never fewer than it will."""
        return num_chunks * model.config.soft_tokens_per_chunk


class SoftReader(Reader):
    mode = "soft"

    def passages(self, model: E2LLM, context: CompressedContext, ranking: Callable[[], Ranking], raw_tokens: int | None,
                 exclude: Collection[int], include: Collection[int]) -> Ranking:
        """The chunks read as raw text beside the soft tokens: none."""
        return []

    def read(self, model, question, context, *, max_new_tokens=0, target=None, history=None, raw_tokens=None,
             exclude=frozenset(), include=frozenset()) -> Reading:
        if context.soft_tokens is None:
            raise E2LLMError(f"mode {self.mode!r} reads soft tokens, but this context holds raw text only; use mode='rag'")
        ranking = functools.cache(lambda: model.rank_chunks(question, context))  # ranked once, and only if needed
        instruction = ANSWER_INSTRUCTION.format(question=question)
        passages = self.passages(model, context, ranking, raw_tokens, exclude, include)
        raw = "\n".join(context.chunks[i].text.strip() for i, _ in passages) or None
        read, unread = self._chunks_that_fit(model, context, ranking, instruction, raw, max_new_tokens, history,
                                             training=target is not None)
        soft = (context.soft_tokens if len(read) == context.num_chunks else context.soft_tokens[read]).flatten(0, 1)
        k = context.soft_tokens.shape[1]
        hidden = unread | self.expanded(model, passages)
        rows = [row * k + j for row, chunk in enumerate(read) if chunk in hidden for j in range(k)]
        prompt = model.decoder.build_prompt(soft, instruction, raw, target=target, max_new_tokens=max_new_tokens,
                                            history=history, cacheable=target is None, hidden=rows)
        ranked = ranking() if ranking.cache_info().currsize else None
        return Reading(self.mode, prompt, passages, len(read) - len(unread), ranked, prefix_chunks=len(read))

    def expanded(self, model: E2LLM, passages: Ranking) -> set[int]:
        """The chunks whose soft tokens the question and the answer do not see because they read their raw text: none."""
        return set()

    @staticmethod
    def _chunks_that_fit(model: E2LLM, context: CompressedContext, ranking: Callable[[], Ranking], instruction: str,
                         raw: str | None, max_new_tokens: int, history: list[dict] | None,
                         training: bool) -> tuple[list[int], set[int]]:
        """(the chunks whose soft tokens the prompt holds, those of them the question does not read).

        The question reads the soft tokens of at most `max_soft_chunks` chunks: all of them if there are no more, else
        those ranked best for it. While every chunk fits the decoder's window beside the rest of the prompt, the prompt
        holds them all and hides the ones it does not read (as hybrid hides what it reads as raw text), so every question
        over the context shares one cacheable prefix. Past the window, it holds only the best ranked that fit (at most
        `max_soft_chunks`), in document order: a document of any length can be asked, and `chunks_read` says how many
        chunks were read. Training reads as answering does, but a context past the window is an error there, not cut."""
        n, k = context.soft_tokens.shape[:2]
        frame = model.decoder.build_prompt(context.soft_tokens[:0].flatten(0, 1), instruction, raw, history=history).num_tokens
        room = (model.context_window - frame - max_new_tokens) // k
        cap = model.config.max_soft_chunks or n
        if n <= room or training:  # build_prompt refuses a training context that does not fit
            unread = set() if n <= cap else set(range(n)) - {i for i, _ in ranking()[:cap]}
            return list(range(n)), unread
        if room < 1:
            raise ContextOverflowError(
                f"the question, chat history and raw passages take {frame} of the decoder's {model.context_window} "
                f"positions (+{max_new_tokens} to generate), leaving none for the document; shorten them or lower max_new_tokens"
            )
        room = min(room, cap)
        logger.info("the context's %d chunks overflow the decoder's window: reading the %d ranked best for the question",
                    n, room)
        return sorted(i for i, _ in ranking()[:room]), set()


class HybridReader(SoftReader):
    mode = "hybrid"
    reads_raw = True

    def passages(self, model, context, ranking, raw_tokens, exclude, include) -> Ranking:
        """The best-ranked chunks within the raw budget (the config's `hybrid_raw_tokens` unless `raw_tokens`)."""
        budget = model.config.hybrid_raw_tokens if raw_tokens is None else raw_tokens
        return fit_passages(model, context, ranking(), budget, exclude, include) if budget > 0 else []

    def expanded(self, model, passages) -> set[int]:
        """With `hybrid_expansion="replace"`, the chunks read as raw passages: each chunk is read once, its raw text in
        place of its soft tokens. Their positions stay in the cacheable prefix (computed as they are, so one prefix
        serves every question) and are hidden from everything after it."""
        expansion = model.config.hybrid_expansion
        if expansion not in typing.get_args(Expansion):
            raise ConfigError(f"hybrid_expansion must be one of {typing.get_args(Expansion)}, got {expansion!r}")
        return set() if expansion == "duplicate" else {i for i, _ in passages}

    def positions(self, model, num_chunks) -> int:
        raw = model.config.hybrid_raw_tokens
        if raw == 0:
            return super().positions(model, num_chunks)
        # The passages' heading, and one newline between passages (at most one per chunk), beyond their budget.
        return super().positions(model, num_chunks) + raw + model.count_tokens(PASSAGES_HEADING.format(passages="")) + num_chunks


class RagReader(Reader):
    mode = "rag"
    reads_soft = False
    reads_raw = True

    def read(self, model, question, context, *, max_new_tokens=0, target=None, history=None, raw_tokens=None,
             exclude=frozenset(), include=frozenset()) -> Reading:
        """Raw text of the best chunks in the context slot, where soft tokens would go: as many positions as hybrid
        reads (`budget`), or `raw_tokens`, within what fits beside the prompt and the answer."""
        instruction = ANSWER_INSTRUCTION.format(question=question)
        budget = self.budget(model, context) if raw_tokens is None else raw_tokens
        frame = model.decoder.build_prompt(model.decoder.text_embeddings(""), instruction, history=history).num_tokens
        reserve = max_new_tokens if target is None else model.count_tokens(target) + 1  # room for the answer
        budget = min(budget, model.context_window - frame - reserve)
        ranking = model.rank_chunks(question, context)
        passages = fit_passages(model, context, ranking, budget, exclude, include)
        text = "\n".join(context.chunks[i].text.strip() for i, _ in passages)
        slot = model.decoder.text_embeddings(text, max_tokens=budget)
        prompt = model.decoder.build_prompt(slot, instruction, target=target, max_new_tokens=max_new_tokens, history=history)
        return Reading(self.mode, prompt, passages, len(passages), ranking)

    @staticmethod
    def budget(model: E2LLM, context: CompressedContext) -> int:
        """Decoder positions rag fills with raw text: as many as hybrid reads (soft tokens + raw budget)."""
        return context.num_chunks * model.config.soft_tokens_per_chunk + model.config.hybrid_raw_tokens

    def positions(self, model, num_chunks) -> int:
        return super().positions(model, num_chunks) + model.config.hybrid_raw_tokens  # raw text in the soft tokens' place


#: The reader of each mode: the one place a mode is dispatched.
READERS: dict[Mode, Reader] = {reader.mode: reader for reader in (SoftReader(), HybridReader(), RagReader())}
#: What the distillation teacher reads in training (xRAG's recipe): the raw passages that hold the answer.
TEACHER: Reader = READERS["rag"]


def reader_for(mode: str) -> Reader:
    """The reader of `mode`; a ConfigError that lists the modes if it is none."""
    return READERS[check_mode(mode)]


def fit_passages(model: E2LLM, context: CompressedContext, ranking: Ranking, budget: int,
                 exclude: Collection[int] = frozenset(), include: Collection[int] = frozenset()) -> Ranking:
    """The best chunks of `ranking` whose raw text fits `budget` decoder tokens, in the order they are read (the
    config's `passage_order`: document order, or best first). Training steers it: chunks in `exclude` are never
    chosen, chunks in `include` are taken first (and read where their rank puts them)."""
    order = model.config.passage_order
    if order not in typing.get_args(PassageOrder):  # a value assigned after the config was checked
        raise ConfigError(f"passage_order must be one of {typing.get_args(PassageOrder)}, got {order!r}")
    ranked = [item for item in ranking if item[0] not in exclude]
    ranked.sort(key=lambda item: item[0] not in include)  # stable: ranking order within each group
    chosen, used = [], 0
    for index, score in ranked:
        cost = model.count_tokens(context.chunks[index].text)
        if used + cost <= budget:
            chosen.append((index, score))
            used += cost
        if budget - used < 8:
            break
    if order == "ranked":
        rank = {index: position for position, (index, _) in enumerate(ranking)}
        return sorted(chosen, key=lambda item: rank[item[0]])
    return sorted(chosen)
