"""The batched training forward and the hybrid recipe, on tiny models: a batch of tasks gives each task's own loss,
answer chunks kept out of the raw passages, distillation from the frozen starting checkpoint, the trainer's batches and
resume, and
the recipe's flags."""

import dataclasses
import json
import random
import shutil

import pytest
import torch
from conftest import LOREM, build_tiny_model
from safetensors.torch import load_file

from e2llm_plugin import finetune
from e2llm_plugin.reading import HybridReader
from e2llm_plugin.tasks import Task
from e2llm_plugin.training import state
from e2llm_plugin.training import trainer as trainer_module
from e2llm_plugin.training.trainer import TrainingArgs

CATS = "Cats sleep for most of the day. They hunt at night. " * 5
ALPS = "The Alps are the highest mountains of Europe."
QUESTION = "When is the National Day?"


@pytest.fixture(scope="module")
def model(tiny_config):
    """A model of its own (gradients and requires_grad are set on it), without dropout; forward still builds the graph."""
    model = build_tiny_model(tiny_config, seed=1)
    model.trainable_parameters()
    model.eval()
    return model


@pytest.fixture(scope="module")
def tasks(model):
    lorem, cats, alps = model.chunk([LOREM]), model.chunk([CATS]), model.chunk([ALPS])
    assert len(lorem) == 3 and len(cats) >= 2 and len(alps) == 1  # mixed chunk counts
    national = Task("reasoning", lorem, "26 October", QUESTION, mode="hybrid")
    return [
        national,
        Task("reasoning", cats, "At night.", "When do cats hunt?", mode="soft"),
        Task("understanding", lorem[1:], "".join(c.text for c in lorem[1:]).strip()),  # repeats chunks of the first
        Task("reasoning", alps, "Europe", "Where are the Alps?"),  # no mode of its own: forward's mode
        dataclasses.replace(national, hidden=national.answer_chunks()),
        Task("understanding", cats[:1], cats[0].text.strip()),
    ]


# ---- 1. a batch is its tasks, read together ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["soft", "hybrid"])
def test_a_batch_gives_each_tasks_own_loss(model, tasks, mode):
    batched = model(tasks, mode)
    assert batched.shape == (len(tasks),) and batched.requires_grad
    alone = torch.stack([model(task, mode) for task in tasks])
    assert all(model(task, mode).dim() == 0 for task in tasks[:1])  # a single Task: a scalar
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)
    # The batch is not one loss repeated: the tasks differ, and so do their losses.
    assert len({round(v, 3) for v in batched.tolist()}) >= len(tasks) - 1


def test_the_tasks_mode_overrides_the_batchs(model, tasks):
    national = tasks[0]  # mode="hybrid"
    as_soft = dataclasses.replace(national, mode="soft")
    torch.testing.assert_close(model(national, "soft"), model(national, "hybrid"), rtol=0, atol=0)
    assert not torch.allclose(model(national, "soft"), model(as_soft, "soft"))  # hybrid reads raw passages too
    mode_less = tasks[3]
    assert not torch.allclose(model(mode_less, "soft"), model(mode_less, "hybrid"))


def test_gradients_reach_the_adapter_and_both_loras_only(model, tasks):
    model.zero_grad(set_to_none=True)
    model(tasks, "hybrid").sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    groups = {
        "adapter": [g for n, g in grads.items() if n.startswith("adapter.")],
        "encoder LoRA": [g for n, g in grads.items() if n.startswith("encoder.") and "lora_" in n],
        "decoder LoRA": [g for n, g in grads.items() if n.startswith("decoder.") and "lora_" in n],
    }
    for group, found in groups.items():
        assert found and any(g.abs().sum() > 0 for g in found), f"no gradient reaches the {group}"
    assert all(n.startswith("adapter.") or "lora_" in n for n in grads)  # the base models stay frozen
    model.zero_grad(set_to_none=True)


# ---- 2. answer chunks kept out of the raw passages ---------------------------------------------------------------

