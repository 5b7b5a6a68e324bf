"""A persistent store of compressed chunks: compress a document once, ask it many questions, across runs and processes.

It holds three kinds of entries, which it treats alike: a chunk's soft tokens and retrieval embedding, under the model's
`fingerprint()` and keyed by the chunk's text; a document's whole context (its chunks' spans, soft tokens, embeddings
and token counts: `CompressedContext.tensors`), under that fingerprint with the chunking settings and keyed by the
document's text, so that a process handed the same text reads it in one lookup instead of chunking and counting it
again; and the decoder's KV cache of a context's prompt prefix ([template · soft tokens]), under the decoder's own
fingerprint and keyed by the prefix's digest, so that a new process answering about a stored context reads it instead
of prefilling it (for SmolLM2, 46,080 bytes per position: 57 MB for the 1,242-position prefix of a 100k-token
document, which takes seconds to prefill).

One SQLite file (the standard library's `sqlite3`) holds one entry per key text and fingerprint:

    entries(fingerprint TEXT, text_sha256 TEXT, nbytes INTEGER, last_used INTEGER, checksum TEXT, blob BLOB,
            PRIMARY KEY (fingerprint, text_sha256))
    entries_lru ON entries(last_used, nbytes)   -- eviction order; also sums nbytes without reading a single blob
    meta(key TEXT PRIMARY KEY, value)           -- 'clock': a counter that every put and get ticks; `last_used` holds it

`fingerprint` is the caller's digest of everything that changes the tensors (weights, chunking settings, k, dtype), so
entries of another model are never found. `text_sha256` is the SHA-256 of the key text (a chunk's text, a prefix's
digest). `blob` is a safetensors file of the entry's named tensors (never pickle) whose metadata repeats the fingerprint
and the text hash; `checksum` is the blob's SHA-256 and `nbytes` its length. The header
marks the file as this store's: `PRAGMA application_id` is APPLICATION_ID and `PRAGMA user_version` is SCHEMA_VERSION.

Guarantees:

- Atomic: each `put_many` is one transaction, so a killed process leaves all of its entries or none of them.
- Bounded: after a `put_many` the blobs total at most `max_bytes`; the least recently used entries (a `get_many` hit
  counts as a use) are evicted, down to 90 % of the bound, in the same transaction. A blob larger than the bound is not
  stored. The file itself is larger by SQLite's page overhead, and keeps freed pages for reuse; `clear` shrinks it.
- Never serves a wrong tensor: a blob whose checksum, metadata (format, fingerprint, text hash) or safetensors parsing
  fails is deleted and reported missing, so the caller recomputes it. The store does not know what its tensors should
  look like: a caller checks each entry against what it computes (`entry_problem`: names, shapes, dtypes, finite
  values) and recomputes one that does not fit, whose `put_many` then replaces it.
- Private: the folders it creates (the file's folder and any missing parents) are 0700 and the file 0600, whatever the
  umask; SQLite gives the WAL and shared-memory files beside it the database file's mode. A folder or store file that
  already exists keeps its mode: it is the user's to set (a store shared with a group on purpose stays shared), so a
  store created by an earlier version that made it 0644 stays so until `chmod 600` on it and its -wal and -shm files.
- Never wipes a file it did not create: a folder, a non-SQLite file, another application's SQLite database or a newer
  schema raises `StoreError` naming the file, and the file is left as it was. Only an empty file, or an SQLite database
  without a single table (a creation that was killed), becomes a new store: it holds nothing to lose.
- Concurrent: WAL mode (readers never wait for a writer), every write starts with `BEGIN IMMEDIATE` and waits up to
  BUSY_TIMEOUT_S for the write lock, so processes can share the file. Within a process one connection serves all
  threads behind a lock; a forked child opens its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .errors import ConfigError, E2LLMError, StoreError
from .files import cache_dir, private_directory, private_file

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x45324C4D  # "E2LM" in the SQLite header: tells this store's files from any other SQLite database
SCHEMA_VERSION = 1
BLOB_FORMAT = "e2llm-store-1"
BUSY_TIMEOUT_S = 60.0  # the longest a writer waits for another process's transaction
BATCH = 500  # keys per `IN (...)`: below SQLite's oldest limit of 999 bound variables
EVICT_TO = 0.9  # eviction frees down to this share of max_bytes, so the next puts do not evict again at once
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = (
    "CREATE TABLE entries (fingerprint TEXT NOT NULL, text_sha256 TEXT NOT NULL, nbytes INTEGER NOT NULL, "
    "last_used INTEGER NOT NULL, checksum TEXT NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (fingerprint, text_sha256))",
    "CREATE INDEX entries_lru ON entries (last_used, nbytes)",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
    "INSERT INTO meta VALUES ('clock', 0)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)



@runtime_checkable
class Store(Protocol):
    """What `E2LLM(store=...)` needs of a store of compressed chunks: `CompressedStore` is one; any object with these
    methods is another (a shared server, say). Entries are named tensors per (fingerprint, key text): chunks under the
    model's fingerprint, keyed by their text, whole documents' contexts beside them, keyed by the document's text, and
    prompt prefixes' KV caches under the decoder's, keyed by the prefix's digest (see the module's notes), through the
    same two methods, so every store keeps all three. A store may keep fewer
    entries than it is given (a bound, say, or none of the large ones): whatever it misses is computed again. A store
    that cannot serve raises `StoreError`: the model then warns and carries on without it."""

    def get_many(self, fingerprint: str, texts: list[str]) -> dict[int, dict[str, torch.Tensor]]:
        """The entries held for these texts, by their index in `texts`; texts not held are left out."""
        ...

    def put_many(self, fingerprint: str, texts: list[str], tensors: list[dict[str, torch.Tensor]]) -> None:
        """Store one entry per text, all or none of them."""
        ...

    def stats(self) -> dict:
        """Figures about the store (entries, bytes, ...)."""
        ...

    def clear(self) -> None:
        """Forget every entry."""
        ...

    def close(self) -> None:
        """Release what the store holds open."""
        ...


_inherited: list[sqlite3.Connection] = []  # connections a forked child got from its parent: kept, never used or closed


def default_store_path() -> Path:
    """`cache_dir() / "compressed.sqlite"`: `$E2LLM_CACHE`, else `~/.cache/e2llm_plugin`."""
    return cache_dir() / "compressed.sqlite"


class CompressedStore:
    """Named tensors per (fingerprint, chunk text) in one SQLite file, bounded to `max_bytes` of entry data."""

    def __init__(self, path: str | os.PathLike, max_bytes: int = 2 * 1024**3):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._closed = False
        with self._lock:
            self._connection()  # fail now, not on first use, when the path cannot hold a store

    def get_many(self, fingerprint: str, texts: list[str]) -> dict[int, dict[str, torch.Tensor]]:
        """Index in `texts` -> its tensors, for the entries found and intact; the rest are missing.

        Repeated texts get the same tensors (each index its own dict). Hits become the most recently used entries.
        """
        _check_fingerprint(fingerprint)
        hashes = [_text_sha256(t) for t in texts]
        wanted = list(dict.fromkeys(hashes))
        rows: dict[str, tuple[str, bytes]] = {}
        with self._lock, self._errors():
            conn = self._connection()
            with _transaction(conn, "BEGIN"):  # one snapshot across the batches
                for batch in _batches(wanted):
                    marks = ",".join("?" * len(batch))
                    sql = f"SELECT text_sha256, checksum, blob FROM entries WHERE fingerprint = ? AND text_sha256 IN ({marks})"
                    for text_hash, checksum, blob in conn.execute(sql, (fingerprint, *batch)):
                        rows[text_hash] = (checksum, blob)

        found: dict[str, dict[str, torch.Tensor]] = {}
        bad: list[tuple[str, bytes]] = []
        for text_hash, (checksum, blob) in rows.items():  # outside the lock: parsing is the slow part
            tensors = _decode(blob, checksum, fingerprint, text_hash)
            if tensors is None:
                bad.append((text_hash, blob))
            else:
                found[text_hash] = tensors

        if rows:
            with self._lock, self._errors():
                conn = self._connection()
                with _transaction(conn):
                    tick = _tick(conn)
                    for batch in _batches(list(found)):
                        marks = ",".join("?" * len(batch))
                        conn.execute(f"UPDATE entries SET last_used = ? WHERE fingerprint = ? AND text_sha256 IN ({marks})",
                                     (tick, fingerprint, *batch))
                    # Only the blob that failed: another process may have rewritten the entry meanwhile.
                    conn.executemany("DELETE FROM entries WHERE fingerprint = ? AND text_sha256 = ? AND blob = ?",
                                     [(fingerprint, text_hash, blob) for text_hash, blob in bad])
        if bad:
            logger.warning("Dropped %d damaged or foreign entries from the compressed store %s; they will be recomputed",
                           len(bad), self.path)
        return {i: dict(found[h]) for i, h in enumerate(hashes) if h in found}

    def put_many(self, fingerprint: str, texts: list[str], tensors: list[dict[str, torch.Tensor]]) -> None:
        """Store `tensors[i]` for `texts[i]`, replacing what was there, in one transaction; then evict down to the bound."""
        _check_fingerprint(fingerprint)
        if len(texts) != len(tensors):
            raise E2LLMError(f"put_many got {len(texts)} texts but {len(tensors)} tensor dicts; pass one dict per text")
        blobs: dict[str, bytes] = {}  # a repeated text is stored once
        too_big = 0
        for text, named in zip(texts, tensors, strict=True):
            text_hash = _text_sha256(text)
            blob = _encode(named, fingerprint, text_hash)
            if len(blob) > self.max_bytes:
                too_big += 1
            else:
                blobs[text_hash] = blob
        if too_big:
            logger.warning("Not storing %d entries larger than the compressed store's bound of %d bytes (%s)",
                           too_big, self.max_bytes, self.path)
        if not blobs:
            return
        rows = [(fingerprint, h, len(b), hashlib.sha256(b).hexdigest(), b) for h, b in blobs.items()]
        with self._lock, self._errors():
            conn = self._connection()
            with _transaction(conn):
                tick = _tick(conn)
                conn.executemany("INSERT OR REPLACE INTO entries (fingerprint, text_sha256, nbytes, checksum, blob, last_used) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", [(*row, tick) for row in rows])
                self._evict(conn)

    def stats(self) -> dict:
        """{"entries": count, "bytes": total blob size, "path": the file, "max_bytes": the bound}."""
        with self._lock, self._errors():
            conn = self._connection()
            with _transaction(conn, "BEGIN"):
                entries, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM entries").fetchone()
        return {"entries": entries, "bytes": total, "path": str(self.path), "max_bytes": self.max_bytes}

    def clear(self) -> None:
        """Delete every entry (of every fingerprint), then give the space back to the file system where possible."""
        with self._lock, self._errors():
            conn = self._connection()
            with _transaction(conn):
                conn.execute("DELETE FROM entries")
            with contextlib.suppress(sqlite3.OperationalError):  # another process busy with the file: it shrinks later
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # in WAL mode the file shrinks only at a checkpoint

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self) -> CompressedStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (the caller holds the lock)."""
        if self._closed:
            raise StoreError(f"the compressed store {self.path} is closed; open a new CompressedStore")
        if self._conn is not None and self._pid != os.getpid():
            _inherited.append(self._conn)  # SQLite forbids using, or closing, a connection across fork()
            self._conn = None
        if self._conn is None:
            self._conn = _open(self.path)
            self._pid = os.getpid()
        return self._conn

    def _evict(self, conn: sqlite3.Connection) -> None:
        total = conn.execute("SELECT COALESCE(SUM(nbytes), 0) FROM entries").fetchone()[0]
        if total <= self.max_bytes:
            return
        excess = total - int(self.max_bytes * EVICT_TO)
        victims = []
        cursor = conn.execute("SELECT fingerprint, text_sha256, nbytes FROM entries ORDER BY last_used")
        for fingerprint, text_hash, nbytes in cursor:
            victims.append((fingerprint, text_hash))
            excess -= nbytes
            if excess <= 0:
                break
        cursor.close()
        conn.executemany("DELETE FROM entries WHERE fingerprint = ? AND text_sha256 = ?", victims)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"the compressed store {self.path} failed: {e}. If this persists, delete that file or point "
                             "the store elsewhere (it only holds a cache)") from e


