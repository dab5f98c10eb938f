"""Checkpoints that resume a run exactly and never execute code when loaded.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` in the run directory:
- `model.safetensors`: the weights (safetensors: plain tensors, tied weights handled);
- `state.pt`: everything else (optimizer moments, step, every RNG state, each rank's data and
  routing generators, the run config, the tokenizer), made only of tensors, numbers, strings,
  lists and dicts, so it loads with `torch.load(weights_only=True)`: no pickled code.

Writes are atomic: the folder is written under a temporary name and renamed into place, so
a crash mid-save leaves the previous checkpoints as they were. The last `keep_last` step
folders are kept, plus `best/` (lowest validation loss so far).
"""

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from transformer.errors import UserError

STEP_FOLDER = re.compile(r"^step_(\d+)$")
WEIGHTS, STATE = "model.safetensors", "state.pt"
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt or made for another model."""


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders of interrupted saves are not)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FOLDER.match(p.name))]
    return [path for _, path in sorted(found)]


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, state: dict[str, Any], keep_last: int, is_best: bool
) -> Path:
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        save_model(model, str(temporary / WEIGHTS))
        torch.save({"format": FORMAT_VERSION, **state}, temporary / STATE)
        final = folder / f"step_{step:07d}"
        if final.exists():
            shutil.rmtree(final)
        if is_best:
            _replace_dir(_copy_dir(temporary, folder), folder / "best")
        os.replace(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for old in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _copy_dir(source: Path, parent: Path) -> Path:
    copy = Path(tempfile.mkdtemp(prefix=".saving-", dir=parent))
    for item in source.iterdir():
        shutil.copy2(item, copy / item.name)
    return copy


def _replace_dir(new: Path, target: Path) -> None:
    """Put `new` at `target`; the old `target` stays whole until the new one is in place."""
    retired = target.with_name(f".retired-{target.name}")
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        os.replace(target, retired)
    os.replace(new, target)
    shutil.rmtree(retired, ignore_errors=True)


def resolve(run_dir: Path, which: str) -> Path:
    """`latest`, `best`, or a path to a checkpoint folder."""
    if which == "latest":
        found = step_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"no checkpoint in {checkpoints_dir(run_dir)} to resume from")
        return found[-1]
    if which == "best":
        best = checkpoints_dir(run_dir) / "best"
        if not best.is_dir():
            raise CheckpointError(f"no best checkpoint in {checkpoints_dir(run_dir)}")
        return best
    path = Path(which)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (give latest, best or a checkpoint folder)")
    return path


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {STATE} is missing") from error
    except Exception as error:  # corrupt or foreign file: say so in one line
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CheckpointError(f"checkpoint {checkpoint / STATE} cannot be read: {reason}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {checkpoint} has an unknown format")
    return state


def read_weights(checkpoint: Path, model: nn.Module) -> None:
    path = checkpoint / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {WEIGHTS} is missing")
    try:
        device = next(model.parameters()).device
        missing, unexpected = load_model(model, str(path), strict=False, device=str(device))
    except Exception as error:
        raise CheckpointError(f"weights in {path} do not fit this model: {error}") from error
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {path} do not fit this model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
