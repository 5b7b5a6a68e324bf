"""The reading modes (`e2llm_plugin.reading`) and the contracts around them: the store protocol, the call options, the
trained-parameter rule, the adapter registry. Tiny random models, public verbs only."""

import dataclasses
import logging
import typing

import pytest
import torch
from conftest import LOREM, build_tiny_model, configured

from e2llm_plugin import E2LLM, CompressedContext
from e2llm_plugin import decoder as decoder_module
from e2llm_plugin.adapter import build_adapter
from e2llm_plugin.config import CallOptions, E2LLMConfig, GenerationConfig, Mode
from e2llm_plugin.decoder import next_token
from e2llm_plugin.errors import ConfigError, ContextOverflowError, E2LLMError, StoreError
from e2llm_plugin.reading import READERS, Reading, reader_for
from e2llm_plugin.store import CompressedStore, Store
from e2llm_plugin.tasks import Task
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
        rank = [i for i, _ in reading.ranking]
        assert [i for i, _ in reading.passages] == sorted((i for i, _ in reading.passages), key=rank.index)  # best first
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


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_max_soft_chunks_hides_all_but_the_best_ranked_in_one_shared_prefix(tiny_model, ctx, mode):
    whole = tiny_model.read(QUESTION, ctx, mode)
    assert whole.chunks_read == whole.prefix_chunks == ctx.num_chunks > 2
    with configured(tiny_model, max_soft_chunks=2):
        capped = tiny_model.read(QUESTION, ctx, mode)
        other = tiny_model.read("Which river runs through the city?", ctx, mode)
        best = {i for i, _ in capped.ranking[:2]}
        assert capped.chunks_read == 2 and capped.prefix_chunks == ctx.num_chunks
        # Every chunk's soft tokens stay in the prefix, computed as they are: one prefix for every question.
        n = capped.prompt.prefix_tokens
        assert n == other.prompt.prefix_tokens
        torch.testing.assert_close(capped.prompt.embeds[0, :n], other.prompt.embeds[0, :n], rtol=0, atol=0)
        # The question sees the soft tokens of its best two only (hybrid: not those it reads as raw text either).
        expanded = {i for i, _ in capped.passages}
        hidden = [i for i in range(ctx.num_chunks) if i not in best or i in expanded]
        start = n - ctx.num_chunks * ctx.soft_tokens.shape[1]  # the soft tokens end the prefix (`hidden` below)
        assert capped.prompt.hidden_prefix_positions == tuple(start + i for i in hidden)
        torch.testing.assert_close(capped.prompt.embeds[0, list(capped.prompt.hidden_prefix_positions)],
                                   ctx.soft_tokens[hidden].flatten(0, 1), rtol=0, atol=0)
        assert capped.passages == whole.passages  # the raw passages do not depend on the cap
        training = tiny_model.read(QUESTION, ctx, mode, target="an answer")  # training reads as answering does
        assert training.chunks_read == 2
        assert training.prompt.hidden_prefix_positions == capped.prompt.hidden_prefix_positions
    with configured(tiny_model, max_soft_chunks=ctx.num_chunks):
        assert tiny_model.read(QUESTION, ctx, mode).prompt.hidden_prefix_positions == \
            whole.prompt.hidden_prefix_positions


def test_a_capped_context_past_the_window_holds_only_the_best_ranked(tiny_model):
    long = tiny_model.compress(["word " * 30000])
    with configured(tiny_model, max_soft_chunks=3):
        reading = tiny_model.read(QUESTION, long, "soft", max_new_tokens=2)
    assert reading.chunks_read == reading.prefix_chunks == 3 and reading.prompt.hidden_prefix_positions == ()