def test_answer_chunks_are_the_chunks_holding_the_answer(model):
    chunks = model.chunk([LOREM])
    assert Task("reasoning", chunks, "26 October", QUESTION).answer_chunks() == {0}
    assert Task("reasoning", chunks, "  26 OCTOBER \n", QUESTION).answer_chunks() == {0}  # case and spaces
    assert Task("reasoning", chunks, "the danube", "Which river?").answer_chunks() == {1}
    assert Task("reasoning", chunks, "the", "?").answer_chunks() == {0, 1, 2}
    assert Task("reasoning", chunks, "Lisbon", "?").answer_chunks() == frozenset()
    restate = Task("understanding", chunks[:2], "".join(c.text for c in chunks[:2]).strip())
    assert restate.answer_chunks() == frozenset()  # its target is in its chunks, but it has no answer to hide


def test_select_passages_never_takes_excluded_chunks_and_takes_included_first(model):
    ctx = model.compress([LOREM * 2])
    everything = 10_000
    ranked = [i for i, _ in model.rank_chunks(QUESTION, ctx)]
    assert [i for i, _ in model.select_passages(QUESTION, ctx, everything)] == ranked  # read best first
    for excluded in ({0}, {ranked[0]}, set(range(1, ctx.num_chunks))):
        chosen = [i for i, _ in model.select_passages(QUESTION, ctx, everything, exclude=frozenset(excluded))]
        assert chosen == [i for i in ranked if i not in excluded]
    one = model.count_tokens(ctx.chunks[ranked[-1]].text)  # room for about one chunk
    assert [i for i, _ in model.select_passages(QUESTION, ctx, one)] != [ranked[-1]]
    assert [i for i, _ in model.select_passages(QUESTION, ctx, one, include=frozenset({ranked[-1]}))] == [ranked[-1]]
    # exclude wins over include
    assert ranked[-1] not in [i for i, _ in model.select_passages(QUESTION, ctx, everything, include=frozenset({ranked[-1]}),
                                                                  exclude=frozenset({ranked[-1]}))]


def test_the_hybrid_prompt_and_the_training_forward_keep_hidden_chunks_out(model, tasks, monkeypatch):
    national = tasks[0]
    ctx = model.compress([LOREM])
    hidden = national.answer_chunks()
    passages = model.read(QUESTION, ctx, "hybrid", target=national.target, raw_tokens=10_000).passages
    assert {i for i, _ in passages} == {0, 1, 2}
    passages = model.read(QUESTION, ctx, "hybrid", target=national.target, raw_tokens=10_000, exclude=hidden).passages
    assert {i for i, _ in passages} == {1, 2}

    seen = []
    real = HybridReader.read

    def spy(self, *args, **kwargs):
        reading = real(self, *args, **kwargs)
        seen.append(({i for i, _ in reading.passages}, kwargs.get("exclude", frozenset())))
        return reading

    monkeypatch.setattr(HybridReader, "read", spy)
    monkeypatch.setattr(model.config, "hybrid_raw_tokens", 10_000)  # room for every chunk: only `hidden` keeps one out
    model([national, dataclasses.replace(national, hidden=hidden)], "hybrid")
    assert seen == [({0, 1, 2}, frozenset()), ({1, 2}, hidden)]


# ---- 3. distillation -----------------------------------------------------------------------------------------------

def test_distillation_adds_a_non_negative_term_to_reasoning_only(model, tasks):
    batch = [*tasks, Task("reasoning", tasks[0].chunks, "26 October", QUESTION, mode="rag")]
    plain = model(batch, "hybrid")
    torch.testing.assert_close(model(batch, "hybrid", distill=0.0), plain, rtol=0, atol=0)
    half, whole = model(batch, "hybrid", distill=0.5), model(batch, "hybrid", distill=1.0)
    assert model.decoder.lora_active  # the teacher's block gave the LoRA back
    torch.testing.assert_close(model(batch, "hybrid"), plain, rtol=0, atol=0)
    for i, task in enumerate(batch):
        if task.kind == "reasoning" and task.mode != "rag":
            assert half[i] > plain[i] + 1e-6, (i, task.mode)  # the teacher reading the passages disagrees
            torch.testing.assert_close(whole[i] - plain[i], 2 * (half[i] - plain[i]), rtol=1e-3, atol=1e-5)  # weight x KL
        else:  # restating, and text RAG (no soft tokens to teach), get no teacher
            torch.testing.assert_close(half[i], plain[i], rtol=0, atol=0)
    # a batch still gives each task's own loss
    alone = torch.stack([model(task, "hybrid", distill=0.5) for task in batch])
    torch.testing.assert_close(half, alone, rtol=1e-4, atol=1e-4)


