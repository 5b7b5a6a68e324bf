"""The persisted prompt prefix: the decoder's KV cache for a context's [template · soft tokens] prefix is kept in the
store beside its chunks, so a new process answering about a stored context reads it instead of prefilling it; checked
before use, recomputed when wrong, bounded and evicted like the chunks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import LOREM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM
from e2llm_plugin.chunking import Chunker
from e2llm_plugin.store import CompressedStore

TESTS = os.path.dirname(__file__)
DOCS = [LOREM * 2, "Cats sleep for most of the day. They hunt at night. " * 6]
QUESTION = "When is the National Day?"


def count_forwards(model, monkeypatch) -> list[str]:
    """The decoder's forwards while answering: 'prefix' prefills a prompt prefix (no cache given), 'rest' reads the
    prompt after it, 'step' one new token per row."""
    copy = model.decoder.inference_copy.get()
    forward, calls = copy.forward, []

    def counting(*args, **kwargs):
        calls.append("step" if kwargs.get("input_ids") is not None else "rest" if "cache" in kwargs else "prefix")
        return forward(*args, **kwargs)

    monkeypatch.setattr(copy, "forward", counting)
    return calls




@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "store" / "s.sqlite"


def _prefix_entries(store_path, model) -> dict:
    """The prefix entries the store holds for the model's decoder (by the digest of each prefix its contexts cached)."""
    with CompressedStore(store_path) as store:
        rows = store._connection().execute("SELECT text_sha256 FROM entries WHERE fingerprint = ?",
                                           (model._prefix_fingerprint(),)).fetchall()
    return {row[0] for row in rows}


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_a_new_model_reads_the_stored_prefix_instead_of_prefilling_and_answers_the_same(tiny_checkpoint, store_path,
                                                                                           monkeypatch, mode):
    first = E2LLM.from_pretrained(tiny_checkpoint, store=store_path)
    prefilled = first.generate(QUESTION, context=first.compress(DOCS), mode=mode, max_new_tokens=8)
    assert len(_prefix_entries(store_path, first)) == 1
    second = E2LLM.from_pretrained(tiny_checkpoint, store=store_path)  # a new process would build the same
    forwards = count_forwards(second, monkeypatch)
    assert second.generate(QUESTION, context=second.compress(DOCS), mode=mode, max_new_tokens=8) == prefilled
    assert "prefix" not in forwards and forwards[0] == "rest"


