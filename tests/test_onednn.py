"""fp32 linear layers through oneDNN: the same products as `nn.Linear`, on every shape answering sends, and `nn.Linear`'s
own forward wherever gradients, autocast or another dtype are involved."""

import copy
import os
import subprocess
import sys

import pytest
import torch
from conftest import build_tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from e2llm_plugin.onednn import LINEAR, OneDNNLinear, route_linears

needs_onednn = pytest.mark.skipif(LINEAR is None, reason="this torch has no oneDNN linear on this machine")


def pair(features_in: int, features_out: int, bias: bool, seed: int = 0) -> tuple[nn.Linear, OneDNNLinear]:
    torch.manual_seed(seed)
    plain = nn.Linear(features_in, features_out, bias=bias)
    return plain, route_linears(copy.deepcopy(plain))


@needs_onednn
@settings(max_examples=60, deadline=None)
@given(lead=st.lists(st.integers(1, 17), min_size=0, max_size=2), features_in=st.integers(1, 70),
       features_out=st.integers(1, 70), bias=st.booleans(), strided=st.booleans(), seed=st.integers(0, 2**16))
def test_the_same_products_as_nn_linear(lead, features_in, features_out, bias, strided, seed):
    plain, routed = pair(features_in, features_out, bias, seed)
    assert type(routed) is OneDNNLinear
    x = torch.randn(*lead, features_in * (2 if strided else 1))
    x = x[..., ::2] if strided else x  # a view that is not contiguous, as a batch's last position is
    with torch.inference_mode():
        torch.testing.assert_close(routed(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_the_op_is_the_one_called_when_nothing_needs_gradients(monkeypatch):
    plain, routed = pair(8, 5, True)
    calls = []
    monkeypatch.setattr("e2llm_plugin.onednn.LINEAR", lambda *args: calls.append(args) or LINEAR(*args))
    x = torch.randn(3, 8)
    with torch.no_grad():
        routed(x)
    routed.requires_grad_(False)
    routed(x)  # grad mode on, but nothing to differentiate
    assert len(calls) == 2
    routed.requires_grad_(True)
    routed(x)  # the weight's gradient is wanted: nn.Linear's forward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        routed(x)  # lowered to bf16 by autocast
    routed.bfloat16()(x.bfloat16())
    assert len(calls) == 2


def test_training_computes_as_nn_linear_does():
    plain, routed = pair(6, 4, True)
    x = torch.randn(5, 6, requires_grad=True)
    outputs = [layer(x) for layer in (plain, routed)]
    grads = [torch.autograd.grad(out.square().sum(), (x, layer.weight, layer.bias))
             for out, layer in zip(outputs, (plain, routed), strict=True)]
    torch.testing.assert_close(outputs[1], outputs[0])
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert routed(x.detach()).dtype == plain(x.detach()).dtype == torch.bfloat16


@needs_onednn
def test_a_model_and_its_inference_copies_read_through_onednn(tiny_config):
    model = build_tiny_model(tiny_config)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)
    copy_ = model.decoder.inference_copy.get()
    routed = [m for m in copy_.modules() if type(m) is OneDNNLinear]
    assert routed and not [m for m in copy_.modules() if type(m) is nn.Linear]
    # The state dict (what checkpoints hold) does not change with the class.
    plain = build_tiny_model(tiny_config)  # the same weights, computed by nn.Linear
    for module in plain.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = nn.Linear
    assert plain.state_dict().keys() == model.state_dict().keys()
    question = "What is this text about?"
    context = model.compress(["A short text about the Alps and their glaciers. " * 20])
    with torch.inference_mode():
        routed_answer = model.generate(question, context=context, mode="soft", max_new_tokens=8)
        plain_answer = plain.generate(question, context=context, mode="soft", max_new_tokens=8)
    assert routed_answer == plain_answer


def test_e2llm_onednn_off_keeps_nn_linear():
    code = ("from torch import nn; from e2llm_plugin.onednn import LINEAR, route_linears; "
            "print(LINEAR is None, type(route_linears(nn.Linear(2, 2))) is nn.Linear)")
    env = {**os.environ, "E2LLM_ONEDNN": "off"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.split() == ["True", "True"]
