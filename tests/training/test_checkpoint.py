"""Checkpoints: atomic, rotated, loadable without executing code, and clear when broken."""

from pathlib import Path

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.model.decoder import Decoder
from transformer.training import checkpoint as ckpt


def _model(seed: int, **overrides: object) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(tiny_config(**overrides))


def _state(step: int) -> dict[str, object]:
    return {"step": step, "rng": torch.get_rng_state(), "note": "ok", "values": [1.5, 2]}


def test_save_then_load_restores_weights_and_state(tmp_path: Path) -> None:
    saved = _model(0)
    written = _state(5)
    ckpt.save_checkpoint(tmp_path, 5, saved, written, keep_last=2, is_best=False)
    loaded = _model(1)
    folder = ckpt.resolve(tmp_path, "latest")
    ckpt.read_weights(folder, loaded)
    for (name, a), b in zip(saved.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    state = ckpt.read_state(folder)
    assert state["step"] == 5 and state["values"] == [1.5, 2]
    assert torch.equal(state["rng"], written["rng"])  # type: ignore[arg-type]
    # the state file is plain data: it loads with the safe unpickler
    torch.load(folder / ckpt.STATE, weights_only=True)


def test_tied_embeddings_save_and_load(tmp_path: Path) -> None:
    saved = _model(0, tie_embeddings=True)
    ckpt.save_checkpoint(tmp_path, 1, saved, _state(1), keep_last=1, is_best=False)
    loaded = _model(1, tie_embeddings=True)
    ckpt.read_weights(ckpt.resolve(tmp_path, "latest"), loaded)
    assert torch.equal(loaded.unembed.weight, saved.embed.W_E.T)


def test_keeps_the_last_n_plus_best(tmp_path: Path) -> None:
    model = _model(0)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, model, _state(step), keep_last=2, is_best=step == 2)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert ckpt.read_state(ckpt.resolve(tmp_path, "best"))["step"] == 2
    assert ckpt.read_state(ckpt.resolve(tmp_path, "latest"))["step"] == 4
    leftovers = [p.name for p in ckpt.checkpoints_dir(tmp_path).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_failure_mid_save_leaves_the_previous_checkpoints_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(0)
    ckpt.save_checkpoint(tmp_path, 1, model, _state(1), keep_last=1, is_best=True)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full (injected)")

    # the torch.save the checkpoint module calls: weights written, then the state write fails
    monkeypatch.setattr("transformer.training.checkpoint.torch.save", crash)
    with pytest.raises(OSError, match="injected"):
        ckpt.save_checkpoint(tmp_path, 2, _model(9), _state(2), keep_last=1, is_best=True)
    monkeypatch.undo()
    for which in ("latest", "best"):
        folder = ckpt.resolve(tmp_path, which)
        assert ckpt.read_state(folder)["step"] == 1
        restored = _model(5)
        ckpt.read_weights(folder, restored)
        assert torch.equal(restored.embed.W_E, model.embed.W_E)
    assert not [p for p in ckpt.checkpoints_dir(tmp_path).iterdir() if p.name.startswith(".saving")]


def test_broken_or_foreign_checkpoints_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        ckpt.resolve(tmp_path, "latest")
    with pytest.raises(ckpt.CheckpointError, match="no best checkpoint"):
        ckpt.resolve(tmp_path, "best")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve(tmp_path, str(tmp_path / "nowhere"))
    folder = ckpt.save_checkpoint(tmp_path, 3, _model(0), _state(3), keep_last=1, is_best=False)
    with pytest.raises(ckpt.CheckpointError, match="do not fit this model"):
        ckpt.read_weights(folder, _model(0, d_model=32))
    (folder / ckpt.STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="state.pt does not match the sha256 recorded"):
        ckpt.read_state(folder)
    ckpt.record_checksums(folder)  # the same bytes as if written so: the reader itself refuses them
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.read_state(folder)
    (folder / ckpt.WEIGHTS).unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.read_weights(folder, _model(0))


def test_a_state_holding_code_is_refused_on_load(tmp_path: Path) -> None:
    folder = ckpt.save_checkpoint(tmp_path, 1, _model(0), _state(1), keep_last=1, is_best=False)
    torch.save({"format": ckpt.FORMAT_VERSION, "payload": Path("/")}, folder / ckpt.STATE)
    ckpt.record_checksums(folder)
    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.read_state(folder)
