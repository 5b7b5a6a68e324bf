"""Batched answering: `E2LLM.answer_many` decodes several questions over one context as the rows of one batch that
shares its prompt prefix, and gives each the answer `answer` gives it alone; LangChain's `batch`/`abatch` and concurrent
LlamaIndex `aquery` calls go through it. Tests count the decoder's forwards and how many rows each reads."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path

import pytest
from conftest import LOREM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM, E2LLMError, GenerationConfig, decoder, shared_prefix
from e2llm_plugin.errors import ConfigError
from e2llm_plugin.integrations import common

DOCS = [LOREM, "Cats sleep for most of the day. They hunt at night, alone, and come home at dawn. " * 3]
QUESTIONS = ["When is the National Day?", "Which river flows through Vienna?", "What do cats do at night?",
             "Where are the Alps?", "Who declared neutrality, and when?"]


@pytest.fixture(scope="module")
def context(tiny_model):
    return tiny_model.compress(DOCS)


@pytest.fixture
def forwards(tiny_model, monkeypatch):
    """The decoder's forwards while answering, as (kind, rows): 'prefix' prefills a prompt prefix, 'rest' reads the
    prompts after it, 'step' one new token per row. The store is off, so a prefix is either in memory or prefilled."""
    monkeypatch.setattr(tiny_model, "store", None)
    copy = tiny_model.decoder.inference_copy.get()
    forward, calls = copy.forward, []

    def counting(*args, **kwargs):
        kind = "step" if kwargs.get("input_ids") is not None else "rest" if "cache" in kwargs else "prefix"
        calls.append((kind, len(kwargs.get("input_ids", kwargs.get("inputs_embeds")))))
        return forward(*args, **kwargs)

    monkeypatch.setattr(copy, "forward", counting)
    return calls


def _alone(model, context, questions, **options) -> list[str]:
    return [model.generate(q, context=context, **options) for q in questions]


def _together(model, context, questions, **options) -> list[str]:
    return ["".join(answer) for answer in model.answer_many(questions, context=context, **options)]


@pytest.mark.parametrize("mode", ["soft", "hybrid", "rag"])
def test_answers_decoded_together_are_those_decoded_alone(tiny_model, context, mode):
    assert _together(tiny_model, context, QUESTIONS, mode=mode, max_new_tokens=8) == \
        _alone(tiny_model, context, QUESTIONS, mode=mode, max_new_tokens=8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(questions=st.lists(st.sampled_from(QUESTIONS), min_size=1, max_size=6), max_new_tokens=st.integers(1, 10),
       stop=st.lists(st.sampled_from(["e", "a", " t", "\n", "in", "<|im_end|>"]), max_size=2),
       mode=st.sampled_from(["soft", "hybrid"]), history=st.booleans())
def test_any_questions_limits_and_stops_give_the_answers_given_alone(tiny_model, context, questions, max_new_tokens,
                                                                      stop, mode, history):
    options = dict(mode=mode, max_new_tokens=max_new_tokens, stop=stop,
                   history=[{"role": "user", "content": "Be brief."}, {"role": "assistant", "content": "Sure."}] if history
                   else None)
    assert _together(tiny_model, context, questions, **options) == _alone(tiny_model, context, questions, **options)


def test_sampled_answers_with_a_seed_are_those_sampled_alone(tiny_model, context):
    options = dict(mode="soft", max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)
    assert _together(tiny_model, context, QUESTIONS, **options) == _alone(tiny_model, context, QUESTIONS, **options)


def test_the_base_decoder_answers_together_as_alone(tiny_model, context):
    with tiny_model.base_decoder():  # the peft model with its adapter off reads, not the merged copy
        assert _together(tiny_model, context, QUESTIONS, mode="soft", max_new_tokens=6) == \
            _alone(tiny_model, context, QUESTIONS, mode="soft", max_new_tokens=6)


def test_repetition_controls_apply_to_each_row_alone(tiny_model, context):
    options = dict(mode="soft", max_new_tokens=10, repetition_penalty=1.3, no_repeat_ngram_size=2)
    assert _together(tiny_model, context, QUESTIONS, **options) == _alone(tiny_model, context, QUESTIONS, **options)


# ---- what a batch costs ----------------------------------------------------------------------------------------------

def test_n_questions_cost_one_prefix_one_rest_and_a_step_per_token_of_the_longest(tiny_model, forwards, monkeypatch):
    monkeypatch.setattr(tiny_model.decoder, "stop_ids", set())  # nothing ends an answer but the limit
    context = tiny_model.compress(DOCS)  # a new context: its prefix is not in memory
    answers = tiny_model.answer_many(QUESTIONS, context=context, mode="soft", max_new_tokens=6)
    assert forwards == []  # nothing is decoded before an answer is read
    assert all(len("".join(answer)) > 0 for answer in answers)
    assert forwards == [("prefix", 1), ("rest", len(QUESTIONS))] + [("step", len(QUESTIONS))] * 5
    forwards.clear()
    tiny_model.answer_many(QUESTIONS[:3], context=context, mode="soft", max_new_tokens=6)[2].text  # noqa: B018
    assert forwards == []  # still nothing: `.text` is filled as the answer is iterated
    "".join(tiny_model.answer_many(QUESTIONS[:3], context=context, mode="soft", max_new_tokens=6)[2])
    assert forwards == [("rest", 3)] + [("step", 3)] * 5  # the prefix read from memory; all three decoded at once


def test_rows_leave_the_batch_at_their_own_stop(tiny_model, context, forwards, monkeypatch):
    monkeypatch.setattr(tiny_model.decoder, "stop_ids", set())
    distinct = dict(mode="soft", max_new_tokens=8, no_repeat_ngram_size=1)  # no token twice within an answer
    prompts = [tiny_model.read(q, context, "soft").prompt for q in QUESTIONS]
    tokens = [list(tiny_model.decoder.generate_ids(p, 8, generation=GenerationConfig(no_repeat_ngram_size=1)))
              for p in prompts]
    stop = tokens[0][2]  # the first answer's third token ends it, and others wherever they meet it
    monkeypatch.setattr(tiny_model.decoder, "stop_ids", {stop})
    alone = _alone(tiny_model, context, QUESTIONS, **distinct)
    forwards.clear()
    assert _together(tiny_model, context, QUESTIONS, **distinct) == alone
    rows = [n for kind, n in forwards if kind == "step"]
    # The first answer's stop token is its third pick: it read two steps, then left; the others went on, fewer each time.
    assert rows[:2] == [5, 5] and rows == sorted(rows, reverse=True) and rows[-1] < len(QUESTIONS)


def test_rows_with_long_rests_are_decoded_a_few_at_a_time(tiny_model, context, forwards, monkeypatch):
    """A batch is bounded by the rows' own keys (their prompts after the shared prefix, and their answers): the prefix,
    read by all from one copy, does not count."""
    alone = _alone(tiny_model, context, QUESTIONS, mode="soft", max_new_tokens=5)
    per_position = sum(math.prod(shape) * dtype.itemsize for shape, dtype in tiny_model.decoder.prefix_layout(1).values())
    prompts = [tiny_model.read(q, context, "soft").prompt for q in QUESTIONS]
    longest = max(p.num_tokens - p.prefix_tokens for p in prompts) + 5
    assert longest * 2 < prompts[0].prefix_tokens  # room for two rows' own keys, not for one row's copy of the prefix
    monkeypatch.setattr(decoder, "BATCH_KV_BYTES", per_position * longest * 2)
    forwards.clear()
    assert _together(tiny_model, context, QUESTIONS, mode="soft", max_new_tokens=5) == alone
    assert [n for kind, n in forwards if kind == "rest"] == [2, 2, 1]


@pytest.fixture(scope="module")
def long_context(tiny_model):
    """A context whose prompt prefix is long beside the questions: a few hundred positions."""
    return tiny_model.compress([LOREM * 12, DOCS[1] * 10])


@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_answers_after_a_long_prefix_decoded_together_are_those_decoded_alone(tiny_model, long_context, mode):
    prompts = [tiny_model.read(q, long_context, mode).prompt for q in QUESTIONS]
    assert min(p.prefix_tokens for p in prompts) > 80
    assert mode == "soft" or any(p.hidden_prefix_positions for p in prompts)  # hybrid: rows hide chunks, each its own
    options = dict(mode=mode, max_new_tokens=12)
    assert _together(tiny_model, long_context, QUESTIONS, **options) == _alone(tiny_model, long_context, QUESTIONS, **options)


def test_every_row_reads_the_one_cached_prefix_never_a_copy(tiny_model, long_context, monkeypatch):
    made = []

    class Recorded(decoder.SharedPrefixCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(decoder, "SharedPrefixCache", Recorded)
    monkeypatch.setattr(tiny_model.decoder, "stop_ids", set())  # every row decodes to the limit
    _together(tiny_model, long_context, QUESTIONS, mode="soft", max_new_tokens=6)
    (cache,) = made  # one batch
    stored = long_context.prefix_cache.get(tiny_model.decoder.prefix_key(tiny_model.read(QUESTIONS[0], long_context,
                                                                                         "soft").prompt))
    for (keys, values), layer in zip(cache.prefix, stored.layers, strict=True):
        assert keys is layer.keys and values is layer.values and keys.shape[0] == 1
    prefix = stored.layers[0].keys.shape[2]
    # Each row's own buffers hold its rest and answer, sized once up front: nothing of the prefix.
    assert cache.capacity < prefix / 4
    assert all(keys.shape[:3] == (len(QUESTIONS), stored.layers[0].keys.shape[1], cache.capacity)
               for keys in cache._keys.values())


def test_long_prompts_read_in_query_slices_give_the_same_answers(tiny_model, long_context, monkeypatch):
    options = dict(mode="hybrid", max_new_tokens=8)
    whole = _together(tiny_model, long_context, QUESTIONS, **options)
    monkeypatch.setattr(shared_prefix, "MAX_SCORES", 2000)  # a few queries of the rests' forward at a time
    assert _together(tiny_model, long_context, QUESTIONS, **options) == whole
    assert _alone(tiny_model, long_context, QUESTIONS, **options) == whole


def test_questions_over_other_prefixes_are_other_batches(tiny_model, context):
    other = tiny_model.compress([DOCS[1]])
    prompts = [tiny_model.read(q, c, "soft").prompt for q in QUESTIONS[:3] for c in (context, other)]
    together = tiny_model.decoder.generate_texts(prompts, 6)
    assert together == ["".join(tiny_model.decoder.stream_text(p, 6)) for p in prompts]


def test_threads_reading_their_answers_share_one_decoding(tiny_model, context, forwards):
    answers = tiny_model.answer_many(QUESTIONS, context=context, mode="soft", max_new_tokens=6)
    texts: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: texts.__setitem__(i, "".join(answers[i]))) for i in range(len(answers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [texts[i] for i in range(len(answers))] == _alone(tiny_model, context, QUESTIONS, mode="soft", max_new_tokens=6)
    assert [kind for kind, _ in forwards].count("rest") == 1 + len(QUESTIONS)  # one batch, then the answers alone


def test_answers_report_what_each_read(tiny_model, context):
    many = tiny_model.answer_many(QUESTIONS[:2], context=context, mode="hybrid", max_new_tokens=4)
    for question, answer in zip(QUESTIONS[:2], many, strict=True):
        alone = tiny_model.answer(question, context=context, mode="hybrid", max_new_tokens=4)
        assert (answer.prompt_tokens, answer.passages, answer.chunks_read, answer.ranking) == \
            (alone.prompt_tokens, alone.passages, alone.chunks_read, alone.ranking)
        assert "".join(answer) == answer.text == "".join(alone) and answer.completion_tokens == alone.completion_tokens


@pytest.mark.parametrize("questions", ["When?", [], ["When?", ""], ["When?", 3], None])
def test_bad_questions_are_refused_before_anything_is_read(tiny_model, context, questions):
    with pytest.raises(E2LLMError):
        tiny_model.answer_many(questions, context=context)


def test_options_are_checked_like_answers(tiny_model, context):
    with pytest.raises(ConfigError):
        tiny_model.answer_many(QUESTIONS, context=context, max_new_tokens=0)
    with pytest.raises(ConfigError):
        tiny_model.answer_many(QUESTIONS, context=context, options=tiny_model.call_options(), mode="soft")
    with pytest.raises(E2LLMError):
        tiny_model.answer_many(QUESTIONS)  # nothing to read


def test_a_stored_context_answers_many_without_a_prefill(tiny_checkpoint, tmp_path, monkeypatch):
    first = E2LLM.from_pretrained(tiny_checkpoint, store=tmp_path / "s.sqlite")
    alone = _alone(first, first.compress(DOCS), QUESTIONS, mode="soft", max_new_tokens=6)
    second = E2LLM.from_pretrained(tiny_checkpoint, store=tmp_path / "s.sqlite")
    copy = second.decoder.inference_copy.get()
    forward, kinds = copy.forward, []
    monkeypatch.setattr(copy, "forward", lambda *a, **k: kinds.append("cache" in k or "input_ids" in k) or forward(*a, **k))
    assert _together(second, second.compress(DOCS), QUESTIONS, mode="soft", max_new_tokens=6) == alone
    assert False not in kinds  # no prefill: the prefix came from the store


# ---- the integrations ------------------------------------------------------------------------------------------------

@pytest.fixture
def patient(monkeypatch):
    """A gathering window wide enough for a loaded machine's threads: the test counts batches, not milliseconds."""
    monkeypatch.setattr(common, "GATHER_S", 0.3)
    monkeypatch.setattr(common, "GATHER_MAX_S", 5.0)


