"""`python -m e2llm_plugin.finetune` on tiny models: a run, exact resume after a kill, bad data, lines too long for the
decoder, output guards, faults in every save, DDP."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LOREM, build_tiny_model
from safetensors.torch import load_file

from e2llm_plugin import E2LLM, finetune
from e2llm_plugin.files import STAGING_PREFIX
from e2llm_plugin.training import state
from e2llm_plugin.training import trainer as trainer_module
from e2llm_plugin.training.data import DataError, JsonlDataset, check_fits


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


def test_from_a_trained_model_k_grows_chunks_resize_and_nothing_else_changes(tiny_dirs, data, tmp_path, capsys):
    first = tmp_path / "k1"
    assert finetune.main(_args(tiny_dirs, data, first, "--max-steps", "1")) == 0
    base = ["--data", str(data[0]), "--eval-data", str(data[1]), "--from", str(first), "--eval-examples", "3", "--max-steps", "1"]
    assert finetune.main([*base, "--output", str(tmp_path / "k2"), "--soft-tokens-per-chunk", "2"]) == 0
    grown = E2LLM.from_pretrained(tmp_path / "k2")
    assert grown.config.soft_tokens_per_chunk == 2 and grown.compress([LOREM]).soft_tokens.shape[1] == 2
    assert finetune.main([*base, "--output", str(tmp_path / "c16"), "--chunk-tokens", "16"]) == 0
    rechunked = E2LLM.from_pretrained(tmp_path / "c16")
    assert rechunked.config.chunk_tokens == 16
    assert rechunked.compress([LOREM]).num_chunks > E2LLM.from_pretrained(first).compress([LOREM]).num_chunks
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
    ('{"text": "half a pair \\ud800 here"}', "'text' holds a lone surrogate"),
    ('{"context": "c", "prompt": "p", "answer": "\\udc00\\ud83d"}', "'answer' holds a lone surrogate"),
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


def test_a_run_recorded_before_a_setting_existed_resumes_at_its_default(tiny_dirs, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--save-every", "1")) == 0
    recorded = json.loads((out / "run.json").read_text())
    del recorded["encoder_grad_chunks"]  # as an earlier version wrote it
    (out / "run.json").write_text(json.dumps(recorded))
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--save-every", "1", "--resume")) == 0
    assert finetune.main(_args(tiny_dirs, data, out, "--max-steps", "1", "--resume", "--encoder-grad-chunks", "4")) == 2
    assert "different settings (encoder_grad_chunks)" in capsys.readouterr().err


# ---- lines the decoder can never read, and every read naming its line ------------------------------------------

def _qa(prompt="When do cats hunt?", answer="At night.", context="Cats sleep for most of the day. They hunt at night."):
    return json.dumps({"context": context, "prompt": prompt, "answer": answer}) + "\n"


LONG = "word " * 1100  # more tokens than the tiny decoder's 1024 positions
HALF = "word " * 800  # fits beside one chunk's soft tokens, but not beside 256 tokens of raw passages too


@pytest.mark.parametrize("line, mode, in_eval", [
    (_qa(answer=LONG), "soft", False),
    (_qa(prompt=LONG), "soft", False),
    (_qa(answer=HALF), "hybrid", False),
    (_qa(answer=HALF), "rag", False),
    (_qa(answer=LONG), "soft", True),
], ids=["answer", "prompt", "hybrid-raw-budget", "rag-raw-budget", "eval-data"])
def test_a_qa_line_too_long_for_the_decoder_is_refused_by_line_before_training(tiny_dirs, tmp_path, capsys, line, mode, in_eval):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(_qa() * 2)
    bad.write_text(_qa() + line)
    data = (good, bad) if in_eval else (bad, good)
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_dirs, data, out, "--mode", mode, "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: " in err and "decoder reads at most 1024" in err
    assert "shorten the answer" in err and "longer window" in err
    assert not out.exists()  # refused before --output was written, so --resume never meets it


@pytest.mark.parametrize("mode", ["soft", "hybrid", "rag"])
def test_tasks_too_long_only_for_their_many_chunks_are_skipped_counted_and_logged(tiny_dirs, tmp_path, capsys, caplog, mode):
    data = tmp_path / "train.jsonl"
    data.write_text(_qa(context=LOREM * 25) + _qa())  # 75 chunks x 16 soft tokens: past 1024 positions, under --max-chunks
    argv = _args(tiny_dirs, (data, data), tmp_path / "out", "--mode", mode, "--soft-tokens-per-chunk", "16",
                 "--max-steps", "1", "--grad-accum", "2")
    with caplog.at_level(logging.WARNING, logger="e2llm_plugin.finetune"):
        assert finetune.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped_tasks"] == 1  # the long line's question, once in training; eval skips it too, uncounted
    assert "loss_reasoning" in summary and "eval_loss_reasoning" in summary  # the other line still trains and evaluates
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert skips and all(m.startswith(f"{data}:1: reasoning task skipped: 75 chunks need") for m in skips)
    assert "exceeding --max-chunks or the decoder's window: 1" in (tmp_path / "out" / "README.md").read_text()


def test_the_fit_check_counts_the_raw_passages_the_mode_reads(trainable, tmp_path):
    model = trainable[0]  # hybrid_raw_tokens=48
    path = tmp_path / "data.jsonl"
    path.write_text(_qa(answer="word " * 950))  # with the template and one soft token: just under 1024 positions
    check_fits(JsonlDataset(path), model, "soft")
    for mode in ("hybrid", "rag"):
        with pytest.raises(DataError, match="^" + re.escape(f"{path}:1: ") + ".*48 tokens of raw passages"):
            check_fits(JsonlDataset(path), model, mode)


@pytest.mark.parametrize("changed, message", [
    (b"{not json}", "invalid JSON"),
    (b'{"text": "\xff"}', "not UTF-8"),
    (b'{"text": "\\udfff"}', "'text' holds a lone surrogate"),
    (b'{"context": "c", "prompt": "p"}', "missing field"),
])
def test_reading_a_line_that_changed_since_validation_names_file_and_line(tmp_path, changed, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "one"}\n\n{"text": "two"}\n{"text": "three"}\n')
    dataset = JsonlDataset(path)
    assert [dataset.where(i) for i in range(3)] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    path.write_bytes(b'{"text": "one"}\n\n' + changed + b"\n")  # the second example now starts with `changed`
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:3: {message}")):
        dataset.read(1)


@pytest.mark.parametrize("line, field", [
    ('{"text": "\\ud800"}', "'text'"),
    ('{"context": "a \\udfff b", "prompt": "p", "answer": "a"}', "'context'"),
    ('{"context": ["fine", "x\\ud83d"], "prompt": "p", "answer": "a"}', "'context'[1]"),
    ('{"context": "c", "prompt": "\\udc00\\ud800?", "answer": "a"}', "'prompt'"),  # a pair in the wrong order
    ('{"context": "c", "prompt": "p", "answer": "end \\udbff"}', "'answer'"),
])
def test_a_lone_surrogate_is_refused_naming_line_and_field(tmp_path, line, field):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine \\ud83d\\ude00"}\n\n' + line + "\n")  # a whole pair (an emoji) is fine
    with pytest.raises(DataError, match="^" + re.escape(f"{path}:3: {field} holds a lone surrogate")):
        JsonlDataset(path)


# ---- --overwrite replaces a previous run, and only its files ------------------------------------------------

def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _fake_run(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run.json").write_text(json.dumps({"data": "d", "output": str(directory), "config_overrides": {}}))
    (directory / "README.md").write_text("mine")
    (directory / "notes.txt").write_text("mine")


@pytest.mark.parametrize("case, message", [
    ("cwd", "working, home or root directory"),
    ("cwd-by-dotdot", "working, home or root directory"),
    ("home", "working, home or root directory"),
    ("holds-cwd", "working, home or root directory"),
    ("no-run-json", "not a finetune run"),
    ("foreign-run-json", "not a finetune run"),
    ("unreadable-run-json", "not a finetune run"),
    ("a-file", "is a file"),
])
def test_overwrite_refuses_what_is_not_a_previous_run_of_its_own(tiny_dirs, data, tmp_path, monkeypatch, capsys, case,
                                                                  message):
    root = tmp_path / "root"
    _fake_run(root / "run")
    monkeypatch.chdir(root / "run")
    output = {"cwd": ".", "cwd-by-dotdot": "sub/..", "home": str(root / "run"), "holds-cwd": str(root / "run")}.get(case, "x")
    if case == "home":
        monkeypatch.setenv("HOME", str(root / "run"))
        monkeypatch.chdir(root)
    elif case == "holds-cwd":
        (root / "run" / "sub").mkdir()
        monkeypatch.chdir(root / "run" / "sub")
    elif case == "cwd-by-dotdot":
        (root / "run" / "sub").mkdir()
    elif case == "a-file":
        (root / "run" / "x").write_text("a file of mine")
    else:
        (root / "run" / "x").mkdir()
        (root / "run" / "x" / "README.md").write_text("mine")
        run_json = {"foreign-run-json": '{"name": "another tool"}', "unreadable-run-json": '{"data": '}.get(case)
        if run_json:
            (root / "run" / "x" / "run.json").write_text(run_json)
    before = _tree(root)
    assert finetune.main(_args(tiny_dirs, data, output, "--overwrite", "--max-steps", "1")) == 2
    assert message in capsys.readouterr().err
    assert _tree(root) == before


def test_overwrite_removes_only_what_the_previous_run_wrote(tiny_dirs, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _args(tiny_dirs, data, "run", "--max-steps", "1")
    assert finetune.main(argv) == 0
    run = tmp_path / "run"
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    (run / "mine" / "data.jsonl").write_text("mine")
    (run / "checkpoints" / "step-0000009").mkdir()  # a stale save of the old run
    stale = run / f"{STAGING_PREFIX}999999-old"  # a final save of the old run cut short, ready to roll forward
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    (stale / ".complete").touch()
    assert finetune.main([*argv, "--seed", "9", "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine" / "data.jsonl").read_text() == "mine"
    assert not list(run.glob(STAGING_PREFIX + "*"))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000001"]
    assert json.loads((run / "run.json").read_text())["seed"] == 9
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines() if '"lr"' in line] == [1]
    E2LLM.from_pretrained(run)


@pytest.mark.parametrize("content", ["{broken", '["a", "list"]', '{"name": "another tool"}'])
def test_resume_refuses_a_run_json_it_cannot_read(data, tmp_path, capsys, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content)
    assert finetune.main(["--data", str(data[0]), "--output", str(out), "--resume"]) == 2
    assert "unreadable or not written by finetune" in capsys.readouterr().err


# ---- crash leftovers: the log, checkpoint saves and the final save cut short -------------------------------

def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines() if '"lr"' in line]


@pytest.mark.parametrize("crash_step, torn", [(3, False), (3, True), (1, False)],
                         ids=["after-step-3", "torn-line-after-step-3", "before-any-save"])
def test_resume_cuts_the_log_back_to_the_step_it_resumes_from(tiny_dirs, data, tmp_path, monkeypatch, crash_step, torn):
    out = tmp_path / "run"
    argv = _args(tiny_dirs, data, out, "--max-steps", "4", "--save-every", "2", "--eval-every", "2")
    real_log = trainer_module.Trainer.log

    def dies_after_logging(self, record):
        real_log(self, record)
        if record.get("step") == crash_step and "lr" in record:
            if torn:
                with (out / "train_log.jsonl").open("a") as f:
                    f.write('{"step": 4, "lr": 0.0')  # the kill came in the middle of a write
            raise KeyboardInterrupt("killed after logging, before saving")

    monkeypatch.setattr(trainer_module.Trainer, "log", dies_after_logging)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(argv)
    monkeypatch.setattr(trainer_module.Trainer, "log", real_log)
    assert finetune.main([*argv, "--resume"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert _steps(out) == [1, 2, 3, 4]
    assert [r["step"] for r in log if "eval_loss_reasoning" in r and "final" not in r] == [2]
    assert [r["step"] for r in log if r.get("final")] == [4]


def _fail_move(monkeypatch, into: Path, nth: int) -> list[str]:
    """`os.replace` fails (a full disk) on its `nth` move of a file into `into`, once; returns the names it moved there."""
    real, moves = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent == into:
            moves.append(Path(dst).name)
            if len(moves) == nth:
                raise OSError(28, "No space left on device (injected)")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return moves


def _fail_write(monkeypatch, nth: int) -> None:
    """The `nth` save's training state fails to write (a full disk), once, while the save is still staging its files."""
    real, calls = state.save_file, []

    def save_file(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == nth:
            raise OSError(28, "No space left on device (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(state, "save_file", save_file)


@pytest.fixture(scope="module")
def trainable(tiny_config):
    from transformers import get_cosine_schedule_with_warmup

    model = build_tiny_model(tiny_config)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    return model, optimizer, get_cosine_schedule_with_warmup(optimizer, 0, 10)


def _no_leftovers(directory: Path) -> None:
    assert not [p for p in directory.rglob("*") if p.name.startswith(STAGING_PREFIX)]
    assert {p.name for p in directory.iterdir()} == {p.name for p in state.list_checkpoints(directory)}


@pytest.mark.parametrize("fault, saved", [("write", [2]), (1, [2, 4]), (3, [2, 4]), (5, [2, 4])],
                         ids=["while-staging", "first-move", "middle-move", "last-move"])
def test_a_checkpoint_save_cut_short_leaves_only_complete_loadable_ones(trainable, tmp_path, monkeypatch, fault, saved):
    """Cut short while staging, the save is dropped; once its files are all staged, it is finished by the next reader."""
    model, optimizer, scheduler = trainable
    directory = tmp_path / "checkpoints"
    state.save_checkpoint(model, optimizer, scheduler, {"step": 2}, directory)
    if fault == "write":
        _fail_write(monkeypatch, 1)
    else:
        moves = _fail_move(monkeypatch, directory / "step-0000004", fault)
    with pytest.raises(OSError, match="injected"):
        state.save_checkpoint(model, optimizer, scheduler, {"step": 4}, directory)
    if fault == 5:
        assert moves[-1] == state.STATE_JSON  # the marker, last: the step looked incomplete
    found = state.list_checkpoints(directory)
    assert [int(p.name.removeprefix("step-")) for p in found] == saved
    _no_leftovers(directory)
    for path in found:
        E2LLM.from_pretrained(path)
        assert state.load_checkpoint(model, optimizer, scheduler, path)["step"] == int(path.name.removeprefix("step-"))
    state.save_checkpoint(model, optimizer, scheduler, {"step": 6}, directory)
    assert [p.name for p in state.list_checkpoints(directory)] == [f"step-{s:07d}" for s in [*saved, 6][-2:]]
    _no_leftovers(directory)


def test_removing_an_old_checkpoint_cut_short_never_leaves_one_that_looks_complete(trainable, tmp_path, monkeypatch):
    model, optimizer, scheduler = trainable
    directory = tmp_path / "checkpoints"
    for step in (2, 4):
        state.save_checkpoint(model, optimizer, scheduler, {"step": step}, directory)
    real = shutil.rmtree

    def killed_midway(path, *args, **kwargs):
        if Path(path).name.startswith("step-"):
            (Path(path) / "model.safetensors").unlink()
            raise KeyboardInterrupt("killed while removing the oldest checkpoint")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        state.save_checkpoint(model, optimizer, scheduler, {"step": 6}, directory)
    monkeypatch.setattr(shutil, "rmtree", real)
    found = state.list_checkpoints(directory)
    assert [p.name for p in found] == ["step-0000004", "step-0000006"]
    for path in found:
        E2LLM.from_pretrained(path)
    _no_leftovers(directory)


@pytest.mark.parametrize("fault, resumed", [("write", 2), (3, 4)], ids=["while-staging", "while-moving"])
def test_resume_after_a_checkpoint_save_cut_short_continues_from_the_last_complete_save(tiny_dirs, data, tmp_path,
                                                                                       monkeypatch, caplog, fault, resumed):
    out = tmp_path / "run"
    argv = _args(tiny_dirs, data, out, "--max-steps", "4", "--save-every", "2")
    if fault == "write":
        _fail_write(monkeypatch, 2)  # the step-4 save
    else:
        _fail_move(monkeypatch, out / "checkpoints" / "step-0000004", fault)
    assert finetune.main(argv) == 1  # the OSError, reported
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="e2llm_plugin.finetune"):
        assert finetune.main([*argv, "--resume"]) == 0
    assert f"(step {resumed})" in " ".join(r.getMessage() for r in caplog.records if "resumed from" in r.getMessage())
    assert _steps(out) == [1, 2, 3, 4]
    _no_leftovers(out / "checkpoints")
    assert [p.name for p in state.list_checkpoints(out / "checkpoints")] == ["step-0000002", "step-0000004"]
    assert not list(out.glob(STAGING_PREFIX + "*"))
    E2LLM.from_pretrained(out)


@pytest.mark.parametrize("nth", [1, 2, 3], ids=["first-move", "middle-move", "last-move"])
def test_resume_after_the_final_save_cut_short_finishes_it(tiny_dirs, data, tmp_path, monkeypatch, capsys, nth):
    out = tmp_path / "run"
    argv = _args(tiny_dirs, data, out, "--max-steps", "2", "--save-every", "2")
    moves = _fail_move(monkeypatch, out, nth)
    assert finetune.main(argv) == 1
    assert "injected" in capsys.readouterr().err
    assert moves[-1] == ["README.md", "model.safetensors", "config.json"][nth - 1]
    assert not (out / "config.json").exists()  # not loadable as it is: the marker goes last
    assert [p.name for p in state.list_checkpoints(out / "checkpoints")] == ["step-0000002"]  # the last save is whole
    E2LLM.from_pretrained(out / "checkpoints" / "step-0000002")
    assert finetune.main([*argv, "--resume"]) == 0
    assert not list(out.glob(STAGING_PREFIX + "*"))
    assert "steps: 2" in (out / "README.md").read_text()
    model = E2LLM.from_pretrained(out)
    assert isinstance(model.generate("When is the National Day?", documents=[LOREM]), str)
    assert _steps(out) == [1, 2]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("final")] == [2]  # the first run's final eval was cut with its save


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