@pytest.mark.parametrize("mode", ["hybrid", "rag"])
def test_ranked_passages_are_read_best_first(tiny_model, mode, monkeypatch):
    # The chunk that names the question's words comes last in the documents, first in the ranking.
    ctx = tiny_model.compress([LOREM * 2, "Cats sleep most of the day. " * 6, "The National Day is on 26 October."])
    read_texts = []  # what the decoder is given as raw text: hybrid's passages, rag's context slot
    build, embed_text = tiny_model.decoder.build_prompt, tiny_model.decoder.text_embeddings

    def build_prompt(soft, instruction, raw=None, **kw):
        read_texts.append(raw)
        return build(soft, instruction, raw, **kw)

    def text_embeddings(text, **kw):
        read_texts.append(text)
        return embed_text(text, **kw)

    monkeypatch.setattr(tiny_model.decoder, "build_prompt", build_prompt)
    monkeypatch.setattr(tiny_model.decoder, "text_embeddings", text_embeddings)
    with configured(tiny_model, passage_order="document"):
        document = tiny_model.read(QUESTION, ctx, mode, raw_tokens=60)
    with configured(tiny_model, passage_order="ranked"):
        ranked = tiny_model.read(QUESTION, ctx, mode, raw_tokens=60)
        rank = [i for i, _ in ranked.ranking]
        assert len(ranked.passages) > 1 and sorted(ranked.passages) == document.passages  # the same chunks
        assert ranked.passages != document.passages  # in another order
        assert [i for i, _ in ranked.passages] == sorted((i for i, _ in ranked.passages), key=rank.index)
        assert [t for t in read_texts if t][-1] == "\n".join(ctx.chunks[i].text.strip() for i, _ in ranked.passages)
        # Training's chunks taken first are read where their rank puts them, not first.
        worst = rank[-1]
        steered = tiny_model.read(QUESTION, ctx, mode, raw_tokens=60, include={worst}, target="x")
        assert [i for i, _ in steered.passages][-1] == worst != max(i for i, _ in steered.passages)
    with configured(tiny_model, passage_order="best"), pytest.raises(ConfigError, match="passage_order"):
        tiny_model.read(QUESTION, ctx, mode)
    with pytest.raises(ConfigError, match="passage_order"):
        E2LLMConfig(passage_order="best")
    assert E2LLMConfig().passage_order == E2LLMConfig.from_dict({}).passage_order == "ranked"  # a config.json without it


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
    # The document's whole context (none), its chunks (none); the chunks encoded and put, then the whole context.
    assert store.calls == ["get_many", "get_many", "put_many", "put_many"]
    assert store.stats()["entries"] == first.num_chunks + 1
    again = model.compress([LOREM])
    assert store.calls[4:] == ["get_many"]  # the whole context served in one lookup: nothing chunked, encoded or put
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
    # Each failed call said: the whole context's and the chunks' lookups, the chunks' and the whole context's writes.
    assert context.num_chunks > 0 and len(caplog.records) == 4


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


# ---- hybrid: a chunk read as raw text replaces its soft tokens ------------------------------------------------------

FACTS = [f"Fact {i}: the {colour} river of town {i} is {i * 7} kilometres long and flows {way}." for i, (colour, way)
         in enumerate(zip(["red", "blue", "green", "grey", "white", "black"], ["north", "south", "east", "west"] * 2,
                          strict=False))]


@pytest.fixture(scope="module")
def k2_model(tiny_config):
    """Two soft tokens per chunk, so a chunk's rows and its positions are not the same numbers."""
    return build_tiny_model(dataclasses.replace(tiny_config, soft_tokens_per_chunk=2), seed=3)


@pytest.fixture(scope="module")
def facts(k2_model):
    context = k2_model.compress([" ".join(FACTS)])
    assert context.num_chunks >= 4
    return context


def _expanded(model, reading, context):
    """The soft tokens of the chunks the reading reads as raw text, in prompt (document) order."""
    return context.soft_tokens[sorted(i for i, _ in reading.passages)].flatten(0, 1)


