"""The reading modes (`e2llm_plugin.reading`) and the contracts around them: the store protocol, the call options, the
trained-parameter rule, the adapter registry. Tiny random models, public verbs only."""

import dataclasses
import logging
import typing

import pytest
import torch
from conftest import LOREM, build_tiny_model

from e2llm_plugin import E2LLM, CompressedContext
from e2llm_plugin.adapter import build_adapter
from e2llm_plugin.config import CallOptions, Mode
from e2llm_plugin.errors import ConfigError, ContextOverflowError, E2LLMError, StoreError
from e2llm_plugin.reading import READERS, Reading, reader_for
from e2llm_plugin.store import CompressedStore, Store
from e2llm_plugin.training.data import decoder_positions

QUESTION = "When is the National Day?"
MODES = typing.get_args(Mode)


@pytest.fixture
def ctx(tiny_model):
    return tiny_model.compress([LOREM * 4])


def test_every_mode_has_one_reader_and_nothing_else_does():
    assert set(READERS) == set(MODES)
    assert all(READERS[mode].mode == mode for mode in MODES)
    with pytest.raises(ConfigError):
        reader_for("fast")


@pytest.mark.parametrize("mode", MODES)
def test_a_reading_names_what_the_decoder_reads(tiny_model, ctx, mode):
    reading = tiny_model.read(QUESTION, ctx, mode, max_new_tokens=4)
    assert isinstance(reading, Reading) and reading.mode == mode
    reader = READERS[mode]
    if reader.reads_raw:  # ranked: every chunk once, most similar first; the passages read come from it
        assert sorted(i for i, _ in reading.ranking) == list(range(ctx.num_chunks))
        assert [s for _, s in reading.ranking] == sorted((s for _, s in reading.ranking), reverse=True)
        assert reading.passages and set(reading.passages) <= set(reading.ranking)
        assert [i for i, _ in reading.passages] == sorted(i for i, _ in reading.passages)  # document order
    else:  # every chunk fits as soft tokens: nothing to rank
        assert reading.ranking is None and reading.passages == []
    assert reading.chunks_read == (len(reading.passages) if not reader.reads_soft else ctx.num_chunks)
    answer = tiny_model.answer(QUESTION, context=ctx, mode=mode, max_new_tokens=4)
    assert (answer.ranking, answer.passages, answer.chunks_read) == (reading.ranking, reading.passages, reading.chunks_read)
    assert answer.prompt_tokens == reading.prompt.num_tokens


def test_soft_reading_ranks_only_when_the_chunks_overflow(tiny_model):
    long = tiny_model.compress(["word " * 30000])  # far more chunks than the tiny decoder's window holds
    answer = tiny_model.answer(QUESTION, context=long, mode="soft", max_new_tokens=2)
    assert answer.chunks_read < long.num_chunks and len(answer.ranking) == long.num_chunks
    with pytest.raises(ContextOverflowError):  # no room left for a single chunk beside the question
        tiny_model.answer("word " * 1000, context=long, mode="soft", max_new_tokens=2)


def test_soft_tokens_are_needed_by_the_modes_that_read_them(tiny_model):
    chunks = tiny_model.chunk([LOREM])
    raw_only = CompressedContext(chunks, None, 1, 0, retrieval_embeddings=tiny_model.embed([c.text for c in chunks]))
    for mode in MODES:
        if READERS[mode].reads_soft:
            with pytest.raises(E2LLMError):
                tiny_model.read(QUESTION, raw_only, mode)
        else:
            assert tiny_model.read(QUESTION, raw_only, mode).passages


@pytest.mark.parametrize("mode", MODES)
def test_the_training_size_estimate_is_never_under_the_prompt(tiny_model, ctx, mode):
    target = "On 26 October, since 1955."
    need = decoder_positions(tiny_model, mode, QUESTION, target, ctx.num_chunks)
    actual = tiny_model.read(QUESTION, ctx, mode, target=target).prompt.num_tokens
    assert need == actual if not READERS[mode].reads_raw else actual <= need  # raw passages: their whole budget counted