def _open(path: Path) -> sqlite3.Connection:
    """Open `path` as this store, creating it when new; refuse, untouched, any file that is not one."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory; the compressed store needs a file path, e.g. {path / 'compressed.sqlite'}")
    try:
        private_directory(path.parent)
        private_file(path)  # 0600 before SQLite creates it with the umask's mode; its -wal and -shm files copy the mode
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        head = b""
    except OSError as e:
        raise StoreError(f"cannot use {path} for the compressed store ({e}); point the store elsewhere") from e
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not an SQLite database, so not an E2LLM compressed store; it was left untouched. "
                         "Point the store at another path, or delete that file if it is yours to lose")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} for the compressed store ({e}); point the store elsewhere") from e
    try:
        _adopt_or_create(conn, path)
        _use_wal(conn, path)
        conn.execute("PRAGMA synchronous = NORMAL")  # in WAL: still atomic after a crash; a power cut may lose the last puts
        conn.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL file back to 64 MiB after a large put
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot open {path} as a compressed store ({e}); it was left untouched. Point the store "
                         "elsewhere, or delete that file if it is yours to lose") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection, path: Path) -> None:
    """Switch a new store to WAL (readers work while a writer commits); persistent, so later opens skip it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            # The switch needs the file to itself and SQLite does not wait for it: retry while other openers read.
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode.lower() != "wal":
            logger.warning("The compressed store %s cannot use WAL mode (journal mode %s): readers wait for writers", path, mode)
            return


