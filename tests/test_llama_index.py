"""The LlamaIndex integration with real LlamaIndex objects: documents, SummaryIndex, VectorStoreIndex, handlers.

Tiny random models keep these fast; the `slow` test runs the shipped checkpoint end to end.
"""

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from conftest import LOREM
from llama_index.core import Document, Settings, SummaryIndex, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import CustomLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import QueryBundle, TextNode

from e2llm_plugin import E2LLM, E2LLMCustomLLM, E2LLMEmbedding, E2LLMError, E2LLMQueryEngine, E2LLMSynthesizer
from e2llm_plugin.integrations.llama_index import E2LLMCompressionEvent

STATS_KEYS = {"chunks", "chunks_read", "soft_tokens", "source_tokens", "compression_ratio", "mode"}
QUESTION = "When is the National Day?"
EXAMPLE = Path(__file__).parent.parent / "examples" / "factbook_finland.txt"


def documents():
    return [
        Document(text=LOREM * 4, metadata={"title": "Austria"}),
        Document(text="The Alps are a mountain range. Skiing is popular there in winter. " * 6, metadata={"title": "Alps"}),
    ]


@pytest.fixture(autouse=True)
def no_default_models(monkeypatch):
    """Nothing may resolve LlamaIndex's default LLM or embedding model (both want OpenAI)."""
    monkeypatch.setattr(Settings, "_llm", None)
    monkeypatch.setattr(Settings, "_embed_model", None)
    monkeypatch.setattr(Settings, "_callback_manager", None)
    yield
    assert Settings._llm is None and Settings._embed_model is None


class Recorder(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs):
        self.events.append(event)


@pytest.fixture
def compression_events():
    """E2LLMCompressionEvents sent through LlamaIndex's instrumentation while the test runs."""
    recorder = Recorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(recorder)
    yield lambda: [e for e in recorder.events if isinstance(e, E2LLMCompressionEvent)]
    root.event_handlers.remove(recorder)


def splitter():
    return SentenceSplitter(chunk_size=64, chunk_overlap=0)


@pytest.fixture
def engine(tiny_model):
    return E2LLMQueryEngine.from_documents(documents(), model=tiny_model, transformations=[splitter()], mode="soft")


def test_public_names_are_llama_index_types(engine):
    assert isinstance(engine, BaseQueryEngine)
    assert isinstance(engine.synthesizer, BaseSynthesizer) and isinstance(engine.synthesizer, E2LLMSynthesizer)
    assert isinstance(engine.synthesizer.llm, CustomLLM) and isinstance(engine.synthesizer.llm, E2LLMCustomLLM)


def test_query_reads_every_node_and_reports_stats(engine, tiny_model):
    response = engine.query(QUESTION)
    assert isinstance(response, Response) and isinstance(response.response, str)
    nodes = engine.retrieve(QueryBundle(QUESTION))
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in nodes]
    assert len(nodes) > 2  # the splitter made several nodes, and E2LLM read them all
    stats = response.metadata["e2llm"]
    assert STATS_KEYS <= set(stats)
    expected = tiny_model.compress([n.node.get_content(metadata_mode="llm") for n in nodes])
    assert stats["chunks"] == expected.num_chunks and stats["soft_tokens"] == expected.num_soft_tokens
    assert stats["source_tokens"] == expected.num_source_tokens
    assert stats["compression_ratio"] == pytest.approx(expected.compression_ratio, abs=0.01)
    assert stats["mode"] == "soft" and stats["nodes"] == len(nodes) and stats["skipped_nodes"] == []
    assert stats["completion_tokens"] == tiny_model.count_tokens(response.response)
    assert response.metadata[nodes[0].node.node_id]["title"] == "Austria"


def test_streaming_joins_to_the_answer(tiny_model):
    docs = documents()
    plain = E2LLMQueryEngine.from_documents(docs, model=tiny_model, transformations=[splitter()])
    streaming = E2LLMQueryEngine.from_documents(docs, model=tiny_model, streaming=True, transformations=[splitter()])
    response = streaming.query(QUESTION)
    assert isinstance(response, StreamingResponse)
    assert response.metadata["e2llm"]["completion_tokens"] is None  # not generated yet
    pieces = list(response.response_gen)
    assert "".join(pieces) == plain.query(QUESTION).response
    assert response.metadata["e2llm"]["completion_tokens"] == tiny_model.count_tokens("".join(pieces))
    assert response.source_nodes and STATS_KEYS <= set(response.metadata["e2llm"])