def test_replace_hides_exactly_the_expanded_chunks_soft_positions(k2_model, facts):
    replace = k2_model.read("How long is the green river?", facts, "hybrid", raw_tokens=40)
    assert 0 < len(replace.passages) < facts.num_chunks
    hidden = list(replace.prompt.hidden_prefix_positions)
    assert len(hidden) == 2 * len(replace.passages) and max(hidden) < replace.prompt.prefix_tokens
    torch.testing.assert_close(replace.prompt.embeds[0, hidden], _expanded(k2_model, replace, facts), rtol=0, atol=0)
    with configured(k2_model, hybrid_expansion="duplicate"):
        duplicate = k2_model.read("How long is the green river?", facts, "hybrid", raw_tokens=40)
    assert duplicate.prompt.hidden_prefix_positions == () and duplicate.passages == replace.passages
    # The same prompt, the same cacheable prefix: only what the question and the answer see differs.
    torch.testing.assert_close(duplicate.prompt.embeds, replace.prompt.embeds, rtol=0, atol=0)
    assert duplicate.prompt.prefix_tokens == replace.prompt.prefix_tokens
    assert READERS["soft"].read(k2_model, "How long is the green river?", facts).prompt.hidden_prefix_positions == ()


def test_replace_hides_only_the_expanded_chunks_that_fit_the_window(tiny_model):
    long = tiny_model.compress([" ".join(f"Line {i} tells of place {i}, its hill and its well." for i in range(1500))])
    reading = tiny_model.read("Which place has a well?", long, "hybrid", max_new_tokens=2)
    assert reading.chunks_read < long.num_chunks  # the soft tokens overflow: the most similar chunks are read
    read = sorted(i for i, _ in reading.ranking[: reading.chunks_read])
    expanded = [i for i, _ in reading.passages if i in read]
    assert expanded and len(reading.prompt.hidden_prefix_positions) == len(expanded)
    torch.testing.assert_close(reading.prompt.embeds[0, list(reading.prompt.hidden_prefix_positions)],
                               long.soft_tokens[expanded].flatten(0, 1), rtol=0, atol=0)


def _greedy_by_hand(model, embeds, allowed, steps, positions=None):
    """Greedy decoding with one whole forward per token and no KV cache: `allowed(n)` is the (n, n) boolean attention
    of the sequence so far; `positions`, the prompt's position ids (the tokens decoded after it follow its last).
    The tokens, and the logits each was chosen from."""
    net, decoder = model.decoder.inference_copy.get(), model.decoder
    positions = list(range(embeds.shape[1])) if positions is None else positions
    ids, seen = [], []
    with torch.inference_mode():
        for _ in range(steps):
            sequence = torch.cat([embeds, net.get_input_embeddings()(torch.tensor([ids], dtype=torch.long))], dim=1)
            n = sequence.shape[1]
            bias = torch.zeros(n, n).masked_fill(~allowed(n), torch.finfo(torch.float32).min)
            at = torch.tensor([positions + list(range(positions[-1] + 1, positions[-1] + 1 + len(ids)))])
            seen.append(net(inputs_embeds=sequence, attention_mask=bias[None, None], position_ids=at).logits[0, -1])
            token = next_token(seen[-1].clone(), ids, GenerationConfig(), None, decoder.stop_ids)
            if token in decoder.stop_ids:
                break
            ids.append(token)
    return ids, torch.stack(seen)


def _generated(model, prompt, steps, prefix_cache=None):
    """What `Decoder.generate_ids` decodes (KV cache, prefix first), and the logits each token was chosen from."""
    seen = []

    def spy(logits, *args, **kwargs):
        seen.append(logits.clone())
        return next_token(logits, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoder_module, "next_token", spy)
        ids = list(model.decoder.generate_ids(prompt, steps, prefix_cache))
    return ids, torch.stack(seen)


def _causal(n, hidden=(), after=0):
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    for key in hidden:
        allowed[after:, key] = False
    return allowed


def test_replace_answers_as_the_prompt_read_with_the_expanded_soft_tokens_masked(k2_model, facts):
    """The definition, by hand: one causal forward over the whole prompt in which no position after the prefix sees
    the hidden ones. Generation (prefix KV cache, then a 2-D mask over [prefix + new keys]) reads the same logits."""
    reading = k2_model.read("Which river flows east?", facts, "hybrid", raw_tokens=40, exclude={facts.num_chunks - 1})
    prompt = reading.prompt
    assert prompt.hidden_prefix_positions and max(prompt.hidden_prefix_positions) < prompt.prefix_tokens - 2  # not last
    ids, logits = _generated(k2_model, prompt, 6, facts.prefix_cache)
    by_hand = _greedy_by_hand(k2_model, prompt.embeds, lambda n: _causal(n, prompt.hidden_prefix_positions,
                                                                         prompt.prefix_tokens), 6)
    assert ids == by_hand[0] and len(ids) == 6
    torch.testing.assert_close(logits, by_hand[1], rtol=1e-4, atol=1e-5)
    unmasked = _greedy_by_hand(k2_model, prompt.embeds, _causal, 1)[1]  # what duplicate reads: the mask matters
    assert (unmasked[0] - logits[0]).abs().max() > 1e-3


