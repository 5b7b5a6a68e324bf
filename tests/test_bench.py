"""`python -m e2llm_plugin.bench` on the tiny checkpoint: every figure is measured and the report is written."""

import json
import re

import pytest
from conftest import LOREM

from e2llm_plugin import E2LLM, bench


def test_bench_measures_every_stage_and_writes_its_report(tiny_checkpoint, tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"Paragraph {i}. {LOREM}" for i in range(60)))
    out = tmp_path / "out"
    code = bench.main(["--model", str(tiny_checkpoint), "--text", str(text), "--sizes", "256", "--long", "2048",
                       "--hybrid-at", "2048", "--process-at", "2048", "--batch-at", "256", "--max-soft-chunks", "4",
                       "--out", str(out)])
    assert code == 0
    results = json.loads((out / "bench.json").read_text())
    small, large = results["rows"]
    assert results["setup"]["max_soft_chunks"] == 4 and large["soft_chunks_read"] == 4 < large["chunks"]
    assert small["full_prefill_s"] > 0 and "hybrid_uncached_s" not in small
    for key in ("soft_uncached_s", "soft_store_cached_s", "soft_prefix_cached_s", "peak_rss_mb"):
        assert small[key] > 0 and large[key] > 0
    assert large["hybrid_uncached_s"] > 0 and large["rag_uncached_s"] > 0
    assert large["soft_stages"]["encoder"] > 0 and large["chunks"] > small["chunks"]
    assert results["encoder"]["plain_tokens_per_s"] > 0 and results["encoder"]["inference_tokens_per_s"] > 0
    new = large["new_process"]  # a subprocess answered from the store: it chunked and read it, and encoded nothing
    assert new["first_token_s"] > 0 and new["load_and_warm_up_s"] > 0 and "encoder" not in new["stages"]
    assert new["stages"]["store"] > 0 and "new_process" not in small
    rates = small["questions_per_second"]
    assert list(rates) == ["1", "4", "16"] and "questions_per_second" not in large
    assert all(r["sequential_qps"] > 0 and r["batched_qps"] > 0 and r["identical"] and r["batched_first_token_s"] > 0
               for r in rates.values())
    report = (out / "bench.md").read_text()
    assert "| decoder tokens |" in report and (out / "ttft.png").stat().st_size > 1000
    assert "| decoder tokens | compressing process | new process |" in report and re.search(r"\| [\d,]+ \| 16 \| ", report)
    assert report in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--process-at", "--batch-at"])
def test_the_new_rows_take_only_sizes_measured_and_say_so_before_any_model_loads(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.setattr(E2LLM, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded before the arguments"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LOREM)
    arguments = ["--text", str(corpus), "--out", str(tmp_path / "out"), "--sizes", "256", "--long", "1024", flag, "512"]
    assert bench.main(arguments) == 2
    assert f"{flag} [512] is not among the sizes measured" in capsys.readouterr().err


def test_a_negative_max_soft_chunks_is_said_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(E2LLM, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded before the arguments"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LOREM)
    assert bench.main(["--text", str(corpus), "--out", str(tmp_path / "out"), "--max-soft-chunks", "-1"]) == 2
    assert "--max-soft-chunks must be 0" in capsys.readouterr().err