async def test_async_query_and_async_streaming(engine, tiny_model):
    expected = engine.query(QUESTION).response
    response = await engine.aquery(QUESTION)
    assert isinstance(response, Response) and response.response == expected
    streaming = E2LLMQueryEngine.from_documents(documents(), model=tiny_model, streaming=True, transformations=[splitter()])
    response = await streaming.aquery(QUESTION)
    assert isinstance(response, AsyncStreamingResponse)
    pieces = [piece async for piece in response.async_response_gen()]
    assert "".join(pieces) == expected
    # Two questions at once share the model and the cache.
    both = await asyncio.gather(engine.aquery(QUESTION), engine.aquery("Where do people ski?"))
    assert both[0].response == expected and all(r.source_nodes for r in both)


def test_nodes_are_compressed_once(engine, tiny_model, compression_events, monkeypatch):
    batches = []
    compress_each = tiny_model.compress_each
    monkeypatch.setattr(tiny_model, "compress_each", lambda texts, **kw: batches.append(texts) or compress_each(texts, **kw))
    first = engine.query(QUESTION).metadata["e2llm"]
    second = engine.query("Where do people ski?").metadata["e2llm"]
    assert 0 < first["compressed_nodes"] <= first["nodes"]  # repeated texts are compressed once too
    assert second["compressed_nodes"] == 0
    assert [len(b) for b in batches] == [first["compressed_nodes"]]  # one batched call for all the new nodes
    events = compression_events()
    assert [e.compressed_nodes for e in events] == [first["compressed_nodes"], 0]
    assert events[0].chunks == first["chunks"] and events[0].compression_ratio > 0
    # A new index sharing nodes' texts with the old one only compresses what is new.
    synth = engine.synthesizer
    old_nodes = list(engine._retriever._index.docstore.docs.values())
    extra = SummaryIndex(old_nodes + [TextNode(text="Vienna has a famous opera house.")])
    response = extra.as_query_engine(llm=synth.llm, response_synthesizer=synth).query(QUESTION)
    assert response.metadata["e2llm"]["compressed_nodes"] == 1
    assert len(batches) == 2 and batches[1] == ["Vienna has a famous opera house."]


def test_query_and_synthesis_are_instrumentation_spans(engine):
    spans = SimpleSpanHandler()
    root = get_dispatcher()
    root.add_span_handler(spans)
    try:
        engine.query(QUESTION)
    finally:
        root.span_handlers.remove(spans)
    names = [span.id_.split("-")[0] for span in spans.completed_spans]
    assert "E2LLMQueryEngine.query" in names and "E2LLMSynthesizer.synthesize" in names


@pytest.mark.parametrize("mode", ["hybrid", "rag"])
def test_passage_modes_score_sources(tiny_model, mode):
    engine = E2LLMQueryEngine.from_documents(documents(), model=tiny_model, mode=mode, transformations=[splitter()])
    response = engine.query(QUESTION)
    stats = response.metadata["e2llm"]
    assert stats["mode"] == mode
    assert all(isinstance(n.score, float) for n in response.source_nodes)
    node_ids = {n.node.node_id for n in response.source_nodes}
    assert stats["passages"] and all(p["source"] in node_ids and p["text"] for p in stats["passages"])


def test_passages_are_shaped_as_in_langchain_and_ranked_once(tiny_model, monkeypatch):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import HumanMessage, SystemMessage

    from e2llm_plugin import ChatE2LLM

    calls = []
    real = E2LLM.rank_chunks
    monkeypatch.setattr(E2LLM, "rank_chunks", lambda self, *args: calls.append(args) or real(self, *args))
    engine = E2LLMQueryEngine.from_documents(documents(), model=tiny_model, mode="hybrid", transformations=[splitter()])
    response = engine.query(QUESTION)
    assert len(calls) == 1  # the reading's ranking scores the sources too: no second ranking
    assert all(isinstance(n.score, float) for n in response.source_nodes)
    llama = response.metadata["e2llm"]["passages"]
    chat = ChatE2LLM(model=tiny_model, mode="hybrid", max_tokens=2)
    langchain = chat.invoke([SystemMessage(LOREM * 4), HumanMessage(QUESTION)]).response_metadata["passages"]
    assert llama and langchain
    assert {frozenset(p) for p in llama} == {frozenset(p) for p in langchain} == {
        frozenset({"document", "source", "start", "end", "score", "text"})}
    assert all(p["source"] is None for p in langchain)


