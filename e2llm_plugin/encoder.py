"""The chunk encoder: a BERT-family model (optionally LoRA-tuned) returning token-level states per chunk."""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn

from .adapter import mean_pool
from .config import LoraConfig
from .embedded import load_base


class ChunkEncoder(nn.Module):
    def __init__(self, name_or_path: str, lora: LoraConfig, trust_remote_code: bool = False):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = load_base(AutoTokenizer, name_or_path, "encoder", trust_remote_code=trust_remote_code)
        model = load_base(AutoModel, name_or_path, "encoder", trust_remote_code=trust_remote_code)
        model.requires_grad_(False)
        self.model = lora.apply(model, "encoder")
        self.has_lora = lora.r > 0
        self.dim = model.config.hidden_size
        self.max_tokens = min(getattr(model.config, "max_position_embeddings", 512), self.tokenizer.model_max_length)
        # Retrieval switches the LoRA off for a moment; that must not race with another thread's forward pass.
        self._lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (chunks, tokens, dim) and the attention mask (chunks, tokens)."""
        batch = self.tokenize(texts)
        with self._lock:
            states = self.model(**batch).last_hidden_state
        return states, batch["attention_mask"]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Unit-length mean-pooled sentence embeddings from the *base* encoder (LoRA off), for ranking chunks."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[i : i + batch_size])
            with self._lock, (self.model.disable_adapter() if self.has_lora else contextlib.nullcontext()):
                states = self.model(**batch).last_hidden_state
            out.append(nn.functional.normalize(mean_pool(states, batch["attention_mask"]), dim=-1))
        return torch.cat(out)
