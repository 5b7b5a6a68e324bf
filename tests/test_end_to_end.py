"""End to end on the real embedded models (SmolLM2-135M + MiniLM) and the shipped checkpoint, offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_pdf

from e2llm_plugin import E2LLM

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).parent.parent / "examples" / "factbook_finland.txt"
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def shipped():
    return E2LLM.from_pretrained()


@pytest.fixture(scope="module")
def thirty_page_pdf(tmp_path_factory):
    words = EXAMPLE.read_text().split()
    per_page = -(-len(words) // 30)
    path = tmp_path_factory.mktemp("pdf") / "finland.pdf"
    make_pdf(path, [" ".join(words[i : i + per_page]) for i in range(0, len(words), per_page)])
    return path


def test_shipped_checkpoint_answers_and_round_trips(shipped, tmp_path):
    text = EXAMPLE.read_text()
    ctx = shipped.compress([text])
    assert ctx.num_chunks > 50 and ctx.compression_ratio > 50
    question = "What is the national holiday of Finland?"
    answers = {mode: shipped.generate(question, context=ctx, mode=mode, max_new_tokens=24) for mode in ("soft", "hybrid", "rag")}
    assert all(isinstance(a, str) and a for a in answers.values())
    assert "".join(shipped.stream(question, context=ctx, mode="soft", max_new_tokens=24)) == answers["soft"]
    shipped.save_pretrained(tmp_path / "copy")
    copy = E2LLM.from_pretrained(tmp_path / "copy")
    assert {mode: copy.generate(question, context=ctx, mode=mode, max_new_tokens=24) for mode in answers} == answers


# Answers of the shipped checkpoint (greedy, 24 new tokens), recorded when phase 8 was shipped, again when fused
# ranking became the default, and when round 12 was shipped (only soft's changed): a change that alters how the model
# reads (prompt, chunking, tokenization, passages) shows up here. With dense ranking the holiday's line was ranked 6th,
# outside hybrid's passages, and hybrid answered "Independence Day, 18th July (1917)", rag "Independence Day, 6 July
# (1819)"; fused ranking puts it first. Reading the passages best first (passage_order="ranked") changed one: the
# capital was "Helsinki" in document order. Round 30c (trained and read at 50-token chunks) changed three; its hybrid
# names a chief of state the text does not (round 24: "President Sauli NIINISTO (since 1 March 2012)"): kept pinned as
# a known miss, not hidden.
PINNED = {
    ("soft", "What is the national holiday of Finland?"): "Independence Day, 1913 (1917)",
    ("hybrid", "What is the national holiday of Finland?"): "Independence Day, 6 December (1917)",
    ("rag", "What is the national holiday of Finland?"): "Independence Day, 6 December (1917)",
    ("hybrid", "What is the capital of Finland?"): "Helsinki",
    ("hybrid", "Who is the chief of state of Finland?"): "President Petka TILKO (since 22 March 2010)",
}


def test_shipped_checkpoint_gives_the_pinned_answers(shipped):
    ctx = shipped.compress([EXAMPLE.read_text()], show_progress=False)
    got = {(mode, q): shipped.generate(q, context=ctx, mode=mode, max_new_tokens=24) for mode, q in PINNED}
    assert got == PINNED
    chat = shipped.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "".join(chat) == "Paris"


def test_cli_answers_over_a_thirty_page_pdf(thirty_page_pdf):
    proc = subprocess.run([sys.executable, "-m", "e2llm_plugin", "ask", str(thirty_page_pdf), "-q",
                           "What is the national holiday of Finland?", "--max-new-tokens", "24"],
                          capture_output=True, text=True, env=OFFLINE, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 page(s)" in proc.stderr and proc.stdout.strip()
    assert "Loading weights" not in proc.stderr and "Warning" not in proc.stderr  # only what the tool says


def test_installed_package_loads_its_shipped_checkpoint_from_anywhere(tmp_path):
    """Run outside the source tree, so a non-editable install must find the checkpoint inside the package."""
    code = ("import e2llm_plugin, e2llm_plugin.model as m; from e2llm_plugin import E2LLM; "
            "print(m.resolve_checkpoint(None)); E2LLM.from_pretrained()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=OFFLINE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