def test_replace_of_the_last_chunks_equals_a_prompt_without_their_soft_tokens(k2_model, facts):
    """Where nothing in the prefix follows the hidden positions, masking them is cutting them out, the positions
    after them keeping their numbers (RoPE: the question and answer sit as far from the other chunks as before)."""
    last = facts.num_chunks - 1
    budget = k2_model.count_tokens(facts.chunks[last].text)
    reading = k2_model.read("Which river flows west?", facts, "hybrid", raw_tokens=budget, include={last})
    prompt = reading.prompt
    assert [i for i, _ in reading.passages] == [last]
    assert list(prompt.hidden_prefix_positions) == [prompt.prefix_tokens - 2, prompt.prefix_tokens - 1]
    kept = [i for i in range(prompt.num_tokens) if i not in prompt.hidden_prefix_positions]
    ids, logits = _generated(k2_model, prompt, 6)
    cut = _greedy_by_hand(k2_model, prompt.embeds[:, kept], _causal, 6, positions=kept)
    assert ids == cut[0]
    torch.testing.assert_close(logits, cut[1], rtol=1e-4, atol=1e-5)
    renumbered = _greedy_by_hand(k2_model, prompt.embeds[:, kept], _causal, 1)[1]  # positions closed up: not the same
    assert (renumbered[0] - logits[0]).abs().max() > 1e-5


def test_one_prefix_serves_every_question_and_a_reused_one_answers_as_a_fresh_one(k2_model, monkeypatch):
    context = k2_model.compress([" ".join(FACTS)])
    prefills = []
    put = context.prefix_cache.put
    monkeypatch.setattr(context.prefix_cache, "put", lambda key, cache: (prefills.append(key), put(key, cache)))
    questions = ["Which river is red?", "How long is the white river?", "Which river flows south?", "Which river is red?"]
    readings = [k2_model.read(q, context, "hybrid", raw_tokens=40) for q in questions]
    assert len({r.prompt.hidden_prefix_positions for r in readings}) >= 2  # different chunks expanded, one prefix
    cached = [k2_model.generate(q, context=context, raw_tokens=40) for q in questions]
    assert len(prefills) == 1 and len(context.prefix_cache) == 1
    assert cached == [k2_model.generate(q, context=k2_model.compress([" ".join(FACTS)]), raw_tokens=40) for q in questions]


def test_duplicate_reads_as_before(k2_model, facts):
    """`duplicate`: the whole prompt read causally with nothing masked (a prompt with nothing hidden passes no mask at
    all, so generation runs exactly the code it ran before the option existed)."""
    with configured(k2_model, hybrid_expansion="duplicate"):
        reading = k2_model.read("Which river flows east?", facts, "hybrid", raw_tokens=40)
        ids, logits = _generated(k2_model, reading.prompt, 6, facts.prefix_cache)
    assert reading.prompt.attention_mask() is None
    by_hand = _greedy_by_hand(k2_model, reading.prompt.embeds, _causal, 6)
    assert ids == by_hand[0]
    torch.testing.assert_close(logits, by_hand[1], rtol=1e-4, atol=1e-5)



def _training_context(model, chunks):
    """A context as the training forward builds it: soft tokens and ranking from the trained encoder's one pass."""
    from e2llm_plugin.adapter import mean_pool

    states, mask = model.encoder([c.text for c in chunks])
    ranking = torch.nn.functional.normalize(mean_pool(states, mask), dim=-1)
    return CompressedContext(chunks, model.adapter(states, mask), 1, 0, retrieval_embeddings=ranking)