def test_the_distillation_term_alone_trains_the_decoder_lora(model, tasks):
    model.zero_grad(set_to_none=True)
    (model(tasks[:2], "hybrid", distill=1.0).sum() - model(tasks[:2], "hybrid").sum()).backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and n.startswith("decoder.") and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the KL term trains the student
    model.zero_grad(set_to_none=True)


def test_the_teacher_is_the_decoder_as_frozen_and_training_does_not_move_it(tiny_config, tasks):
    model = build_tiny_model(tiny_config, seed=2)
    model.trainable_parameters()
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    saved = model.trained_state_dict().keys()
    model.freeze_teacher()
    assert [n for n, _ in model.named_parameters()] == names and model.trained_state_dict().keys() == saved  # not a part
    prompt = model.read(QUESTION, model.compress([LOREM]), "rag", target="26 October").prompt
    with torch.no_grad():
        student, teacher = model.decoder.target_logits([prompt])[0], model.decoder.target_logits([prompt], teacher=True)[0]
        torch.testing.assert_close(teacher, student, rtol=1e-4, atol=1e-4)  # the starting checkpoint reading rag
        lora_b = next(p for n, p in model.named_parameters() if n.startswith("decoder.") and "lora_B" in n)
        lora_b.add_(0.5)  # a training step moves the student ...
        moved = model.decoder.target_logits([prompt])[0]
        assert not torch.allclose(moved, student, atol=1e-3)
        torch.testing.assert_close(model.decoder.target_logits([prompt], teacher=True)[0], teacher, rtol=0, atol=0)  # not it


def test_a_distilling_trainer_freezes_its_teacher_before_it_resumes(tiny_dirs, data, tmp_path, monkeypatch):
    frozen = []
    real = trainer_module.E2LLM.freeze_teacher
    real_resume = trainer_module.Trainer.resume
    monkeypatch.setattr(trainer_module.E2LLM, "freeze_teacher", lambda self: (frozen.append("teacher"), real(self))[1])
    monkeypatch.setattr(trainer_module.Trainer, "resume", lambda self: (frozen.append("resume"), real_resume(self))[1])
    steps = ["--max-steps", "2", "--save-every", "1", "--distill", "0.5"]
    finetune.run(_args(tiny_dirs, data[0], data[1], tmp_path / "run", *steps))
    assert frozen == ["teacher"]
    frozen.clear()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000002")  # as if killed after step 1
    finetune.run(_args(tiny_dirs, data[0], data[1], tmp_path / "run", *steps, "--resume"))
    assert frozen == ["teacher", "resume"]  # the starting checkpoint teaches, not the weights resumed from


@pytest.mark.parametrize("which", ["understanding-only", "rag-only"])
def test_distillation_on_a_batch_without_a_teacher_adds_nothing(model, tasks, which):
    """A batch of restate windows only (a step of text lines), or of text-RAG questions, has no teacher to ask."""
    batch = [tasks[2], tasks[5]] if which == "understanding-only" else [dataclasses.replace(tasks[0], mode="rag")]
    torch.testing.assert_close(model(batch, "hybrid", distill=0.5), model(batch, "hybrid"), rtol=0, atol=0)


# ---- 4. the trainer reads batches -----------------------------------------------------------------------------------

def _args(tiny_dirs, train, evaluation, output, *extra):
    encoder, decoder = tiny_dirs
    return ["--data", str(train), "--eval-data", str(evaluation), "--output", str(output), "--encoder", encoder,
            "--decoder", decoder, "--chunk-tokens", "24", "--encoder-lora-r", "2", "--decoder-lora-r", "2",
            "--eval-examples", "3", *extra]


def _cursors(out):
    return {int(p.name.removeprefix("step-")): json.loads((p / state.STATE_JSON).read_text())["cursor"]
            for p in state.list_checkpoints(out / "checkpoints")}