def test_default_nodes_end_at_line_ends(tiny_model):
    """A node cut inside a line would part a label from its value ("National holiday: " | "Independence Day, ...")."""
    text = EXAMPLE.read_text(encoding="utf-8")  # LlamaIndex's plain SentenceSplitter cuts 3 of its lines
    engine = E2LLMQueryEngine.from_documents([Document(text=text)], model=tiny_model)
    nodes = [n.node.get_content().splitlines() for n in engine.retriever.retrieve(QueryBundle(QUESTION))]
    assert len(nodes) > 1
    assert all(any(line in node for node in nodes) for line in text.splitlines() if line.strip())


def test_every_integration_class_names_its_model_e2llm(tiny_model):
    synthesizer = E2LLMSynthesizer(tiny_model)
    engine = E2LLMQueryEngine.from_documents(documents(), model=tiny_model, transformations=[splitter()])
    for integration in (synthesizer, engine, E2LLMCustomLLM(tiny_model), E2LLMEmbedding(tiny_model)):
        assert integration.e2llm is tiny_model
    with pytest.warns(DeprecationWarning, match="e2llm"):
        assert synthesizer.model is tiny_model  # the old name still works


def test_a_prompt_too_long_for_the_plain_llm_is_a_context_overflow(tiny_model):
    from e2llm_plugin.errors import ContextOverflowError

    with pytest.raises(ContextOverflowError):
        E2LLMCustomLLM(tiny_model).complete("word " * 2000)


def test_summary_index_from_index_and_as_query_engine(tiny_model):
    index = SummaryIndex.from_documents(documents(), transformations=[splitter()])
    engine = E2LLMQueryEngine.from_index(index, model=tiny_model)
    response = engine.query(QUESTION)
    assert len(response.source_nodes) == len(index.docstore.docs)
    synth = E2LLMSynthesizer(tiny_model)
    other = index.as_query_engine(llm=synth.llm, response_synthesizer=synth).query(QUESTION)
    assert other.response == response.response and STATS_KEYS <= set(other.metadata["e2llm"])


def test_vector_store_index_with_offline_embeddings(tiny_model):
    embed = E2LLMEmbedding(tiny_model)
    docs = documents() + [Document(text=f"Filler paragraph number {i} about nothing in particular. " * 3) for i in range(10)]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed, transformations=[splitter()])
    assert len(index.docstore.docs) > 5
    engine = E2LLMQueryEngine.from_index(index, model=tiny_model, similarity_top_k=5)
    response = engine.query(QUESTION)
    assert len(response.source_nodes) == 5 and all(n.score is not None for n in response.source_nodes)
    assert response.metadata["e2llm"]["nodes"] == 5
    # The default top-k is large: E2LLM reads every node of this small index.
    assert len(E2LLMQueryEngine.from_index(index, model=tiny_model).query(QUESTION).source_nodes) == len(index.docstore.docs)
    streaming = E2LLMQueryEngine.from_index(index, model=tiny_model, streaming=True, similarity_top_k=5)
    assert "".join(streaming.query(QUESTION).response_gen) == response.response
    assert asyncio.run(engine.aquery(QUESTION)).response == response.response
    expected = tiny_model.embed(["Austria"])[0].tolist()
    assert embed.get_query_embedding("Austria") == pytest.approx(expected, abs=1e-5)


def test_token_counting_handler_sees_the_decoder_and_the_encoder(tiny_model):
    counter = TokenCountingHandler()
    engine = E2LLMQueryEngine.from_documents(documents(), model=tiny_model, transformations=[splitter()],
                                             callback_manager=CallbackManager([counter]))
    stats = engine.query(QUESTION).metadata["e2llm"]
    assert counter.prompt_llm_token_count == stats["prompt_tokens"] > stats["soft_tokens"]
    assert counter.completion_llm_token_count == stats["completion_tokens"]
    assert counter.total_embedding_token_count > 0
    embedded = counter.total_embedding_token_count
    engine.query(QUESTION)
    assert counter.total_embedding_token_count == embedded  # nothing compressed again
    assert len(counter.llm_token_counts) == 2