def _conversations():
    from langchain_core.messages import HumanMessage, SystemMessage

    document = SystemMessage(content=[{"type": "text-plain", "mime_type": "text/plain", "text": text} for text in DOCS])
    return [[document, HumanMessage(content=q)] for q in QUESTIONS]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_langchain_batch_answers_in_one_batch(tiny_model, forwards, patient, asynchronous):
    from e2llm_plugin import ChatE2LLM

    llm = ChatE2LLM(model=tiny_model, mode="soft", max_tokens=6)
    alone = [ChatE2LLM(model=tiny_model, mode="soft", max_tokens=6).invoke(c).content for c in _conversations()]
    forwards.clear()
    replies = asyncio.run(llm.abatch(_conversations())) if asynchronous else llm.batch(_conversations())
    assert [reply.content for reply in replies] == alone
    assert [f for f in forwards if f[0] != "step"] == [("prefix", 1), ("rest", len(QUESTIONS))]  # one batch
    assert all(reply.usage_metadata["output_tokens"] > 0 and reply.response_metadata["compression"] for reply in replies)


def test_concurrent_llama_index_queries_are_answered_in_one_batch(tiny_model, forwards, patient):
    from llama_index.core import Document

    from e2llm_plugin import E2LLMQueryEngine

    def engine():
        return E2LLMQueryEngine.from_documents([Document(text=text) for text in DOCS], model=tiny_model, mode="soft",
                                               max_new_tokens=6)

    alone = [engine().query(q).response for q in QUESTIONS]
    forwards.clear()
    shared = engine()

    async def ask_all():
        return await asyncio.gather(*(shared.aquery(q) for q in QUESTIONS))

    responses = asyncio.run(ask_all())
    assert [r.response for r in responses] == alone
    assert [f for f in forwards if f[0] != "step"] == [("prefix", 1), ("rest", len(QUESTIONS))]
    assert [r.metadata["e2llm"]["completion_tokens"] for r in responses] == [tiny_model.count_tokens(a) for a in alone]