def test_a_new_process_reads_the_stored_prefix(tiny_checkpoint, store_path):
    first = E2LLM.from_pretrained(tiny_checkpoint, store=store_path)
    prefilled = first.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=8)
    first.store.close()
    script = textwrap.dedent(f"""
        import json
        from e2llm_plugin import E2LLM
        model = E2LLM.from_pretrained({str(tiny_checkpoint)!r}, store={str(store_path)!r})
        copy = model.decoder.inference_copy.get()
        forward, calls = copy.forward, []
        copy.forward = lambda *a, **k: calls.append("cache" in k or k.get("input_ids") is not None) or forward(*a, **k)
        answer = model.generate({QUESTION!r}, documents={DOCS!r}, mode="soft", max_new_tokens=8)
        print(json.dumps({{"answer": answer, "prefills": calls.count(False)}}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(TESTS), TESTS])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"answer": prefilled, "prefills": 0}


# ---- checked before use ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory):
    return E2LLM.from_pretrained(tiny_checkpoint, store=tmp_path_factory.mktemp("prefix") / "s.sqlite")


@pytest.fixture(scope="module")
def stored(model):
    """The answer prefilled over DOCS, and the prefix entry it stored: (answer, fingerprint, digest, tensors)."""
    answer = model.generate(QUESTION, context=model.compress(DOCS), mode="soft", max_new_tokens=8)
    fingerprint = model._prefix_fingerprint()
    (digest,) = _digests(model)
    return answer, fingerprint, digest, model.store.get_many(fingerprint, [digest])[0]


def _digests(model) -> list[str]:
    """The prefix digests of the contexts compressed over DOCS (one prefix: soft mode, no history)."""
    prompt = model.read(QUESTION, model.compress(DOCS), "soft").prompt
    return [model.decoder.prefix_key(prompt).digest]


@st.composite
def wrong_entries(draw, right):
    """The stored prefix with one thing wrong: a tensor gone, of another shape or dtype, or one value not finite."""
    entry = {name: tensor.clone() for name, tensor in right.items()}
    name = draw(st.sampled_from(sorted(entry)))
    kind = draw(st.sampled_from(["missing", "shape", "dtype", "value"]))
    if kind == "missing":
        del entry[name]
    elif kind == "shape":
        entry[name] = draw(st.sampled_from([entry[name][..., :-1, :], entry[name].transpose(1, 2), entry[name][0]]))
    elif kind == "dtype":
        entry[name] = entry[name].to(draw(st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.int32])))
    else:
        flat = entry[name].flatten()
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        entry[name] = flat.view(entry[name].shape)
    return entry


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_wrong_stored_prefix_is_prefilled_again_and_replaced_never_served(model, stored, data, monkeypatch, caplog):
    answer, fingerprint, digest, right = stored
    model.store.put_many(fingerprint, [digest], [data.draw(wrong_entries(right))])
    forwards = count_forwards(model, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.model"):
        again = model.generate(QUESTION, context=model.compress(DOCS), mode="soft", max_new_tokens=8)
    assert again == answer and forwards[0] == "prefix"
    assert "does not fit this decoder" in caplog.text
    replaced = model.store.get_many(fingerprint, [digest])[0]
    assert replaced.keys() == right.keys() and all(torch.equal(replaced[n], right[n]) for n in right)


def test_a_stored_prefix_with_extra_tensors_is_served(model, stored, monkeypatch):
    answer, fingerprint, digest, right = stored
    model.store.put_many(fingerprint, [digest], [{**right, "note": torch.zeros(3)}])
    forwards = count_forwards(model, monkeypatch)
    assert model.generate(QUESTION, context=model.compress(DOCS), mode="soft", max_new_tokens=8) == answer
    assert "prefix" not in forwards


def test_a_damaged_stored_prefix_is_a_miss(model, stored, monkeypatch):
    answer, fingerprint, digest, _ = stored
    conn = model.store._connection()
    conn.execute("UPDATE entries SET blob = substr(blob, 1, 100) WHERE fingerprint = ?", (fingerprint,))
    forwards = count_forwards(model, monkeypatch)
    assert model.generate(QUESTION, context=model.compress(DOCS), mode="soft", max_new_tokens=8) == answer
    assert forwards[0] == "prefix" and model.store.get_many(fingerprint, [digest])  # prefilled, and stored again


# ---- keyed by the weights that read it ------------------------------------------------------------------------------

def test_other_decoder_weights_never_read_a_stored_prefix(tiny_checkpoint, store_path, monkeypatch):
    first = E2LLM.from_pretrained(tiny_checkpoint, store=store_path)
    first.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=6)
    changed = E2LLM.from_pretrained(tiny_checkpoint, store=store_path)
    reference = E2LLM.from_pretrained(tiny_checkpoint, store=False)
    for model in (changed, reference):
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if n.startswith("decoder.") and "lora_B" in n).add_(0.05)
    forwards = count_forwards(changed, monkeypatch)
    answer = changed.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=6)
    assert forwards[0] == "prefix" and answer == reference.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=6)
    with changed.base_decoder():  # the LoRA off: other weights again
        assert changed._prefix_fingerprint() not in (first._prefix_fingerprint(), reference._prefix_fingerprint())


def test_the_prefix_fingerprint_follows_the_decoder_weights_values(tiny_checkpoint):
    model = E2LLM.from_pretrained(tiny_checkpoint, store=False)
    before = model._prefix_fingerprint()
    lora = next(p for n, p in model.named_parameters() if n.startswith("decoder.") and "lora_A" in n)
    lora.data.mul_(2.0)  # through .data: torch's version counter does not see it
    assert model._prefix_fingerprint() != before
    lora.data.div_(2.0)
    assert model._prefix_fingerprint() == before  # the values decide, not the history
    assert model.fingerprint() != before  # chunks and prefixes never share a key


def test_a_prefix_of_chunks_chosen_for_one_question_is_not_stored(model, stored, monkeypatch):
    _, fingerprint, _, _ = stored
    before = model.store.stats()["entries"]
    monkeypatch.setattr(model.decoder, "max_tokens", 58)  # the window holds a few of the chunks only
    answer = model.answer(QUESTION, context=model.compress(DOCS), mode="soft", max_new_tokens=4)
    "".join(answer)
    assert 0 < answer.chunks_read < answer.context.num_chunks
    assert model.store.stats()["entries"] == before


def test_a_bounded_store_keeps_no_prefix_larger_than_its_bound(tiny_checkpoint, tmp_path):
    store = CompressedStore(tmp_path / "s.sqlite", max_bytes=10_000)  # the chunks fit, their prefix (~30 KB) does not
    model = E2LLM.from_pretrained(tiny_checkpoint, store=store)
    answer = model.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=4)
    assert store.get_many(model._prefix_fingerprint(), _digests(model)) == {}
    assert 0 < store.stats()["bytes"] <= 10_000 and answer == model.generate(QUESTION, documents=DOCS, mode="soft",
                                                                          max_new_tokens=4)


def test_any_store_keeps_prefixes_through_the_protocol(tiny_checkpoint, monkeypatch):
    from test_reading import DictStore

    store = DictStore()
    first = E2LLM.from_pretrained(tiny_checkpoint, store=store)
    answer = first.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=6)
    second = E2LLM.from_pretrained(tiny_checkpoint, store=store)
    forwards = count_forwards(second, monkeypatch)
    assert second.generate(QUESTION, documents=DOCS, mode="soft", max_new_tokens=6) == answer
    assert "prefix" not in forwards


# ---- the real models -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_shipped_model_answers_from_a_stored_prefix_as_from_a_prefilled_one(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text(encoding="utf-8")
    questions = ["What is the capital of Finland?", "What is the GDP of Finland?"]
    first = E2LLM.from_pretrained(store=tmp_path / "s.sqlite")
    prefilled = {mode: [first.generate(q, documents=[text], mode=mode, max_new_tokens=24) for q in questions]
                 for mode in ("soft", "hybrid")}
    second = E2LLM.from_pretrained(store=tmp_path / "s.sqlite")
    forwards = count_forwards(second, monkeypatch)
    chunked = []
    split = Chunker.split
    monkeypatch.setattr(Chunker, "split", lambda self, documents: chunked.append(1) or split(self, documents))
    for mode, answers in prefilled.items():
        assert [second.generate(q, documents=[text], mode=mode, max_new_tokens=24) for q in questions] == answers
    assert "prefix" not in forwards and forwards.count("rest") == 4
    assert chunked == []  # the text's whole context came from the store
