"""Adapters that turn one chunk's encoder token states into `k` soft tokens in the decoder's embedding space.

`VPMA` is the paper's: pooling by multi-head attention with the key/value projections mapping straight from the
encoder's width to the decoder's, so pooling and alignment happen in one step::

    K = X W_K,  V = X W_V;   h = LN(MHA(q, K, V) + q);   c = LN(h + FFN(h))

(computed with the key projection folded into the few queries and the value projection applied after pooling, so no
token is ever projected).

`MLPAdapter` is the older alternative: mean-pool the chunk, then a two-layer MLP to k tokens.
Both end with a learned scale, initialised to the size of the decoder's own token embeddings, so soft tokens
start out looking like tokens to the decoder.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import E2LLMConfig
from .errors import ConfigError


class VPMA(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, num_tokens: int = 1, num_heads: int = 4, embed_scale: float = 1.0):
        super().__init__()
        if decoder_dim % num_heads:
            raise ConfigError(f"decoder width {decoder_dim} is not divisible by adapter_heads={num_heads}")
        self.num_heads = num_heads
        self.seeds = nn.Parameter(torch.randn(num_tokens, decoder_dim) * decoder_dim**-0.5)
        self.q_proj = nn.Linear(decoder_dim, decoder_dim)
        self.k_proj = nn.Linear(encoder_dim, decoder_dim)
        self.v_proj = nn.Linear(encoder_dim, decoder_dim)
        self.o_proj = nn.Linear(decoder_dim, decoder_dim)
        self.norm1 = nn.LayerNorm(decoder_dim)
        self.ffn = nn.Sequential(nn.Linear(decoder_dim, 4 * decoder_dim), nn.GELU(), nn.Linear(4 * decoder_dim, decoder_dim))
        self.norm2 = nn.LayerNorm(decoder_dim)
        # LayerNorm output has RMS 1; the decoder's embeddings are much smaller. Start at their RMS.
        self.scale = nn.Parameter(torch.tensor(float(embed_scale)))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (chunks, tokens, encoder_dim), mask (chunks, tokens) -> (chunks, k, decoder_dim)."""
        n = states.shape[0]
        k, d = self.seeds.shape
        heads, hd = self.num_heads, d // self.num_heads
        # MHA(q, X W_K, X W_V) without projecting every token: q . (W_K x + b_K) = (W_K^T q) . x + q . b_K, so W_K
        # folds into the queries, and W_V applies after pooling (the attention weights sum to one). The same result
        # for a fraction of the cost: each token meets k * heads folded queries instead of being projected by two
        # (decoder_dim x encoder_dim) matrices.
        q = self.q_proj(self.seeds).view(k, heads, hd) * hd**-0.5
        query = torch.einsum("khd,hde->khe", q, self.k_proj.weight.view(heads, hd, -1))
        # q . b_K is the same score for every token, which the softmax ignores; it stays so that every parameter
        # takes part in the loss, as DistributedDataParallel requires.
        key_bias = (q * self.k_proj.bias.view(heads, hd)).sum(-1)
        scores = (states @ query.flatten(0, 1).T).transpose(1, 2) + key_bias.view(1, -1, 1)  # (n, k * heads, t)
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))  # padding is never attended
        pooled = (scores.softmax(-1) @ states).view(n, k, heads, -1)
        pooled = torch.einsum("nkhe,hde->nkhd", pooled, self.v_proj.weight.view(heads, hd, -1)) + self.v_proj.bias.view(heads, hd)
        pooled = self.o_proj(pooled.reshape(n, k, d))
        h = self.norm1(pooled + self.seeds)
        return self.norm2(h + self.ffn(h)) * self.scale

    @torch.no_grad()
    def grow(self, num_tokens: int) -> None:
        """More soft tokens per chunk, warm-started: the trained seeds stay, new ones are nudged copies of them.

        Each seed pools independently, so the first k tokens come out exactly as before."""
        old = self.seeds.data
        self.seeds = nn.Parameter(torch.cat([old, _nudged_copies(old, num_tokens - len(old))]))


class MLPAdapter(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, num_tokens: int = 1, embed_scale: float = 1.0):
        super().__init__()
        self.num_tokens = num_tokens
        self.mlp = nn.Sequential(
            nn.Linear(encoder_dim, 4 * decoder_dim), nn.GELU(), nn.Linear(4 * decoder_dim, num_tokens * decoder_dim)
        )
        self.norm = nn.LayerNorm(decoder_dim)
        self.scale = nn.Parameter(torch.tensor(float(embed_scale)))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.mlp(mean_pool(states, mask)).view(states.shape[0], self.num_tokens, -1)
        return self.norm(out) * self.scale

    @torch.no_grad()
    def grow(self, num_tokens: int) -> None:
        """More soft tokens per chunk, warm-started: new output rows are nudged copies of the trained ones."""
        last = self.mlp[-1]
        d = last.out_features // self.num_tokens
        weight = last.weight.data.view(self.num_tokens, d, -1)
        bias = last.bias.data.view(self.num_tokens, d)
        extra = num_tokens - self.num_tokens
        grown = nn.Linear(last.in_features, num_tokens * d).to(last.weight)
        grown.weight.data = torch.cat([weight, _nudged_copies(weight, extra)]).flatten(0, 1)
        grown.bias.data = torch.cat([bias, _nudged_copies(bias, extra)]).flatten()
        self.mlp[-1], self.num_tokens = grown, num_tokens


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(chunks, tokens, d) states, (chunks, tokens) mask -> (chunks, d) mean over the unpadded tokens."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1)


def _nudged_copies(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`count` copies of `rows` (cycled along dim 0) plus 10% noise, so new soft tokens start trained but distinct."""
    copies = rows[torch.arange(count) % len(rows)]
    return copies + torch.randn_like(copies) * rows.std() * 0.1


#: The adapter of each `config.adapter` kind: (encoder width, decoder width, k, config, embedding scale) -> module.
BUILDERS = {
    "vpma": lambda enc, dec, k, config, scale: VPMA(enc, dec, k, config.adapter_heads, scale),
    "mlp": lambda enc, dec, k, config, scale: MLPAdapter(enc, dec, k, scale),
}


def build_adapter(config: E2LLMConfig, encoder_dim: int, decoder_dim: int, embed_scale: float) -> nn.Module:
    """The adapter `config.adapter` names, producing `config.soft_tokens_per_chunk` tokens per chunk."""
    if config.adapter not in BUILDERS:
        raise ConfigError(f"unknown adapter {config.adapter!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[config.adapter](encoder_dim, decoder_dim, config.soft_tokens_per_chunk, config, embed_scale)
