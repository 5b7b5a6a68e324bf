"""What the store and the model do with what they read: entries checked against the model and recomputed when wrong,
private files, each distinct chunk text encoded once, `soft_tokens` outside `no_grad`, and no decoder forward wasted."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import LOREM, build_tiny_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM, GenerationConfig
from e2llm_plugin.encoder import ChunkEncoder
from e2llm_plugin.store import CompressedStore, entry_problem

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int8, torch.uint8, torch.bool]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def model(tiny_config):
    return build_tiny_model(tiny_config)


@pytest.fixture(scope="module")
def fresh(model):
    """What a model without a store computes for LOREM: the reference every repaired compression must give."""
    store, model.store = model.store, None
    try:
        return model.compress([LOREM])
    finally:
        model.store = store


@st.composite
def arbitrary_entries(draw):
    """Any names, shapes, dtypes and values (NaN and infinities among them)."""
    names = draw(st.sets(st.sampled_from(["soft", "embedding", "other"]), min_size=1))
    entry = {}
    for name in sorted(names):
        shape = draw(st.lists(st.integers(0, 70), max_size=3))
        dtype = draw(st.sampled_from(DTYPES))
        fill = draw(st.sampled_from([0.0, 1.5, -3.0, float("nan"), float("inf"), float("-inf")]))
        tensor = torch.full(shape, fill) if dtype.is_floating_point else torch.zeros(shape)
        entry[name] = tensor.to(dtype)
    return entry


@st.composite
def subtly_wrong_entries(draw, true_entry):
    """The right entry with one thing wrong: a name gone, another shape or dtype, or one non-finite value."""
    entry = {name: tensor.clone() for name, tensor in true_entry.items()}
    name = draw(st.sampled_from(sorted(entry)))
    kind = draw(st.sampled_from(["missing", "shape", "dtype", "value"]))
    if kind == "missing":
        del entry[name]
    elif kind == "shape":
        entry[name] = draw(st.sampled_from([entry[name][None], entry[name].flatten()[:-1], entry[name].flatten().repeat(2)]))
    elif kind == "dtype":
        entry[name] = entry[name].to(draw(st.sampled_from([d for d in DTYPES if d != torch.float32])))
    else:
        flat = entry[name].flatten()
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        entry[name] = flat.view(entry[name].shape)
    return entry


def _compress_over(model, entries: dict[str, dict]) -> tuple:
    """Compress LOREM with a new store holding `entries` (chunk text -> tensors) under the model's fingerprint; the
    context and what the store holds afterwards."""
    with tempfile.TemporaryDirectory() as folder, CompressedStore(Path(folder) / "s.sqlite") as store:
        texts = list(entries)
        store.put_many(model.fingerprint(), texts, [entries[t] for t in texts])
        kept, model.store = model.store, store
        try:
            context = model.compress([LOREM])
        finally:
            model.store = kept
        return context, store.get_many(model.fingerprint(), texts)


def _expected(model) -> dict:
    return {"soft": ((model.config.soft_tokens_per_chunk, model.decoder.dim), torch.float32),
            "embedding": ((model.encoder.dim,), torch.float32)}


def _assert_repaired(model, fresh, context, stored):
    torch.testing.assert_close(context.soft_tokens, fresh.soft_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(context.retrieval_embeddings, fresh.retrieval_embeddings, rtol=0, atol=1e-6)
    assert all(entry_problem(entry, _expected(model)) is None for entry in stored.values())  # the wrong one was replaced
    assert len(stored) == len({c.text for c in fresh.chunks})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_wrong_entry_of_any_shape_dtype_or_value_is_recomputed_not_served(model, fresh, data):
    texts = [c.text for c in fresh.chunks]
    true = {"soft": fresh.soft_tokens[0], "embedding": fresh.retrieval_embeddings[0]}
    wrong = data.draw(st.one_of(arbitrary_entries(), subtly_wrong_entries(true)))
    assume(entry_problem(wrong, _expected(model)) is not None)  # an arbitrary entry can, rarely, be right
    # The first chunk's entry is wrong, the others are right: only the wrong one is recomputed.
    entries = {texts[0]: wrong, **{t: {"soft": fresh.soft_tokens[i], "embedding": fresh.retrieval_embeddings[i]}
                                   for i, t in enumerate(texts) if i}}
    _assert_repaired(model, fresh, *_compress_over(model, entries))


@pytest.mark.parametrize("corrupt, reason", [
    (lambda e: {"soft": e["soft"]}, "no 'embedding' tensor"),
    (lambda e: {**e, "soft": e["soft"].flatten()}, "'soft' has shape"),
    (lambda e: {**e, "embedding": e["embedding"].double()}, "'embedding' is float64, not float32"),
    (lambda e: {**e, "soft": torch.full_like(e["soft"], float("nan"))}, "'soft' holds NaN or infinite values"),
])
def test_each_kind_of_wrong_entry_is_said_and_answers_stay_those_of_a_fresh_model(model, fresh, corrupt, reason, caplog):
    entries = {c.text: corrupt({"soft": fresh.soft_tokens[i], "embedding": fresh.retrieval_embeddings[i]})
               for i, c in enumerate(fresh.chunks)}
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.model"):
        context, stored = _compress_over(model, entries)
    _assert_repaired(model, fresh, context, stored)
    assert "do not fit this model" in caplog.text and reason in caplog.text
    expected = model.generate("When is the National Day?", context=fresh, max_new_tokens=4)
    assert model.generate("When is the National Day?", context=context, max_new_tokens=4) == expected


def test_right_entries_are_served_without_encoding(model, fresh, monkeypatch):
    entries = {c.text: {"soft": fresh.soft_tokens[i], "embedding": fresh.retrieval_embeddings[i]}
               for i, c in enumerate(fresh.chunks)}
    monkeypatch.setattr(ChunkEncoder, "encode", lambda self, texts: pytest.fail(f"encoded {len(texts)} chunks"))
    context, _ = _compress_over(model, entries)
    torch.testing.assert_close(context.soft_tokens, fresh.soft_tokens, rtol=0, atol=0)


# ---- private files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_the_store_creates_private_folders_and_files_whatever_the_umask(tmp_path, umask):
    tmp_path.chmod(0o755)
    old = os.umask(umask)
    try:
        with CompressedStore(tmp_path / "new" / "deeper" / "s.sqlite") as store:
            store.put_many("fp", ["a text"], [{"t": torch.ones(4)}])
            files = sorted((tmp_path / "new" / "deeper").iterdir())
            assert [f.name for f in files] == ["s.sqlite", "s.sqlite-shm", "s.sqlite-wal"]  # written while open
            assert {f.name: _mode(f) for f in files} == dict.fromkeys(["s.sqlite", "s.sqlite-shm", "s.sqlite-wal"], 0o600)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new") == _mode(tmp_path / "new" / "deeper") == 0o700
    assert _mode(tmp_path) == 0o755  # a folder that was there is the user's: left as it was


def test_an_existing_store_keeps_the_mode_its_owner_gave_it(tmp_path):
    path = tmp_path / "shared.sqlite"
    CompressedStore(path).close()
    path.chmod(0o640)  # shared with a group on purpose
    with CompressedStore(path) as store:
        store.put_many("fp", ["a"], [{"t": torch.ones(1)}])
    assert _mode(path) == 0o640


# ---- each distinct chunk text encoded once --------------------------------------------------------------------------

def test_a_chunk_text_repeated_within_one_compression_is_encoded_once(model, monkeypatch, tmp_path):
    encoded = []
    encode = ChunkEncoder.encode

    def counting(self, texts):
        encoded.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(ChunkEncoder, "encode", counting)
    documents = [LOREM] * 20 + ["Cats hunt at night."]
    with CompressedStore(tmp_path / "s.sqlite") as store:
        kept, model.store = model.store, store
        try:
            context = model.compress(documents)
        finally:
            model.store = kept
        distinct = {c.text for c in context.chunks}
        assert context.num_chunks > 20 * 2 and sorted(encoded) == sorted(distinct)  # each distinct text, once
        assert store.stats()["entries"] == len(distinct) + 2  # and each distinct document's whole context
    per_document = context.num_chunks // 20
    copies = context.soft_tokens[: 20 * per_document].view(20, per_document, *context.soft_tokens.shape[1:])
    assert torch.equal(copies, copies[:1].expand_as(copies))  # every copy reads the same soft tokens


# ---- soft_tokens outside no_grad ---------------------------------------------------------------------------------

def test_soft_tokens_need_no_no_grad_in_eval_mode_and_train_in_train_mode(tiny_config, fresh):
    model = build_tiny_model(tiny_config)
    texts = [c.text for c in fresh.chunks]
    model.eval()
    soft = model.soft_tokens(texts)  # outside torch.no_grad(): raised "Inference tensors cannot be saved for backward"
    assert not soft.is_inference() and not soft.requires_grad
    torch.testing.assert_close(soft, fresh.soft_tokens, rtol=0, atol=1e-6)  # what compress reads
    weight = torch.ones((), requires_grad=True)
    (soft * weight).sum().backward()  # usable beside tensors that do need gradients
    assert weight.grad is not None
    model.train()
    trained = model.soft_tokens(texts)
    assert trained.requires_grad
    trained.pow(2).sum().backward()
    assert model.adapter.scale.grad is not None and model.adapter.scale.grad != 0


# ---- no wasted decoder forward ---------------------------------------------------------------------------------

@pytest.fixture
def forwards(model, monkeypatch):
    """Counts the decoder's forwards while answering: 'prefill' reads embeddings, 'step' reads one new token."""
    copy = model.decoder.inference_copy.get()
    calls = []
    forward = copy.forward

    def counting(*args, **kwargs):
        calls.append("step" if kwargs.get("input_ids") is not None else "prefill")
        return forward(*args, **kwargs)

    monkeypatch.setattr(copy, "forward", counting)
    return calls


