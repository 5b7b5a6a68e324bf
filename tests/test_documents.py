"""Reading files: hostile or broken PDFs fail as `DocumentError` naming the file, never as a pypdf traceback."""

import subprocess
import sys
import zlib

import pypdf
import pytest
from conftest import make_pdf

from e2llm_plugin.chunking import validate_documents
from e2llm_plugin.documents import read_file, read_pdf_pages
from e2llm_plugin.errors import DocumentError

HELLO = b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET\n"
HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def write_pdf(path, content=HELLO, *, stream_keys=b"", font=HELVETICA, trailer=b"", extra=(), kids=b"3 0 R"):
    """A one-page PDF written by hand (font F1 is object 5; `extra` objects are 6 on), so a test can break one thing."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count 1 >>" % kids,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>",
        b"<< /Length %d%s >>\nstream\n%s\nendstream" % (len(content), stream_keys, content),
        font,
        *extra,
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    path.write_bytes(bytes(out))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A page whose content stream inflates to 200 MiB of spaces from about 200 KB."""
    packer = zlib.compressobj(9)
    spaces = b" " * (1 << 20)
    data = packer.compress(HELLO) + b"".join(packer.compress(spaces) for _ in range(200)) + packer.flush()
    assert len(data) < 1 << 20
    return write_pdf(tmp_path_factory.mktemp("bomb") / "bomb.pdf", data, stream_keys=b" /Filter /FlateDecode")


def test_the_hand_written_pdf_reads(tmp_path):
    assert read_pdf_pages(write_pdf(tmp_path / "hello.pdf")) == ["Hello"]


def test_a_decompression_bomb_is_a_document_error(bomb):
    for read in (read_pdf_pages, read_file):
        with pytest.raises(DocumentError, match=r"bomb\.pdf expands past pypdf's safety limits .*decompression bomb"):
            read(bomb)


def test_load_pdf_refuses_a_bomb(bomb):
    pytest.importorskip("langchain_core")
    from e2llm_plugin.integrations.langchain import load_pdf

    with pytest.raises(DocumentError, match=r"bomb\.pdf"):
        load_pdf(bomb)


def test_e2llm_ask_refuses_a_bomb_without_a_traceback(bomb):
    proc = subprocess.run([sys.executable, "-m", "e2llm_plugin", "ask", str(bomb), "-q", "x"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "e2llm: error:" in proc.stderr and "bomb.pdf" in proc.stderr and "Traceback" not in proc.stderr


def _truncated_pdf(path):
    make_pdf(path, ["Some text that will be cut off."])
    path.write_bytes(path.read_bytes()[:200])
    return path


BROKEN = {  # each is a real file pypdf fails on; the ones it raised outside PdfReadError were tracebacks before
    "unsupported filter": lambda p: write_pdf(p, stream_keys=b" /Filter /Bogus"),  # NotImplementedError
    "unknown encryption handler": lambda p: write_pdf(p, trailer=b"/Encrypt << >>"),  # NotImplementedError
    "unsupported encryption version": lambda p: write_pdf(p, trailer=b"/Encrypt << /Filter /Standard /V 9 >>"),
    # AES-256: DependencyError where the cryptography package is missing, a failed decryption where it is installed
    "AES encryption": lambda p: write_pdf(
        p, trailer=b"/Encrypt << /Filter /Standard /V 5 /R 6 /O (x) /U (y) /OE (z) /UE (w) /P -4 >>"),
    "cyclic page tree": lambda p: write_pdf(p, kids=b"2 0 R"),
    "not a PDF at all": lambda p: p.write_bytes(b"PK\x03\x04 a zip file renamed to .pdf"),
    "truncated": _truncated_pdf,
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_pdfs_are_document_errors(tmp_path, name):
    path = tmp_path / "broken.pdf"
    BROKEN[name](path)
    with pytest.raises(DocumentError, match=r"broken\.pdf") as caught:
        read_file(path)
    assert "; " in str(caught.value)  # what was wrong, then what to do


# What pypdf raises on other malformed files besides its own errors; ParseError is a PyPdfError but no PdfReadError.
@pytest.mark.parametrize("error", [
    pypdf.errors.ParseError("bad token"), pypdf.errors.PdfStreamError("bad stream"), ValueError("bad number"),
    OSError("bad read"), KeyError("/Widths"), TypeError("bad operand"), RecursionError("deep nesting"),
    ZeroDivisionError("zero scale"), AssertionError("bad state"), NotImplementedError("unsupported"),
])
def test_any_pypdf_failure_while_extracting_is_a_document_error(tmp_path, monkeypatch, error):
    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(pypdf.PageObject, "extract_text", fail)
    with pytest.raises(DocumentError, match=rf"hello\.pdf is not a readable PDF \({type(error).__name__}: .*\); check"):
        read_pdf_pages(write_pdf(tmp_path / "hello.pdf"))


def _to_unicode(mapping: bytes) -> bytes:
    """A ToUnicode CMap stream: `mapping` is bfchar lines such as b"<48> <D800>" (glyph code -> UTF-16BE)."""
    cmap = (b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /Broken def\n"
            b"1 begincodespacerange <00> <FF> endcodespacerange\n"
            b"%d beginbfchar %s endbfchar\nendcmap CMapName currentdict /CMap defineresource pop end end"
            % (mapping.count(b"<") // 2, mapping))
    return b"<< /Length %d >>\nstream\n%s\nendstream" % (len(cmap), cmap)


@pytest.mark.parametrize("mapping, text", [
    (b"<48> <D800>", "\ufffdello"),  # a high surrogate at the start
    (b"<6C> <DFFF>", "He\ufffd\ufffdo"),  # low surrogates in the middle
    (b"<6F> <DBFF>", "Hell\ufffd"),  # at the end
    (b"<48> <D83D> <65> <DE00>", "\ufffd\ufffdllo"),  # the two halves of an emoji on separate glyphs
])
def test_lone_surrogates_from_a_broken_font_map_become_replacement_characters(tmp_path, mapping, text):
    font = HELVETICA.replace(b" >>", b" /ToUnicode 6 0 R >>")
    path = write_pdf(tmp_path / "fonts.pdf", font=font, extra=[_to_unicode(mapping)])
    pages = read_pdf_pages(path)
    assert pages == [text]
    assert validate_documents(pages) == [text]  # the model can read it