def test_call_options_are_checked_once_and_shared(tiny_model, ctx):
    options = tiny_model.call_options(mode="hybrid", max_new_tokens=3, stop="never", raw_tokens=24)
    assert options == CallOptions.build(tiny_model.config, "hybrid", 3, ["never"], 24)
    assert options.stop == ("never",) and options.generation == tiny_model.config.generation
    by_options = tiny_model.answer(QUESTION, context=ctx, options=options)
    by_arguments = tiny_model.answer(QUESTION, context=ctx, mode="hybrid", max_new_tokens=3, stop="never", raw_tokens=24)
    assert "".join(by_options) == "".join(by_arguments) and by_options.passages == by_arguments.passages
    turn = [{"role": "user", "content": QUESTION}]
    assert tiny_model.chat(turn, context=ctx, options=options).text == tiny_model.chat(turn, context=ctx, options=options).text
    assert tiny_model.generate(QUESTION, context=ctx, options=options) == by_options.text
    with pytest.raises(ConfigError):  # one or the other
        tiny_model.answer(QUESTION, context=ctx, options=options, max_new_tokens=2)
    with pytest.raises(ConfigError):
        tiny_model.answer(QUESTION, context=ctx, options={"mode": "soft"})
    for bad in ({"mode": "fast"}, {"max_new_tokens": 0}, {"raw_tokens": -1}, {"stop": [1]}, {"temperature": -1.0},
                {"colour": "red"}):
        with pytest.raises(ConfigError):
            tiny_model.call_options(**bad)


class DictStore:
    """A second store backend: a dict, implementing the `Store` protocol and nothing more."""

    def __init__(self):
        self.entries, self.calls = {}, []

    def get_many(self, fingerprint, texts):
        self.calls.append("get_many")
        return {i: self.entries[fingerprint, t] for i, t in enumerate(texts) if (fingerprint, t) in self.entries}

    def put_many(self, fingerprint, texts, tensors):
        self.calls.append("put_many")
        self.entries.update(((fingerprint, t), named) for t, named in zip(texts, tensors, strict=True))

    def stats(self):
        return {"entries": len(self.entries)}

    def clear(self):
        self.entries.clear()

    def close(self):
        pass


def test_any_object_with_the_store_protocol_is_a_store(tiny_config, tmp_path):
    assert isinstance(CompressedStore(tmp_path / "s.sqlite"), Store) and isinstance(DictStore(), Store)
    store = DictStore()
    model = E2LLM(tiny_config, store=store)
    first = model.compress([LOREM])
    assert store.calls == ["get_many", "put_many"] and store.stats()["entries"] == first.num_chunks
    again = model.compress([LOREM])
    assert store.calls[2:] == ["get_many"]  # every chunk served by the store: nothing encoded or put
    torch.testing.assert_close(again.soft_tokens, first.soft_tokens, rtol=0, atol=0)
    with pytest.raises(E2LLMError):
        E2LLM(tiny_config, store=object())


def test_a_failing_store_is_warned_about_and_compression_carries_on(tiny_config, caplog):
    class Broken(DictStore):
        def get_many(self, fingerprint, texts):
            raise StoreError("locked")

        def put_many(self, fingerprint, texts, tensors):
            raise StoreError("locked")

    model = E2LLM(tiny_config, store=Broken())
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.model"):
        context = model.compress([LOREM])
    assert context.num_chunks > 0 and len(caplog.records) == 2


def test_the_fingerprint_sees_edits_torch_does_not_count(tiny_config):
    model = build_tiny_model(tiny_config)
    before = model.fingerprint()
    version = model.adapter.scale._version
    model.adapter.scale.data.mul_(2.0)  # through .data: no version bump
    assert model.adapter.scale._version == version and model.fingerprint() != before
    model.adapter.scale.data.div_(2.0)
    assert model.fingerprint() == before  # the values decide, not the history
    decoder_lora = next(p for n, p in model.named_parameters() if n.startswith("decoder.") and "lora_B" in n)
    decoder_lora.data.add_(1.0)
    assert model.fingerprint() == before  # the decoder's LoRA does not shape soft tokens


def test_the_trained_parameters_are_declared_once(tiny_model):
    trained = set(tiny_model.trained_state_dict())
    assert trained and all(name.startswith("adapter.") or "lora_" in name for name in trained)
    assert {n for n, p in tiny_model.named_parameters() if p.requires_grad} <= trained
    assert any(n.startswith("encoder.") for n in trained) and any(n.startswith("decoder.") for n in trained)


def test_an_unknown_adapter_kind_is_refused(tiny_config):
    config = dataclasses.replace(tiny_config)
    config.adapter = "transformer"  # set after validation: the builder still refuses it
    with pytest.raises(ConfigError):
        build_adapter(config, 32, 64, 1.0)
