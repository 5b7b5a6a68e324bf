"""`python -m e2llm_plugin.finetune` on tiny models: a run, exact resume after a kill, bad data, output guards, DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import LOREM
from safetensors.torch import load_file

from e2llm_plugin import E2LLM, finetune
from e2llm_plugin.training import trainer as trainer_module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    lines = [{"context": [LOREM, "Cats hunt at night. " * 6], "prompt": "When is the National Day?", "answer": "26 October"},
             {"context": "Cats sleep for most of the day. They hunt at night. " * 5, "prompt": "When do cats hunt?",
              "answer": "At night."},
             {"text": LOREM * 2}]
    train = root / "train.jsonl"
    train.write_text("".join(json.dumps(lines[i % 3]) + "\n" for i in range(10)))
    evaluation = root / "eval.jsonl"
    evaluation.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return train, evaluation


def _args(tiny_dirs, data, output, *extra):
    encoder, decoder = tiny_dirs
    return ["--data", str(data[0]), "--eval-data", str(data[1]), "--output", str(output), "--encoder", encoder,
            "--decoder", decoder, "--chunk-tokens", "24", "--encoder-lora-r", "2", "--decoder-lora-r", "2",
            "--eval-examples", "3", *extra]


def test_four_steps_write_a_checkpoint_that_loads_and_answers(tiny_dirs, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "4", "--save-every", "2", "--eval-every", "2")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and "eval_loss_reasoning" in summary
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "lr" in r] == [1, 2, 3, 4]
    assert any("eval_loss_understanding" in r for r in log)
    model = E2LLM.from_pretrained(out)
    assert isinstance(model.generate("When is the National Day?", documents=[LOREM]), str)
    card = (out / "README.md").read_text()
    assert "steps: 4" in card and "final losses" in card
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_training_changes_only_adapter_and_lora(tiny_dirs, data, tmp_path, tiny_config):
    out = tmp_path / "run"
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "2", "--lr", "1e-2")) == 0
    trained = load_file(out / "model.safetensors")
    assert all(k.startswith("adapter.") or "lora_" in k for k in trained)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())  # LoRA B starts at zero


def test_rag_mode_trains_a_text_rag_decoder(tiny_dirs, data, tmp_path, capsys):
    """--mode rag: QA lines only, raw passages instead of soft tokens, so only the decoder's LoRA learns."""
    out = tmp_path / "rag"
    assert finetune.main(_args(tiny_dirs, data, out, "--mode", "rag", "--max-steps", "3", "--lr", "1e-2",
                                              "--save-every", "1", "--keep-checkpoints", "3")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "eval_loss_reasoning" in summary and "eval_loss_understanding" not in summary
    assert summary["skipped_tasks"] == 0  # no restate tasks are made, so none is counted as too long
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"lr"' in line]
    assert all(r["tasks"] == 1 and "loss_reasoning" in r and "loss_understanding" not in r for r in log)
    first = load_file(out / "checkpoints" / "step-0000001" / "model.safetensors")
    last = load_file(out / "model.safetensors")
    for name, value in last.items():
        moved = not torch.equal(value, first[name])
        if name.startswith("decoder.") and "lora_" in name:
            assert moved, name
        elif not name.startswith("decoder."):  # the encoder and adapter take no part in text RAG
            assert not moved, name
    model = E2LLM.from_pretrained(out)
    assert model.config.mode == "rag" and isinstance(model.generate("When is the National Day?", documents=[LOREM]), str)


def test_rag_mode_needs_qa_lines(tiny_dirs, tmp_path, capsys):
    only_text = tmp_path / "text.jsonl"
    only_text.write_text(json.dumps({"text": LOREM}) + "\n")
    argv = _args(tiny_dirs, (only_text, only_text), tmp_path / "out", "--mode", "rag", "--max-steps", "1")
    assert finetune.main(argv) == 2
    assert "no QA lines" in capsys.readouterr().err


def test_from_a_trained_model_k_grows_and_nothing_else_of_the_architecture_changes(tiny_dirs, data, tmp_path, capsys):
    first = tmp_path / "k1"
    assert finetune.main(_args(tiny_dirs, data, first, "--max-steps", "1")) == 0
    base = ["--data", str(data[0]), "--eval-data", str(data[1]), "--from", str(first), "--eval-examples", "3", "--max-steps", "1"]
    assert finetune.main([*base, "--output", str(tmp_path / "k2"), "--soft-tokens-per-chunk", "2"]) == 0
    grown = E2LLM.from_pretrained(tmp_path / "k2")
    assert grown.config.soft_tokens_per_chunk == 2 and grown.compress([LOREM]).soft_tokens.shape[1] == 2
    assert finetune.main([*base, "--output", str(tmp_path / "r"), "--decoder-lora-r", "4"]) == 2
    assert "cannot change ['decoder_lora_r']" in capsys.readouterr().err
    assert finetune.main([*base, "--output", str(tmp_path / "k0"), "--soft-tokens-per-chunk", "1",
                          "--from", str(tmp_path / "k2")]) == 2
    assert "can only grow" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "k0").exists()  # refused before --output was written


