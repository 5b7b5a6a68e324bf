"""The core API on tiny random models: compression, generation, streaming, modes, save/load, errors, threads."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import LOREM, build_tiny_model

from e2llm_plugin import E2LLM, CompressedContext, E2LLMConfig, E2LLMError
from e2llm_plugin.adapter import VPMA, MLPAdapter
from e2llm_plugin.errors import CheckpointError, ContextOverflowError

DOCS = [LOREM * 3, "A second, shorter document about the Alps."]


def test_compress_stats(tiny_model):
    ctx = tiny_model.compress(DOCS)
    assert ctx.num_documents == 2
    assert ctx.num_chunks == len(ctx.chunks) > 4
    assert ctx.soft_tokens.shape == (ctx.num_chunks, 1, tiny_model.decoder.dim)
    assert ctx.num_soft_tokens == ctx.num_chunks
    assert ctx.num_source_tokens == sum(tiny_model.count_tokens(d) for d in DOCS)
    assert ctx.compression_ratio == pytest.approx(ctx.num_source_tokens / ctx.num_soft_tokens)
    assert set(ctx.stats()) >= {"chunks", "soft_tokens", "source_tokens", "compression_ratio"}


def test_soft_tokens_start_at_the_decoders_embedding_scale(tiny_model):
    soft = tiny_model.compress(DOCS).soft_tokens
    emb = tiny_model.decoder.model.get_input_embeddings().weight
    ratio = soft.pow(2).mean().sqrt() / emb.pow(2).mean().sqrt()
    assert 0.5 < ratio < 2.0


def test_generate_equals_joined_stream_and_is_deterministic(tiny_model):
    ctx = tiny_model.compress(DOCS)
    answer = tiny_model.generate("When is the National Day?", context=ctx)
    pieces = list(tiny_model.stream("When is the National Day?", context=ctx))
    assert "".join(pieces) == answer
    assert tiny_model.generate("When is the National Day?", documents=DOCS) == answer


def test_answer_reports_what_was_read(tiny_model):
    ctx = tiny_model.compress(DOCS)
    soft = tiny_model.answer("When is the National Day?", context=ctx, mode="soft")
    text = "".join(soft)
    assert soft.text == text and soft.passages == []
    assert soft.completion_tokens == tiny_model.count_tokens(text)
    hybrid = tiny_model.answer("When is the National Day?", context=ctx, mode="hybrid")
    "".join(hybrid)
    assert hybrid.passages and hybrid.prompt_tokens > soft.prompt_tokens
    raw_tokens = sum(tiny_model.count_tokens(ctx.chunks[i].text) for i, _ in hybrid.passages)
    assert raw_tokens <= tiny_model.config.hybrid_raw_tokens
    rank = [i for i, _ in hybrid.ranking]
    assert [i for i, _ in hybrid.passages] == sorted((i for i, _ in hybrid.passages), key=rank.index)  # best first


def test_rag_reads_raw_passages_in_hybrids_positions(tiny_model):
    """rag mode: no soft tokens, the best chunks' raw text instead, in as many decoder positions as hybrid reads."""
    ctx = tiny_model.compress(DOCS + ["Cats sleep a lot. " * 30])
    rag = tiny_model.answer("When is the National Day?", context=ctx, mode="rag")
    assert isinstance("".join(rag), str) and rag.passages
    hybrid = tiny_model.answer("When is the National Day?", context=ctx, mode="hybrid")
    "".join(hybrid)
    empty = tiny_model.answer_text("When is the National Day?", "", max_new_tokens=1)
    assert empty.mode == "text"
    read = rag.prompt_tokens - empty.prompt_tokens
    assert 0 < read <= tiny_model.rag_budget(ctx) == ctx.num_soft_tokens + tiny_model.config.hybrid_raw_tokens
    raw = {a.mode: sum(tiny_model.count_tokens(ctx.chunks[i].text) for i, _ in a.passages) for a in (rag, hybrid)}
    assert raw["rag"] > raw["hybrid"]  # the soft tokens' positions hold more raw text
    assert tiny_model.rank_chunks("When is the National Day?", ctx)[0][0] in {i for i, _ in rag.passages}


