"""The compressed-chunk store: round trips, isolation, damage detection, eviction, processes, killed writers, bad files."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from e2llm_plugin.errors import E2LLMError, StoreError
from e2llm_plugin.store import CompressedStore, default_store_path

FP = "fingerprint-a"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(value: float, k: int = 2, d: int = 4) -> dict[str, torch.Tensor]:
    """A small entry whose values say which text it belongs to."""
    return {"soft": torch.full((k, d), value), "embedding": torch.full((d,), -value)}


def rows(path, fingerprint: str | None = None) -> int:
    with sqlite3.connect(path) as conn:
        if fingerprint is None:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return conn.execute("SELECT COUNT(*) FROM entries WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]


@pytest.fixture
def store(tmp_path):
    with CompressedStore(tmp_path / "sub" / "store.sqlite") as s:
        yield s


def test_round_trip_keeps_names_dtypes_and_shapes(tmp_path):
    base = torch.randn(6, 8)
    tensors = {
        "soft": torch.randn(4, 8).to(torch.bfloat16),
        "embedding": torch.randn(16),
        "half": torch.randn(3, 2, 5).half(),
        "ids": torch.arange(7),
        "transposed": base.t(),  # not contiguous
        "view_a": base[:2],  # two views of one storage: safetensors refuses those unless copied
        "view_b": base[2:],
        "grad": torch.randn(3, requires_grad=True),
    }
    path = tmp_path / "deep" / "dirs" / "store.sqlite"
    with CompressedStore(path) as store:
        assert store.path == path and path.is_file()
        store.put_many(FP, ["chunk one"], [tensors])
    with CompressedStore(path) as store:  # persisted: a fresh instance reads it back
        got = store.get_many(FP, ["chunk one"])
    assert list(got) == [0] and set(got[0]) == set(tensors)
    for name, tensor in tensors.items():
        assert got[0][name].dtype == tensor.dtype, name
        assert got[0][name].shape == tensor.shape, name
        assert torch.equal(got[0][name], tensor.detach()), name


def test_indices_follow_texts_with_repeats_and_misses(store):
    store.put_many(FP, ["a", "b", "a"], [entry(1.0), entry(2.0), entry(1.0)])
    assert rows(store.path) == 2
    got = store.get_many(FP, ["x", "b", "a", "b", "y"])
    assert sorted(got) == [1, 2, 3]
    assert got[1]["soft"][0, 0] == 2.0 and got[2]["soft"][0, 0] == 1.0 and got[3]["soft"][0, 0] == 2.0
    assert got[1] is not got[3]  # each index its own dict
    assert store.get_many(FP, []) == {}


def test_put_replaces_an_entry(store):
    store.put_many(FP, ["a"], [entry(1.0)])
    store.put_many(FP, ["a"], [{"other": torch.ones(3)}])
    assert set(store.get_many(FP, ["a"])[0]) == {"other"} and rows(store.path) == 1


def test_fingerprints_isolate(store):
    store.put_many(FP, ["same text"], [entry(1.0)])
    assert store.get_many("fingerprint-b", ["same text"]) == {}
    store.put_many("fingerprint-b", ["same text"], [entry(2.0)])
    assert store.get_many(FP, ["same text"])[0]["soft"][0, 0] == 1.0
    assert store.get_many("fingerprint-b", ["same text"])[0]["soft"][0, 0] == 2.0


@pytest.mark.parametrize("checksum", ["stale", "matching"])
def test_corrupt_blob_is_a_miss_and_deleted(store, caplog, checksum):
    store.put_many(FP, ["good", "bad"], [entry(1.0), entry(2.0)])
    garbage = b"\x00garbage bytes, not a safetensors file" * 10
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE entries SET blob = ? WHERE text_sha256 = ?", (garbage, sha("bad")))
        if checksum == "matching":  # the checksum passes: the parser must catch it
            digest = hashlib.sha256(garbage).hexdigest()
            conn.execute("UPDATE entries SET checksum = ? WHERE text_sha256 = ?", (digest, sha("bad")))
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.store"):
        got = store.get_many(FP, ["good", "bad"])
    assert list(got) == [0]
    assert rows(store.path) == 1
    assert [r.getMessage() for r in caplog.records if "Dropped" in r.getMessage()] == [
        f"Dropped 1 damaged or foreign entries from the compressed store {store.path}; they will be recomputed"]


@pytest.mark.parametrize("source", ["other fingerprint", "other text"])
def test_foreign_entry_is_a_miss(store, source):
    """A valid blob with a correct checksum, copied under another key, is never served."""
    store.put_many(FP, ["target"], [entry(1.0)])
    src_fp, src_text = ("fingerprint-b", "target") if source == "other fingerprint" else (FP, "another chunk")
    store.put_many(src_fp, [src_text], [entry(9.0)])
    with sqlite3.connect(store.path) as conn:
        blob, checksum = conn.execute("SELECT blob, checksum FROM entries WHERE fingerprint = ? AND text_sha256 = ?",
                                      (src_fp, sha(src_text))).fetchone()
        conn.execute("UPDATE entries SET blob = ?, checksum = ? WHERE fingerprint = ? AND text_sha256 = ?",
                     (blob, checksum, FP, sha("target")))
    assert store.get_many(FP, ["target"]) == {}
    assert store.get_many(src_fp, [src_text])[0]["soft"][0, 0] == 9.0  # the original is untouched
    assert rows(store.path) == 1


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path):
    path = tmp_path / "store.sqlite"
    with CompressedStore(path) as probe:
        probe.put_many(FP, ["probe"], [entry(0.0)])
        size = probe.stats()["bytes"]
        probe.clear()
    bound = 10 * size + size // 2  # room for 10 entries; eviction frees down to 90 %: 9.45 entries
    with CompressedStore(path, max_bytes=bound) as store:
        for i in range(10):
            store.put_many(FP, [f"t{i}"], [entry(float(i))])
            assert store.stats()["bytes"] <= bound
        assert store.stats()["entries"] == 10
        assert 0 in store.get_many(FP, ["t0"])  # t0 becomes the most recently used
        store.put_many(FP, ["t10"], [entry(10.0)])
        stats = store.stats()
        assert stats["bytes"] <= bound and stats["max_bytes"] == bound
        texts = [f"t{i}" for i in range(11)]
        kept = {texts[i] for i in store.get_many(FP, texts)}
        assert kept == set(texts) - {"t1", "t2"}  # the two oldest unused; t0 was refreshed by the get
        assert stats["entries"] == rows(path) == 9

        # One batch larger than the bound: the bound still holds, and the newest entries are the ones kept.
        store.put_many(FP, [f"b{i}" for i in range(15)], [entry(100.0 + i) for i in range(15)])
        assert store.stats()["bytes"] <= bound
        assert not store.get_many(FP, texts)


def test_an_entry_larger_than_the_bound_is_not_stored(tmp_path, caplog):
    with CompressedStore(tmp_path / "store.sqlite", max_bytes=4000) as store:
        with caplog.at_level(logging.WARNING, logger="e2llm_plugin.store"):
            store.put_many(FP, ["small", "huge"], [entry(1.0), entry(2.0, k=100, d=100)])
        assert list(store.get_many(FP, ["small", "huge"])) == [0]
        assert "Not storing 1 entries" in caplog.text


def test_stats_clear_and_close(tmp_path):
    store = CompressedStore(tmp_path / "store.sqlite", max_bytes=10**6)
    assert store.stats() == {"entries": 0, "bytes": 0, "path": str(tmp_path / "store.sqlite"), "max_bytes": 10**6}
    store.put_many(FP, ["a", "b"], [entry(1.0), entry(2.0)])
    store.put_many("fingerprint-b", ["a"], [entry(3.0)])
    stats = store.stats()
    assert stats["entries"] == 3 and stats["bytes"] > 3 * 12 * 4
    store.put_many(FP, [f"filler {i}" for i in range(100)], [entry(0.0, k=50, d=50) for _ in range(100)])

    def on_disk() -> int:  # the database and its WAL
        return sum(p.stat().st_size for p in store.path.parent.glob("store.sqlite*"))

    full_size = on_disk()
    store.clear()
    assert store.stats()["entries"] == 0 and store.stats()["bytes"] == 0 and store.get_many(FP, ["a"]) == {}
    assert on_disk() < full_size / 10  # the space went back to the file system
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_many(FP, ["a"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(E2LLMError, match="max_bytes"):
        CompressedStore(tmp_path / "s.sqlite", max_bytes=0)
    with CompressedStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(E2LLMError, match="2 texts but 1"):
            store.put_many(FP, ["a", "b"], [entry(1.0)])
        with pytest.raises(E2LLMError, match="dict"):
            store.put_many(FP, ["a"], [torch.zeros(2)])
        with pytest.raises(E2LLMError, match="fingerprint"):
            store.get_many("", ["a"])
        assert store.stats()["entries"] == 0


def test_default_store_path(monkeypatch, tmp_path):
    monkeypatch.setenv("E2LLM_CACHE", str(tmp_path / "cache"))
    assert default_store_path() == tmp_path / "cache" / "compressed.sqlite"


def test_get_many_over_5000_texts(store):
    texts = [f"chunk number {i}" for i in range(5000)]
    store.put_many(FP, texts, [{"soft": torch.tensor([float(i)])} for i in range(5000)])
    asked = texts[::-1] + ["missing 1", "missing 2"]
    got = store.get_many(FP, asked)
    assert sorted(got) == list(range(5000))
    assert all(got[j]["soft"].item() == 4999 - j for j in range(5000))


def test_threads_share_one_store(store):
    errors = []

    def work(worker: int) -> None:
        try:
            for round_ in range(10):
                texts = [f"shared {round_}", f"w{worker} r{round_}"]
                store.put_many(FP, texts, [entry(float(round_)), entry(1000.0 * worker + round_)])
                assert len(store.get_many(FP, texts)) == 2
        except Exception as e:  # surfaced below: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rows(store.path) == 10 + 6 * 10


def _concurrent_writer(path: str, worker: int, start: multiprocessing.synchronize.Barrier) -> None:
    """Puts shared and own texts in small batches, reading back as it goes (a spawned process)."""
    start.wait()
    store = CompressedStore(path)  # both processes may be the first to create the file
    for batch in range(20):
        texts = [f"shared {batch} {j}" for j in range(5)] + [f"worker {worker} {batch} {j}" for j in range(5)]
        store.put_many(FP, texts, [{"soft": torch.tensor([float(len(t))]), "who": torch.tensor([worker])} for t in texts])
        assert len(store.get_many(FP, texts)) == len(texts)
    store.close()


def test_two_processes_write_one_store(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_concurrent_writer, args=(path, w, start)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    texts = sorted({f"shared {b} {j}" for b in range(20) for j in range(5)}
                   | {f"worker {w} {b} {j}" for w in range(2) for b in range(20) for j in range(5)})
    assert rows(path) == len(texts) == 300  # every key exactly once
    with CompressedStore(path) as store:
        got = store.get_many(FP, texts)
    assert sorted(got) == list(range(len(texts)))
    assert all(got[i]["soft"].item() == len(t) for i, t in enumerate(texts))


def _forked_child(store: CompressedStore) -> None:
    inherited = store._conn
    assert list(store.get_many(FP, ["parent"])) == [0]
    assert store._conn is not inherited  # SQLite connections must not cross fork()
    store.put_many(FP, ["child"], [entry(2.0)])


@pytest.mark.skipif(sys.platform == "win32", reason="no fork on Windows")
def test_a_forked_child_opens_its_own_connection(store):
    store.put_many(FP, ["parent"], [entry(1.0)])
    parent_conn = store._conn
    child = multiprocessing.get_context("fork").Process(target=_forked_child, args=(store,))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert store._conn is parent_conn  # the parent's connection was neither used nor closed by the child
    assert sorted(store.get_many(FP, ["parent", "child"])) == [0, 1]


_KILLED_WRITER = """
import os, sys, torch
from e2llm_plugin.store import CompressedStore
store = CompressedStore(sys.argv[1])
store.put_many("{fp}", [f"first {{i}}" for i in range(20)], [{{"soft": torch.ones(3)}} for _ in range(20)])
inserts = 0
def die_mid_batch(statement):
    global inserts
    if statement.startswith("INSERT"):
        inserts += 1
        if inserts == 150:
            sys.stdout.write(f"killed after {{inserts - 1}} inserts"); sys.stdout.flush()
            os._exit(17)