def _adopt_or_create(conn: sqlite3.Connection, path: Path) -> None:
    state = _header(conn)
    if state == (0, 0, 0):  # a new file, or one whose creation was killed: nothing in it to lose
        with _transaction(conn):
            state = _header(conn)  # another process may have created it while this one waited for the lock
            if state == (0, 0, 0):
                for statement in _SCHEMA:
                    conn.execute(statement)
                return
    application_id, version, _ = state
    if application_id != APPLICATION_ID:
        raise StoreError(f"{path} is another application's SQLite database (application_id {application_id}), not an E2LLM "
                         "compressed store; it was left untouched. Point the store at another path, or delete that file "
                         "if it is yours to lose")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer e2llm_plugin (store schema {version}; this version reads "
                         f"{SCHEMA_VERSION}); it was left untouched. Upgrade e2llm_plugin, point the store elsewhere, or "
                         "delete that file (it only holds a cache)")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{path} is an E2LLM compressed store with an unknown schema {version}; it was left untouched. "
                         "Delete that file (it only holds a cache) or point the store elsewhere")


def _header(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(application_id, user_version, number of schema objects): read only, so a foreign file stays as it was."""
    return conn.execute("SELECT * FROM pragma_application_id, pragma_user_version, "
                        "(SELECT COUNT(*) FROM sqlite_master)").fetchone()  # one statement: one consistent snapshot


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """Commit the block, or roll all of it back. Writes take the write lock at once: upgrading a read could deadlock."""
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _tick(conn: sqlite3.Connection) -> int:
    """Advance the store's clock (inside a write transaction): commit order is recency order, for every process."""
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'clock'")
    return conn.execute("SELECT value FROM meta WHERE key = 'clock'").fetchone()[0]


def _batches(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), BATCH):
        yield keys[start:start + BATCH]