def test_rag_fits_the_decoder_window_however_long_the_context(tiny_model, monkeypatch):
    """rag's budget (soft tokens + raw budget) may exceed the window; it reads the best passages that fit."""
    monkeypatch.setattr(tiny_model.config, "hybrid_raw_tokens", 5000)  # budget far beyond the tiny decoder's 1024
    ctx = tiny_model.compress([" ".join(DOCS) * 40])
    assert sum(tiny_model.count_tokens(c.text) for c in ctx.chunks) > tiny_model.context_window
    rag = tiny_model.answer("When is the National Day?", context=ctx, mode="rag", max_new_tokens=8)
    "".join(rag)
    assert rag.passages and rag.prompt_tokens + 8 <= tiny_model.context_window


def test_hybrid_ranks_the_relevant_chunk_first(tiny_model):
    documents = ["The weather was mild all year. " * 8, "Austria's National Day is 26 October.", "Cats sleep a lot. " * 8]
    ctx = tiny_model.compress(documents)
    best, _ = tiny_model.rank_chunks("What is the National Day of Austria?", ctx)[0]
    assert "National Day" in ctx.chunks[best].text


def test_stop_sequences_cut_the_answer(tiny_model):
    ctx = tiny_model.compress(DOCS)
    full = tiny_model.generate("Tell me.", context=ctx, max_new_tokens=16)
    assert len(full) > 4
    stop = full[3:6]
    cut = tiny_model.generate("Tell me.", context=ctx, max_new_tokens=16, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(tiny_model.stream("Tell me.", context=ctx, max_new_tokens=16, stop=[stop])) == cut


def test_threads_give_the_same_answers(tiny_model):
    ctx = tiny_model.compress(DOCS)
    questions = [f"Question number {i}?" for i in range(6)]
    sequential = [tiny_model.generate(q, context=ctx, mode="hybrid") for q in questions]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda q: tiny_model.generate(q, context=ctx, mode="hybrid"), questions))
    assert parallel == sequential


def test_concat_contexts(tiny_model):
    a, b = tiny_model.compress(DOCS[:1]), tiny_model.compress(DOCS[1:])
    joined = CompressedContext.concat([a, b])
    whole = tiny_model.compress(DOCS)
    assert joined.num_documents == 2 and joined.num_chunks == whole.num_chunks
    assert [c.doc_index for c in joined.chunks] == [c.doc_index for c in whole.chunks]
    torch.testing.assert_close(joined.soft_tokens, whole.soft_tokens)


@pytest.mark.parametrize("kwargs, message", [
    (dict(question="", documents=DOCS), "question is empty"),
    (dict(question="   ", documents=DOCS), "question is empty"),
    (dict(question="q?"), "nothing to read"),
    (dict(question="q?", documents=[]), "no documents"),
    (dict(question="q?", documents=[""]), "empty or whitespace"),
    (dict(question="q?", documents=[b"raw bytes"]), "bytes"),
    (dict(question="q?", documents=DOCS, mode="telepathy"), "unknown mode"),
    (dict(question="q?", documents=DOCS, max_new_tokens=0), "max_new_tokens"),
    (dict(question="q?", documents=DOCS, max_new_tokens=-3), "max_new_tokens"),
    (dict(question="q?", context="not a context"), "CompressedContext"),
])
def test_bad_input_raises_clear_errors(tiny_model, kwargs, message):
    with pytest.raises(E2LLMError, match=message):
        tiny_model.generate(**kwargs)


