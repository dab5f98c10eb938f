"""Checkpoints that resume a run exactly, never execute code when loaded, and are verified first.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` in the run directory:
- `model.safetensors`: the weights (safetensors: plain tensors, tied weights handled);
- `state.pt`: everything else (optimizer moments, step, every RNG state, each rank's data and
  routing generators, the run config, the tokenizer), made only of tensors, numbers, strings,
  lists and dicts, so it loads with `torch.load(weights_only=True)`: no pickled code;
- `checksums.json`: the sha256 of both files, taken when they were written. A file whose bytes
  changed since (a bad disk, a half-copied folder, random bytes under an intact safetensors
  header) is refused before anything reads it. Checkpoints written before checksums existed
  load with a warning: refusing them would strand every older run, and their state is still
  validated field by field.

Writes are atomic: the folder is written under a temporary name and renamed into place, so a
crash mid-save leaves the previous checkpoints as they were. The last `keep_last` step folders
are kept. The best one (lowest validation loss so far) is `best-NNNNNNN/` (hard links to the
step folder's files), and `best` is a symbolic link to it, swapped by one atomic rename: at no
moment is there no best checkpoint.
"""

import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from transformer.errors import UserError

STEP_FOLDER = re.compile(r"^step_(\d+)$")
BEST_FOLDER = re.compile(r"^best-(\d+)$")
WEIGHTS, STATE, CHECKSUMS = "model.safetensors", "state.pt", "checksums.json"
BEST = "best"
FORMAT_VERSION = 1
LEFTOVER_PREFIXES = (".saving-", ".retired-", ".best-link-")


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete, corrupt or made for another model."""


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def step_of(folder: Path) -> int | None:
    match = STEP_FOLDER.match(folder.name) or BEST_FOLDER.match(folder.name)
    return int(match.group(1)) if match else None


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders of interrupted saves are not)."""
    return _numbered(checkpoints_dir(run_dir), STEP_FOLDER)


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


# --- saving ------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, state: dict[str, Any], keep_last: int, is_best: bool
) -> Path:
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    final = folder / f"step_{step:07d}"
    try:
        save_model(model, str(temporary / WEIGHTS))
        torch.save({"format": FORMAT_VERSION, **state}, temporary / STATE)
        record_checksums(temporary)
        _fsync_dir(temporary)
        if is_best:
            _point_best_at(_linked_copy(temporary, folder / f"best-{step:07d}"), folder)
        _put_in_place(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for old in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def record_checksums(folder: Path) -> None:
    """Write `checksums.json` for the weights and state in `folder` (also for tools that rewrite a state)."""
    sums = {name: _sha256(folder / name) for name in (WEIGHTS, STATE) if (folder / name).is_file()}
    text = json.dumps({"format": FORMAT_VERSION, "sha256": sums}, indent=1)
    partial = folder / f".{CHECKSUMS}.partial"
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, folder / CHECKSUMS)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    """Flush the files' bytes before the rename that publishes them: a power cut after the rename
    must not leave a checkpoint whose name says complete and whose files are empty."""
    for item in folder.iterdir():
        with item.open("rb") as stream:
            os.fsync(stream.fileno())


def _linked_copy(source: Path, target: Path) -> Path:
    """`target`, holding `source`'s files as hard links (no second copy on disk) or copies."""
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target.parent))
    for item in source.iterdir():
        try:
            os.link(item, staging / item.name)
        except OSError:  # a filesystem without hard links
            shutil.copy2(item, staging / item.name)
    _put_in_place(staging, target)
    return target


def _put_in_place(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an old `target` (a save of the same step) is retired first."""
    if target.exists():
        retired = target.with_name(f".retired-{target.name}")
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
        os.replace(new, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(new, target)


def _point_best_at(best_folder: Path, folder: Path) -> None:
    """Swap the `best` link to `best_folder` in one rename, then drop the best folders it left."""
    link = folder / BEST
    if link.is_dir() and not link.is_symlink():  # a run from before best was a link
        _legacy_best_to_folder(link)
    pending = folder / f".best-link-{os.getpid()}"
    pending.unlink(missing_ok=True)
    pending.symlink_to(best_folder.name)
    os.replace(pending, link)
    for old in _numbered(folder, BEST_FOLDER):
        if old != best_folder:
            shutil.rmtree(old, ignore_errors=True)


def _legacy_best_to_folder(best: Path) -> None:
    try:
        step = int(torch.load(best / STATE, map_location="cpu", weights_only=True)["step"])
    except Exception:  # unreadable: it is replaced by a readable best in a moment anyway
        step = 0
    os.replace(best, best.with_name(f"best-{step:07d}"))


def clean_leftovers(run_dir: Path) -> list[str]:
    """Remove what killed saves left (temporary folders, best folders no link points at); the names removed."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    link = folder / BEST
    pointed = os.readlink(link) if link.is_symlink() else None
    removed = []
    for item in folder.iterdir():
        stray = item.name.startswith(LEFTOVER_PREFIXES)
        unused_best = BEST_FOLDER.match(item.name) is not None and pointed is not None and item.name != pointed
        if stray or unused_best:
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
            removed.append(item.name)
    return sorted(removed)


# --- finding -----------------------------------------------------------------------------


def resolve(run_dir: Path, which: str) -> Path:
    """`latest`, `best`, or a path to a checkpoint folder."""
    if which == "latest":
        found = step_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"no checkpoint in {checkpoints_dir(run_dir)} to resume from")
        return found[-1]
    if which == BEST:
        best = best_checkpoint(run_dir)
        if best is None:
            raise CheckpointError(f"no best checkpoint in {checkpoints_dir(run_dir)}")
        return best
    path = Path(which)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (give latest, best or a checkpoint folder)")
    return path