def entry_problem(named: dict[str, torch.Tensor], expected: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> str | None:
    """Why a stored entry cannot stand for what the caller computes, or None: `expected` maps each name it needs to a
    (shape, dtype); a name missing, another shape or dtype, or a NaN or infinite value is a reason. Other names are
    ignored. A checksum only proves the bytes are the ones written, not that what wrote them was right."""
    for name, (shape, dtype) in expected.items():
        tensor = named.get(name)
        if not isinstance(tensor, torch.Tensor):
            return f"no {name!r} tensor"
        if tuple(tensor.shape) != tuple(shape):
            return f"{name!r} has shape {tuple(tensor.shape)}, not {tuple(shape)}"
        if tensor.dtype != dtype:
            return f"{name!r} is {str(tensor.dtype).removeprefix('torch.')}, not {str(dtype).removeprefix('torch.')}"
        if (tensor.is_floating_point() or tensor.is_complex()) and not torch.isfinite(tensor).all():
            return f"{name!r} holds NaN or infinite values"
    return None


def _check_fingerprint(fingerprint: str) -> None:
    if not isinstance(fingerprint, str) or not fingerprint:
        raise E2LLMError(f"the store's fingerprint must be a non-empty string, got {fingerprint!r}")


def _text_sha256(text: str) -> str:
    if not isinstance(text, str):
        raise E2LLMError(f"the store keys chunks by their text, got {type(text).__name__}")
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _encode(named: dict[str, torch.Tensor], fingerprint: str, text_hash: str) -> bytes:
    if not isinstance(named, dict) or not named:
        raise E2LLMError("each stored entry must be a non-empty dict of name -> tensor")
    plain = {}
    for name, tensor in named.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise E2LLMError(f"each stored entry must map names to tensors, got {name!r}: {type(tensor).__name__}")
        # A compact copy of its own: safetensors refuses views and tensors that share memory.
        plain[name] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
    return save_tensors(plain, metadata={"format": BLOB_FORMAT, "fingerprint": fingerprint, "text_sha256": text_hash})


def _decode(blob: object, checksum: object, fingerprint: str, text_hash: str) -> dict[str, torch.Tensor] | None:
    """The blob's tensors, or None when anything about it is wrong (it is then dropped and recomputed)."""
    if not isinstance(blob, bytes) or hashlib.sha256(blob).hexdigest() != checksum:
        return None
    try:
        header_len = int.from_bytes(blob[:8], "little")  # safetensors: u64 length, then a JSON header
        metadata = json.loads(blob[8:8 + header_len]).get("__metadata__") or {}
        if metadata != {"format": BLOB_FORMAT, "fingerprint": fingerprint, "text_sha256": text_hash}:
            return None
        tensors = load_tensors(blob)
    except Exception:  # any failure of untrusted bytes means "missing"
        return None
    return tensors or None