def test_a_document_longer_than_the_window_reads_the_chunks_most_like_the_question(tiny_model):
    filler = [f"Line {i} is about the weather in region {i % 97}, which was mild." for i in range(3000)]
    needle = 1234
    filler[needle] = "The national holiday of Austria is on 26 October."
    ctx = tiny_model.compress(["\n".join(filler)])  # far more soft tokens than the tiny decoder's 1024 positions
    assert ctx.num_soft_tokens > tiny_model.context_window
    for mode in ("soft", "hybrid"):
        answer = tiny_model.answer("When is the national holiday of Austria?", context=ctx, mode=mode, max_new_tokens=4)
        "".join(answer)
        assert 0 < answer.chunks_read < ctx.num_chunks
        assert answer.prompt_tokens + 4 <= tiny_model.context_window
    best = tiny_model.rank_chunks("When is the national holiday of Austria?", ctx)[0][0]
    assert "national holiday" in ctx.chunks[best].text  # so the needle's chunk is among those read
    small = tiny_model.compress(DOCS)
    assert tiny_model.answer("q?", context=small).chunks_read == small.num_chunks


def test_a_context_too_long_for_a_training_example_is_refused_not_truncated(tiny_model):
    from e2llm_plugin.tasks import Task

    chunks = tiny_model.chunk(["word " * 30000])  # ~1250 chunks of 24 tokens > the tiny decoder's 1024 positions
    with pytest.raises(ContextOverflowError):
        tiny_model(Task("reasoning", chunks, "an answer", "a question?"), "soft")


def test_a_reused_prefix_gives_the_same_answers(tiny_model):
    questions = ["When is the National Day?", "Which river flows through Vienna?", "When is the National Day?"]
    for mode in ("soft", "hybrid"):
        ctx = tiny_model.compress(DOCS)
        cached = [tiny_model.generate(q, context=ctx, mode=mode, max_new_tokens=8) for q in questions]
        assert len(ctx.prefix_cache) == 1  # one prefix, [template · soft tokens], for every question
        fresh = [tiny_model.generate(q, context=tiny_model.compress(DOCS), mode=mode, max_new_tokens=8) for q in questions]
        assert cached == fresh
        with tiny_model.base_decoder():  # other weights read it: another prefix, not the tuned one's
            tiny_model.generate(questions[0], context=ctx, mode=mode, max_new_tokens=2)
        assert len(ctx.prefix_cache) == 2


@pytest.mark.parametrize("field, value", [("mode", "x"), ("adapter", "transformer"), ("chunk_tokens", 2),
                                          ("soft_tokens_per_chunk", 0)])
def test_config_validation(field, value):
    with pytest.raises(E2LLMError, match=field if field != "adapter" else "adapter"):
        E2LLMConfig(**{field: value})


@pytest.mark.parametrize("adapter_cls", [VPMA, MLPAdapter])
@pytest.mark.parametrize("k", [1, 3])
def test_adapters_shape_and_ignore_padding(adapter_cls, k):
    torch.manual_seed(0)
    adapter = adapter_cls(16, 24, k, embed_scale=0.1) if adapter_cls is MLPAdapter else adapter_cls(16, 24, k, 4, 0.1)
    states = torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = adapter(states, mask)
    assert out.shape == (2, k, 24)
    noisy = states.clone()
    noisy[0, 3:] = 100.0  # changing padded positions must not change the pooled tokens
    torch.testing.assert_close(adapter(noisy, mask), out)


@pytest.mark.parametrize("adapter_cls", [VPMA, MLPAdapter])
def test_growing_k_keeps_the_trained_tokens_and_adds_distinct_ones(adapter_cls):
    torch.manual_seed(0)
    adapter = adapter_cls(16, 24, 1, embed_scale=0.1) if adapter_cls is MLPAdapter else adapter_cls(16, 24, 1, 4, 0.1)
    states, mask = torch.randn(3, 5, 16), torch.ones(3, 5)
    before = adapter(states, mask)
    adapter.grow(3)
    after = adapter(states, mask)
    assert after.shape == (3, 3, 24)
    torch.testing.assert_close(after[:, :1], before)
    assert not torch.allclose(after[:, 1], after[:, 2]) and not torch.allclose(after[:, 0], after[:, 1])
    assert all(p.requires_grad for p in adapter.parameters())  # the grown tokens train


def test_model_grows_k_but_never_shrinks_it(tiny_config):

    model = E2LLM(tiny_config)
    model.grow_soft_tokens(2)
    assert model.config.soft_tokens_per_chunk == 2 and model.compress(DOCS).soft_tokens.shape[1] == 2
    with pytest.raises(E2LLMError, match="can only grow: this model has 2, asked for 1"):
        model.grow_soft_tokens(1)


