"""Reading files into text: PDF (pypdf, page by page), plain text and Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SURROGATE, DocumentError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
# Besides its own errors, pypdf raises these on malformed files (NotImplementedError: a filter or encryption it lacks).
_PDF_FAILURES = (ValueError, OSError, KeyError, TypeError, RecursionError, ZeroDivisionError, AssertionError, NotImplementedError)


@dataclass
class LoadedFile:
    path: Path
    pages: list[str]  # one entry per PDF page; a text file is one page

    @property
    def text(self) -> str:
        return "\n\n".join(p for p in self.pages if p.strip())


def read_pdf_pages(path: str | Path) -> list[str]:
    """Text of every page. Raises `DocumentError` for unreadable, encrypted, oversized or text-less (scanned) PDFs."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, LimitReachedError, PyPdfError

    path = Path(path)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            # An empty user password is common ("owner-locked" PDFs); anything else we cannot open.
            try:
                ok = reader.decrypt("")
            except Exception as err:  # pypdf raises a dependency error when no AES backend is installed
                raise DocumentError(f"{path} is encrypted and could not be decrypted ({err}); save an unencrypted copy") from None
            if not ok:
                raise DocumentError(f"{path} is encrypted with a password; save an unencrypted copy first")
        # pypdf passes lone surrogates through from a font's broken ToUnicode map: the PDF's fault, not the reader's.
        pages = [SURROGATE.sub("\ufffd", page.extract_text() or "") for page in reader.pages]
    except DocumentError:
        raise
    except DependencyError as err:  # AES encryption or Brotli compression, without the package pypdf needs for it
        raise DocumentError(f"{path} needs a package that is not installed ({err}); install it and try again") from None
    except LimitReachedError as err:
        raise DocumentError(f"{path} expands past pypdf's safety limits ({err}), as a decompression bomb does; "
                            "if you trust the file, extract its text with another tool and pass the text instead") from None
    except (PyPdfError, *_PDF_FAILURES) as err:
        raise DocumentError(f"{path} is not a readable PDF ({type(err).__name__}: {err}); check that it opens in a PDF viewer "
                            "and save it again (print to PDF), or pass its text instead") from None
    if not pages:
        raise DocumentError(f"{path} has no pages")
    if not any(p.strip() for p in pages):
        raise DocumentError(f"{path} has {len(pages)} page(s) but no extractable text (a scanned PDF?); run OCR on it first")
    return pages


def read_file(path: str | Path) -> LoadedFile:
    path = Path(path)
    if not path.is_file():
        raise DocumentError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return LoadedFile(path, read_pdf_pages(path))
    if suffix in TEXT_SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DocumentError(f"{path} is not UTF-8 text ({err})") from None
        if not text.strip():
            raise DocumentError(f"{path} is empty")
        return LoadedFile(path, [text])
    raise DocumentError(f"{path}: unsupported file type {suffix or '(none)'}; use .pdf, .txt or .md")
