"""`MergedCopy`: the frozen inference copy of a LoRA-tuned base model, with its LoRA merged into the weights.

Training reads the peft model (LoRA unmerged, differentiable); answering reads this copy, which runs no LoRA matmuls
at all. The copy follows the model: it is rebuilt when a LoRA weight changes in place (an optimizer step, a load:
torch counts tensor versions) or the model moves to another device, and `key()` says which weights it holds, so
caches built from its outputs (the decoder's prefix cache) can tell.
"""

from __future__ import annotations

import copy
import itertools
import threading

import torch
from torch import nn

#: Which weights training changes, declared once (as peft's `adapter_layer_names`): every weight of these top-level
#: modules of an E2LLM, and every LoRA matrix (peft names them `lora_A`, `lora_B`, ...) wherever it sits. Saving
#: (`E2LLM.trained_state_dict`), the optimizer's parameters, the store's fingerprint and this merged copy go by it.
TRAINED_MODULES = ("adapter",)
LORA_MARKER = "lora_"


def is_trained(name: str) -> bool:
    """Whether the parameter (or state-dict entry) `name` is one training changes; the base models' are frozen."""
    return name.split(".", 1)[0] in TRAINED_MODULES or LORA_MARKER in name


class MergedCopy:
    def __init__(self, model: nn.Module):
        self.model = model
        # Listed once: walking named_parameters on every call costs milliseconds per answer.
        self._lora = [p for name, p in model.named_parameters() if is_trained(name)]
        self._copy: tuple[tuple, nn.Module] | None = None
        self._lock = threading.Lock()

    def key(self) -> tuple:
        """Changes whenever the copy would: the model's device and the versions of its LoRA weights."""
        return (next(self.model.parameters()).device, *(p._version for p in self._lora))

    def get(self, dtype: torch.dtype | None = None) -> nn.Module:
        """The copy, in `dtype` if given. In the model's own precision it shares every weight the LoRA does not touch
        with the model, so it costs only the merged layers' memory (the attention projections, not the embeddings or
        the MLPs); in another (the encoder's bf16) it is a whole private copy."""
        convert = dtype is not None and dtype != next(self.model.parameters()).dtype
        key = (*self.key(), dtype if convert else None)
        with self._lock:
            if self._copy is None or self._copy[0] != key:
                self._copy = (key, self._build(dtype if convert else None))
            return self._copy[1]

    def snapshot(self) -> nn.Module:
        """A merged copy of the model as it is now, which later changes to its weights do not reach (the distillation
        teacher: the starting checkpoint, frozen). It shares the frozen base weights, as `get()`'s copy does."""
        return self._build(None)

    def _build(self, dtype: torch.dtype | None) -> nn.Module:
        shared = {}
        if dtype is None:  # deepcopy's memo maps these tensors to themselves: shared, not copied
            tensors = itertools.chain(self.model.named_parameters(), self.model.named_buffers())
            shared = {id(t): t for name, t in tensors if not is_trained(name) and "base_layer" not in name}
        frozen = copy.deepcopy(self.model, shared)
        frozen = frozen.merge_and_unload() if self._lora else frozen  # writes only into the copied base layers
        return (frozen if dtype is None else frozen.to(dtype)).eval()
