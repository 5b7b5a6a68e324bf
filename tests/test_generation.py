"""Generation options: the repetition penalty, n-gram blocking and loop stop over the answer's own tokens, sampling with a seed,
per-call options through the model, and `E2LLMConfig.generation` in checkpoints."""

import collections
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import LOREM, build_tiny_model
from hypothesis import given
from hypothesis import strategies as st

from e2llm_plugin import E2LLM, E2LLMConfig, E2LLMError, GenerationConfig
from e2llm_plugin.decoder import LOOP_SPAN, LOOP_UNIT, next_token, repeated_tail
from e2llm_plugin.errors import CheckpointError, ConfigError

GREEDY = GenerationConfig()
QUESTION = "When is the National Day?"
DOCS = [LOREM * 3]


def _next(logits, answer=(), rng=None, **options):
    return next_token(torch.tensor(logits, dtype=torch.float32), list(answer), GenerationConfig(**options), rng)


def _rng(seed):
    return torch.Generator().manual_seed(seed)


def _bigrams(ids):
    return list(zip(ids, ids[1:], strict=False))


# ---- 7. next_token -------------------------------------------------------------------------------------------------

def test_greedy_by_default_is_the_argmax():
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(50)
        assert next_token(logits.clone(), [1, 2, 3], GREEDY, None) == int(logits.argmax())


def test_a_stop_token_never_comes_first_so_an_answer_is_never_empty():
    logits = torch.tensor([0.0, 1.0, 5.0, 4.0])  # token 2, a stop token, is the most likely
    assert next_token(logits.clone(), [], GREEDY, None, stop_ids={2}) == 3
    assert next_token(logits.clone(), [1], GREEDY, None, stop_ids={2}) == 2  # later it may end the answer
    assert next_token(logits.clone(), [], GenerationConfig(temperature=1.0, top_k=1), _rng(0), stop_ids={2}) == 3


def test_the_repetition_penalty_lowers_only_tokens_already_in_the_answer():
    logits = [2.0, 3.0, 1.0, -1.0, -1.5]
    assert _next(logits) == 1
    assert _next(logits, [1], repetition_penalty=2.0) == 0  # 3 / 2 < 2
    assert _next(logits, [1], repetition_penalty=1.4) == 1  # 3 / 1.4 > 2
    assert _next(logits, [0, 2, 4], repetition_penalty=10.0) == 1  # others are left as they are
    assert _next([-1.0, -1.5], [0], repetition_penalty=2.0) == 1  # a negative logit is multiplied: lowered too
    assert _next([-1.0, -1.5], [0], repetition_penalty=1.4) == 0
    assert _next(logits, [1, 1, 1], repetition_penalty=1.4) == 1  # once per token, however often it came


def test_no_repeat_ngram_blocks_a_repeated_bigram_and_nothing_else():
    logits = [0.0, 1.0, 5.0, 4.0, 3.0]  # token 2 always wins
    assert _next(logits, [2, 1], no_repeat_ngram_size=2) == 2  # (1, 2) is new
    assert _next(logits, [1, 2, 1], no_repeat_ngram_size=2) == 3  # (1, 2) again: blocked, the next best
    assert _next(logits, [1, 2, 1, 3, 1], no_repeat_ngram_size=2) == 4  # (1, 2) and (1, 3) both blocked
    assert _next(logits, [2], no_repeat_ngram_size=2) == 2  # (2, 2) is new...
    assert _next(logits, [3], no_repeat_ngram_size=2) == 2
    assert _next(logits, [2, 2], no_repeat_ngram_size=2) == 3  # ...once
    assert _next(logits, [1, 2, 1], no_repeat_ngram_size=3) == 2  # (2, 1, 2) is new
    assert _next(logits, [1, 2, 0, 1, 2, 1], no_repeat_ngram_size=3) == 2  # (2, 1, 2): new
    assert _next(logits, [2, 1, 2, 0, 2, 1], no_repeat_ngram_size=3) == 3  # (2, 1, 2) again
    assert _next(logits, [], no_repeat_ngram_size=1) == 2
    assert _next(logits, [2, 3], no_repeat_ngram_size=1) == 4  # size 1: no token twice