@pytest.mark.parametrize("batch, accum", [(2, 1), (2, 2)])
def test_the_trainer_reads_batches_and_advances_its_cursor_by_them(tiny_dirs, data, tmp_path, batch, accum):
    out = tmp_path / "run"
    argv = _args(tiny_dirs, data[0], data[1], out, "--max-steps", "3", "--save-every", "1", "--keep-checkpoints", "3",
                 "--batch-size", str(batch), "--grad-accum", str(accum), "--eval-every", "2")
    summary = finetune.run(argv)
    assert summary["steps"] == 3 and "eval_loss_reasoning" in summary
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if '"lr"' in line]
    assert [r["step"] for r in log] == [1, 2, 3]
    per_step = batch * accum
    # every example gives one or two tasks (its question, maybe a restate window), none too long
    assert all(per_step <= r["tasks"] <= 2 * per_step for r in log), [r["tasks"] for r in log]
    assert all(r["grad_norm"] > 0 and any(k.startswith("loss_") for k in r) for r in log)
    assert _cursors(out) == {step: step * per_step for step in (1, 2, 3)}


def test_a_killed_batched_hybrid_recipe_run_resumes_to_the_same_weights(tiny_dirs, data, tmp_path, monkeypatch):
    steps = ["--max-steps", "4", "--save-every", "2", "--batch-size", "2", "--grad-accum", "2", "--seed", "3",
             "--mode", "hybrid", "--soft-ratio", "0.3", "--answer-out-ratio", "0.5", "--distill", "0.5"]
    assert finetune.main(_args(tiny_dirs, data[0], data[1], tmp_path / "whole", *steps)) == 0

    real_step = trainer_module.Trainer.train_step
    calls = {"n": 0}

    def dies_after_three(self):
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")  # after the step-2 save, before step 4
        calls["n"] += 1
        return real_step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(_args(tiny_dirs, data[0], data[1], tmp_path / "killed", *steps))
    monkeypatch.setattr(trainer_module.Trainer, "train_step", real_step)
    assert _cursors(tmp_path / "killed") == {2: 8}
    assert finetune.main(_args(tiny_dirs, data[0], data[1], tmp_path / "killed", *steps, "--resume")) == 0

    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines() if '"lr"' in line]
    assert all(r["tasks"] >= 4 for r in log)


def test_distillation_in_rag_mode_trains_like_no_distillation(tiny_dirs, data, tmp_path):
    """--mode rag has no soft tokens to teach: --distill changes nothing (and does not break the step)."""
    runs = {}
    for distill in ("0", "0.5"):
        out = tmp_path / f"rag-{distill}"
        finetune.run(_args(tiny_dirs, data[0], data[1], out, "--mode", "rag", "--max-steps", "2", "--batch-size", "2",
                           "--distill", distill))
        runs[distill] = load_file(out / "model.safetensors")
    for name in runs["0"]:
        torch.testing.assert_close(runs["0.5"][name], runs["0"][name], rtol=0, atol=0)


# ---- 5. the recipe: how each reasoning task is read -----------------------------------------------------------------

def _read_all(tasks, n=200, **args):
    args = TrainingArgs(data="unused", output="unused", **args)
    return [trainer_module.read_as(task, args, random.Random(i)) for i in range(n) for task in tasks]


def test_read_as_follows_the_ratios_in_hybrid_mode_and_changes_nothing_elsewhere(model):
    chunks = model.chunk([LOREM])
    question = Task("reasoning", chunks, "26 October", QUESTION)
    restate = Task("understanding", chunks[:2], "".join(c.text for c in chunks[:2]).strip())

    read = _read_all([question, restate], mode="hybrid", soft_ratio=1.0, answer_out_ratio=1.0)
    assert all(t.mode == "soft" and t.hidden == frozenset() for t in read if t.kind == "reasoning")
    assert all(t == restate for t in read if t.kind == "understanding")

    read = _read_all([question], mode="hybrid", answer_out_ratio=1.0)
    assert all(t.mode is None and t.hidden == {0} == question.answer_chunks() for t in read)

    for mode in ("soft", "rag"):
        assert all(t == question for t in _read_all([question], mode=mode, soft_ratio=1.0, answer_out_ratio=1.0))
    assert all(t == question for t in _read_all([question], mode="hybrid"))  # both ratios 0: the plain hybrid task

    read = _read_all([question], n=1000, mode="hybrid", soft_ratio=0.3, answer_out_ratio=0.5)
    soft = sum(t.mode == "soft" for t in read) / len(read)
    hidden = sum(bool(t.hidden) for t in read) / len(read)
    assert 0.25 < soft < 0.35 and 0.3 < hidden < 0.4  # 0.7 x 0.5 of them hide the answer
    assert not any(t.mode == "soft" and t.hidden for t in read)
    # deterministic in the rng: a resumed run reads each task as before
    assert _read_all([question], n=50, mode="hybrid", soft_ratio=0.3, answer_out_ratio=0.5) == read[:50]