def test_one_bad_question_in_a_batch_fails_alone(tiny_model, patient):
    from e2llm_plugin import ChatE2LLM

    llm = ChatE2LLM(model=tiny_model, mode="soft", max_tokens=4, long_text_tokens=100_000)
    conversations = _conversations()[:3]
    conversations[1][-1].content = "Why? " * 2000  # a question too long for the decoder's window
    replies = llm.batch(conversations, return_exceptions=True)
    assert isinstance(replies[1], E2LLMError) and "decoder" in str(replies[1])
    assert [r.content for i, r in enumerate(replies) if i != 1] == \
        [llm.invoke(c).content for i, c in enumerate(conversations) if i != 1]


# ---- the real models -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_shipped_model_answers_sixteen_questions_together_as_alone():
    model = E2LLM.from_pretrained(store=False)
    text = (Path(__file__).parent.parent / "examples" / "factbook_finland.txt").read_text(encoding="utf-8")
    context = model.compress([text])
    questions = ["What is the capital of Finland?", "What is the GDP of Finland?", "What languages are spoken?",
                 "Who is the chief of state?", "What is the population?", "What is the climate like?",
                 "What are the main industries?", "What are the natural resources?", "When did Finland become independent?",
                 "What is the currency?", "What are the main exports?", "What is the terrain like?",
                 "What is the literacy rate?", "What are the major religions?", "What is the unemployment rate?",
                 "Which countries border Finland?"]
    for mode in ("soft", "hybrid"):
        together = _together(model, context, questions, mode=mode, max_new_tokens=16)
        assert together == _alone(model, context, questions, mode=mode, max_new_tokens=16)
        assert sum(bool(a.strip()) for a in together) >= 12


def test_batched_rows_hide_what_hybrid_reads_as_raw_text(tiny_model, context):
    """Each row keeps its own hidden prefix positions (the soft tokens of the chunks it reads as raw text), as alone."""
    readings = [tiny_model.read(q, context=context, mode="hybrid") for q in QUESTIONS]
    assert any(r.prompt.hidden_prefix_positions for r in readings)  # the case under test occurs
    assert _together(tiny_model, context, QUESTIONS, mode="hybrid", max_new_tokens=24) == \
        _alone(tiny_model, context, QUESTIONS, mode="hybrid", max_new_tokens=24)
