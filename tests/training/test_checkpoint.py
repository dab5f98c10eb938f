"""Checkpoints: atomic, rotated, loadable without executing code, and clear when broken."""

import os
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


def _scramble_tensor_bytes(path: Path, seed: int) -> None:
    """Random bytes in place of the tensors, under the intact safetensors header."""
    raw = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    noise = torch.randint(0, 256, (len(raw) - header_end,), generator=torch.Generator().manual_seed(seed))
    raw[header_end:] = bytes(noise.to(torch.uint8).tolist())
    path.write_bytes(bytes(raw))


def test_random_bytes_under_an_intact_header_are_caught_before_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = ckpt.save_checkpoint(tmp_path, 1, _model(0), _state(1), keep_last=1, is_best=False)
    _scramble_tensor_bytes(folder / ckpt.WEIGHTS, seed=0)
    target = _model(1)
    before = target.embed.W_E.clone()
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors does not match the sha256 recorded"):
        ckpt.read_weights(folder, target)
    assert torch.equal(target.embed.W_E, before), "refused before any weight was copied"
    # without the checksum, the header still parses: the bytes would load as weights
    (folder / ckpt.CHECKSUMS).unlink()
    with pytest.raises(ckpt.CheckpointError, match="are not finite"):  # random float32 bits: some nan or inf
        ckpt.read_weights(folder, target)
    assert "has no checksums.json" in capsys.readouterr().err


def test_weights_that_are_not_finite_are_refused(tmp_path: Path) -> None:
    model = _model(0)
    with torch.no_grad():
        model.embed.W_E[3, 1] = float("nan")
    folder = ckpt.save_checkpoint(tmp_path, 1, model, _state(1), keep_last=1, is_best=False)
    with pytest.raises(ckpt.CheckpointError, match=r"are not finite \(nan or inf in embed.W_E\)"):
        ckpt.read_weights(folder, _model(1))


def test_a_checkpoint_from_before_checksums_loads_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(0)
    folder = ckpt.save_checkpoint(tmp_path, 4, model, _state(4), keep_last=1, is_best=False)
    (folder / ckpt.CHECKSUMS).unlink()
    restored = _model(1)
    ckpt.read_weights(folder, restored)
    assert ckpt.read_state(folder)["step"] == 4 and torch.equal(restored.embed.W_E, model.embed.W_E)
    assert capsys.readouterr().err.count("loading it unverified") == 1, "one warning per checkpoint"


def _full_state(step: int) -> dict[str, object]:
    return {
        "step": step,
        "best_val": float("inf"),
        "skipped": 0,
        "optimizer": {"state": {}, "param_groups": []},
        "config": {},
        "tokenizer": "{}",
        "data_rng": [torch.get_rng_state()],
        "router_rng": [None],
        "rng": [{"torch": torch.get_rng_state(), "python": [], "numpy": []}],
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"step": -5}, "step must be a non-negative integer, not -5"),
        ({"step": "5"}, "step must be a non-negative integer, not '5'"),
        ({"best_val": float("nan")}, "best_val must be a non-negative number or inf"),
        ({"tokenizer": 3}, "tokenizer must be a tokenizer as JSON text"),
        ({"optimizer": [1]}, "optimizer must be an optimizer state"),
        ({"rng": [{"torch": 1}]}, "rng must be a list of RNG states"),
        ({"router_rng": [None, None]}, "must hold one entry per rank"),
        ({"skipped": None}, "lacks the key 'skipped'"),
    ],
    ids=["negative-step", "string-step", "nan-best", "tokenizer", "optimizer", "rng", "ranks", "missing"],
)
def test_a_state_with_a_missing_key_or_a_wrong_typed_value_is_refused_naming_both(
    tmp_path: Path, edit: dict[str, object], message: str
) -> None:
    state = {**_full_state(2), **edit}
    if edit == {"skipped": None}:
        del state["skipped"]
    folder = ckpt.save_checkpoint(tmp_path, 2, _model(0), state, keep_last=1, is_best=False)
    assert ckpt.read_state(folder)["format"] == ckpt.FORMAT_VERSION, "no fields asked: any plain state reads"
    with pytest.raises(ckpt.CheckpointError, match=str(folder / ckpt.STATE)) as caught:
        ckpt.read_state(folder, ckpt.RESUME_FIELDS)
    assert message in str(caught.value)
    ckpt.read_state(ckpt.save_checkpoint(tmp_path, 3, _model(0), _full_state(3), 1, False), ckpt.RESUME_FIELDS)


def test_best_is_a_link_swapped_in_one_rename_and_old_layouts_still_load(tmp_path: Path) -> None:
    model, folder = _model(0), ckpt.checkpoints_dir(tmp_path)
    ckpt.save_checkpoint(tmp_path, 1, model, _state(1), keep_last=1, is_best=True)
    ckpt.save_checkpoint(tmp_path, 2, model, _state(2), keep_last=1, is_best=True)
    link = folder / "best"
    assert link.is_symlink() and str(link.readlink()) == "best-0000002"
    assert sorted(p.name for p in folder.iterdir()) == ["best", "best-0000002", "step_0000002"]
    assert ckpt.read_state(ckpt.resolve(tmp_path, "best"))["step"] == 2
    # killed after the best folder was written but before the link swap: the newer folder is unused
    # until the next start cleans it; the link still names a whole best
    (folder / "best-0000003").mkdir()
    (folder / ".saving-abc").mkdir()
    (folder / ".best-link-123").symlink_to("best-0000003")
    assert ckpt.read_state(ckpt.resolve(tmp_path, "best"))["step"] == 2
    assert ckpt.clean_leftovers(tmp_path) == [".best-link-123", ".saving-abc", "best-0000003"]
    # a kill before any link existed: the newest best folder is the best
    link.unlink()
    assert ckpt.resolve(tmp_path, "best").name == "best-0000002"
    # a run from before best was a link: its best/ folder is moved aside by the next best save
    os.replace(folder / "best-0000002", folder / "best")
    assert ckpt.read_state(ckpt.resolve(tmp_path, "best"))["step"] == 2
    ckpt.save_checkpoint(tmp_path, 5, model, _state(5), keep_last=1, is_best=True)
    assert sorted(p.name for p in folder.iterdir()) == ["best", "best-0000005", "step_0000005"]
