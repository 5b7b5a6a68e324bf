"""`e2llm ask` on tiny checkpoints: text, Markdown and PDF input, stats on stderr, and clean errors."""

import subprocess
import sys

import pytest
from conftest import LOREM, make_pdf

from e2llm_plugin import cli


def test_ask_over_text_and_pdf(tiny_checkpoint, tmp_path, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text(LOREM * 3)
    md = tmp_path / "more.md"
    md.write_text("# Title\n\nThe Alps dominate the landscape.\n")
    pdf = tmp_path / "report.pdf"
    make_pdf(pdf, [LOREM, "Page two talks about the Danube.", "Page three: mountains."])
    code = cli.main(["ask", str(txt), str(md), str(pdf), "-q", "When is the National Day?", "--model", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.endswith("\n") and len(out) > 1  # the answer streamed, then a newline
    assert "3 file(s), 5 page(s)" in err and "chunks" in err and "soft tokens" in err and "mode soft" in err


def test_hybrid_mode_reads_more_decoder_tokens(tiny_checkpoint, tmp_path, capsys):
    txt = tmp_path / "notes.txt"
    txt.write_text(LOREM * 3)
    read = {}
    for mode in ("soft", "hybrid"):
        assert cli.main(["ask", str(txt), "-q", "When?", "--model", str(tiny_checkpoint), "--mode", mode]) == 0
        err = capsys.readouterr().err
        read[mode] = int(err.split("mode " + mode + ", ")[1].split(" decoder tokens")[0])
    assert read["hybrid"] > read["soft"]


def _encrypted_pdf(path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(text="Secret text.")
    pdf.output(str(path))


def _blank_pdf(path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.add_page()
    pdf.output(str(path))


@pytest.mark.parametrize("setup, question, message", [
    (lambda p: None, "q?", "does not exist"),
    (lambda p: p.write_text("   \n"), "q?", "is empty"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "q?", "not UTF-8"),
    (lambda p: p.write_text("fine text"), "  ", "question is empty"),
])
def test_bad_text_input(tiny_checkpoint, tmp_path, capsys, setup, question, message):
    path = tmp_path / "doc.txt"
    setup(path)
    assert cli.main(["ask", str(path), "-q", question, "--model", str(tiny_checkpoint)]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("make, message", [
    (_encrypted_pdf, "encrypted"),
    (_blank_pdf, "no extractable text"),
    (lambda p: p.write_bytes(b"%PDF-1.4 truncated garbage"), "not a readable PDF"),
])
def test_bad_pdfs(tiny_checkpoint, tmp_path, capsys, make, message):
    path = tmp_path / "doc.pdf"
    make(path)
    assert cli.main(["ask", str(path), "-q", "q?", "--model", str(tiny_checkpoint)]) == 1
    assert message in capsys.readouterr().err


def test_other_bad_arguments(tiny_checkpoint, tmp_path, capsys):
    txt = tmp_path / "a.txt"
    txt.write_text("text")
    assert cli.main(["ask", str(txt), "-q", "q?", "--model", str(tiny_checkpoint), "--max-new-tokens", "0"]) == 1
    assert "--max-new-tokens must be positive" in capsys.readouterr().err
    docx = tmp_path / "a.docx"
    docx.write_text("x")
    assert cli.main(["ask", str(docx), "-q", "q?"]) == 1
    assert "unsupported file type .docx" in capsys.readouterr().err
    assert cli.main(["ask", str(txt), "-q", "q?", "--model", str(tmp_path)]) == 1
    assert "config.json is missing" in capsys.readouterr().err


def test_errors_from_the_shell_have_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "e2llm_plugin", "ask", str(tmp_path / "missing.pdf"), "-q", "q?"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "missing.pdf does not exist" in proc.stderr and "Traceback" not in proc.stderr
