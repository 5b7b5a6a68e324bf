"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory is a normal `E2LLM.from_pretrained` checkpoint plus `training_state.safetensors` (optimizer
moments, RNG) and `training_state.json` (step, data position, scheduler, losses), written by `files.write_directory`,
so a run killed mid-save leaves the previous checkpoint intact and no half-written one behind.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..files import recover, write_directory

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(model, optimizer, scheduler, info: dict, directory: Path, keep: int = 2) -> Path:
    """Write `directory/step-N` (its state JSON last: it marks the save complete) and keep only the newest `keep`."""
    final = directory / f"step-{info['step']:07d}"
    with write_directory(final, marker=STATE_JSON) as staging:
        model.save_pretrained(staging)
        tensors, meta = optimizer_to_flat(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, staging / STATE_TENSORS)
        meta.update(info, scheduler=scheduler.state_dict(), python_rng=_jsonable(random.getstate()))
        (staging / STATE_JSON).write_text(json.dumps(meta, indent=1))
    for old in list_checkpoints(directory)[:-keep]:
        # Its marker first: a removal cut short must not leave a checkpoint that looks complete but lacks files.
        (old / STATE_JSON).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(model, optimizer, scheduler, path: Path) -> dict:
    model.load_trained_weights(path / "model.safetensors")
    tensors = load_file(path / STATE_TENSORS)
    meta = json.loads((path / STATE_JSON).read_text())
    optimizer_from_flat(optimizer, tensors, meta)
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return meta


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete saves, oldest first. What a killed save left behind is finished if it can be, else removed."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if not (match := _STEP_DIR.match(path.name)) or not path.is_dir():
            continue
        recover(path, STATE_JSON)
        if (path / STATE_JSON).exists():
            found.append((int(match.group(1)), path))
        else:  # a save killed before its files were complete: nothing in it can be resumed from
            shutil.rmtree(path, ignore_errors=True)
    return [p for _, p in sorted(found)]


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value
