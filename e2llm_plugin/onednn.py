"""fp32 products through oneDNN rather than MKL: the same linear layers, about twice as fast on AMD CPUs.

torch computes an fp32 `nn.Linear` on the CPU with MKL's sgemm, which on AMD processors takes a slower code path than
on Intel's: on the 2-core AMD EPYC these figures come from, oneDNN's matmul (which torch already uses for bf16, and
ships in every x86 build) computes the same fp32 products in about half the time: 576 -> 1536 features for 16 rows in
114 µs against 227, for 2,048 rows in 8.9 ms against 18.0, the decoder's 49,152-word output layer for one row in 2.0 ms
against 7.4 (`python benchmarks/linear_kernels.py`, docs/bench/linear-kernels.md). Answering reads an fp32 decoder.

`route_linears` gives every fp32 `nn.Linear` of a model this forward. It computes the same products to fp32
rounding; where oneDNN's op does not apply it is `nn.Linear`'s own forward: another device or dtype, autocast (which
lowers the product to bf16, already oneDNN's), or a product that needs gradients (the op has no backward), so
training computes exactly as before.
"""

from __future__ import annotations

import os
import platform

import torch
from torch import nn

from .config import SWITCHED_OFF


def _op():
    """oneDNN's linear (the one torch's compiler emits for CPU products), where this torch has it on x86 and
    `E2LLM_ONEDNN` does not turn it off."""
    if (os.environ.get("E2LLM_ONEDNN", "").strip().lower() in SWITCHED_OFF or platform.machine().lower() not in
            ("x86_64", "amd64") or not torch.backends.mkldnn.is_available()):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


LINEAR = _op()


class OneDNNLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU products go through oneDNN when nothing needs their gradient, at every size: one row of
    a small layer alone is faster with MKL (576 -> 576: 21 µs against 31), but a decoder that switches libraries from
    layer to layer answered slower than one on oneDNN throughout (16 questions one by one: 5.4 s against 4.0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (x.dtype != torch.float32 or weight.dtype != torch.float32 or not x.is_cpu or torch.is_autocast_enabled("cpu")
                or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                               or bias is not None and bias.requires_grad)):
            return super().forward(x)
        return LINEAR(x, weight, bias, "none", [], "")


def route_linears(model: nn.Module) -> nn.Module:
    """Give every `nn.Linear` in `model` (not subclasses, which may compute otherwise) `OneDNNLinear`'s forward, in
    place: same parameters, same state dict, and the copies made of it later (the merged inference copies) follow.
    Nothing changes where this torch has no oneDNN linear."""
    if LINEAR is not None:
        for module in model.modules():
            if type(module) is nn.Linear:
                module.__class__ = OneDNNLinear  # as torch.nn.utils.parametrize does: the module and its tensors stay
    return model