def test_an_answer_of_one_token_costs_the_prefill_alone(model, fresh, forwards):
    answer = model.answer("When is the National Day?", context=fresh, max_new_tokens=1)
    assert len("".join(answer)) > 0
    assert forwards.count("step") == 0 and forwards.count("prefill") >= 1


def test_an_answer_stopped_by_the_limit_costs_one_forward_per_token_after_the_first(model, fresh, forwards, monkeypatch):
    monkeypatch.setattr(model.decoder, "stop_ids", set())  # nothing ends the answer but the limit
    tokens = list(model.decoder.generate_ids(_prompt(model, fresh), 6))
    assert len(tokens) == 6 and forwards == ["prefill"] + ["step"] * 5


def test_an_answer_ended_by_a_stop_token_costs_one_forward_per_token(model, fresh, forwards, monkeypatch):
    monkeypatch.setattr(model.decoder, "stop_ids", set())
    distinct = GenerationConfig(no_repeat_ngram_size=1)  # no token twice: any of them can be made the stop token
    tokens = list(model.decoder.generate_ids(_prompt(model, fresh), 8, generation=distinct))
    monkeypatch.setattr(model.decoder, "stop_ids", {tokens[3]})
    forwards.clear()
    assert list(model.decoder.generate_ids(_prompt(model, fresh), 8, generation=distinct)) == tokens[:3]
    assert forwards == ["prefill"] + ["step"] * 3  # the third step read the stop token


