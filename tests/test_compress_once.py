"""Compress once, ask many (issue 12): the persistent store behind `compress`, `python -m e2llm_plugin.compress` over a
corpus (alone and split over two processes), and a second process that answers without encoding a chunk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import LOREM, build_tiny_model

from e2llm_plugin import E2LLM, compress
from e2llm_plugin.encoder import ChunkEncoder
from e2llm_plugin.store import CompressedStore

TESTS = os.path.dirname(__file__)


def _long_text(lines: int, seed: int = 0) -> str:
    words = ["river", "mountain", "treaty", "harvest", "senate", "railway", "festival", "coast", "charter", "mill"]
    return "\n".join(f"Entry {seed}-{i}: the {words[i % 10]} of district {i % 97} was recorded in {1800 + i % 200}. "
                     f"It mattered to {words[(i * 7) % 10]} workers." for i in range(lines))


def test_a_second_compression_encodes_nothing_and_reads_the_same(tiny_checkpoint, tmp_path, monkeypatch):
    store = tmp_path / "store.sqlite"
    first = E2LLM.from_pretrained(tiny_checkpoint, store=store)
    ctx = first.compress([LOREM * 3, "Cats sleep a lot. " * 40])
    answers = {mode: first.generate("When is the National Day?", context=ctx, mode=mode, max_new_tokens=6)
               for mode in ("soft", "hybrid", "rag")}
    second = E2LLM.from_pretrained(tiny_checkpoint, store=store)

    def refuse(self, texts):
        if texts != ["When is the National Day?"]:  # hybrid and rag embed the question, and nothing else
            raise AssertionError(f"encoded {len(texts)} chunk(s) again")
        return encode(self, texts)

    encode = ChunkEncoder.encode
    monkeypatch.setattr(ChunkEncoder, "encode", refuse)
    again = second.compress([LOREM * 3, "Cats sleep a lot. " * 40])
    # Equal up to float noise: repeated chunk texts were encoded in batches of other shapes, and the store keeps one.
    torch.testing.assert_close(again.soft_tokens, ctx.soft_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.retrieval_embeddings, ctx.retrieval_embeddings, rtol=0, atol=1e-6)
    assert {m: second.generate("When is the National Day?", context=again, mode=m, max_new_tokens=6) for m in answers} == answers


def test_a_second_process_answers_about_a_100k_token_document_without_encoding(tiny_checkpoint, tmp_path):
    document = tmp_path / "long.txt"
    document.write_text(_long_text(4000))
    store = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": TESTS}
    first = subprocess.run([sys.executable, "-m", "e2llm_plugin.compress", str(document), "--store", str(store),
                            "--model", str(tiny_checkpoint)], capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["chunks"] > 1000 and summary["store"]["entries"] > 1000
    code = textwrap.dedent(f"""
        from e2llm_plugin import E2LLM
        from e2llm_plugin.encoder import ChunkEncoder
        QUESTION = "What was recorded in district 42?"
        encode = ChunkEncoder.encode
        def refuse(self, texts):
            if texts != [QUESTION]:  # hybrid embeds the question to rank chunks; no chunk is encoded
                raise SystemExit(f"the encoder was called on {{len(texts)}} chunks")
            return encode(self, texts)
        ChunkEncoder.encode = refuse
        model = E2LLM.from_pretrained({str(tiny_checkpoint)!r}, store={str(store / compress.STORE_FILE)!r})
        context = model.compress([open({str(document)!r}).read()])
        assert context.num_source_tokens > 100_000, context.num_source_tokens
        for mode in ("soft", "hybrid"):
            answer = model.answer(QUESTION, context=context, mode=mode, max_new_tokens=4)
            print(mode, repr("".join(answer)), answer.chunks_read, context.num_chunks)
    """)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:] + second.stdout
    assert second.stdout.count("\n") == 2


def test_compress_splits_a_corpus_over_two_processes_into_one_store(tiny_checkpoint, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    texts = [_long_text(40 + 30 * i, seed=i) for i in range(5)]
    for i, text in enumerate(texts):
        (corpus / ("sub" if i % 2 else "") / f"doc{i}.{'md' if i % 2 else 'txt'}").write_text(text)
    (corpus / "ignored.bin").write_bytes(b"\x00\x01")
    store = tmp_path / "store"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*torchrun, "-m", "e2llm_plugin.compress", str(corpus), "--store", str(store), "--model", str(tiny_checkpoint)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(s["process"] for s in summaries) == [0, 1] and sum(s["files"] for s in summaries) == 5
    assert all(s["files"] > 0 for s in summaries)  # the work was shared
    model = E2LLM.from_pretrained(tiny_checkpoint, store=False)
    distinct = {c.text for text in texts for c in model.chunk([text])}
    with CompressedStore(store / compress.STORE_FILE) as opened:
        assert opened.stats()["entries"] == len(distinct) + len(texts)  # none lost, none twice; each file's whole context
        assert len(opened.get_many(model.fingerprint(), sorted(distinct))) == len(distinct)


def test_compress_reports_unreadable_files_and_goes_on(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "good.txt").write_text(LOREM)
    (tmp_path / "empty.md").write_text("   ")
    code = compress.main([str(tmp_path), "--store", str(tmp_path / "store"), "--model", str(tiny_checkpoint)])
    out, err = capsys.readouterr()
    assert code == 1 and "empty.md" in err and json.loads(out.strip().splitlines()[-1])["files"] == 1
    assert compress.main([str(tmp_path / "nothing-here"), "--store", str(tmp_path / "s")]) == 2  # bad usage
    assert "does not exist" in capsys.readouterr().err


def test_the_fingerprint_follows_the_weights(tiny_config, tmp_path):
    model = build_tiny_model(tiny_config)
    before = model.fingerprint()
    assert model.fingerprint() == before  # cached while nothing changes
    with torch.no_grad():
        next(model.adapter.parameters()).add_(0.01)  # as an optimizer step would
    assert model.fingerprint() != before
    other = build_tiny_model(tiny_config, seed=3)
    assert other.fingerprint() != model.fingerprint()
    other.load_state_dict(model.state_dict())
    assert other.fingerprint() == model.fingerprint()


def test_the_store_can_be_turned_off_or_pointed_elsewhere(tiny_checkpoint, tmp_path, monkeypatch):
    assert E2LLM.from_pretrained(tiny_checkpoint, store=False).store is None
    monkeypatch.setenv("E2LLM_STORE", "off")
    assert E2LLM.from_pretrained(tiny_checkpoint).store is None
    monkeypatch.setenv("E2LLM_STORE", str(tmp_path / "mine.sqlite"))
    assert E2LLM.from_pretrained(tiny_checkpoint).store.path == tmp_path / "mine.sqlite"
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database at all" * 10)
    monkeypatch.setenv("E2LLM_STORE", str(tmp_path / "garbage.sqlite"))
    model = E2LLM.from_pretrained(tiny_checkpoint)  # a broken default store is said, and compression goes on
    assert model.store is None and model.compress([LOREM]).num_chunks > 0


def test_a_damaged_entry_is_recomputed_not_served(tiny_checkpoint, tmp_path):
    import sqlite3

    store = tmp_path / "store.sqlite"
    model = E2LLM.from_pretrained(tiny_checkpoint, store=store)
    ctx = model.compress([LOREM])
    model.store.close()
    with sqlite3.connect(store) as db:
        db.execute("UPDATE entries SET blob = zeroblob(length(blob))")
    again = E2LLM.from_pretrained(tiny_checkpoint, store=store).compress([LOREM])
    torch.testing.assert_close(again.soft_tokens, ctx.soft_tokens)


def test_one_encoder_pass_gives_soft_tokens_and_ranking(tiny_model, monkeypatch):
    calls = []
    encode = ChunkEncoder.encode

    def counting(self, texts):
        calls.append(len(texts))
        return encode(self, texts)

    monkeypatch.setattr(ChunkEncoder, "encode", counting)
    store, tiny_model.store = tiny_model.store, None
    try:
        ctx = tiny_model.compress([LOREM * 4])
        distinct = len({c.text for c in ctx.chunks})  # a repeated chunk text is encoded once
        assert ctx.retrieval_embeddings is not None and sum(calls) == distinct < ctx.num_chunks
        tiny_model.generate("When?", context=ctx, mode="hybrid", max_new_tokens=2)
        assert sum(calls) == distinct + 1  # the question alone: the chunks were ranked from the same pass
    finally:
        tiny_model.store = store


def test_a_copied_store_file_serves_another_machine(tiny_checkpoint, tmp_path, monkeypatch):
    """The store is a plain file: copied elsewhere, it answers there without encoding."""
    model = E2LLM.from_pretrained(tiny_checkpoint, store=tmp_path / "a.sqlite")
    ctx = model.compress([LOREM * 2])
    model.store.close()
    shutil.copy(tmp_path / "a.sqlite", tmp_path / "b.sqlite")
    monkeypatch.setattr(ChunkEncoder, "encode", lambda self, texts: pytest.fail("encoded"))
    copy = E2LLM.from_pretrained(tiny_checkpoint, store=tmp_path / "b.sqlite").compress([LOREM * 2])
    torch.testing.assert_close(copy.soft_tokens, ctx.soft_tokens, rtol=0, atol=1e-6)
