"""Shared-prefix attention (`e2llm_plugin.shared_prefix`): what it computes is the attention of an ordinary cache of
[prefix · own keys], whatever the rows, queries, padding, hidden prefix positions and query slices; ordinary forwards
read as SDPA; and a decoder it would read wrong is refused."""

from __future__ import annotations

import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from e2llm_plugin import shared_prefix
from e2llm_plugin.errors import ConfigError
from e2llm_plugin.shared_prefix import SharedPrefixCache, attention, own_mask

KV_HEADS, DIM, SCALE = 2, 8, 8**-0.5


def _by_hand(query, keys, values, allowed):
    """Softmax attention over keys (rows, kv heads, n, dim), each query head reading its key head (grouped-query
    attention), where `allowed` (rows, queries, n) says so. Returns (rows, queries, heads, dim)."""
    groups = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    scores = (query @ keys.transpose(2, 3) * SCALE).masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(dim=-1) @ values).transpose(1, 2)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), prefix=st.integers(0, 9), before=st.integers(0, 5), queries=st.integers(1, 4),
       groups=st.sampled_from([1, 3]), data=st.data())
def test_it_is_attention_over_the_prefix_and_each_rows_own_keys(rows, prefix, before, queries, groups, data):
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    own = before + queries
    # What each row reads of its own keys (padding not), the queries' own positions always; of the prefix, all but
    # the positions it hides.
    visible = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=before, max_size=before),
                                              min_size=rows, max_size=rows), label="visible"), dtype=torch.bool)
    visible = torch.cat([visible.view(rows, before), torch.ones(rows, queries, dtype=torch.bool)], dim=1)
    hides = prefix and data.draw(st.booleans(), label="hides")
    prefix_visible = torch.rand(rows, prefix) > 0.4 if hides else None
    sliced = data.draw(st.booleans(), label="sliced")
    unpadded = bool(visible.all()) and data.draw(st.booleans(), label="unpadded")  # the decoder says so when true

    prefix_keys, prefix_values = torch.randn(1, KV_HEADS, prefix, DIM), torch.randn(1, KV_HEADS, prefix, DIM)
    cache = SharedPrefixCache(types.SimpleNamespace(layers=[types.SimpleNamespace(keys=prefix_keys, values=prefix_values)])
                              if prefix else None, own + 2, prefix_visible, unpadded=unpadded)
    keys, values = torch.randn(rows, KV_HEADS, own, DIM), torch.randn(rows, KV_HEADS, own, DIM)
    if before:
        cache.update(keys[:, :, :before], values[:, :, :before], 0)
    keys_so_far, values_so_far = cache.update(keys[:, :, before:], values[:, :, before:], 0)
    query = torch.randn(rows, KV_HEADS * groups, queries, DIM)
    module = types.SimpleNamespace(layer_idx=0)
    with pytest.MonkeyPatch.context() as patch:
        if sliced:
            patch.setattr(shared_prefix, "MAX_SCORES", 1)  # one query per slice
        out, _ = attention(module, query, keys_so_far, values_so_far, own_mask(visible, queries, torch.float32), SCALE,
                           shared_prefix=cache)

    causal = torch.arange(own)[None, :] <= torch.arange(before, own)[:, None]
    prefix_allowed = prefix_visible if hides else torch.ones(rows, prefix, dtype=torch.bool)
    allowed = torch.cat([prefix_allowed[:, None].expand(-1, queries, -1), visible[:, None] & causal], dim=2)
    full_keys = torch.cat([prefix_keys.expand(rows, -1, -1, -1), keys], dim=2)
    full_values = torch.cat([prefix_values.expand(rows, -1, -1, -1), values], dim=2)
    torch.testing.assert_close(out, _by_hand(query, full_keys, full_values, allowed), rtol=1e-5, atol=1e-5)
    read = prefix_allowed.any(dim=0)
    if prefix and read.all():  # read as it is: the prefix's own tensors, not a copy
        assert cache.prefix[0][0] is prefix_keys and cache.prefix[0][1] is prefix_values
    elif prefix:  # positions no row reads are left out of the products
        assert cache.prefix[0][0].shape[2] == cache.prefix[0][1].shape[2] == int(read.sum())


def test_the_own_keys_are_written_in_place_and_rows_leave():
    cache = SharedPrefixCache(None, 5)
    first = cache.update(torch.randn(3, KV_HEADS, 3, DIM), torch.randn(3, KV_HEADS, 3, DIM), 0)[0]
    keys, _ = cache.update(torch.randn(3, KV_HEADS, 1, DIM), torch.randn(3, KV_HEADS, 1, DIM), 0)
    assert keys.shape[2] == 4 and keys.data_ptr() == first.data_ptr()  # one buffer, sized up front
    torch.testing.assert_close(keys[:, :, :3], first)
    cache.select(torch.tensor([0, 2]))
    assert cache.update(torch.randn(2, KV_HEADS, 1, DIM), torch.randn(2, KV_HEADS, 1, DIM), 0)[0].shape == (2, KV_HEADS, 5, DIM)


def test_ordinary_forwards_read_as_sdpa(tiny_dirs):
    """Training and prefills pass no shared prefix: the installed attention is transformers' SDPA, to the bit."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs[1], dtype=torch.float32)
    installed = AutoModelForCausalLM.from_pretrained(tiny_dirs[1], dtype=torch.float32)
    assert plain.config._attn_implementation == "sdpa"
    shared_prefix.install(installed)
    assert installed.config._attn_implementation == shared_prefix.ATTENTION
    embeds = torch.randn(2, 7, plain.config.hidden_size)
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])
    with torch.no_grad():
        assert torch.equal(installed(inputs_embeds=embeds, attention_mask=mask).logits,
                           plain(inputs_embeds=embeds, attention_mask=mask).logits)


@pytest.mark.parametrize("config, settings", [
    ("Qwen2Config", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1)),
    ("MistralConfig", dict(sliding_window=16)),
    ("Gemma2Config", {}),
])
def test_a_decoder_with_sliding_window_attention_is_refused(config, settings):
    import transformers

    config = getattr(transformers, config)(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, **settings)
    with pytest.raises(ConfigError, match="'sliding_attention'.*choose a decoder such as Llama"):
        shared_prefix.install(transformers.AutoModelForCausalLM.from_config(config))