# --- --documents: training tasks made from the documents themselves ----------------------------------------------

@pytest.fixture(scope="module")
def documents_dir(tmp_path_factory):
    """A folder as a user has it: a real PDF of two pages, a Markdown file and a text file."""
    from conftest import make_pdf
    from test_autodata import DOCUMENTS

    from e2llm_plugin.autodata import questions

    if not questions.available():
        pytest.skip(f"spaCy's English pipeline is not installed ({questions.INSTALL})")
    root = tmp_path_factory.mktemp("documents")
    harbour = DOCUMENTS["harbour.txt"].split("\n\nFinances\n\n")
    make_pdf(root / "harbour.pdf", [harbour[0], "Finances\n\n" + harbour[1]])
    (root / "orchard.md").write_text(DOCUMENTS["orchard.md"])
    (root / "notes").mkdir()
    (root / "notes" / "observatory.txt").write_text(DOCUMENTS["observatory.txt"])
    return root


def test_dry_run_prints_counts_and_a_sample_of_what_the_documents_make_and_trains_nothing(documents_dir, monkeypatch, capsys):
    monkeypatch.setattr(finetune, "_build_model", lambda *a: pytest.fail("a dry run loads no model"))
    assert finetune.main(["--documents", str(documents_dir), "--dry-run", "--heldout-share", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "documents: 2 for training, 1 held out for the evaluation" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["dry_run"] and summary["train"]["lines"] > 0 and summary["eval"]["lines"] > 0
    assert summary["train"]["by_task"]["restate"] >= 2 and summary["train"]["by_task"]["entity_qa"] >= 1
    assert "sample of the lines made from the documents" in out and "\n    Q: " in out and "\n    A: " in out
    assert finetune.main(["--documents", str(documents_dir), "--dry-run", "--heldout-share", "0.3"]) == 0
    assert capsys.readouterr().out == out  # seeded: the same documents make the same lines


def test_documents_need_the_extra_and_say_how_to_install_it(documents_dir, monkeypatch, capsys):
    from e2llm_plugin.autodata import questions
    from e2llm_plugin.errors import MissingExtraError

    def missing():
        raise MissingExtraError(f"spaCy is installed but not its English pipeline; install it with: {questions.INSTALL}")

    monkeypatch.setattr(questions, "nlp", missing)
    assert finetune.main(["--documents", str(documents_dir), "--dry-run"]) == 1
    assert 'pip install "e2llm-plugin[auto]"' in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "give the training data"),
    (["--documents", "DIR"], "--output is required"),
    (["--documents", "DIR", "--dry-run", "--heldout-share", "1"], "--heldout-share must be"),
])
def test_documents_arguments_are_checked_first(documents_dir, capsys, argv, message):
    assert finetune.main([str(documents_dir) if x == "DIR" else x for x in argv]) == 2
    assert message in capsys.readouterr().err