def _prompt(model, context):
    return model.decoder.build_prompt(context.soft_tokens.flatten(0, 1), "Answer the question: When?")


# ---- the real models -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_shipped_model_recomputes_wrong_entries_and_encodes_repeats_once(tmp_path, monkeypatch):
    store_path = tmp_path / "store" / "s.sqlite"
    question, documents = "When is the National Day?", [LOREM * 4] * 3
    model = E2LLM.from_pretrained(store=False)
    reference = model.compress([LOREM * 4])
    expected = model.generate(question, documents=documents, max_new_tokens=8)
    model.store = CompressedStore(store_path)
    texts = [c.text for c in reference.chunks]
    broken = [{"soft": torch.full_like(reference.soft_tokens[i], float("nan")), "embedding": reference.retrieval_embeddings[i]}
              for i in range(len(texts))]
    model.store.put_many(model.fingerprint(), texts, broken)
    encoded = []
    encode = ChunkEncoder.encode
    monkeypatch.setattr(ChunkEncoder, "encode", lambda self, batch: encoded.extend(batch) or encode(self, batch))
    context = model.compress(documents)
    assert sorted(encoded) == sorted(set(texts))  # the NaN entries recomputed, each distinct text once
    torch.testing.assert_close(context.soft_tokens[: len(texts)], reference.soft_tokens, rtol=0, atol=1e-5)
    assert model.generate(question, context=context, max_new_tokens=8) == expected
    assert _mode(store_path.parent) == 0o700 and _mode(store_path) == 0o600
    steps = []
    copy = model.decoder.inference_copy.get()
    forward = copy.forward
    monkeypatch.setattr(copy, "forward", lambda *a, **kw: steps.append(kw.get("input_ids") is not None) or forward(*a, **kw))
    assert model.generate(question, context=context, max_new_tokens=1)
    assert steps and steps.count(True) == 0  # an answer of one token: the prefill alone