if sys.argv[2] == "between":
    os._exit(17)
store._conn.set_trace_callback(die_mid_batch)
store.put_many("{fp}", [f"second {{i}}" for i in range(300)], [{{"soft": torch.ones(3)}} for _ in range(300)])
"""


@pytest.mark.parametrize("when", ["mid", "between"])
def test_a_killed_writer_leaves_no_partial_batch(tmp_path, when):
    path = tmp_path / "store.sqlite"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER.format(fp=FP)), str(path), when],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 17, result.stderr
    if when == "mid":
        assert result.stdout == "killed after 149 inserts"  # it did die inside the second put_many
    assert rows(path) == 20
    with CompressedStore(path) as store:
        assert len(store.get_many(FP, [f"first {i}" for i in range(20)])) == 20
        assert store.get_many(FP, [f"second {i}" for i in range(300)]) == {}
        store.put_many(FP, ["after"], [entry(1.0)])  # the file is still fully usable
        assert store.stats()["entries"] == 21


def _garbage(path):
    path.write_bytes(b"these are not the bytes of any database\n" * 50)


def _foreign(path):
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()


def _newer(path):
    CompressedStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def _short(path):
    path.write_bytes(b"SQL")


@pytest.mark.parametrize(("make", "message"), [(_garbage, "not an SQLite database"), (_short, "not an SQLite database"),
                                               (_foreign, "another application"), (_newer, "newer e2llm_plugin")])
def test_a_file_that_is_not_this_store_is_refused_and_left_untouched(tmp_path, make, message):
    path = tmp_path / "store.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=message) as caught:
        CompressedStore(path)
    assert str(path) in str(caught.value) and ("delete" in str(caught.value) or "elsewhere" in str(caught.value))
    assert path.read_bytes() == before
    assert isinstance(caught.value, ValueError)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        CompressedStore(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "store.sqlite"
    path.touch()
    with CompressedStore(path) as store:
        store.put_many(FP, ["a"], [entry(1.0)])
    with CompressedStore(path) as store:
        assert list(store.get_many(FP, ["a"])) == [0]