def test_a_documents_run_keeps_its_lines_mixes_data_and_resumes_on_exactly_them(tiny_checkpoint, data, documents_dir,
                                                                               tmp_path, monkeypatch):
    from e2llm_plugin.autodata import questions

    out = tmp_path / "run"
    argv = ["--documents", str(documents_dir), "--data", str(data[0]), "--from", str(tiny_checkpoint), "--output", str(out),
            "--max-steps", "3", "--save-every", "1", "--eval-examples", "3", "--heldout-share", "0.3"]
    real_step, calls = trainer_module.Trainer.train_step, {"n": 0}

    def dies_after_two(self):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(argv)
    train, evaluation = (out / finetune.DOCUMENTS_TRAIN).read_bytes(), (out / finetune.DOCUMENTS_EVAL).read_bytes()
    lines = [json.loads(x) for x in train.decode().splitlines()]
    assert sum(x.get("prompt") == "When do cats hunt?" for x in lines) == 3  # --data's lines, mixed in as they are
    made = [x for x in lines if "doc_id" in x]
    held = {x["doc_id"] for x in map(json.loads, evaluation.decode().splitlines())}
    assert len(held) == 1 and made and not held & {x["doc_id"] for x in made}  # held out by whole document
    assert not list(out.glob("*.partial"))

    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    monkeypatch.setattr(questions, "nlp", lambda: pytest.fail("a resumed run reads the lines it kept, it makes none"))
    assert finetune.main([*argv, "--resume"]) == 0
    assert (out / finetune.DOCUMENTS_TRAIN).read_bytes() == train and (out / finetune.DOCUMENTS_EVAL).read_bytes() == evaluation
    model = E2LLM.from_pretrained(out)
    assert isinstance(model.generate("When was the observatory opened?", documents=[LOREM]), str)
    assert "made from the documents themselves" in (out / "README.md").read_text()


@pytest.mark.slow
def test_documents_alone_fine_tune_the_shipped_checkpoint_and_e2llm_ask_reads_the_result(documents_dir, tmp_path, capsys):
    """The command a user runs with nothing but a folder of PDFs: it starts from the shipped checkpoint."""
    from conftest import make_pdf
    from test_autodata import DOCUMENTS

    from e2llm_plugin import cli

    folder = tmp_path / "pdfs"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        make_pdf(folder / (Path(name).stem + ".pdf"), [text])
    out = tmp_path / "mine"
    assert finetune.main(["--documents", str(folder), "--output", str(out), "--time-budget", "30", "--max-steps", "2",
                          "--eval-examples", "4"]) == 0
    shipped = E2LLM.from_pretrained()
    model = E2LLM.from_pretrained(out)
    assert model.config == shipped.config  # the shipped architecture and reading mode, trained further
    answer = model.generate("When was the Harbour Authority founded?", documents=[DOCUMENTS["harbour.txt"]])
    assert isinstance(answer, str) and answer.strip()
    capsys.readouterr()
    assert cli.main(["ask", str(folder / "observatory.pdf"), "-q", "Who discovered a comet?", "--model", str(out)]) == 0
    assert capsys.readouterr().out.strip()