def test_mlp_adapter_and_k_soft_tokens_end_to_end(tiny_config):
    import dataclasses

    model = E2LLM(dataclasses.replace(tiny_config, adapter="mlp", soft_tokens_per_chunk=2))
    ctx = model.compress(DOCS)
    assert ctx.num_soft_tokens == 2 * ctx.num_chunks
    assert isinstance(model.generate("q?", context=ctx), str)


# ---- save / load ------------------------------------------------------------------------------------------------

def test_save_load_round_trip_gives_identical_answers(tiny_model, tiny_checkpoint):
    files = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert "E2LLM" in (tiny_checkpoint / "README.md").read_text()
    loaded = E2LLM.from_pretrained(tiny_checkpoint)
    for name, tensor in tiny_model.trained_state_dict().items():
        torch.testing.assert_close(loaded.trained_state_dict()[name], tensor, rtol=0, atol=0)
    for mode in ("soft", "hybrid", "rag"):
        assert loaded.generate("When?", documents=DOCS, mode=mode) == tiny_model.generate("When?", documents=DOCS, mode=mode)


def test_saved_weights_hold_only_adapter_and_lora(tiny_model):
    names = tiny_model.trained_state_dict()
    assert any(n.startswith("adapter.") for n in names)
    assert any("lora_" in n and n.startswith("encoder.") for n in names)
    assert any("lora_" in n and n.startswith("decoder.") for n in names)
    assert not any("embed_tokens" in n for n in names)


def test_overrides_on_load(tiny_checkpoint):
    assert E2LLM.from_pretrained(tiny_checkpoint, mode="hybrid").config.mode == "hybrid"
    with pytest.raises(E2LLMError, match="unknown config fields"):
        E2LLM.from_pretrained(tiny_checkpoint, colour="blue")


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_weights(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        E2LLM.from_pretrained(bad)


def test_broken_config(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    (bad / "config.json").write_text('{"encoder": ')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        E2LLM.from_pretrained(bad)


def test_dims_that_do_not_fit_the_adapter(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["encoder_dim"] = 1024  # as if trained with gte-large
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="width 1024"):
        E2LLM.from_pretrained(bad)


def test_weights_from_another_architecture(tiny_checkpoint, tmp_path):
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["soft_tokens_per_chunk"] = 4
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        E2LLM.from_pretrained(bad)


def test_missing_checkpoint_pieces(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        E2LLM.from_pretrained(tmp_path)
    bad = _copy(tiny_checkpoint, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no trained weights"):
        E2LLM.from_pretrained(bad)
    with pytest.raises(CheckpointError, match="neither"):
        E2LLM.from_pretrained("./no/such/dir")


def test_hub_id_resolves_from_the_local_hf_cache(tiny_checkpoint, tmp_path, monkeypatch):
    """A Hub repo id goes through huggingface_hub; offline, a cached snapshot is used, an uncached one is a clear error."""
    import shutil

    snapshot = tmp_path / "hub" / "models--org--tiny-e2llm" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_checkpoint, snapshot)
    (tmp_path / "hub" / "models--org--tiny-e2llm" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny-e2llm" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = E2LLM.from_pretrained("org/tiny-e2llm", cache_dir=str(tmp_path / "hub"))
    assert model.config.chunk_tokens == 24
    with pytest.raises(CheckpointError, match="Hub"):
        E2LLM.from_pretrained("org/not-cached", cache_dir=str(tmp_path / "hub"))


def test_save_writes_its_files_and_leaves_everything_else(tiny_model, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    tiny_model.save_pretrained(target)
    tiny_model.save_pretrained(target)  # over a checkpoint: its own files are replaced
    assert (target / "thesis.tex").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "config.json", "model.safetensors", "thesis.tex"]


def test_compress_each_matches_one_context_per_document(tiny_model):
    each = tiny_model.compress_each(DOCS)
    assert len(each) == 2 and all(c.num_documents == 1 for c in each)
    for ctx, doc in zip(each, DOCS, strict=True):
        alone = tiny_model.compress([doc])
        assert [c.text for c in ctx.chunks] == [c.text for c in alone.chunks]
        assert ctx.num_source_tokens == alone.num_source_tokens
        torch.testing.assert_close(ctx.soft_tokens, alone.soft_tokens, rtol=1e-4, atol=1e-5)


def test_plain_chat_prompt(tiny_model):
    answer = tiny_model.chat([{"role": "user", "content": "Hello there"}], max_new_tokens=4)
    assert answer.prompt_tokens > 3
    with pytest.raises(ContextOverflowError):
        tiny_model.chat([{"role": "user", "content": "word " * 2000}])


def test_chat_keeps_earlier_turns_and_reads_the_context_in_the_last(tiny_model):
    ctx = tiny_model.compress(DOCS)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "When is the National Day?"}]
    with_context = tiny_model.chat(messages, context=ctx)
    text = "".join(with_context)
    assert with_context.mode == tiny_model.config.mode and with_context.context is ctx
    single = tiny_model.answer("When is the National Day?", context=ctx)
    "".join(single)
    assert with_context.prompt_tokens > single.prompt_tokens  # the earlier turns are in the prompt
    again = tiny_model.answer("When is the National Day?", context=ctx, history=messages[:-1])
    assert "".join(again) == text
    plain = tiny_model.chat(messages)
    assert plain.mode == "chat" and plain.context is None and plain.prompt_tokens < with_context.prompt_tokens
    assert isinstance("".join(plain), str)


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "user", "content": ""}], "last message must be a non-empty user"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "last message"),
    ([{"role": "robot", "content": "q"}], "role system/user/assistant"),
    (["just a string"], "must be a dict"),
])
def test_chat_rejects_bad_messages(tiny_model, messages, message):
    with pytest.raises(E2LLMError, match=message):
        tiny_model.chat(messages)