def test_greedy_decoding_with_no_repeat_ngram_never_repeats_a_bigram():
    """A loop a greedy decoder would fall into (logits that prefer the token after the last one) is broken."""
    vocab = 6
    answer = []
    for _ in range(20):
        logits = torch.zeros(vocab)
        logits[(answer[-1] + 1) % 3 if answer else 0] = 5.0  # would cycle 0 1 2 0 1 2 ...
        logits[3:] = torch.tensor([1.0, 0.5, 0.25])
        answer.append(next_token(logits, answer, GenerationConfig(no_repeat_ngram_size=2), None))
        if len(answer) >= 3 * vocab:
            break
    pairs = _bigrams(answer)
    assert len(pairs) == len(set(pairs)), answer
    assert answer[:3] == [0, 1, 2]


def test_a_blocked_token_is_never_sampled_either():
    picks = {_next([1.0, 1.0, 1.0], [1, 2, 1], _rng(s), no_repeat_ngram_size=2, temperature=1.0) for s in range(200)}
    assert picks == {0, 1}


@pytest.mark.parametrize("options", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}])
def test_top_k_1_and_a_tiny_top_p_are_greedy_at_any_temperature(options):
    torch.manual_seed(1)
    for seed in range(30):
        logits = torch.randn(100)
        assert next_token(logits.clone(), [], GenerationConfig(temperature=5.0, **options), _rng(seed)) == int(logits.argmax())


def test_top_k_and_top_p_keep_only_the_most_likely_tokens():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().tolist()
    draws = lambda **o: collections.Counter(_next(logits, (), _rng(s), temperature=1.0, **o) for s in range(400))  # noqa: E731
    assert set(draws()) == {0, 1, 2, 3}
    assert set(draws(top_k=2)) == {0, 1}
    assert set(draws(top_p=0.5)) == {0, 1}  # 0.4 alone does not reach 0.5; 0.4 + 0.3 does
    assert set(draws(top_p=0.75)) == {0, 1, 2}
    counts = draws()
    assert counts[0] > counts[3] * 2  # sampled from the softmax, not uniformly


def test_the_same_seed_samples_the_same_tokens_and_other_seeds_differ():
    flat = [0.0] * 1000

    def sample(seed):
        rng, answer = _rng(seed), []
        for _ in range(10):
            answer.append(_next(flat, answer, rng, temperature=1.0))
        return answer

    assert sample(7) == sample(7)
    assert len({tuple(sample(s)) for s in range(5)}) == 5


# ---- loops -----------------------------------------------------------------------------------------------------------

def test_repeated_tail_finds_where_a_loop_starts_repeating_itself():
    assert repeated_tail([1, 2, 3]) == (3, 3, False)  # nothing repeats
    assert repeated_tail([1, 2, 3, 4, 3, 4, 3]) == (2, 4, False)  # "3 4" said again: held back, not yet a loop
    word = [1, 2] + [7] * LOOP_SPAN  # one token said LOOP_SPAN times: a loop, cut after its first
    assert repeated_tail(word) == (2, 3, True) and not repeated_tail(word[:-1]).loop
    sentence = [9] + list(range(10, 10 + LOOP_UNIT)) * 2  # a stretch of LOOP_UNIT tokens said twice: a loop
    assert repeated_tail(sentence) == (1, 1 + LOOP_UNIT, True) and not repeated_tail(sentence[:-1]).loop
    short = [9] + [3, 4, 5] * 2  # a short stretch said twice ("1 0 0 1 0 0"): not a loop
    assert repeated_tail(short) == (1, 4, False)


@given(st.lists(st.integers(0, 5), max_size=30), st.lists(st.integers(0, 5), min_size=1, max_size=12),
       st.integers(1, 20), st.lists(st.integers(0, 5), max_size=5))
def test_a_loop_is_found_as_soon_as_it_is_long_enough_and_only_its_repeats_are_dropped(head, unit, copies, partial):
    ids = head + unit * copies + unit[: len(partial)]
    tail = repeated_tail(ids)
    assert tail.start <= tail.first_copy <= len(ids)
    period = tail.first_copy - tail.start
    if tail.first_copy < len(ids):  # what comes after the first copy repeats the stretch before it, token for token
        assert all(ids[i] == ids[i - period] for i in range(tail.first_copy, len(ids)))
    if tail.loop:
        assert len(ids) - tail.start >= 2 * period and (period >= LOOP_UNIT or len(ids) - tail.start >= LOOP_SPAN)
    repeats = len(unit) * copies + len(unit[: len(partial)]) - len(unit)  # tokens that repeat the unit's first copy
    if repeats >= len(unit) and (len(unit) >= LOOP_UNIT or repeats + len(unit) >= LOOP_SPAN):
        assert tail.loop  # the planted loop (or a shorter one inside it) is found
        assert tail.first_copy <= len(head) + len(unit)  # and at most its first copy is kept