def test_bad_input(tiny_model, engine, caplog):
    for bad in ([], None, [Document(text="   ")], "just a string", [42]):
        with pytest.raises(E2LLMError):
            E2LLMQueryEngine.from_documents(bad, model=tiny_model)
    for query in ("", "   "):
        with pytest.raises(E2LLMError, match="empty"):
            engine.query(query)
        with pytest.raises(E2LLMError, match="empty"):
            asyncio.run(engine.aquery(query))
    with pytest.raises(E2LLMError, match="mode"):
        E2LLMSynthesizer(tiny_model, mode="telepathy")
    with pytest.raises(E2LLMError):
        E2LLMQueryEngine.from_index("not an index", model=tiny_model)
    # A node without text is skipped and reported; an index of only such nodes is an error.
    index = SummaryIndex([TextNode(text=LOREM, id_="full"), TextNode(text="", id_="blank")])
    response = E2LLMQueryEngine.from_index(index, model=tiny_model).query(QUESTION)
    assert [n.node.node_id for n in response.source_nodes] == ["full"]
    assert response.metadata["e2llm"]["skipped_nodes"] == ["blank"] and "blank" in caplog.text
    with pytest.raises(E2LLMError, match="nothing to read"):
        E2LLMQueryEngine.from_index(SummaryIndex([TextNode(text=" ")]), model=tiny_model).query(QUESTION)


def test_custom_llm_completes_and_chats_without_compressing(tiny_model):
    counter = TokenCountingHandler()
    llm = E2LLMCustomLLM(tiny_model, max_new_tokens=6, callback_manager=CallbackManager([counter]))
    assert llm.metadata.context_window == tiny_model.context_window and llm.metadata.num_output == 6
    completion = llm.complete("Name a river.")
    pieces = [r.delta for r in llm.stream_complete("Name a river.")]
    assert "".join(pieces) == completion.text
    usage = completion.raw["usage"]
    assert usage["completion_tokens"] == tiny_model.count_tokens(completion.text)
    assert counter.prompt_llm_token_count == 2 * usage["prompt_tokens"]
    chat = llm.chat([ChatMessage(role="user", content="Name a river.")])
    assert chat.message.content == completion.text  # the same chat-templated prompt
    assert chat.raw["usage"] == usage
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a river."}]
    direct = tiny_model.chat(turns, max_new_tokens=6)
    messages = [ChatMessage(role=t["role"], content=t["content"]) for t in turns]
    chat = llm.chat(messages)
    assert chat.message.content == "".join(direct) and chat.raw["usage"]["prompt_tokens"] == direct.prompt_tokens
    assert "".join(r.delta for r in llm.stream_chat(messages)) == chat.message.content
    assert asyncio.run(llm.achat(messages)).message.content == chat.message.content
    system = E2LLMCustomLLM(tiny_model, max_new_tokens=6, system_prompt="Be brief.")
    assert system.complete("Hi").raw["usage"]["prompt_tokens"] == tiny_model.chat(turns[:2]).prompt_tokens
    with pytest.raises(E2LLMError, match="does not compress"):
        llm.complete("word " * tiny_model.context_window)


# ---- the shipped checkpoint, end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    return E2LLM.from_pretrained(max_new_tokens=12)


@pytest.mark.slow
def test_shipped_checkpoint_over_a_summary_index(shipped):
    text = (LOREM + "Its parliament meets in Vienna. The federal president is elected every six years.\n") * 12
    splitter = SentenceSplitter(chunk_size=256, chunk_overlap=0)
    index = SummaryIndex.from_documents([Document(text=text)], transformations=[splitter])
    engine = E2LLMQueryEngine.from_index(index, model=shipped)
    response = engine.query(QUESTION)
    stats = response.metadata["e2llm"]
    assert response.response.strip() and stats["compression_ratio"] > 10
    assert len(response.source_nodes) == len(index.docstore.docs) == stats["nodes"] > 1
    assert asyncio.run(engine.aquery(QUESTION)).response == response.response
    streaming = E2LLMQueryEngine.from_index(index, model=shipped, streaming=True)
    assert "".join(streaming.query(QUESTION).response_gen) == response.response

    async def astream():
        result = await streaming.aquery(QUESTION)
        return "".join([piece async for piece in result.async_response_gen()])

    assert asyncio.run(astream()) == response.response


@pytest.mark.slow
def test_the_readme_quick_start_answers_the_holiday_question(shipped):
    from llama_index.core import SimpleDirectoryReader

    engine = E2LLMQueryEngine.from_documents(SimpleDirectoryReader(input_files=[str(EXAMPLE)]).load_data(), model=shipped)
    response = engine.query("What is the national holiday of Finland?")
    assert "6 December" in response.response
    assert any("National holiday: Independence Day, 6 December" in p["text"] for p in response.metadata["e2llm"]["passages"])
