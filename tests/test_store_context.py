"""Whole stored contexts: the store keeps each compressed document's context (its chunks' spans, soft tokens, retrieval
embeddings and token counts) under the model's fingerprint and the chunking settings, keyed by the document's text, so
a new process handed the same text reads it back in one lookup, neither chunking, encoding nor counting it. Checked
before use like every entry: one that does not fit is compressed again and replaced, never served."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import LOREM, build_tiny_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM
from e2llm_plugin.chunking import Chunker
from e2llm_plugin.context import stored_context_problem
from e2llm_plugin.decoder import Decoder
from e2llm_plugin.encoder import ChunkEncoder
from e2llm_plugin.store import CompressedStore

DOCS = [LOREM * 3, "Cats sleep for most of the day. They hunt at night, alone, and come home at dawn. " * 4]


@pytest.fixture(scope="module")
def model(tiny_config):
    return build_tiny_model(tiny_config)


@pytest.fixture(scope="module")
def fresh(model):
    """What the model computes for DOCS without a store: what every context read back must equal."""
    kept, model.store = model.store, None
    try:
        return model.compress_each(DOCS)
    finally:
        model.store = kept


@pytest.fixture
def store(model, tmp_path, monkeypatch):
    store = CompressedStore(tmp_path / "s.sqlite")
    monkeypatch.setattr(model, "store", store)
    yield store
    store.close()


@pytest.fixture
def work(monkeypatch) -> list[str]:
    """What compressing does besides reading the store: 'chunk', 'encode', 'count' once per call."""
    done = []

    def spy(original, kind):
        def counted(*args, **kwargs):
            done.append(kind)
            return original(*args, **kwargs)
        return counted

    for owner, name, kind in ((Chunker, "split", "chunk"), (ChunkEncoder, "encode", "encode"),
                              (Decoder, "count_tokens", "count")):
        monkeypatch.setattr(owner, name, spy(getattr(owner, name), kind))
    return done


def _assert_same(got, want):
    """The same chunks and statistics, and the same tensors up to the encoder's batching (its padding moves the last
    bits)."""
    assert got.chunks == want.chunks and got.stats() == want.stats()
    torch.testing.assert_close(got.soft_tokens, want.soft_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.retrieval_embeddings, want.retrieval_embeddings, rtol=0, atol=1e-6)


def _fingerprint(model, chunk_tokens=None) -> str:
    return model._context_fingerprint(model.fingerprint(), model._chunker_for(chunk_tokens))


def test_a_stored_document_is_read_back_whole_in_one_lookup(model, fresh, store, work, monkeypatch):
    first = model.compress_each(DOCS)
    for got, want in zip(first, fresh, strict=True):
        _assert_same(got, want)
    assert {"chunk", "encode", "count"} <= set(work)
    work.clear()
    lookups = []
    get_many = store.get_many
    monkeypatch.setattr(store, "get_many", lambda fingerprint, texts: lookups.append(len(texts)) or get_many(fingerprint, texts))
    again = model.compress_each(DOCS)
    assert work == [] and lookups == [len(DOCS)]  # one lookup for both documents; nothing chunked, encoded or counted
    for got, want in zip(again, first, strict=True):  # what was stored, bit for bit
        _assert_same(got, want)
        assert torch.equal(got.soft_tokens, want.soft_tokens)
        assert torch.equal(got.retrieval_embeddings, want.retrieval_embeddings)
    question = "When is the National Day?"
    assert model.generate(question, context=model.compress(DOCS), max_new_tokens=6) == \
        model.generate(question, context=type(fresh[0]).concat(fresh), max_new_tokens=6)


def test_only_the_documents_not_stored_are_compressed(model, fresh, store, work):
    model.compress_each(DOCS[:1])
    work.clear()
    for got, want in zip(model.compress_each(DOCS), fresh, strict=True):
        _assert_same(got, want)
    assert work.count("chunk") == 1  # the second document alone


def test_other_chunking_settings_weights_or_text_never_read_a_stored_context(model, fresh, store, work):
    model.compress_each(DOCS)
    work.clear()
    other = model.compress_each(DOCS, chunk_tokens=16)  # another chunk size: chunked again, into more chunks
    assert "chunk" in work and sum(c.num_chunks for c in other) > sum(c.num_chunks for c in fresh)
    edited = DOCS[0].replace("October", "November")
    work.clear()
    assert "November" in "".join(c.text for c in model.compress_each([edited])[0].chunks) and "chunk" in work
    scale = model.adapter.scale
    before = scale.detach().clone()
    try:
        scale.data.mul_(2.0)  # an edit torch's version counter misses: the fingerprint still sees it
        work.clear()
        doubled = model.compress_each(DOCS[:1])[0]
        assert "chunk" in work and "encode" in work
        assert not torch.equal(doubled.soft_tokens, fresh[0].soft_tokens)
    finally:
        scale.data.copy_(before)
    work.clear()
    _assert_same(model.compress_each(DOCS[:1])[0], fresh[0])
    assert work == []


@st.composite
def wrong_contexts(draw, right: dict, length: int):
    """A stored context with one thing wrong: a tensor gone, of another shape or dtype, a value not finite, or spans
    that do not tile the document (a boundary moved, two chunks swapped, one dropped, the end cut short)."""
    entry = {name: tensor.clone() for name, tensor in right.items()}
    kind = draw(st.sampled_from(["missing", "shape", "dtype", "value", "boundary", "swap", "drop", "short", "counts"]))
    name = draw(st.sampled_from(["soft", "embedding"] if kind == "value" else sorted(entry)))
    spans, n = entry["spans"], len(right["spans"])
    if kind == "missing":
        del entry[name]
    elif kind == "shape":
        entry[name] = draw(st.sampled_from([entry[name][:-1], entry[name][None], entry[name].flatten()]))
    elif kind == "dtype":
        entry[name] = entry[name].to(draw(st.sampled_from([torch.float64, torch.float16, torch.int32, torch.int16])))
    elif kind == "value":
        flat = entry[name].flatten()
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    elif kind == "boundary":
        i = draw(st.integers(1, n - 1))
        spans[i, 0] += draw(st.sampled_from([-1, 1]))
    elif kind == "swap":
        i = draw(st.integers(0, n - 2))
        spans[[i, i + 1]] = spans[[i + 1, i]]
    elif kind == "drop":
        i = draw(st.integers(0, n - 1))
        entry = {key: torch.cat([t[:i], t[i + 1:]]) if key != "counts" else t for key, t in entry.items()}
    elif kind == "short":
        spans[-1, 1] = length - draw(st.integers(1, 3))
    else:
        entry["counts"][draw(st.integers(0, 1))] = -draw(st.integers(2, 9))
    return entry


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_wrong_stored_context_is_compressed_again_and_replaced_never_served(model, fresh, tmp_path_factory, data):
    right = fresh[0].tensors()
    wrong = data.draw(wrong_contexts(right, len(DOCS[0])))
    assume(stored_context_problem(DOCS[0], wrong, model._chunk_layout(), overlap=False) is not None)
    with CompressedStore(tmp_path_factory.mktemp("wrong") / "s.sqlite") as store:
        store.put_many(_fingerprint(model), [DOCS[0]], [wrong])
        kept, model.store = model.store, store
        try:
            _assert_same(model.compress_each(DOCS[:1])[0], fresh[0])
        finally:
            model.store = kept
        replaced = store.get_many(_fingerprint(model), [DOCS[0]])[0]
    assert stored_context_problem(DOCS[0], replaced, model._chunk_layout(), overlap=False) is None
    for name in right:
        torch.testing.assert_close(replaced[name], right[name], rtol=0, atol=1e-6)


def test_a_wrong_stored_context_is_said(model, fresh, store, caplog):
    wrong = {**fresh[0].tensors(), "soft": torch.full_like(fresh[0].soft_tokens, float("nan"))}
    store.put_many(_fingerprint(model), [DOCS[0]], [wrong])
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.model"):
        _assert_same(model.compress_each(DOCS[:1])[0], fresh[0])
    assert "1 contexts of the compressed store do not fit this model" in caplog.text and "NaN" in caplog.text


def test_a_context_read_back_counts_cl100k_when_it_was_not_counted(model, fresh, store, monkeypatch):
    from e2llm_plugin import context as context_module

    model.compress_each(DOCS[:1])
    monkeypatch.setattr(context_module, "count_cl100k", lambda texts: 1234)  # tiktoken's files found since
    assert model.compress_each(DOCS[:1])[0].num_source_tokens_cl100k == (fresh[0].num_source_tokens_cl100k or 1234)


def test_any_store_backend_gets_a_wrong_context_replaced(tiny_config):
    from test_reading import DictStore

    store = DictStore()
    model = E2LLM(tiny_config, store=store)
    first = model.compress([LOREM])
    whole = model._context_fingerprint(model.fingerprint(), model.chunker)
    store.entries[whole, LOREM] = {**store.entries[whole, LOREM], "spans": torch.zeros(2, 3, dtype=torch.long)}
    _assert_same(model.compress([LOREM]), first)
    assert stored_context_problem(LOREM, store.entries[whole, LOREM], model._chunk_layout(), overlap=False) is None