# ---- 8. through the model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(tiny_model):
    return tiny_model.compress(DOCS)


def _ids(model, ctx, n, **options):
    prompt = model.read(QUESTION, ctx, "soft", max_new_tokens=n).prompt
    return list(model.decoder.generate_ids(prompt, n, generation=GenerationConfig(**options)))


def test_sampling_with_a_seed_is_repeatable_and_differs_from_greedy(tiny_model, ctx):
    sampled = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16, temperature=0.8, seed=3)
    assert tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16, temperature=0.8, seed=3) == sampled
    assert "".join(tiny_model.stream(QUESTION, context=ctx, max_new_tokens=16, temperature=0.8, seed=3)) == sampled
    others = {tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16, temperature=0.8, seed=s) for s in (4, 5, 6)}
    assert len(others | {sampled}) > 1
    assert sampled != tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16)
    messages = [{"role": "user", "content": "Say something."}]
    assert "".join(tiny_model.chat(messages, max_new_tokens=12, temperature=1.0, seed=1)) == \
        "".join(tiny_model.chat(messages, max_new_tokens=12, temperature=1.0, seed=1))
    assert "".join(tiny_model.answer_text(QUESTION, LOREM, max_new_tokens=12, temperature=1.0, seed=2)) == \
        "".join(tiny_model.answer_text(QUESTION, LOREM, max_new_tokens=12, temperature=1.0, seed=2))


def test_no_repeat_ngram_through_the_decoder_and_the_model(tiny_model, ctx):
    greedy = _ids(tiny_model, ctx, 30)
    assert len(set(_bigrams(greedy))) < len(_bigrams(greedy))  # the random tiny decoder loops, so the test can fail
    blocked = _ids(tiny_model, ctx, 30, no_repeat_ngram_size=2)
    assert len(blocked) > 2 and len(set(_bigrams(blocked))) == len(_bigrams(blocked)), blocked
    text = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=30, no_repeat_ngram_size=2, mode="soft")
    assert text == tiny_model.decoder.tokenizer.decode(blocked, skip_special_tokens=True)  # the option reached the decoder


def test_a_looping_answer_ends_after_its_first_copy_in_every_verb(tiny_model, ctx):
    """The random tiny decoder loops: with `stop_loops` (the default) decoding stops as the loop is found, and the answer
    is the one without it cut after the loop's first copy, alike from generate, stream and answer_many."""
    free = _ids(tiny_model, ctx, 60, stop_loops=False)
    loop = tiny_model.decoder.repeated_tail
    found = next(t for t in range(1, len(free) + 1) if loop(free[:t]).loop)  # the test can fail: it must loop
    expected = tiny_model.decoder.tokenizer.decode(free[: loop(free[:found]).first_copy], skip_special_tokens=True)
    assert _ids(tiny_model, ctx, 60) == free[:found]  # no token decoded past the loop's discovery
    generated = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=60, mode="soft")
    assert generated == expected and len(generated) < len(tiny_model.decoder.tokenizer.decode(free))
    assert "".join(tiny_model.stream(QUESTION, context=ctx, max_new_tokens=60, mode="soft")) == expected
    assert ["".join(a) for a in tiny_model.answer_many([QUESTION, QUESTION], context=ctx, max_new_tokens=60,
                                                        mode="soft")] == [expected, expected]
    off = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=60, mode="soft", stop_loops=False)
    assert off == tiny_model.decoder.tokenizer.decode(free, skip_special_tokens=True)


def test_the_repetition_penalty_never_touches_the_first_token(tiny_model, ctx):
    """The penalty reads the answer only: the first token (where only the prompt came before, which holds the same
    template and document tokens) is the greedy one, and so is the answer up to the first token it would repeat."""
    greedy = _ids(tiny_model, ctx, 20)
    first_repeat = next(i for i, t in enumerate(greedy) if t in greedy[:i])
    penalised = _ids(tiny_model, ctx, 20, repetition_penalty=5.0)
    assert penalised[:first_repeat] == greedy[:first_repeat]
    assert penalised != greedy