def test_push_to_hub_uploads_a_complete_checkpoint(tiny_model, monkeypatch):
    """No network here: intercept the two Hub calls and check what would be uploaded."""
    import huggingface_hub

    seen = {}

    def create_repo(self, repo_id, **kwargs):
        seen["repo"] = repo_id
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        from pathlib import Path

        seen["files"] = sorted(p.name for p in Path(folder_path).iterdir())
        seen["card"] = (Path(folder_path) / "README.md").read_text()
        return "https://huggingface.co/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    tiny_model.push_to_hub("me/tiny-e2llm")
    assert seen["repo"] == "me/tiny-e2llm"
    assert seen["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: e2llm_plugin" in seen["card"]


def test_a_checkpoint_of_version_0_1_0_still_loads(tiny_checkpoint, tmp_path):
    """0.1.0 wrote flat LoRA keys and a trust_remote_code field; they migrate (the latter is ignored)."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    for side in ("encoder", "decoder"):
        lora = config.pop(f"{side}_lora")
        config.update({f"{side}_lora_r": lora["r"], f"{side}_lora_alpha": lora["alpha"], f"{side}_lora_targets": lora["targets"]})
    config.update(lora_dropout=0.0, trust_remote_code=False)
    config.pop("encoder_precision")
    (old / "config.json").write_text(json.dumps(config))
    loaded = E2LLM.from_pretrained(old)
    assert loaded.config == E2LLM.from_pretrained(tiny_checkpoint).config


def test_a_cached_prefix_is_not_reused_once_the_decoder_lora_changes(tiny_config):
    model = build_tiny_model(tiny_config, seed=5)
    ctx = model.compress(DOCS)
    model.generate("When is the National Day?", context=ctx, max_new_tokens=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("decoder.") and "lora_B" in name:
                p.add_(0.05)  # as a training step would
    again = model.generate("When is the National Day?", context=ctx, max_new_tokens=4)
    assert len(ctx.prefix_cache) == 2  # a new prefix for the new weights, not the stale one
    assert again == model.generate("When is the National Day?", context=model.compress(DOCS), max_new_tokens=4)
