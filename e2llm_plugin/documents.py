"""Reading files into text: PDF (pypdf, page by page), plain text and Markdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import DocumentError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}


@dataclass
class LoadedFile:
    path: Path
    pages: list[str]  # one entry per PDF page; a text file is one page

    @property
    def text(self) -> str:
        return "\n\n".join(p for p in self.pages if p.strip())


def read_pdf_pages(path: str | Path) -> list[str]:
    """Text of every page. Raises `DocumentError` for unreadable, encrypted or text-less (scanned) PDFs."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

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
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, OSError) as err:
        if isinstance(err, DocumentError):
            raise
        raise DocumentError(f"{path} is not a readable PDF ({err})") from None
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
