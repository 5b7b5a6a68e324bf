"""Shared-prefix attention: answers decoded together read their common prompt prefix's KV cache once, never a copy per
row, and only the positions some row reads (a long document's unread chunks are left out of the products).

transformers keeps a batch's KV cache per row, so rows that share a prefix (questions over one context) would each hold
a copy of it, and every decoding step would concatenate the whole cache again. Here (as Hydragen, arXiv 2402.05099,
and FlashInfer's cascade attention do) the prefix's keys and values stay as its cache holds them, one row for all, and
each layer attends

- every row's queries to the prefix in one product: the rows, and the query heads that share a key head (grouped-query
  attention), are stacked into one matrix read against the prefix's keys once;
- each row's queries to its own keys (its prompt after the prefix, then its answer), kept per row in buffers sized for
  the whole answer up front, so that a step writes only its new keys;

with one softmax over both: what the attention of an ordinary cache of [prefix · own keys] gives each row. Rows with
no prefix (a prompt with nothing to cache) read their own keys through SDPA's fused kernel.

`install` routes a decoder's attention through `attention`, which is transformers' SDPA attention unless a forward
passes `shared_prefix=` (a `SharedPrefixCache`, also given as the forward's `cache`).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError

#: The attention implementation `install` registers with transformers.
ATTENTION = "e2llm_shared_prefix"
#: At most this many attention scores at once (64 MB in fp32): a long prompt read by many rows is read in query slices.
MAX_SCORES = 1 << 24


def install(model: nn.Module) -> None:
    """Route the attention of `model` (a transformers causal LM) through `attention`. A decoder whose attention
    transformers cannot replace, or which does more than full softmax attention, is refused: its answers would be
    wrong."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = model.config
    # Layers of other kinds than full attention: by `layer_types` where the config has them, else a sliding window
    # every layer reads (Mistral's `sliding_window`).
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention" if getattr(config, "sliding_window", None)
                                                            else "full_attention"]
    problems = [f"layers of type {kind!r}" for kind in sorted(set(layer_types) - {"full_attention"})]
    problems += ["attn_logit_softcapping"] if getattr(config, "attn_logit_softcapping", None) else []
    if not model._can_set_attn_implementation() or not model._supports_sdpa:
        problems.append("attention code transformers cannot replace")
    if problems:
        raise ConfigError(f"the decoder {type(model).__name__} has {', '.join(problems)}; E2LLM decodes with shared-prefix "
                          "attention, which needs full softmax attention in every layer through transformers' attention "
                          "interface: choose a decoder such as Llama, Qwen2 or SmolLM2")
    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks of ordinary forwards, as SDPA's
    model.set_attn_implementation(ATTENTION)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
              shared_prefix: SharedPrefixCache | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention function: `shared_prefix.attend` when given, else SDPA (training, prefills)."""
    if shared_prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    unsupported = [name for name in ("sliding_window", "softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:  # `install` refuses such decoders; a layer that asks anyway must not be read wrong
        raise ConfigError(f"shared-prefix attention does not implement {unsupported[0]!r}, which this decoder's "
                          f"{type(module).__name__} asks for")
    return shared_prefix.attend(module.layer_idx, query, key, value, attention_mask, scaling), None


class SharedPrefixCache:
    """The KV cache of rows decoded together after one prompt prefix: the prefix's (a transformers cache of batch 1,
    read, never written) and each row's own keys and values (transformers' cache protocol, `update`, writes them).

    `prefix_visible`: (rows, prefix positions) booleans, False where a row does not read a prefix position (hybrid's
    soft tokens of a chunk it reads as raw text); None when every row reads them all. `capacity`: the own positions a
    row holds at most (its padded prompt after the prefix, and its answer). `unpadded`: no row hides any of its own
    keys, so that a query reads every own key up to itself and a mask is needed only for causality."""

    def __init__(self, prefix, capacity: int, prefix_visible: torch.Tensor | None = None, unpadded: bool = False):
        self.prefix = [(layer.keys, layer.values) for layer in prefix.layers] if prefix is not None else []
        self.capacity = capacity
        self.unpadded = unpadded
        self.prefix_bias = None
        if prefix_visible is not None and self.prefix:
            self.prefix, prefix_visible = self.leave_out_unread(self.prefix, prefix_visible)
        if prefix_visible is not None and self.prefix and not prefix_visible.all():
            dtype = self.prefix[0][0].dtype
            self.prefix_bias = torch.zeros(prefix_visible.shape, dtype=dtype, device=prefix_visible.device).masked_fill(
                ~prefix_visible, torch.finfo(dtype).min)
        self._keys: dict[int, torch.Tensor] = {}
        self._values: dict[int, torch.Tensor] = {}
        self._length: dict[int, int] = {}

    @staticmethod
    def leave_out_unread(prefix: list, prefix_visible: torch.Tensor) -> tuple[list, torch.Tensor]:
        """The prefix's (keys, values) per layer, and the rows' visibility, without the positions no row reads (a long
        document's unread chunks are most of its prefix): one copy of the others, attended as the whole would be."""
        read = prefix_visible.any(dim=0)
        if read.all():
            return prefix, prefix_visible
        index = read.nonzero().squeeze(1)
        return [(keys.index_select(2, index), values.index_select(2, index)) for keys, values in prefix], \
            prefix_visible[:, index]

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs):
        """Write the rows' new keys and values (rows, kv heads, new, head dim) after their own; return all their own."""
        if layer not in self._keys:
            shape = (*keys.shape[:2], self.capacity, keys.shape[3])
            self._keys[layer], self._values[layer] = keys.new_empty(shape), values.new_empty(shape)
        start = self._length.get(layer, 0)
        end = start + keys.shape[2]
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values
        self._length[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these rows (the others' answers have ended)."""
        for layer in self._keys:
            self._keys[layer], self._values[layer] = self._keys[layer][rows], self._values[layer][rows]
        if self.prefix_bias is not None:
            self.prefix_bias = self.prefix_bias[rows]

    def attend(self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               own_mask: torch.Tensor, scaling: float) -> torch.Tensor:
        """query (rows, heads, queries, head dim); keys, values: the rows' own (rows, kv heads, own, head dim);
        own_mask: additive (rows, 1, queries, own). Returns (rows, queries, heads, head dim), as transformers'
        attention functions do."""
        rows, heads, queries, dim = query.shape
        if not self.prefix:
            # Each row's own keys alone: SDPA's fused kernel reads them without holding every score (at 8k positions,
            # 2.4x faster than the products below with a mask, 4.9x with none but causality).
            own = keys.shape[2]
            plain = self.unpadded and queries in (1, own)  # a prefill from an empty cache, or one new token
            out = nn.functional.scaled_dot_product_attention(
                query, keys, values, attn_mask=None if plain else own_mask, is_causal=plain and queries > 1,
                scale=scaling, enable_gqa=True)
            return out.transpose(1, 2)
        prefix = self.prefix[layer][0].shape[2]
        step = max(1, MAX_SCORES // (rows * heads * (prefix + keys.shape[2])))
        parts = [self._attend(layer, query[:, :, start : start + step], keys, values, own_mask[:, :, start : start + step],
                              scaling) for start in range(0, queries, step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=3)
        return out.view(rows, heads, queries, dim).transpose(1, 2)

    def _attend(self, layer: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, own_mask: torch.Tensor,
                scaling: float) -> torch.Tensor:
        """`attend` for a slice of the queries: (rows, kv heads, groups, queries, head dim)."""
        rows, heads, queries, dim = query.shape
        kv_heads = keys.shape[1]
        groups = heads // kv_heads
        # The query heads that share a key head (transformers' `repeat_kv`: head h reads key head h // groups) as rows
        # of one matrix: (rows, kv heads, groups * queries, dim).
        grouped = (query * scaling).reshape(rows, kv_heads, groups * queries, dim)
        scores = grouped @ keys.transpose(2, 3)
        scores.view(rows, kv_heads, groups, queries, -1).add_(own_mask[:, :, None])
        prefix_keys, prefix_values = self.prefix[layer]
        # Every row's queries against the one prefix: (kv heads, rows * groups * queries, dim) @ (kv heads, dim, P).
        stacked = grouped.transpose(0, 1).reshape(kv_heads, rows * groups * queries, dim)
        prefix_scores = (stacked @ prefix_keys[0].transpose(1, 2)).view(kv_heads, rows, groups, queries, -1)
        if self.prefix_bias is not None:
            prefix_scores.add_(self.prefix_bias[None, :, None, None])
        prefix_scores = prefix_scores.view(kv_heads, rows, groups * queries, -1).transpose(0, 1)
        scores = torch.cat([prefix_scores, scores], dim=-1)
        weights = scores.softmax(dim=-1) if scores.dtype == torch.float32 else scores.float().softmax(dim=-1).to(scores.dtype)
        prefix = prefix_keys.shape[2]
        out = weights[..., prefix:] @ values
        stacked = weights[..., :prefix].transpose(0, 1).reshape(kv_heads, rows * groups * queries, prefix)
        out += (stacked @ prefix_values[0]).view(kv_heads, rows, groups * queries, dim).transpose(0, 1)
        return out.view(rows, kv_heads, groups, queries, dim)


def own_mask(visible: torch.Tensor, new: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive (rows, 1, new, keys) mask of a forward that reads `new` positions per row: visible (rows, keys)
    says which of a row's own keys it reads (not its padding), the last `new` of them being the queries, each of which
    reads the visible keys up to itself."""
    keys = visible.shape[1]
    position = torch.arange(keys, device=visible.device)
    allowed = visible[:, None, :] & (position[None, :] <= position[keys - new :, None])
    return torch.zeros(allowed.shape, dtype=dtype, device=visible.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
