"""What answering reads: the LoRA merged into copies of the base models, a prefix cache that decoding never changes, and
the adapter's attention pooling computed with its projections folded into the queries."""

import pytest
import torch
from conftest import LOREM, build_tiny_model
from torch.nn import functional as F

from e2llm_plugin.adapter import VPMA

DOCS = [LOREM * 3, "A second, shorter document about the Alps."]


def attention_pooling(adapter: VPMA, states, mask):
    """VPMA as the paper writes it: every token projected to keys and values, then multi-head attention."""
    n, t, _ = states.shape
    k, d = adapter.seeds.shape
    heads, hd = adapter.num_heads, d // adapter.num_heads
    q = adapter.q_proj(adapter.seeds).view(1, k, heads, hd).transpose(1, 2).expand(n, -1, -1, -1)
    key = adapter.k_proj(states).view(n, t, heads, hd).transpose(1, 2)
    value = adapter.v_proj(states).view(n, t, heads, hd).transpose(1, 2)
    pooled = F.scaled_dot_product_attention(q, key, value, attn_mask=mask.bool()[:, None, None, :])
    h = adapter.norm1(adapter.o_proj(pooled.transpose(1, 2).reshape(n, k, d)) + adapter.seeds)
    return adapter.norm2(h + adapter.ffn(h)) * adapter.scale


@pytest.mark.parametrize("k", [1, 3])
def test_the_folded_adapter_is_multi_head_attention_pooling(k):
    torch.manual_seed(0)
    adapter = VPMA(16, 24, k, num_heads=4, embed_scale=0.1)
    with torch.no_grad():  # biases are zero-initialised nowhere, but make sure the folding handles them
        adapter.k_proj.bias.normal_()
        adapter.v_proj.bias.normal_()
    states = torch.randn(3, 7, 16)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] * 5 + [0, 0]])
    folded, reference = adapter(states, mask), attention_pooling(adapter, states, mask)
    torch.testing.assert_close(folded, reference)
    # and it trains the same: the gradients of the projections it folds agree too
    grads = []
    for out in (folded, reference):
        adapter.zero_grad()
        out.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in adapter.parameters()])  # every one gets a gradient: DDP needs it
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_generation_reads_the_lora_merged_into_a_copy_that_shares_the_frozen_weights(tiny_config):
    model = build_tiny_model(tiny_config, seed=3)
    peft_model = model.decoder.model
    base_layer = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    base_q = base_layer.weight.clone()
    merged = model.decoder.inference_copy.get()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    # untouched weights are the model's own tensors; the merged projections are new ones, and the base is unchanged
    assert merged.get_input_embeddings().weight is peft_model.get_input_embeddings().weight
    merged_q = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(merged_q, base_q)
    assert torch.equal(base_layer.weight, base_q)
    embeds = torch.randn(1, 9, model.decoder.dim) * 0.05
    with torch.no_grad():
        torch.testing.assert_close(merged(inputs_embeds=embeds).logits, peft_model(inputs_embeds=embeds).logits)


def test_answers_through_the_merged_copy_are_the_unmerged_lora_s(tiny_config, monkeypatch):
    model = build_tiny_model(tiny_config, seed=4)
    ctx = model.compress(DOCS)
    questions = ["When is the National Day?", "Which river flows through Vienna?"]
    merged = [model.generate(q, context=ctx, max_new_tokens=8) for q in questions]
    monkeypatch.setattr(model.decoder.inference_copy, "get", lambda: model.decoder.model)  # the peft model itself
    assert [model.generate(q, context=model.compress(DOCS), max_new_tokens=8) for q in questions] == merged


def test_the_merged_copy_follows_training(tiny_config):
    model = build_tiny_model(tiny_config, seed=5)
    before = model.decoder.inference_copy.get()
    assert model.decoder.inference_copy.get() is before  # built once while the weights stay
    with torch.no_grad():
        for name, p in model.decoder.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # as an optimizer step would
    after = model.decoder.inference_copy.get()
    assert after is not before
    embeds = torch.randn(1, 5, model.decoder.dim) * 0.05
    with torch.no_grad():
        assert not torch.allclose(after(inputs_embeds=embeds).logits, before(inputs_embeds=embeds).logits)
        torch.testing.assert_close(after(inputs_embeds=embeds).logits, model.decoder.model(inputs_embeds=embeds).logits)


def test_decoding_never_changes_a_stored_prefix(tiny_model):
    ctx = tiny_model.compress(DOCS)
    first = tiny_model.generate("When is the National Day?", context=ctx, max_new_tokens=6)
    (stored,) = ctx.prefix_cache._caches.values()
    snapshot = [(layer.keys.clone(), layer.values.clone()) for layer in stored.layers]
    tiny_model.generate("Which river flows through Vienna? Answer at length.", context=ctx, max_new_tokens=12)
    for layer, (keys, values) in zip(stored.layers, snapshot, strict=True):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)  # not extended, not written into
    assert tiny_model.generate("When is the National Day?", context=ctx, max_new_tokens=6) == first
