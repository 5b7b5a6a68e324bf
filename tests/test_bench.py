"""`python -m e2llm_plugin.bench` on the tiny checkpoint: every figure is measured and the report is written."""

import json

from conftest import LOREM

from e2llm_plugin import bench


def test_bench_measures_every_stage_and_writes_its_report(tiny_checkpoint, tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"Paragraph {i}. {LOREM}" for i in range(60)))
    out = tmp_path / "out"
    code = bench.main(["--model", str(tiny_checkpoint), "--text", str(text), "--sizes", "256", "--long", "2048",
                       "--hybrid-at", "2048", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "bench.json").read_text())
    small, large = results["rows"]
    assert small["full_prefill_s"] > 0 and "hybrid_uncached_s" not in small
    for key in ("soft_uncached_s", "soft_store_cached_s", "soft_prefix_cached_s", "peak_rss_mb"):
        assert small[key] > 0 and large[key] > 0
    assert large["hybrid_uncached_s"] > 0 and large["rag_uncached_s"] > 0
    assert large["soft_stages"]["encoder"] > 0 and large["chunks"] > small["chunks"]
    assert results["encoder"]["plain_tokens_per_s"] > 0 and results["encoder"]["inference_tokens_per_s"] > 0
    report = (out / "bench.md").read_text()
    assert "| decoder tokens |" in report and (out / "ttft.png").stat().st_size > 1000
    assert report in capsys.readouterr().out
