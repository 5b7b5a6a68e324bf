"""The command lines on bad input: `python -m e2llm_plugin.compress` over folders with files it cannot read, `e2llm ask`
on a document longer than the decoder's window, and `python -m e2llm_plugin.bench` with bad arguments."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import LOREM, make_pdf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2llm_plugin import E2LLM, bench, cli, compress
from e2llm_plugin.documents import read_file
from e2llm_plugin.store import CompressedStore

TESTS = os.path.dirname(__file__)


@pytest.fixture
def no_model(monkeypatch):
    """Bad usage must be said before any model is built: building one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(E2LLM, "from_pretrained", refuse)


def _summary(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# ---- compress ------------------------------------------------------------------------------------------------------

def test_each_unreadable_file_is_skipped_with_its_reason_and_the_rest_is_stored(tiny_checkpoint, tmp_path, capsys):
    corpus, outside = tmp_path / "corpus", tmp_path / "outside"
    (corpus / "sub").mkdir(parents=True)
    outside.mkdir()
    (corpus / "good.txt").write_text(LOREM)
    (corpus / "sub" / "more.md").write_text("Cats hunt at night. " * 10)
    make_pdf(corpus / "report.pdf", ["Page one about the Danube.", "Page two about the Alps."])
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 truncated garbage")
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (corpus / "empty.md").write_text("  \n")
    (corpus / "dangling.txt").symlink_to(tmp_path / "gone.txt")  # an entry that cannot be opened, as root too
    os.mkfifo(corpus / "pipe.txt")  # never opened: reading it would wait forever
    (corpus / "pdf-named-text.txt").symlink_to(corpus / "report.pdf")  # judged by its own name: text, not UTF-8
    (corpus / "text-named-pdf.pdf").symlink_to(corpus / "good.txt")  # read as a PDF: not one
    (outside / "secret.txt").write_text("Never compressed: outside the tree.")
    (corpus / "escape").symlink_to(outside, target_is_directory=True)
    store = tmp_path / "store"

    code = compress.main([str(corpus), "--store", str(store), "--model", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == compress.PARTIAL == 1
    summary = _summary(out)
    reasons = {os.path.basename(f["file"]): f["reason"] for f in summary["failed"]}
    assert sorted(reasons) == ["broken.pdf", "dangling.txt", "empty.md", "latin1.txt", "pdf-named-text.txt", "pipe.txt",
                               "text-named-pdf.pdf"]
    assert "not a readable PDF" in reasons["broken.pdf"] and "not a readable PDF" in reasons["text-named-pdf.pdf"]
    assert "not UTF-8" in reasons["latin1.txt"] and "not UTF-8" in reasons["pdf-named-text.txt"]
    assert "not a file" in reasons["dangling.txt"] and "not a file" in reasons["pipe.txt"] and "is empty" in reasons["empty.md"]
    assert summary["files"] == 3 and summary["skipped"] == 7 and summary["chunks"] > 0 and summary["tokens"] > 0
    for name, reason in reasons.items():
        assert f"skipped {corpus}" in err and name in err and reason in err
    assert "3 file(s) stored, 7 skipped" in err and "escape: a link to a directory, not followed" in err
    model = E2LLM.from_pretrained(tiny_checkpoint, store=False)
    stored = [read_file(corpus / name).text for name in ("good.txt", "sub/more.md", "report.pdf")]
    distinct = sorted({c.text for c in model.chunk(stored)})
    with CompressedStore(store / compress.STORE_FILE) as opened:
        assert opened.stats()["entries"] == summary["store"]["entries"] >= len(distinct)
        assert len(opened.get_many(model.fingerprint(), distinct)) == len(distinct)
        secret = [c.text for c in model.chunk(["Never compressed: outside the tree."])]
        assert opened.get_many(model.fingerprint(), secret) == {}


def test_a_clean_run_exits_0_with_a_private_store_folder(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(LOREM)
    link = tmp_path / "elsewhere"
    link.symlink_to(tmp_path, target_is_directory=True)
    old = os.umask(0o022)
    try:  # a folder named on the command line is searched even through a link
        code = compress.main([str(link), "--store", str(tmp_path / "new" / "store"), "--model", str(tiny_checkpoint)])
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    assert code == compress.OK == 0, err
    summary = _summary(out)
    assert summary["files"] == 1 and summary["skipped"] == 0 and summary["failed"] == []
    assert "1 file(s) stored, 0 skipped" in err
    for folder in (tmp_path / "new", tmp_path / "new" / "store"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new" / "store" / compress.STORE_FILE).stat().st_mode) == 0o600


def test_a_folder_that_cannot_be_listed_is_reported_and_the_rest_stored(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "a.txt").write_text(LOREM)
    (tmp_path / "locked").mkdir()
    scandir = os.scandir

    def unlistable(path="."):  # root may list any folder: the denial a user gets from chmod 000 is simulated
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unlistable)
    code = compress.main([str(tmp_path), "--store", str(tmp_path / "store"), "--model", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == 1 and _summary(out)["files"] == 1
    assert f"skipped {tmp_path / 'locked'}: cannot list this folder (Permission denied)" in err


@pytest.mark.parametrize("arguments, message", [
    (lambda p: [str(p / "missing"), "--store", str(p / "s")], "missing does not exist"),
    (lambda p: [str(p / "a.txt"), "--store", str(p / "a.txt")], "is a file; name a directory"),
    (lambda p: [str(p / "nothing"), "--store", str(p / "s")], "no .markdown, .md, .pdf, .rst, .txt files in"),
    (lambda p: [str(p / "a.txt")], "the following arguments are required: --store"),
])
def test_bad_usage_exits_2_before_any_model_loads(tmp_path, capsys, no_model, arguments, message):
    (tmp_path / "a.txt").write_text(LOREM)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.docx").write_text("not a kind of file compress reads")
    assert compress.main(arguments(tmp_path)) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m e2llm_plugin.compress" in err


def test_a_model_that_cannot_load_exits_3(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(LOREM)
    assert compress.main([str(tmp_path / "a.txt"), "--store", str(tmp_path / "s"), "--model", str(tmp_path)]) == 3
    assert "compress: error:" in capsys.readouterr().err


def test_the_exit_codes_are_in_the_help():
    text = compress.build_parser().format_help()
    assert "exit status: 0 every file was stored; 1 some files were skipped" in text
    assert "2 bad usage" in text and "3 the model or the store could not be used" in text
    assert "judged by its own name" in text and "not followed" in text


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=st.lists(st.tuples(st.sampled_from([".txt", ".md", ".pdf"]), st.binary(max_size=300)), min_size=1, max_size=4))
def test_files_of_any_bytes_are_stored_or_skipped_never_a_crash(tiny_checkpoint, tmp_path_factory, files, capsys):
    corpus = tmp_path_factory.mktemp("corpus")
    for i, (suffix, content) in enumerate(files):
        (corpus / f"f{i}{suffix}").write_bytes(content)
    code = compress.main([str(corpus), "--store", str(corpus / "store"), "--model", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    summary = _summary(out)
    assert code == (1 if summary["skipped"] else 0) and "Traceback" not in err
    assert summary["files"] + summary["skipped"] == len(files)
    assert all(f["reason"] for f in summary["failed"])


def test_compress_from_the_shell_says_usage_errors_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "e2llm_plugin.compress", str(tmp_path / "missing"), "--store",
                           str(tmp_path / "s")], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": TESTS})
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_shipped_model_stores_the_readable_files_and_skips_the_rest(tmp_path, capsys):
    (tmp_path / "good.txt").write_text(LOREM)
    (tmp_path / "dangling.md").symlink_to(tmp_path / "gone.md")
    assert compress.main([str(tmp_path), "--store", str(tmp_path / "store")]) == 1
    out, err = capsys.readouterr()
    summary = _summary(out)
    assert summary["files"] == 1 and summary["skipped"] == 1 and "dangling.md" in err
    model = E2LLM.from_pretrained(store=tmp_path / "store" / compress.STORE_FILE)
    texts = [c.text for c in model.chunk([LOREM])]
    assert len(model.store.get_many(model.fingerprint(), texts)) == len(texts)


# ---- e2llm ask -----------------------------------------------------------------------------------------------------

def test_ask_says_how_many_chunks_it_read_of_a_document_longer_than_the_window(tiny_checkpoint, tmp_path, capsys):
    long = tmp_path / "long.txt"
    long.write_text("\n".join(f"Entry {i}: the mill of district {i % 97} was built in {1800 + i % 200}." for i in range(2500)))
    assert cli.main(["ask", str(long), "-q", "What was built in district 42?", "--model", str(tiny_checkpoint),
                     "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    chunks = int(err.split(" chunks -> ")[0].rsplit(" ", 1)[1])
    read = int(err.split("; read ")[1].split(" of ")[0])
    assert f"; read {read} of {chunks} chunks (as soft tokens, those ranked best for the question" in err
    assert 0 < read < chunks
    short = tmp_path / "short.txt"
    short.write_text(LOREM)
    assert cli.main(["ask", str(short), "-q", "When?", "--model", str(tiny_checkpoint), "--max-new-tokens", "2"]) == 0
    assert "; read " not in capsys.readouterr().err  # every chunk read: nothing to say


# ---- bench ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--sizes", "abc"], "'abc' in 'abc' is not a positive number of tokens"),
    (["--long", "1024,0"], "'0' in '1024,0' is not a positive number of tokens"),
    (["--sizes", "", "--long", ""], "--sizes and --long are both empty"),
    (["--hybrid-at", "512"], "--hybrid-at [512] is not among the sizes measured"),
    (["--out", "{file}"], "is a file; name a directory"),
    (["--text", "{missing}"], "missing.txt does not exist or is not a file"),
    (["--text", "{latin1}"], "is not UTF-8 text"),
    (["--text"], "expected at least one argument"),
    (["--model", "{folder}"], "config.json is missing"),
])
def test_bench_refuses_bad_arguments_before_any_model_loads(tmp_path, capsys, no_model, arguments, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LOREM)
    (tmp_path / "file").write_text("x")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    names = {"file": tmp_path / "file", "missing": tmp_path / "missing.txt", "latin1": tmp_path / "latin1.txt",
             "folder": tmp_path / "folder"}
    base = {"--text": [str(corpus)], "--out": [str(tmp_path / "out")], "--sizes": ["256"], "--long": ["1024"]}
    given_args = [a.format(**names) for a in arguments]
    for flag, value in base.items():
        if flag not in given_args:
            given_args += [flag, *value]
    assert bench.main(given_args) == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m e2llm_plugin.bench" in err


def test_bench_says_a_text_too_short_before_measuring_anything(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LOREM)
    monkeypatch.setattr(bench, "encoder_throughput", lambda *a: pytest.fail("measured before every size was checked"))
    code = bench.main(["--model", str(tiny_checkpoint), "--text", str(corpus), "--sizes", "64", "--long", "100000",
                       "--out", str(tmp_path / "out")])
    assert code == 1 and "fewer than 100000 tokens" in capsys.readouterr().err
    assert not (tmp_path / "out" / "bench.json").exists()