def test_a_line_that_names_its_mode_is_read_as_it_says(model, tmp_path):
    from e2llm_plugin.training.data import DataError, JsonlDataset, make_tasks

    path = tmp_path / "pinned.jsonl"
    line = {"context": LOREM, "prompt": QUESTION, "answer": "26 October"}
    path.write_text(json.dumps({**line, "mode": "hybrid"}) + "\n" + json.dumps(line) + "\n")
    pinned, free = (make_tasks(JsonlDataset(path).read(i), model, random.Random(0), 0.0, 2)[0] for i in range(2))
    assert pinned.mode == "hybrid" and free.mode is None
    read = _read_all([pinned, free], mode="hybrid", soft_ratio=1.0, answer_out_ratio=1.0)
    assert all(t == pinned for t in read[::2])  # never soft alone, never its answer hidden
    assert all(t.mode == "soft" for t in read[1::2])
    path.write_text(json.dumps({**line, "mode": "raw"}) + "\n")
    with pytest.raises(DataError, match=r"pinned.jsonl:1: 'mode' must be one of \['soft', 'hybrid', 'rag'\]"):
        JsonlDataset(path)


def test_an_encoder_gradient_budget_keeps_the_losses_and_the_answers_gradient(model, tasks, monkeypatch):
    """Chunks past the budget are encoded without gradient: the same losses, the encoder's gradient from fewer chunks,
    the answer's chunk among those that keep it."""
    national = dataclasses.replace(tasks[0], mode="soft")  # every chunk's soft tokens read, none replaced by its text
    model.zero_grad(set_to_none=True)
    full = model([national], "hybrid")
    full.sum().backward()
    lora = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("encoder.") and p.grad is not None}
    model.zero_grad(set_to_none=True)
    budget = model([national], "hybrid", encoder_grad_chunks=1)
    torch.testing.assert_close(budget, full, rtol=1e-5, atol=1e-5)
    budget.sum().backward()
    partial = {n: p.grad for n, p in model.named_parameters() if n.startswith("encoder.") and p.grad is not None}
    assert partial.keys() == lora.keys() and any(g.abs().sum() > 0 for g in partial.values())
    assert not all(torch.allclose(partial[n], lora[n]) for n in lora)  # two chunks' gradient left out
    adapter = [p.grad for n, p in model.named_parameters() if n.startswith("adapter.")]
    assert all(g is not None for g in adapter)
    model.zero_grad(set_to_none=True)
    # the chunk that keeps the gradient is the answer's
    encoded, forward = [], model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda texts: encoded.append((texts, torch.is_grad_enabled()))
                        or forward(texts))
    model([national], "hybrid", encoder_grad_chunks=1)
    (with_grad, on), (without, off) = encoded
    answer = national.chunks[min(national.answer_chunks())].text
    assert on and not off and with_grad == [answer] and answer not in without and len(without) == 2


# ---- 6. bad flags ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--batch-size", "-2"), ("--soft-ratio", "1.5"),
                                         ("--soft-ratio", "-0.1"), ("--answer-out-ratio", "-0.1"),
                                         ("--answer-out-ratio", "2"), ("--distill", "-1"),
                                         ("--encoder-grad-chunks", "-1")])
def test_bad_recipe_flags_are_refused_naming_the_flag(tiny_dirs, data, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    assert finetune.main(_args(tiny_dirs, data[0], data[1], out, "--mode", "hybrid", "--max-steps", "1", flag, value)) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetune: error: ") and flag in err and "must be" in err
    assert not out.exists()
