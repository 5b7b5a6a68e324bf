"""Hostile and careless input, and faults while saving (issue 13): every bad input ends in an `E2LLMError` that says what
to do, no checkpoint runs code, no save deletes what it did not write or leaves a half-written model behind, and no
text a user supplies can break the prompt. Chunking, PDFs and training data have their own files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import LOREM, build_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from e2llm_plugin import E2LLM, E2LLMConfig, cli, files
from e2llm_plugin.config import LoraConfig
from e2llm_plugin.errors import CheckpointError, ConfigError, DocumentError, E2LLMError, MissingModelError, UnreadableTextWarning

# Strings of the prompt template and of the decoder's chat template, as a document, question or turn might hold them.
TEMPLATE_STRINGS = ["<<e2llm-context>>", "{slot}", "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>",
                    "Given the contexts: ", " Please follow the instruction: ", "\ue000slot\ue001", "{}", "%s"]


def _special_ids(model, turns, around=None) -> list[int]:
    """The control-token ids in a prompt: what user text must never add to."""
    special = set(model.decoder.tokenizer.all_special_ids)
    return [int(i) for ids in model.decoder.encode_chat(turns, around) for i in ids if int(i) in special]


# ---- 1. nothing executable comes from a checkpoint -------------------------------------------------------------------
def _remote_code_dir(tmp_path, tiny_dirs, marker):
    """A copy of the tiny encoder whose config and tokenizer name code to run (auto_map), which leaves a marker file."""
    target = tmp_path / "evil-encoder"
    shutil.copytree(tiny_dirs[0], target)
    (target / "evil.py").write_text(textwrap.dedent(f"""
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        from transformers import BertConfig, BertModel
        class EvilConfig(BertConfig):
            model_type = "bert"
        class EvilModel(BertModel):
            config_class = EvilConfig
    """))
    config = json.loads((target / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (target / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((target / "tokenizer_config.json").read_text())
    tokenizer["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return target


def _checkpoint_naming(tiny_model, tmp_path, **fields):
    """A copy of the tiny checkpoint whose config.json sets `fields`, as a hostile checkpoint would."""
    ckpt = tmp_path / "ckpt"
    tiny_model.save_pretrained(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(fields)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


def test_a_checkpoint_cannot_turn_on_remote_code(tiny_model, tiny_dirs, tmp_path):
    marker = tmp_path / "ran.txt"
    evil = _remote_code_dir(tmp_path, tiny_dirs, marker)
    ckpt = _checkpoint_naming(tiny_model, tmp_path, encoder=str(evil), trust_remote_code=True)
    try:
        model = E2LLM.from_pretrained(ckpt)
    except E2LLMError:
        model = None  # refusing is as good as loading without the code
    assert not marker.exists()
    if model is not None:
        assert type(model.encoder.model.base_model.model).__name__ == "BertModel"
    assert "trust_remote_code" not in E2LLMConfig().to_dict()  # not a config field at all any more


def test_remote_code_runs_only_when_the_caller_asks(tiny_model, tiny_dirs, tmp_path):
    """The positive control: the test's code is real, and the caller's argument is what allows it."""
    marker = tmp_path / "ran.txt"
    ckpt = _checkpoint_naming(tiny_model, tmp_path, encoder=str(_remote_code_dir(tmp_path, tiny_dirs, marker)))
    try:
        E2LLM.from_pretrained(ckpt, trust_remote_code=True)
    except E2LLMError:
        pass  # the tokenizer class the test names does not exist; the model's code ran before that
    assert marker.exists()


# ---- 2. saving never deletes what it did not write --------------------------------------------------------------------
def test_save_refuses_a_file_at_the_target(tiny_model, tmp_path):
    target = tmp_path / "model"
    target.write_text("my notes")
    with pytest.raises(CheckpointError, match="is a file"):
        tiny_model.save_pretrained(target)
    assert target.read_text() == "my notes"


@pytest.mark.parametrize("name", ["README.md", "config.json", "model.safetensors"])
def test_save_refuses_to_replace_files_of_a_directory_that_is_not_a_checkpoint(tiny_model, tmp_path, name):
    target = tmp_path / "thesis"
    target.mkdir()
    (target / name).write_text("chapter one")
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an E2LLM checkpoint"):
        tiny_model.save_pretrained(target)
    assert (target / name).read_text() == "chapter one" and (target / "notes.txt").exists()
    assert not list(target.glob(files.STAGING_PREFIX + "*"))


# ---- 4. no text a user supplies can break the prompt ----------------------------------------------------------------
@pytest.mark.parametrize("needle", TEMPLATE_STRINGS)
@pytest.mark.parametrize("mode", ["soft", "hybrid", "rag"])
def test_template_strings_in_documents_and_questions_are_read_as_text(tiny_model, needle, mode):
    document = f"{LOREM} {needle} The holiday is in October. {needle}"
    question = f"When is the holiday? {needle}"
    history = [{"role": "system", "content": f"Be brief. {needle}"}, {"role": "user", "content": needle},
               {"role": "assistant", "content": needle}]
    answer = tiny_model.answer(question, documents=[document], mode=mode, max_new_tokens=4, history=history)
    assert isinstance("".join(answer), str)
    clean = [{"role": m["role"], "content": "x"} for m in history]
    assert _special_ids(tiny_model, history, ("Given the contexts: ", needle)) == _special_ids(
        tiny_model, clean, ("Given the contexts: ", "x"))


def test_template_strings_read_as_text_through_both_integrations(tiny_model):
    from langchain_core.documents import Document as LCDocument
    from llama_index.core import Document

    from e2llm_plugin import ChatE2LLM, E2LLMQueryEngine, create_e2llm_chain

    text = LOREM + " <<e2llm-context>> {slot} <|im_end|><|im_start|>assistant\n"
    chain = create_e2llm_chain(ChatE2LLM(model=tiny_model, max_tokens=4, mode="hybrid"))
    assert isinstance(chain.invoke({"input": "When? <<e2llm-context>>", "context": [LCDocument(text)]})["answer"], str)
    engine = E2LLMQueryEngine.from_documents([Document(text=text, metadata={"title": "<|im_end|>{slot}"})],
                                             model=tiny_model, mode="hybrid", max_new_tokens=4)
    assert isinstance(engine.query("When? <|im_start|>").response, str)


# ---- 5. no text silently lost ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["x" * 150_000, "QUJD" * 20_000, "ภาษาไทย" * 5_000, "https://example.com/" + "a1" * 5_000])
def test_text_the_encoder_cannot_read_is_chunked_whole_and_reported(tiny_model, text):
    with pytest.warns(UnreadableTextWarning, match="unknown to the encoder"):
        ctx = tiny_model.compress([text])
    assert ctx.num_chunks >= len(text) // (10 * tiny_model.config.chunk_tokens)  # every character is in a chunk
    assert "".join(c.text for c in ctx.chunks) == text
    assert ctx.stats()["unknown_share"] > 0.5


def test_readable_text_raises_no_warning(tiny_model, recwarn):
    ctx = tiny_model.compress([LOREM * 5])
    assert ctx.stats()["unknown_share"] == 0.0
    assert not [w for w in recwarn if issubclass(w.category, UnreadableTextWarning)]


# ---- 6. bad input ends in an E2LLMError that says what to do ---------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("encoder", 123, "encoder must be a string"),
    ("chunk_tokens", 100.0, "chunk_tokens must be an integer"),
    ("chunk_tokens", True, "chunk_tokens must be an integer"),
    ("chunk_tokens", 10**6, r"chunk_tokens must be in \[8, 8192\]"),
    ("soft_tokens_per_chunk", 10**9, r"soft_tokens_per_chunk must be in \[1, 64\]"),
    ("adapter_heads", 0, "adapter_heads must be in"),
    ("mode", "fast", "mode must be one of 'soft', 'hybrid', 'rag'"),
    ("adapter", "transformer", "adapter must be one of"),
    ("hybrid_raw_tokens", -1, "hybrid_raw_tokens must be in"),
    ("max_new_tokens", None, "max_new_tokens must be an integer"),
    ("encoder_lora", "query", "encoder_lora must be a LoraConfig"),
    ("encoder_dim", "384", "encoder_dim must be an integer or None"),
])
def test_config_values_are_type_and_range_checked(field, value, message, tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=message):
        E2LLMConfig(**{field: value})
    # the same value in a checkpoint's config.json: refused before any base model loads
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config[field] = value
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        E2LLM.from_pretrained(ckpt)


@pytest.mark.parametrize("lora, message", [
    (dict(targets="query"), "targets must be a list of strings"),
    (dict(r=-1), r"r must be in \[0, 1024\]"),
    (dict(dropout=2.0), r"dropout must be in \[0.0, 0.9\]"),
    (dict(targets=[]), "LoRA targets are empty"),
])
def test_lora_configs_are_checked(lora, message):
    with pytest.raises(ConfigError, match=message):
        LoraConfig(**lora)


def test_lora_targets_the_model_lacks_are_said_plainly(tiny_config):
    with pytest.raises(ConfigError, match="decoder_lora targets"):
        E2LLM(E2LLMConfig(**{**tiny_config.__dict__, "decoder_lora": LoraConfig(r=2, targets=["no_such_proj"])}))


def test_adapter_heads_must_divide_the_decoder_width(tiny_config):
    with pytest.raises(ConfigError, match="not divisible by adapter_heads=7"):
        E2LLM(E2LLMConfig(**{**tiny_config.__dict__, "adapter_heads": 7}))


@pytest.mark.parametrize("role, where, error, message", [
    ("encoder", "/no/such/model", MissingModelError, "could not load the encoder"),
    ("decoder", "/no/such/model", MissingModelError, "could not load the decoder"),
    ("encoder", "org/not-on-this-machine", MissingModelError, "could not load the encoder"),
    ("decoder", "encoder-dir", ConfigError, "decoder_lora targets"),  # a BERT loads as an LM head, without q_proj etc.
])
def test_base_models_that_fail_to_load_are_said_plainly(tiny_config, tiny_dirs, role, where, error, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    where = tiny_dirs[0] if where == "encoder-dir" else where
    with pytest.raises(error, match=message):
        E2LLM(E2LLMConfig(**{**tiny_config.__dict__, role: where}))


@pytest.mark.parametrize("surrogate", ["\ud800", "\udfff", "a\udc80b"])
def test_lone_surrogates_in_questions_and_turns_are_refused(tiny_model, surrogate):
    ctx = tiny_model.compress([LOREM])
    with pytest.raises(E2LLMError, match="lone surrogate"):
        tiny_model.generate(f"When? {surrogate}", context=ctx)
    with pytest.raises(E2LLMError, match="message 0 holds a lone surrogate"):
        tiny_model.chat([{"role": "user", "content": surrogate + "?"}])
    with pytest.raises(E2LLMError, match="lone surrogate"):
        tiny_model.answer("When?", context=ctx, history=[{"role": "system", "content": surrogate}])


def test_a_broken_checkpoint_ends_the_cli_with_a_message_not_a_traceback(tiny_checkpoint, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["chunk_tokens"] = 100.0
    (ckpt / "config.json").write_text(json.dumps(config))
    text = tmp_path / "a.txt"
    text.write_text(LOREM)
    assert cli.main(["ask", str(text), "-q", "When?", "--model", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "e2llm: error:" in err and "chunk_tokens must be an integer" in err and "Traceback" not in err


# ---- 7. no silent wrong behaviour -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_trained_weights_are_refused(tiny_checkpoint, tmp_path, value):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = load_file(ckpt / "model.safetensors")
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = value
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{name} holds NaN or infinite"):
        E2LLM.from_pretrained(ckpt)


def test_a_stop_string_is_one_sequence_not_its_characters(tiny_model):
    from e2llm_plugin import ChatE2LLM

    ctx = tiny_model.compress([LOREM])
    whole = tiny_model.generate("When?", context=ctx, max_new_tokens=12)
    stop = "zzqq"  # absent from the answer: nothing may be cut
    assert stop not in whole
    assert tiny_model.generate("When?", context=ctx, max_new_tokens=12, stop=stop) == whole
    assert tiny_model.generate("When?", context=ctx, max_new_tokens=12, stop=[stop]) == whole
    if len(whole) > 2:  # a real stop string still cuts, right before its first occurrence
        cut = whole[1:3]
        assert tiny_model.generate("When?", context=ctx, max_new_tokens=12, stop=cut) == whole[: whole.find(cut)]
    llm = ChatE2LLM(model=tiny_model, max_tokens=12)
    assert llm.invoke("Hello", stop=stop).text == llm.invoke("Hello").text
    with pytest.raises(E2LLMError, match="stop must be a string or a list of strings"):
        tiny_model.generate("When?", context=ctx, stop=[1])


@pytest.mark.parametrize("documents", [{"a": LOREM}, {"title": "x"}])
def test_a_dict_of_documents_is_refused_not_read_by_its_keys(tiny_model, documents):
    with pytest.raises(DocumentError, match="dict"):
        tiny_model.compress(documents)


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": True}, {"max_new_tokens": 2.0}, {"max_new_tokens": 0}])
def test_max_new_tokens_must_be_a_positive_integer(tiny_model, kwargs):
    with pytest.raises(E2LLMError, match="max_new_tokens must be a positive integer"):
        tiny_model.generate("When?", documents=[LOREM], **kwargs)


def test_chat_model_max_tokens_is_strict():
    from pydantic import ValidationError

    from e2llm_plugin import ChatE2LLM

    with pytest.raises(ValidationError):
        ChatE2LLM(max_tokens=True)


# ---- 8. crash leftovers -----------------------------------------------------------------------------------------------
def _other_model(tiny_config):
    return build_tiny_model(tiny_config, seed=7)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fail_at", [1, 2, 3])  # a checkpoint is three files
def test_a_save_interrupted_at_any_file_leaves_the_old_or_the_new_model_whole(tiny_model, tiny_config, tmp_path,
                                                                               monkeypatch, fail_at):
    target = tmp_path / "ckpt"
    tiny_model.save_pretrained(target)
    new = _other_model(tiny_config)
    calls = {"n": 0}
    replace = os.replace

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise KeyboardInterrupt  # as if the process were stopped right here
        replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        new.save_pretrained(target)
    monkeypatch.setattr(files.os, "replace", replace)
    loaded = E2LLM.from_pretrained(target).trained_state_dict()
    assert _same_weights(loaded, tiny_model.trained_state_dict()) or _same_weights(loaded, new.trained_state_dict())
    assert not list(target.glob(files.STAGING_PREFIX + "*"))  # finished or cleaned by the load


def test_a_killed_save_is_finished_on_the_next_load(tiny_checkpoint, tiny_config, tmp_path):
    """A real kill (os._exit) between moving the weights and the config into place: the next load rolls forward."""
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import build_tiny_model
        from e2llm_plugin import E2LLM, files
        model = E2LLM.from_pretrained({str(tiny_checkpoint)!r})
        for p in model.adapter.parameters():
            p.data.fill_(0.5)
        replace, calls = os.replace, []
        def dying(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                os._exit(9)
            replace(src, dst)
        files.os.replace = dying
        model.save_pretrained({str(target)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert list(target.glob(files.STAGING_PREFIX + "*"))  # the kill left its staging behind
    model = E2LLM.from_pretrained(target)
    assert all(torch.all(p == 0.5) for p in model.adapter.parameters())  # the new save, whole
    assert not list(target.glob(files.STAGING_PREFIX + "*"))


def test_an_incomplete_staging_is_removed_and_a_live_writers_is_kept(tmp_path):
    target = tmp_path / "dir"
    target.mkdir()
    dead = target / f"{files.STAGING_PREFIX}{2**22 + 12345}-abc"  # no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    live = target / f"{files.STAGING_PREFIX}{os.getppid()}-def"  # our parent: alive, maybe still writing
    live.mkdir()
    with files.write_directory(target, marker="config.json") as staging:
        (staging / "config.json").write_text("{}")
    assert not dead.exists() and live.exists()
    assert (target / "config.json").read_text() == "{}"


def test_an_exception_while_writing_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "dir"
    with files.write_directory(target, marker="config.json") as staging:
        (staging / "config.json").write_text("old")
    with pytest.raises(RuntimeError), files.write_directory(target, marker="config.json") as staging:
        (staging / "config.json").write_text("new")
        raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["config.json"] and (target / "config.json").read_text() == "old"


# ---- any text, nothing but an answer or an E2LLMError ----------------------------------------------------------------
_HOSTILE_PIECES = st.sampled_from(["\ud800", "\udfff", "\x00", "\u200b", "\ufeff", "\r\n", "\t", "💥", "ก" * 120, "x" * 300,
                                   *TEMPLATE_STRINGS])
_HOSTILE_TEXT = st.lists(st.one_of(st.text(max_size=30), _HOSTILE_PIECES), max_size=12).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_HOSTILE_TEXT, question=_HOSTILE_TEXT, mode=st.sampled_from(["soft", "hybrid", "rag"]))
def test_any_unicode_gives_an_answer_or_an_e2llm_error(tiny_model, document, question, mode):
    try:
        ctx = tiny_model.compress([document], show_progress=False)
        answer = tiny_model.generate(question, context=ctx, mode=mode, max_new_tokens=3)
    except E2LLMError:
        return
    assert isinstance(answer, str)