def best_checkpoint(run_dir: Path) -> Path | None:
    """The folder `best` names; if a kill came before the link was ever made, the newest best folder."""
    folder = checkpoints_dir(run_dir)
    link = folder / BEST
    if link.is_dir():
        return link
    found = _numbered(folder, BEST_FOLDER)
    return found[-1] if found else None


# --- loading -----------------------------------------------------------------------------

_warned_unverified: set[Path] = set()


def verify(checkpoint: Path, name: str) -> None:
    """Refuse `checkpoint/name` if its bytes differ from the sha256 recorded at save."""
    sums_path = checkpoint / CHECKSUMS
    if not sums_path.is_file():
        if checkpoint not in _warned_unverified:
            _warned_unverified.add(checkpoint)
            print(
                f"warning: checkpoint {checkpoint} has no {CHECKSUMS} (written before checksums were recorded): "
                "loading it unverified",
                file=sys.stderr,
            )
        return
    try:
        recorded = json.loads(sums_path.read_text(encoding="utf-8"))["sha256"][name]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {checkpoint}: {CHECKSUMS} is unreadable or lacks {name}") from error
    if _sha256(checkpoint / name) != recorded:
        raise CheckpointError(
            f"checkpoint {checkpoint}: {name} does not match the sha256 recorded when it was saved "
            "(corrupt or edited): use another checkpoint"
        )


def read_state(checkpoint: Path, fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """The state, verified against its checksum, with each of `fields` checked (see STATE_FIELDS)."""
    if not (checkpoint / STATE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {STATE} is missing")
    verify(checkpoint, STATE)
    try:
        state = torch.load(checkpoint / STATE, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign file: say so in one line
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CheckpointError(f"checkpoint {checkpoint / STATE} cannot be read: {reason}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {checkpoint} has an unknown format")
    for name in fields:
        check, expected = STATE_FIELDS[name]
        if name not in state:
            raise CheckpointError(f"checkpoint {checkpoint / STATE} lacks the key {name!r} ({expected})")
        if not check(state[name]):
            shown = repr(state[name])[:60]
            raise CheckpointError(f"checkpoint {checkpoint / STATE}: {name} must be {expected}, not {shown}")
    per_rank = [len(state[name]) for name in ("data_rng", "router_rng", "rng") if name in fields]
    if per_rank and (min(per_rank) < 1 or len(set(per_rank)) > 1):
        raise CheckpointError(
            f"checkpoint {checkpoint / STATE}: data_rng, router_rng and rng must hold one entry per rank"
        )
    return state


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _loss(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value) and value >= 0


def _optimizer(value: object) -> bool:
    return (
        isinstance(value, dict) and isinstance(value.get("state"), dict) and isinstance(value.get("param_groups"), list)
    )


def _tensors(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, torch.Tensor) for item in value)


def _routes(value: object) -> bool:
    return isinstance(value, list) and all(item is None or isinstance(item, torch.Tensor) for item in value)


def _rng_states(value: object) -> bool:
    keys = {"torch", "python", "numpy"}
    return isinstance(value, list) and all(isinstance(item, dict) and keys <= item.keys() for item in value)


STATE_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "step": (_count, "a non-negative integer"),
    "skipped": (_count, "a non-negative integer"),
    "best_val": (_loss, "a non-negative number or inf"),
    "optimizer": (_optimizer, "an optimizer state (a mapping with state and param_groups)"),
    "config": (lambda value: isinstance(value, dict), "a mapping of config sections"),
    "tokenizer": (lambda value: isinstance(value, str), "a tokenizer as JSON text"),
    "data_rng": (_tensors, "a list of generator states, one per rank"),
    "router_rng": (_routes, "a list of generator states (or None), one per rank"),
    "rng": (_rng_states, "a list of RNG states (torch, python, numpy), one per rank"),
}
RUN_FIELDS = ("step", "config", "tokenizer")
"""What opening a trained model reads."""
RESUME_FIELDS = tuple(STATE_FIELDS)
"""What resuming a run reads."""


def read_weights(checkpoint: Path, model: nn.Module) -> None:
    path = checkpoint / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} is incomplete: {WEIGHTS} is missing")
    verify(checkpoint, WEIGHTS)
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
    bad = [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not tensor.isfinite().all()
    ]
    if bad:
        raise CheckpointError(
            f"weights in {path} are not finite (nan or inf in {', '.join(bad[:3])}): use an earlier checkpoint"
        )