def test_passing_the_defaults_explicitly_changes_no_greedy_answer(tiny_model, ctx):
    defaults = dataclasses.asdict(GenerationConfig())
    for mode in ("soft", "hybrid", "rag"):
        plain = tiny_model.generate(QUESTION, context=ctx, mode=mode, max_new_tokens=12)
        assert tiny_model.generate(QUESTION, context=ctx, mode=mode, max_new_tokens=12, **defaults) == plain
        assert tiny_model.generate(QUESTION, context=ctx, mode=mode, max_new_tokens=12, seed=123) == plain  # greedy: no rng


def test_the_configs_generation_is_the_default_and_a_call_overrides_it(tiny_model, ctx, monkeypatch):
    greedy = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16)
    sampled = tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16, temperature=0.8, seed=3)
    monkeypatch.setattr(tiny_model.config, "generation", GenerationConfig(temperature=0.8, seed=3))
    assert tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16) == sampled
    assert tiny_model.generate(QUESTION, context=ctx, max_new_tokens=16, temperature=0.0) == greedy


def test_an_unknown_option_is_refused_naming_the_options(tiny_model, ctx):
    with pytest.raises(ConfigError, match=r"temprature.*temperature.*top_p.*seed"):
        tiny_model.generate(QUESTION, context=ctx, temprature=1)
    assert issubclass(ConfigError, E2LLMError)
    for call in (lambda: tiny_model.answer(QUESTION, context=ctx, topp=0.5),
                 lambda: list(tiny_model.stream(QUESTION, context=ctx, top_q=1)),
                 lambda: tiny_model.chat([{"role": "user", "content": "hi"}], penalty=2.0),
                 lambda: tiny_model.answer_text(QUESTION, LOREM, seeds=1)):
        with pytest.raises(E2LLMError, match="unknown generation option"):
            call()


@pytest.mark.parametrize("option, value, field", [
    ("temperature", -1, "temperature"), ("temperature", 101.0, "temperature"), ("top_p", 0, "top_p"),
    ("top_p", 1.5, "top_p"), ("repetition_penalty", 0.5, "repetition_penalty"), ("top_k", -1, "top_k"),
    ("no_repeat_ngram_size", -2, "no_repeat_ngram_size"), ("no_repeat_ngram_size", 1.5, "no_repeat_ngram_size"),
    ("seed", "3", "seed"), ("temperature", "hot", "temperature"), ("top_k", True, "top_k"),
])
def test_out_of_range_options_are_refused_before_generating(tiny_model, ctx, option, value, field):
    with pytest.raises(ConfigError, match=field):
        tiny_model.answer(QUESTION, context=ctx, **{option: value})
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{option: value})


# ---- 9. the config ---------------------------------------------------------------------------------------------------

def test_generation_settings_survive_save_and_load(tiny_config, tmp_path):
    generation = GenerationConfig(no_repeat_ngram_size=3, repetition_penalty=1.3, temperature=0.7, top_p=0.9, top_k=40, seed=5)
    model = build_tiny_model(dataclasses.replace(tiny_config, generation=generation))
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert saved["generation"] == dataclasses.asdict(generation)
    loaded = E2LLM.from_pretrained(tmp_path / "ckpt")
    assert loaded.config.generation == generation and isinstance(loaded.config.generation, GenerationConfig)
    assert loaded.config == model.config
    ctx = model.compress(DOCS)
    assert loaded.generate(QUESTION, context=ctx, max_new_tokens=12) == model.generate(QUESTION, context=ctx, max_new_tokens=12)


def test_a_config_without_generation_loads_with_the_defaults(tiny_checkpoint, tmp_path):
    data = json.loads((Path(tiny_checkpoint) / "config.json").read_text())
    data.pop("generation")
    assert E2LLMConfig.from_dict(data).generation == GenerationConfig()
    old = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, old)
    (old / "config.json").write_text(json.dumps(data))
    assert E2LLM.from_pretrained(old).config.generation == GenerationConfig()


