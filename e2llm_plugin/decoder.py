"""The decoder: a causal LM (optionally LoRA-tuned) that reads the paper's prompt with soft tokens spliced in.

Prompt (inside the decoder's own chat template)::

    Given the contexts: [c_1 ... c_N] [Relevant passages: raw text]? Please follow the instruction: {instruction}

Generation runs from `inputs_embeds` with a KV cache, one token at a time, so it streams: greedy by default, with a
repetition penalty, n-gram blocking and sampling as `GenerationConfig` asks, and an answer that starts to loop ends after
the loop's first turn (`repeated_tail`). A prompt's cacheable prefix is read once and
kept; answers after it read it through shared-prefix attention (`shared_prefix`), one answer or many together.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .config import GenerationConfig, LoraConfig
from .context import PrefixCache
from .embedded import load_base
from .errors import ContextOverflowError, E2LLMError
from .merged import MergedCopy
from .shared_prefix import SharedPrefixCache, install, own_mask

ANSWER_INSTRUCTION = "Answer the question: {question}"
RESTATE_INSTRUCTION = "Restate the aforementioned context."
#: How raw passages follow the soft tokens (hybrid reading): a heading, then the passages, one per line.
PASSAGES_HEADING = " Relevant passages:\n{passages}\n"


@dataclass
class Prompt:
    """What the decoder reads: embeddings (1, L, d) and, for training, labels (1, L) with -100 off the target."""

    embeds: torch.Tensor
    labels: torch.Tensor | None = None
    # The first positions, [template · soft tokens], do not depend on the question: their KV cache can be reused.
    prefix_tokens: int = 0
    # Positions of that prefix which no position after it attends to (hybrid's soft tokens of a chunk it reads as raw
    # text instead). The prefix itself is read causally as it is, so its KV cache stays valid; the positions keep
    # their numbers, so what follows reads as if the hidden ones were cut out of a prompt with a gap in it.
    hidden_prefix_positions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if any(not 0 <= i < self.prefix_tokens for i in self.hidden_prefix_positions):
            raise E2LLMError(f"hidden positions {self.hidden_prefix_positions} must lie in the prompt's prefix "
                             f"(its first {self.prefix_tokens} positions)")

    @property
    def num_tokens(self) -> int:
        return self.embeds.shape[1]

    def attention_mask(self) -> torch.Tensor | None:
        """(1, L) keys the positions after the prefix attend to: 0 at the hidden positions, 1 elsewhere. None when
        nothing is hidden."""
        if not self.hidden_prefix_positions:
            return None
        mask = torch.ones(1, self.num_tokens, dtype=torch.long, device=self.embeds.device)
        mask[0, list(self.hidden_prefix_positions)] = 0
        return mask

    @property
    def target_ids(self) -> torch.Tensor:
        """The labelled target tokens (the prompt's last positions)."""
        return self.labels[0][self.labels[0] != -100]


class PrefixKey(NamedTuple):
    """What a prompt prefix's KV cache is kept under: its content (the digest of its embeddings, and its length) and the
    weights that read it (the LoRA on or off, and the inference copy's `MergedCopy.key`, which is this process's)."""

    digest: str
    tokens: int
    lora_active: bool
    weights: tuple


#: At most this many bytes of the rows' own KV cache in one batch of `generate_texts` (their prompts after the shared
#: prefix, and their answers): hybrid's raw passages make each row's own part long, so such rows are decoded fewer at a time.
BATCH_KV_BYTES = 1 << 30
#: At most this many answers decoded together, however short their prompts.
BATCH_ROWS = 64
#: A loop (`repeated_tail`): a stretch of at least LOOP_UNIT tokens said twice in a row, or a shorter one repeated over
#: at least LOOP_SPAN tokens (a word said 16 times, not the digits of "1000"). Stretches longer than LOOP_MAX_UNIT
#: tokens are not looked for.
LOOP_UNIT, LOOP_SPAN, LOOP_MAX_UNIT = 8, 16, 48


class Decoder(nn.Module):
    def __init__(self, name_or_path: str, lora: LoraConfig, trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = load_base(AutoTokenizer, name_or_path, "decoder", trust_remote_code=trust_remote_code)
        model = load_base(AutoModelForCausalLM, name_or_path, "decoder", trust_remote_code=trust_remote_code, dtype=torch.float32)
        model.requires_grad_(False)
        install(model)  # its attention reads a shared prompt prefix when decoding (`shared_prefix`); SDPA otherwise
        self.model = lora.apply(model, "decoder", task_type="CAUSAL_LM")
        self.has_lora = lora.r > 0
        self.lora_active = self.has_lora  # False while E2LLM.base_decoder() reads without it
        self.inference_copy = MergedCopy(self.model)  # what generation reads: the LoRA merged, no LoRA matmuls
        # The distillation teacher (`freeze_teacher`): a frozen merged copy, kept in a tuple so that it is not
        # registered as a submodule (its weights are no parameters of this model, nor saved with it).
        self._teacher: tuple[nn.Module, ...] = ()
        self.dim = model.config.hidden_size
        self.max_tokens = getattr(model.config, "max_position_embeddings", None) or 2048
        self.stop_ids = self._stop_ids(model)
        # The end-of-answer text the model learns to emit after a target (ChatML's <|im_end|> for SmolLM2).
        self.end_text = self.tokenizer.eos_token or ""
        # Strings the tokenizer turns into control tokens (<|im_start|>, ...): user text must never produce them.
        self.special_strings = [t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special]
        self._words: dict[int, str] = {}  # token id -> its word for `repeated_tail`, as met

    def _stop_ids(self, model) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        eos = getattr(model.generation_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_scale(self) -> float:
        """RMS of the token embeddings: the size soft tokens should have to look like tokens."""
        weight = self.model.get_input_embeddings().weight
        return weight.detach().float().pow(2).mean().sqrt().item()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False, split_special_tokens=True)["input_ids"])

    # ---- prompt ---------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict], around_slot: tuple[str, str] | None = None) -> list[torch.Tensor]:
        """Token ids of the chat rendered in the decoder's template, cut where the soft tokens go.

        `around_slot`: the last user turn's text before and after the soft tokens (the turn is appended). All message
        text is user text: it is rendered through placeholders no text can contain, so no document or question can move
        the slot, and tokenized so that the template's control strings (<|im_end|>, ...) inside it stay plain text.
        """
        key = uuid.uuid4().hex  # unguessable: no text can contain these placeholders
        holder = "\ue000" + key + "{}\ue001"
        texts = [m["content"] for m in messages]
        turns = [{"role": m["role"], "content": holder.format(i)} for i, m in enumerate(messages)]
        if around_slot is not None:
            texts += around_slot
            n = len(messages)
            turns.append({"role": "user", "content": holder.format(n) + holder.format("slot") + holder.format(n + 1)})
        parts = re.split("\ue000" + key + "(\\w+)\ue001", self._render(turns))  # template, name, template, ...
        pieces: list[list[tuple[str, bool]]] = [[]]  # (text, is_user) runs; a new run starts at the slot
        for i, part in enumerate(parts):
            if i % 2 == 0:
                pieces[-1].append((part, False))
            elif part == "slot":
                pieces.append([])
            else:
                pieces[-1].append((texts[int(part)], True))
        return [self._ids_of(run) for run in pieces]

    def _ids_of(self, run: list[tuple[str, bool]]) -> torch.Tensor:
        if not any(special in text for text, user in run if user for special in self.special_strings):
            ids = self._tokenize("".join(text for text, _ in run), split_special=False)  # ordinary text: one piece
        else:  # a control string inside user text: tokenize it apart, as plain text
            ids = [i for text, user in run for i in self._tokenize(text, split_special=user)]
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _tokenize(self, text: str, split_special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False, split_special_tokens=split_special)["input_ids"]

    def _render(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n".join(m["content"] for m in messages) + "\n"  # a base model without a chat template

    def text_embeddings(self, text: str, max_tokens: int | None = None) -> torch.Tensor:
        """(tokens, d) input embeddings of raw text, its first `max_tokens` tokens if given: text in the soft slot."""
        ids = torch.tensor(self._tokenize(text, split_special=True), dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids[:max_tokens] if max_tokens is not None else ids)

    def build_prompt(self, soft: torch.Tensor, instruction: str, raw: str | None = None, target: str | None = None,
                     max_new_tokens: int = 0, history: list[dict] | None = None, cacheable: bool = False,
                     hidden: Collection[int] = ()) -> Prompt:
        """soft: (num_soft_tokens, d). Returns the prompt embeddings, with labels when a target is given.
        `cacheable`: mark [template · soft tokens] (in soft mode, on to the question's own words) as a prefix whose KV
        cache `generate_ids` may reuse for other questions. `hidden`: rows of `soft` that the positions after
        [template · soft tokens] do not see (`Prompt.hidden_prefix_positions`); a prompt that hides some always marks
        that prefix, training prompts included.

        The paper's prompt is the last user turn, as in training; earlier chat turns (system included) come first."""
        def ids(instruction: str) -> list[torch.Tensor]:
            after = PASSAGES_HEADING.format(passages=raw) if raw else ""
            after += f" Please follow the instruction: {instruction}"
            return self.encode_chat(list(history or []), around_slot=("Given the contexts: ", after))

        prefix_ids, suffix_ids = ids(instruction)
        shared = 0
        # In soft mode the cacheable prefix runs on through the instruction's fixed words, found by tokenizing another
        # question (so it is exact). Raw passages change with the question: hybrid caches [template · soft] only.
        if cacheable and not raw and not hidden:
            lead = ANSWER_INSTRUCTION.split("{question}")[0]
            other = ids((lead if instruction.startswith(lead) else "") + "\u2063")[1]
            while shared < min(len(suffix_ids), len(other)) - 1 and suffix_ids[shared] == other[shared]:
                shared += 1  # at least one position is left to read with the question
        embed = self.model.get_input_embeddings()
        target_ids = prefix_ids[:0]
        if target is not None:
            end = self._tokenize(self.end_text, split_special=False)
            target_ids = torch.tensor(self._tokenize(target, split_special=True) + end, dtype=torch.long, device=self.device)
        parts = [embed(prefix_ids), soft.to(embed.weight.dtype), embed(suffix_ids), embed(target_ids)]
        embeds = torch.cat(parts).unsqueeze(0)
        self._check_length(embeds.shape[1], max_new_tokens)
        labels = None
        if target is not None:
            labels = torch.full(embeds.shape[:2], -100, dtype=torch.long, device=self.device)
            labels[0, embeds.shape[1] - len(target_ids) :] = target_ids
        if any(not 0 <= i < len(soft) for i in hidden):
            raise E2LLMError(f"hidden soft-token rows {sorted(hidden)} must index the {len(soft)} soft tokens")
        prefix = len(prefix_ids) + len(soft)
        return Prompt(embeds, labels, prefix_tokens=prefix + shared if cacheable or hidden else 0,
                      hidden_prefix_positions=tuple(len(prefix_ids) + i for i in sorted(set(hidden))))

    def chat_prompt(self, messages: list[dict], max_new_tokens: int = 0) -> Prompt:
        """A plain chat prompt, no soft tokens: the decoder as an ordinary chat model."""
        (ids,) = self.encode_chat(messages)
        self._check_length(len(ids), max_new_tokens)
        return Prompt(self.model.get_input_embeddings()(ids).unsqueeze(0))

    def _check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        if prompt_tokens + max_new_tokens > self.max_tokens:
            raise ContextOverflowError(
                f"the prompt needs {prompt_tokens} decoder tokens (+{max_new_tokens} to generate) but the decoder "
                f"reads at most {self.max_tokens}; use fewer or shorter documents, larger chunks, or fewer soft tokens per chunk"
            )

    def freeze_teacher(self) -> None:
        """Keep the decoder as it is now, its LoRA merged and frozen, as the teacher `target_logits(teacher=True)`
        reads: self-distillation from the starting checkpoint, which the training steps after this do not move."""
        self._teacher = (MergedCopy(self.model).snapshot().requires_grad_(False),)

    @property
    def has_teacher(self) -> bool:
        return bool(self._teacher)

    def target_logits(self, prompts: list[Prompt], teacher: bool = False) -> list[torch.Tensor]:
        """For each training prompt, the logits (target tokens, vocab) that predict its target. Prompts of similar length
        are read in one right-padded forward (a short restate prompt is not padded to a long hybrid one), and the
        vocabulary projection runs only where a target token is predicted. `teacher`: read by the frozen teacher
        (`freeze_teacher`) instead of the decoder being trained."""
        if teacher and not self._teacher:
            raise E2LLMError("no distillation teacher: call freeze_teacher() first")
        if teacher:
            model = self._teacher[0]
        else:
            model = self.model.get_base_model() if self.has_lora else self.model  # LoRA layers live inside it
        order = sorted(range(len(prompts)), key=lambda i: prompts[i].num_tokens, reverse=True)
        groups: list[list[int]] = []
        for i in order:  # longest first: a prompt joins the open group if padding it wastes under a quarter
            if groups and prompts[i].num_tokens >= 0.75 * prompts[groups[-1][0]].num_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        out: dict[int, torch.Tensor] = {}
        for group in groups:
            out.update(zip(group, self._padded_target_logits(model, [prompts[i] for i in group]), strict=True))
        return [out[i] for i in range(len(prompts))]

    def _padded_target_logits(self, model: nn.Module, prompts: list[Prompt]) -> list[torch.Tensor]:
        width = max(p.num_tokens for p in prompts)
        pad = prompts[0].embeds.new_zeros(1, 1, self.dim)
        embeds = torch.cat([torch.cat([p.embeds, pad.expand(1, width - p.num_tokens, -1)], dim=1) for p in prompts])
        if any(p.hidden_prefix_positions for p in prompts):
            mask = attention_bias(prompts, width, embeds.dtype)
        else:  # padding only: transformers builds the causal mask
            mask = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            for i, p in enumerate(prompts):
                mask[i, : p.num_tokens] = 1
        states = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        # The position before each target token predicts it.
        rows = [states[i, p.num_tokens - len(p.target_ids) - 1 : p.num_tokens - 1] for i, p in enumerate(prompts)]
        return list(model.get_output_embeddings()(torch.cat(rows)).split([len(r) for r in rows]))

    # ---- generation -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_ids(self, prompt: Prompt, max_new_tokens: int, prefix_cache: PrefixCache | None = None,
                     generation: GenerationConfig | None = None) -> Iterator[int]:
        """Decoding with a KV cache (greedy unless `generation` sets a temperature); yields token ids until a stop token
        or the limit. An answer of n tokens costs the prefill and n - 1 decoder forwards (n when a stop token ends it):
        the last token's forward, which only predicts a token never read, is not run.

        A prompt with a cacheable prefix is prefilled in two steps, prefix then the rest, whether or not `prefix_cache`
        already holds the prefix's KV cache: so a reused prefix gives exactly the answer a fresh one gives. It is the
        one-row case of `generate_texts`: the same forwards, so the same answer alone as together."""
        generation = generation or GenerationConfig()
        for _, token in self._decode(self._reader(), [prompt], max_new_tokens, [], prefix_cache, generation):
            yield token

    @torch.inference_mode()
    def generate_texts(self, prompts: list[Prompt], max_new_tokens: int, stop: list[str] | None = None,
                       prefix_cache: PrefixCache | None = None, generation: GenerationConfig | None = None) -> list[str]:
        """Several answers decoded together, each the text `stream_text` gives its prompt alone: the same tokens, chosen
        the same way (greedy, or sampled from its own generator), the same stops.

        Prompts with the same cacheable prefix (questions over one context) are decoded as the rows of one batch: the
        prefix's KV cache is read from `prefix_cache` (or prefilled) once, and every row reads it through shared-prefix
        attention (`shared_prefix`): each layer stacks all rows' queries against the one copy of the prefix's keys, so
        a row costs only its own keys, never a copy of the prefix. Each row's rest follows the prefix, left-padded to
        the longest, with its own positions and a mask that hides the padding; a row leaves the batch at its own stop
        token, stop string or limit. So N questions cost one prefill of the prefix (none if cached), one forward over
        their rests, and one forward per token of the longest answer, each as many rows wide as answers go on: one-row
        products read every weight for one row's work, which a batch shares."""
        generation = generation or GenerationConfig()
        stop = [s for s in (stop or []) if s]
        model = self._reader()
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(self.prefix_key(prompt).digest if prompt.prefix_tokens else "", []).append(i)
        answers: list[list[int]] = [[] for _ in prompts]
        for rows in groups.values():
            # Each row holds its own keys (its rest and its answer): bounded, so rows with long rests go fewer at a time.
            longest = max(prompts[i].num_tokens - prompts[i].prefix_tokens for i in rows) + max_new_tokens
            per_row = sum(math.prod(shape) * dtype.itemsize for shape, dtype in self.prefix_layout(longest).values())
            size = max(1, min(BATCH_ROWS, BATCH_KV_BYTES // per_row))
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                for row, token in self._decode(model, [prompts[i] for i in batch], max_new_tokens, stop, prefix_cache,
                                               generation):
                    answers[batch[row]].append(token)
        return ["".join(self._texts(iter(tokens), stop, generation.stop_loops)) for tokens in answers]

    def _decode(self, model: nn.Module, prompts: list[Prompt], max_new_tokens: int, stop: list[str],
                prefix_cache: PrefixCache | None, generation: GenerationConfig) -> Iterator[tuple[int, int]]:
        """(row, token) as each answer's tokens are chosen, the prompts (which share their prefix) decoded as the rows
        of one batch; a row ends at a stop token (not yielded), its limit or a `stop` string."""
        n = prompts[0].prefix_tokens
        prefix = self._prefix(model, prompts[0], prefix_cache)
        rests = [prompt.embeds[0, n:] for prompt in prompts]
        width = max(len(rest) for rest in rests)
        embeds = torch.stack([nn.functional.pad(rest, (0, 0, width - len(rest), 0)) for rest in rests])
        # The own keys each row reads: its rest's (not the padding before it), then its answer's.
        visible = torch.ones(len(prompts), width, dtype=torch.bool, device=self.device)
        for row, rest in enumerate(rests):
            visible[row, : width - len(rest)] = False
        # The prefix positions each row reads: all but those it hides (what hybrid reads as raw text instead).
        masks = [prompt.attention_mask() for prompt in prompts]
        prefix_visible = None if all(mask is None for mask in masks) else torch.stack(
            [mask[0, :n].bool() if mask is not None else visible.new_ones(n) for mask in masks])
        cache = SharedPrefixCache(prefix, width + max_new_tokens, prefix_visible, unpadded=bool(visible.all()))
        ends = torch.tensor([n + len(rest) for rest in rests], device=self.device)  # each row's next position
        positions = (ends[:, None] - width + torch.arange(width, device=self.device)).clamp(min=n)  # padding: any
        # The last position's logits, kept by index: the slice `[:, -1:]` that logits_to_keep=1 takes of a batch is strided,
        # and torch's matmul then projects it onto the vocabulary row by row (a batched product that reads the whole
        # output embedding once per row, a fifth of the forward over 16 rows) instead of in one product.
        last = torch.tensor([width - 1], device=self.device)
        # The cache twice: as `cache`, where transformers writes each layer's new keys; as `shared_prefix`, what the
        # attention (`shared_prefix.attention`) reads beside them.
        out = model(inputs_embeds=embeds, attention_mask=own_mask(visible, width, embeds.dtype), position_ids=positions,
                    cache=cache, use_cache=True, shared_prefix=cache, logits_to_keep=last)
        rngs = [_rng(generation) for _ in prompts]
        answers: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))  # the rows still decoding, in the batch's order
        while True:
            logits = out.logits[:, -1].float().cpu()
            going = []  # indices into `live` of the rows that go on
            for j, row in enumerate(live):
                token = next_token(logits[j], answers[row], generation, rngs[row], self.stop_ids)
                if token in self.stop_ids:
                    continue
                answers[row].append(token)
                yield row, token
                if (len(answers[row]) < max_new_tokens and not self._stops(answers[row], stop)
                        and not (generation.stop_loops and self.repeated_tail(answers[row]).loop)):
                    going.append(j)
            if not going:
                return
            if len(going) < len(live):  # rows that ended leave the batch
                index = torch.tensor(going, device=self.device)
                cache.select(index)
                visible, ends, live = visible[index], ends[index], [live[j] for j in going]
            ids = torch.tensor([[answers[row][-1]] for row in live], device=self.device)
            visible = torch.cat([visible, visible.new_ones(len(live), 1)], dim=1)
            out = model(input_ids=ids, attention_mask=own_mask(visible, 1, embeds.dtype), position_ids=ends[:, None],
                        cache=cache, use_cache=True, shared_prefix=cache, logits_to_keep=1)
            ends = ends + 1

    def _reader(self) -> nn.Module:
        """What generation reads: the merged inference copy; the peft model with its adapter off in `base_decoder()`."""
        return self.inference_copy.get() if self.lora_active else self.model

    def _prefix(self, model: nn.Module, prompt: Prompt, prefix_cache: PrefixCache | None):
        """The KV cache of the prompt's prefix, from `prefix_cache` or prefilled (and kept there); None without one.
        Decoding only reads it."""
        n = prompt.prefix_tokens
        if n == 0:
            return None
        key = self.prefix_key(prompt)
        cache = prefix_cache.get(key) if prefix_cache is not None else None
        if cache is None:
            cache = model(inputs_embeds=prompt.embeds[:, :n], use_cache=True, logits_to_keep=1).cache
            if prefix_cache is not None:
                prefix_cache.put(key, cache)
        return cache

    def prefix_key(self, prompt: Prompt) -> PrefixKey:
        """By content and weights: the same template and soft tokens, read by the same LoRA, on or off."""
        prefix = prompt.embeds[:, : prompt.prefix_tokens].detach().to("cpu", torch.float32)
        digest = hashlib.sha256(prefix.numpy().tobytes()).hexdigest()
        return PrefixKey(digest, prompt.prefix_tokens, self.lora_active, self.inference_copy.key())

    def prefix_layout(self, tokens: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name -> (shape, dtype) of the tensors `cache_tensors` gives for a prefix of `tokens` positions: what a stored
        one must be to stand for it (`store.entry_problem`)."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype = next(self.model.parameters()).dtype
        shape = (1, heads, tokens, head_dim)
        return {f"{kind}.{i}": (shape, dtype) for i in range(config.num_hidden_layers) for kind in ("keys", "values")}

    def stream_text(self, prompt: Prompt, max_new_tokens: int, stop: list[str] | None = None,
                    prefix_cache: PrefixCache | None = None, generation: GenerationConfig | None = None) -> Iterator[str]:
        """Text pieces whose concatenation is the answer; ends early at the first `stop` string (not included)."""
        generation = generation or GenerationConfig()
        return self._texts(self.generate_ids(prompt, max_new_tokens, prefix_cache, generation), stop, generation.stop_loops)

    def _texts(self, tokens: Iterator[int], stop: list[str] | None, stop_loops: bool = False) -> Iterator[str]:
        """The text pieces of an answer's tokens; stops pulling tokens at the first `stop` string (`_stops`) and, with
        `stop_loops`, at a loop (`repeated_tail`), whose repeats are dropped. Tokens that repeat the ones before them are
        held back until they either turn into a loop or stop repeating, so a stream never shows what the answer drops."""
        stop = [s for s in (stop or []) if s]
        ids: list[int] = []
        emitted = 0  # characters already yielded
        text = ""
        for token in tokens:
            ids.append(token)
            tail = self.repeated_tail(ids) if stop_loops else None
            if tail is not None and tail.loop:  # end after the loop's first copy: its repeats were all held back
                text = self.tokenizer.decode(ids[: tail.first_copy], skip_special_tokens=True)
                break
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                continue
            cut = _stop_cut(text, stop)
            if cut >= 0:  # a stop string appeared: end the answer right before it
                if cut > emitted:
                    yield text[emitted:cut]
                return
            safe = len(text) - _held_back(text, stop)
            if tail is not None and tail.first_copy < len(ids):  # something is said again: hold it back
                first = self.tokenizer.decode(ids[: tail.first_copy], skip_special_tokens=True)
                safe = min(safe, len(first.rstrip("\ufffd")))
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = text.rstrip("\ufffd")
        cut = _stop_cut(text, stop)
        cut = len(text) if cut < 0 else cut
        if cut > emitted:
            yield text[emitted:cut]

    def repeated_tail(self, ids: list[int]) -> RepeatedTail:
        """`repeated_tail` of the answer's words: a token's text without its leading space and case, so that a loop
        of "The ... . The ..." or "L. L. L." starts at the answer's first "The" or "L", not at the next one. A token
        that is part of a character (byte tokens of CJK text, emoji) stands for itself: its text alone is only "\ufffd"."""
        for token in ids:
            if token not in self._words:
                word = self.tokenizer.decode([token]).strip().lower()
                self._words[token] = word if "\ufffd" not in word else f"\ufffd{token}"
        return repeated_tail([self._words[token] for token in ids])

    def _stops(self, ids: list[int], stop: list[str]) -> bool:
        """Whether `_texts` ends an answer after these tokens: a stop string is in their whole text."""
        if not stop:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return not text.endswith("\ufffd") and _stop_cut(text, stop) >= 0


def attention_bias(prompts: list[Prompt], width: int, dtype: torch.dtype) -> torch.Tensor:
    """The (batch, 1, width, width) additive attention mask of prompts right-padded to `width`, read in one forward
    as generation reads each: causal, no padding keys, and each prompt's hidden prefix positions unseen from the end of
    its prefix on. Additive (0 or the dtype's lowest), as both the eager and the SDPA attention of transformers take a
    4-D mask as given."""
    device = prompts[0].embeds.device
    query, key = torch.arange(width, device=device)[:, None], torch.arange(width, device=device)[None]
    allowed = (key <= query).repeat(len(prompts), 1, 1)
    for i, p in enumerate(prompts):
        allowed[i, :, p.num_tokens :] = False
        allowed[i, p.prefix_tokens :, list(p.hidden_prefix_positions)] = False
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return bias.unsqueeze(1)


def cache_tensors(cache) -> dict[str, torch.Tensor] | None:
    """A KV cache's tensors by name ("keys.3", "values.3", ...), to be stored; None for a cache with other than
    transformers' plain dynamic layers (sliding windows, ...), which is not stored."""
    from transformers.cache_utils import DynamicLayer

    if not all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers):
        return None
    return {f"{kind}.{i}": getattr(layer, kind) for i, layer in enumerate(cache.layers) for kind in ("keys", "values")}


def cache_from_tensors(named: dict[str, torch.Tensor], device: torch.device):
    """The KV cache `cache_tensors` took apart."""
    from transformers.cache_utils import DynamicCache

    layers = len(named) // 2
    return DynamicCache([(named[f"keys.{i}"].to(device), named[f"values.{i}"].to(device)) for i in range(layers)])


def _rng(generation: GenerationConfig) -> torch.Generator | None:
    """The random generator one sampled answer draws from (None when greedy), seeded by `generation.seed` if set."""
    if generation.temperature == 0:
        return None
    rng = torch.Generator(device="cpu")
    rng.manual_seed(generation.seed if generation.seed is not None else int(torch.randint(2**62, ()).item()))
    return rng


def _stop_cut(text: str, stop: list[str]) -> int:
    """Where the first stop string in `text` begins, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


def next_token(logits: torch.Tensor, answer: list[int], generation: GenerationConfig,
               rng: torch.Generator | None, stop_ids: Collection[int] = ()) -> int:
    """The next token from the vocabulary's logits, given the answer's tokens so far: the repetition penalty and n-gram
    blocking look at the answer only (never the prompt), then greedy, or sampling with temperature, top-k and top-p.
    A stop token never comes first, so an answer is never empty (transformers' `min_new_tokens=1`)."""
    if not answer and stop_ids:
        logits[list(stop_ids)] = float("-inf")
    if generation.repetition_penalty != 1.0 and answer:
        seen = torch.tensor(sorted(set(answer)))
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / generation.repetition_penalty, values * generation.repetition_penalty)
    n = generation.no_repeat_ngram_size
    if n and len(answer) >= n - 1:
        head = tuple(answer[len(answer) - n + 1 :])
        banned = [answer[i + n - 1] for i in range(len(answer) - n + 1) if tuple(answer[i : i + n - 1]) == head]
        logits[banned] = float("-inf")
    if generation.temperature == 0:
        return int(logits.argmax())
    logits = logits / generation.temperature
    if generation.top_k:
        logits[logits < logits.topk(min(generation.top_k, len(logits))).values[-1]] = float("-inf")
    if generation.top_p < 1.0:
        ordered, order = logits.sort(descending=True)
        # Drop tokens once the ones before them already reach top_p (the most likely token always stays).
        drop = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= generation.top_p
        logits[order[drop]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=rng))