def test_killed_run_resumes_to_the_same_weights(tiny_dirs, data, tmp_path, monkeypatch):
    steps = ["--max-steps", "6", "--save-every", "2", "--grad-accum", "2", "--seed", "3"]
    assert finetune.main(_args(tiny_dirs, data, tmp_path / "whole", *steps)) == 0

    real_step = trainer_module.Trainer.train_step
    calls = {"n": 0}

    def dies_after_three(self):
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")  # mid-run, after the step-2 save, before step 4
        calls["n"] += 1
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(_args(tiny_dirs, data, tmp_path / "killed", *steps))
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    assert finetune.main(_args(tiny_dirs, data, tmp_path / "killed", *steps, "--resume")) == 0

    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)


def test_time_budget_stops_cleanly_and_saves(tiny_dirs, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1000", "--time-budget", "0.0001")) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stopped_early"] and summary["steps"] < 1000
    E2LLM.from_pretrained(out)
    assert (out / "checkpoints" / f"step-{summary['steps']:07d}").is_dir()


@pytest.mark.parametrize("line, message", [
    ("{not json", "invalid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"context": "c", "prompt": "p"}', "missing field"),
    ('{"context": 5, "prompt": "p", "answer": "a"}', "'context' must be a string or a list"),
    ('{"context": ["  "], "prompt": "p", "answer": "a"}', "'context' is empty"),
    ('{"context": "c", "prompt": "p", "answer": ""}', "'answer' must be a non-empty string"),
    ('{"context": "c", "prompt": 3, "answer": "a"}', "'prompt' must be a non-empty string"),
    ('{"text": ""}', "'text' must be a non-empty string"),
])
def test_malformed_data_is_rejected_by_line_before_training(tmp_path, capsys, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n\n' + line + "\n")
    assert finetune.main(["--data", str(bad), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3:" in err and message in err
    assert not (tmp_path / "out").exists()


def test_bad_data_from_the_shell_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    proc = subprocess.run([sys.executable, "-m", "e2llm_plugin.finetune", "--data", str(bad), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bad.jsonl:1: invalid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_output_of_another_run_is_not_overwritten(tiny_dirs, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1")) == 0
    before = (out / "model.safetensors").read_bytes()
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--seed", "9")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--seed", "9", "--resume")) == 2
    assert "different settings (seed)" in capsys.readouterr().err
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--seed", "9", "--overwrite")) == 0


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_cpu_processes_train_and_save_once(tiny_dirs, data, tmp_path, launcher):
    out = tmp_path / "ddp"
    args = _args(tiny_dirs, data, out, "--max-steps", "3", "--save-every", "3")
    cmd = [*LAUNCHERS[launcher], "-m", "e2llm_plugin.finetune", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "lr" in r] == [1, 2, 3]  # one writer, not two
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000003"]
    E2LLM.from_pretrained(out)
