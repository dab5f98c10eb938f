"""A trained run opens to the same model that training saved; bad runs give one-line errors."""

from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config
from transformer.inference.loading import load_trained
from transformer.routing.decoder import RoutedDecoder
from transformer.training import checkpoint as ckpt
from transformer.training.objective import compute_objective
from transformer.training.trainer import train


def test_loads_the_saved_weights_tokenizer_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    config = tiny_run_config(tmp_path, True, "train.max_steps=3")
    train(config)
    run = load_trained(Path(config.train.out_dir))
    assert run.step == 3 and run.config == config.with_vocab(run.tokenizer.vocab_size)
    assert isinstance(run.model, RoutedDecoder) and run.model.cfg.d_vocab == run.tokenizer.vocab_size
    assert not run.model.training
    text = "The assert statement"
    assert run.tokenizer.decode(run.tokenizer.encode(text)) == text
    from safetensors.torch import load_file

    saved = load_file(str(run.checkpoint / ckpt.WEIGHTS))
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    tokens = torch.tensor([run.tokenizer.encode(text[:13])])
    loss = compute_objective(run.model, tokens).lm_loss
    assert torch.isfinite(loss)


def _rewrite_saved_model_config(run_dir: Path, model: dict[str, object]) -> None:
    folder = ckpt.resolve(run_dir, "latest")
    state = ckpt.read_state(folder)
    state["config"]["model"] = model
    torch.save(state, folder / ckpt.STATE)
    ckpt.record_checksums(folder)


def test_a_checkpoint_from_before_the_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints used to record the model section as written, so d_vocab may be absent (the
    tokenizer's size, as then) and an `attention` key is refused with its new name."""
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    config = tiny_run_config(tmp_path, False, "train.max_steps=3")
    train(config)
    run_dir = Path(config.train.out_dir)
    as_written = {"d_model": 16, "n_heads": 2, "n_layers": 2, "n_ctx": 16, "positional": "learned"}
    _rewrite_saved_model_config(run_dir, as_written)
    run = load_trained(run_dir)
    assert run.config == config.with_vocab(run.tokenizer.vocab_size)  # the same model as saved today
    _rewrite_saved_model_config(run_dir, {**as_written, "attention": "fast"})
    with pytest.raises(ckpt.CheckpointError) as caught:
        load_trained(run_dir)
    assert str(caught.value).endswith(
        "has no usable config or tokenizer: model.attention was renamed model.kernels: write kernels: fast"
    )


def test_bad_run_directories_and_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        load_trained(tmp_path / "nowhere")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint in"):
        load_trained(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no best checkpoint"):
        load_trained(tmp_path, "best")


def test_weights_that_are_not_finite_are_refused_by_every_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saved with intact checksums (a run that diverged, or a hand-made file): eval must not
    print nan and exit 0, generate must not die inside multinomial."""
    from safetensors.torch import load_file, save_file

    from transformer.commands.main import main

    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    config = tiny_run_config(tmp_path, False, "train.max_steps=2", "train.checkpoint_interval=2")
    train(config)
    run_dir = Path(config.train.out_dir)
    folder = ckpt.resolve(run_dir, "latest")
    weights = load_file(str(folder / ckpt.WEIGHTS))
    weights["embed.W_E"][0, 0] = float("inf")
    save_file(weights, str(folder / ckpt.WEIGHTS))
    ckpt.record_checksums(folder)
    with pytest.raises(ckpt.CheckpointError, match=r"are not finite \(nan or inf in embed.W_E\)"):
        load_trained(run_dir)
    capsys.readouterr()
    for command in (["eval", "--run", str(run_dir)], ["generate", "--run", str(run_dir), "--prompt", "The"]):
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and "are not finite" in captured.err and captured.err.count("\n") == 1, command