class RepeatedTail(NamedTuple):
    start: int  # where the repeating stretch begins
    first_copy: int  # where its first copy ends: what comes after only repeats it
    loop: bool  # whether it repeats enough to be a loop (LOOP_UNIT, LOOP_SPAN)


def repeated_tail(ids: Sequence[Hashable]) -> RepeatedTail:
    """The stretch of tokens that the answer `ids` ends by repeating: for each unit length, the longest end of `ids` in
    which every token equals the one a unit before it; a repeat when that end is longer than one unit (something is being
    said again), a loop when it is also two units long and long enough (LOOP_UNIT, LOOP_SPAN). Of the repeats found, the
    first loop to end its first copy, or else the first repeat; `first_copy == len(ids)` when nothing repeats.
    "a b c d c d c" repeats "c d" from index 2: its first copy ends at 4, and "d c" after it only repeats it."""
    found = RepeatedTail(len(ids), len(ids), False)
    for unit in range(1, min(LOOP_MAX_UNIT, len(ids) - 1) + 1):
        span = unit
        while span < len(ids) and ids[-1 - span + unit] == ids[-1 - span]:
            span += 1
        if span > unit:
            loop = span >= 2 * unit and (unit >= LOOP_UNIT or span >= LOOP_SPAN)
            found = min(found, RepeatedTail(len(ids) - span, len(ids) - span + unit, loop),
                        key=lambda tail: (not tail.loop, tail.first_copy))
    return found


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that could be the start of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