@pytest.mark.parametrize("expansion", ["replace", "duplicate"])
def test_the_training_loss_reads_as_answering_does(k2_model, expansion):
    """The loss of a hybrid task equals the cross-entropy computed by hand from one forward of the trained decoder with
    the hidden positions masked from everything after the prefix (duplicate: a plain causal forward)."""
    chunks = k2_model.chunk([" ".join(FACTS)])
    task = Task("reasoning", chunks, "toward the east", "Which river flows east?", mode="hybrid")
    with configured(k2_model, hybrid_expansion=expansion), torch.no_grad():
        loss = k2_model(task)
        prompt = k2_model.read(task.question, _training_context(k2_model, chunks), "hybrid", target=task.target).prompt
        assert bool(prompt.hidden_prefix_positions) == (expansion == "replace")
        n, target = prompt.num_tokens, prompt.target_ids
        allowed = _causal(n, prompt.hidden_prefix_positions, prompt.prefix_tokens)
        bias = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        logits = k2_model.decoder.model(inputs_embeds=prompt.embeds, attention_mask=bias[None, None]).logits
        by_hand = torch.nn.functional.cross_entropy(logits[0, n - len(target) - 1 : n - 1], target)
        torch.testing.assert_close(loss, by_hand, rtol=1e-5, atol=1e-5)
        # Read in a padded batch beside a longer prompt and a shorter one, the loss is the same.
        longer = Task("reasoning", k2_model.chunk([" ".join(FACTS * 2)]), "north", "Which river flows north?", mode="hybrid")
        restate = Task("understanding", chunks[:1], chunks[0].text)
        torch.testing.assert_close(k2_model([longer, task, restate])[1], loss, rtol=1e-5, atol=1e-5)
    with configured(k2_model, hybrid_expansion="duplicate" if expansion == "replace" else "replace"), torch.no_grad():
        assert not torch.allclose(k2_model(task), loss)  # the two readings differ


def test_hybrid_expansion_is_a_checked_reading_option(tiny_checkpoint, tmp_path, k2_model, facts):
    import json
    import shutil

    from e2llm_plugin.config import E2LLMConfig
    from e2llm_plugin.finetune import config_flags

    assert E2LLMConfig().hybrid_expansion == "replace"
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    config.pop("hybrid_expansion")  # a checkpoint saved before the option existed
    (old / "config.json").write_text(json.dumps(config))
    assert E2LLM.from_pretrained(old).config.hybrid_expansion == "replace"
    assert E2LLM.from_pretrained(old, hybrid_expansion="duplicate").config.hybrid_expansion == "duplicate"
    with pytest.raises(ConfigError, match="hybrid_expansion"):
        E2LLMConfig(hybrid_expansion="both")
    flag = next(f for f in config_flags() if f.name == "hybrid_expansion")
    assert flag.group == "reading" and flag.choices == ("replace", "duplicate")
    # set after validation: the reader checks it
    with configured(k2_model, hybrid_expansion="both"), pytest.raises(ConfigError, match="hybrid_expansion"):
        k2_model.read("Which river is red?", facts, "hybrid")


@pytest.mark.slow
def test_the_shipped_checkpoint_answers_in_hybrid_both_ways():
    from pathlib import Path

    model = E2LLM.from_pretrained()
    text = (Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text()
    context = model.compress([text], show_progress=False)
    question = "What is the capital of Finland?"
    answers = {}
    for expansion in ("replace", "duplicate"):
        with configured(model, hybrid_expansion=expansion):
            reading = model.read(question, context, "hybrid", max_new_tokens=16)
            answers[expansion] = model.generate(question, context=context, max_new_tokens=16)
        hidden = reading.prompt.hidden_prefix_positions
        assert len(hidden) == (len(reading.passages) if expansion == "replace" else 0)
    assert len(context.prefix_cache) == 1  # both readings share one prefix
    assert all("Helsinki" in answer for answer in answers.values()), answers
    fresh = model.compress([text], show_progress=False)
    assert model.generate(question, context=fresh, max_new_tokens=16) == answers["replace"]