@pytest.mark.parametrize("generation, message", [
    ({"temperature": 0.5, "beam_width": 4}, "unknown generation keys ['beam_width']"),
    ({"top_p": 0.0}, "top_p"),
    ({"temperature": -0.5}, "temperature"),
    ("greedy", "generation"),
])
def test_a_bad_generation_entry_in_config_json_is_a_checkpoint_error(tiny_checkpoint, tmp_path, generation, message):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    data = json.loads((bad / "config.json").read_text())
    data["generation"] = generation
    (bad / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        E2LLM.from_pretrained(bad)


# ---- 10. the shipped checkpoint -------------------------------------------------------------------------------------

def _most_repeated_word_trigram(text):
    words = text.lower().split()
    return max(collections.Counter(zip(words, words[1:], words[2:], strict=False)).values(), default=0)


@pytest.mark.slow
def test_the_shipped_decoder_compares_words_case_and_space_aside_but_never_halves_of_characters():
    decoder = E2LLM.from_pretrained(store=False).decoder
    tokenizer, tail = decoder.tokenizer, decoder.repeated_tail
    ids = tokenizer("L. L. L. L. L. L. L. L. L.", add_special_tokens=False)["input_ids"]
    assert tail(ids).loop and tokenizer.decode(ids[: tail(ids).first_copy]) == "L."  # from the first "L", unspaced
    # SmolLM2 writes most CJK characters as byte tokens whose text alone is "\ufffd": equal as text, not as words.
    text = "中华人民共和国是工人阶级领导的以工农联盟为基础的人民民主专政的社会主义国家鬱鬱蔥蔥齉龘"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert sum("\ufffd" in tokenizer.decode([i]) for i in ids) > len(ids) / 2  # the case this test is about
    assert not any(tail(ids[:end]).loop for end in range(1, len(ids) + 1))


@pytest.mark.slow
def test_shipped_checkpoint_with_repetition_controls_and_seeded_sampling():
    model = E2LLM.from_pretrained()
    text = (Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text()
    controls = {"no_repeat_ngram_size": 3, "repetition_penalty": 1.2}
    question = "What does the document say about the economy?"
    answer = model.generate(question, documents=[text], max_new_tokens=64, **controls)
    assert answer.strip() and _most_repeated_word_trigram(answer) < 3, answer
    ctx = model.compress([text], show_progress=False)
    # Phase 5 looped on this question ("... by end use - ..." three times); phase 8, trained on short answers, ends it
    # greedy. Loop-breaking itself is tested above on a tiny model; here: greedy and controlled answers both end.
    looping = "Describe the economy of Finland in detail."
    greedy = model.generate(looping, context=ctx, max_new_tokens=64)
    controlled = model.generate(looping, context=ctx, max_new_tokens=64, **controls)
    assert greedy.strip() and _most_repeated_word_trigram(greedy) < 3, greedy
    assert controlled.strip() and _most_repeated_word_trigram(controlled) < 3, controlled
    sampled = model.generate(question, context=ctx, max_new_tokens=32, temperature=0.7, top_p=0.9, seed=11)
    assert sampled and model.generate(question, context=ctx, max_new_tokens=32, temperature=0.7, top_p=0.9, seed=11) == sampled


@pytest.mark.slow
def test_the_shipped_model_decodes_as_transformers_own_generate():
    """Shared-prefix attention gives the greedy tokens transformers' `generate` gives over the whole prompt (its own
    cache and SDPA): after a cached prefix (soft mode), and over a prompt without one (the text read as such)."""
    model = E2LLM.from_pretrained(store=False)
    text = (Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text(encoding="utf-8")
    ctx = model.compress([text], show_progress=False)
    question = "Who is the chief of state of Finland?"  # a long answer: more tokens to agree on
    with torch.inference_mode():
        cached = model.read(question, ctx, "soft").prompt
        whole = model.decoder.build_prompt(model.decoder.text_embeddings(text, 1500), f"Answer the question: {question}")
    assert cached.prefix_tokens and not whole.prefix_tokens
    reader = model.decoder.inference_copy.get()
    for prompt in (cached, whole):
        ours = list(model.decoder.generate_ids(prompt, 16, ctx.prefix_cache))
        with torch.inference_mode():
            theirs = reader.generate(inputs_embeds=prompt.embeds, max_new_tokens=16, do_sample=False,
                                     repetition_penalty=1.0, min_new_tokens=1)[0].tolist()
        theirs = theirs[: next((i for i, t in enumerate(theirs) if t in model.decoder.stop_ids), len(theirs))]
        assert ours == theirs and len(ours) > 2, (ours, theirs)
