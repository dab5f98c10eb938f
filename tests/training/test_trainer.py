"""The training loop: loss goes down, runs resume bit for bit, bad steps are skipped, the CLI works."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config
from transformer.commands.main import main
from transformer.training import checkpoint as ckpt
from transformer.training.objective import Objective, compute_objective
from transformer.training.run_log import read_log
from transformer.training.trainer import TrainingError, train


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))


def _weights(run_dir: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt.resolve(run_dir, which) / ckpt.WEIGHTS))


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "plain"])
def test_resume_is_bitwise_exact(tmp_path: Path, routed: bool) -> None:
    """2n steps straight == n steps, stop, resume, n more steps: weights, optimizer and log."""
    straight = tiny_run_config(tmp_path / "a", routed)
    train(straight)
    split = tiny_run_config(tmp_path / "b", routed)
    first = train(split, stop_at=3)
    assert first.steps == 3
    second = train(split, resume="latest")
    assert second.steps == 6
    a, b = _weights(straight_dir := Path(straight.train.out_dir)), _weights(Path(split.train.out_dir))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    state_a = ckpt.read_state(ckpt.resolve(straight_dir, "latest"))
    state_b = ckpt.read_state(ckpt.resolve(Path(split.train.out_dir), "latest"))
    for moments_a, moments_b in zip(
        state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(moments_a["exp_avg"], moments_b["exp_avg"])
    train_a = {r["step"]: r["loss"] for r in read_log(straight_dir / "metrics.jsonl") if r["kind"] == "train"}
    train_b = {
        r["step"]: r["loss"] for r in read_log(Path(split.train.out_dir) / "metrics.jsonl") if r["kind"] == "train"
    }
    assert train_a == train_b


def test_a_padded_d_vocab_is_saved_resumed_and_must_match(tmp_path: Path) -> None:
    """The checkpoint records the d_vocab the model was built with; a resume fills in its own
    config the same way before comparing, so only a real difference is refused."""
    padded = tiny_run_config(tmp_path, False, "model.d_vocab=400")
    assert train(padded, stop_at=3).steps == 3
    state = ckpt.read_state(ckpt.resolve(Path(padded.train.out_dir), "latest"))
    assert (
        state["config"]["model"]["d_vocab"] == 400 and _weights(Path(padded.train.out_dir))["embed.W_E"].shape[0] == 400
    )
    assert train(padded, resume="latest").steps == 6
    other = tiny_run_config(tmp_path, False, "model.d_vocab=416")
    with pytest.raises(ckpt.CheckpointError, match=r"the checkpoint's model config differs from this run's"):
        train(other, resume="latest")


def test_loss_falls_and_the_run_leaves_checkpoints_and_a_parseable_log(tmp_path: Path) -> None:
    config = tiny_run_config(
        tmp_path, True, "train.max_steps=30", "train.eval_interval=15", "train.checkpoint_interval=15"
    )
    result = train(config)
    run_dir = Path(config.train.out_dir)
    records = read_log(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(losses) == 30 and [r["step"] for r in evals] == [15, 30]
    vocab = json.loads((run_dir / "tokenizer.json").read_text())  # the char vocabulary
    assert losses[0] == pytest.approx(math.log(len(vocab["model"]["vocab"])), abs=0.3), "starts near ln(V)"
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, "training lowers the loss"
    assert result.final_val_loss == evals[-1]["val_loss"]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    routed_eval = evals[-1]
    assert {"sampled_route_loss", "usage", "usage_entropy", "decision_entropy"} <= routed_eval.keys()
    assert len(routed_eval["usage"]) == 2 and len(routed_eval["usage"][0]) == 3
    train_record = next(r for r in records if r["kind"] == "train")
    expected_fields = {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "usage_entropy", "usage"}
    assert expected_fields <= train_record.keys()
    assert [p.name for p in ckpt.step_checkpoints(run_dir)] == ["step_0000015", "step_0000030"]
    assert (ckpt.checkpoints_dir(run_dir) / "best").is_dir()


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_routing_metrics_are_read_only_on_the_steps_that_log_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, granularity: str
) -> None:
    """Reading a routed decoder's usage back makes the host wait for the device, so the steps
    between two log records skip it; the records still carry it, last step included."""
    from transformer.routing.routed_base import RoutedBase

    read_at: list[int] = []
    original = RoutedBase._usage_metrics

    def counted(self: RoutedBase, info: Any) -> dict[str, Any]:
        read_at.append(len(read_at))
        return original(self, info)

    monkeypatch.setattr(RoutedBase, "_usage_metrics", counted)
    config = tiny_run_config(
        tmp_path, True, "train.max_steps=7", "train.log_interval=3", f"routing.granularity={granularity}"
    )
    train(config)
    records = [r for r in read_log(Path(config.train.out_dir) / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [3, 6, 7]
    assert all({"usage", "usage_entropy", "decision_entropy"} <= r.keys() for r in records)
    assert len(read_at) == 3


def test_non_finite_losses_are_skipped_and_too_many_in_a_row_stop_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformer.training.trainer as trainer_module

    real = compute_objective
    calls = {"n": 0}

    def sometimes_nan(*args: Any, **kwargs: Any) -> Objective:
        calls["n"] += 1
        objective = real(*args, **kwargs)
        if calls["n"] in (2, 3):  # the 2nd and 3rd optimizer steps blow up
            objective.loss = objective.loss * float("nan")
            objective.lm_loss = objective.lm_loss * float("nan")
        return objective

    monkeypatch.setattr(trainer_module, "compute_objective", sometimes_nan)
    result = train(tiny_run_config(tmp_path / "some", False, "train.max_steps=4"))
    assert result.steps == 4 and result.skipped_steps == 2
    monkeypatch.setattr(trainer_module, "compute_objective", lambda *a, **k: _all_nan(real(*a, **k)))
    with pytest.raises(TrainingError, match="3 steps in a row had a non-finite loss"):
        train(tiny_run_config(tmp_path / "all", False, "train.max_bad_steps=3"))


def _all_nan(objective: Objective) -> Objective:
    objective.loss = objective.loss * float("nan")
    objective.lm_loss = objective.lm_loss * float("nan")
    return objective


def test_a_prepared_folder_trains_exactly_like_its_source(tmp_path: Path) -> None:
    """train.data=DIR, prepared once by `transformer data prepare`, and train.data=FOLDER, prepared
    into the cache at start, are the same run: same tokens, same windows, same weights."""
    from_source = tiny_run_config(tmp_path / "a", False)
    train(from_source)
    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", from_source.train.data, "--tokenizer", "char", "--out", str(prepared)]) == 0
    from_folder = tiny_run_config(tmp_path / "b", False, f"train.data={prepared}")
    train(from_folder)
    a, b = _weights(Path(from_source.train.out_dir)), _weights(Path(from_folder.train.out_dir))
    assert all(torch.equal(a[name], b[name]) for name in a)
    logs = [read_log(Path(c.train.out_dir) / "metrics.jsonl") for c in (from_source, from_folder)]
    assert [(r["kind"], r.get("loss")) for r in logs[0]] == [(r["kind"], r.get("loss")) for r in logs[1]]
    wrong = tiny_run_config(
        tmp_path / "c", False, f"train.data={prepared}", "train.tokenizer=bpe", "train.vocab_size=300"
    )
    with pytest.raises(TrainingError, match="was prepared with a char tokenizer, not bpe"):
        train(wrong)


def test_cli_trains_and_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_run_config(tmp_path, True)
    corpus, out = config.train.data, config.train.out_dir
    common = [
        "--set",
        "model.d_model=16",
        "--set",
        "model.n_heads=2",
        "--set",
        "model.n_layers=2",
        "--set",
        "model.n_ctx=16",
        "--set",
        f"train.data={corpus}",
        "--set",
        f"train.out_dir={out}",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.max_steps=4",
        "--set",
        "train.eval_interval=2",
        "--set",
        "routing.route_prefix_len=4",
        "--set",
        "train.sample_tokens=20",
    ]
    assert main(["train", *common]) == 0
    printed = capsys.readouterr()
    assert "final val loss" in printed.out and "sample:" in printed.out
    assert (Path(out) / "metrics.jsonl").is_file()
    assert main(["train", *common, "--set", "train.max_stepz=3"]) == 2
    assert "error: unknown train setting(s) ['max_stepz']" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                *common,
                "--set",
                f"train.out_dir={tmp_path / 'other'}",
                "--set",
                f"train.data={tmp_path / 'missing.txt'}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "missing.txt" in err and "Traceback" not in err
    assert main(["train", *common, "--set", f"train.out_dir={tmp_path / 'empty'}", "--resume", "latest"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # a second fresh run into the same folder is refused: it would overwrite the first's checkpoints
    assert main(["train", *common]) == 2
    assert "already holds a run (checkpoints up to step_0000004)" in capsys.readouterr().err
    # resuming with a different model is refused, not silently mixed
    assert main(["train", *common, "--set", "model.d_model=32", "--resume", "latest"]) == 2
    assert "model config differs" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformer.training.trainer as trainer_module

    real = compute_objective
    calls = {"n": 0}

    def interrupted_on_the_fourth_step(*args: Any, **kwargs: Any) -> Objective:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "compute_objective", interrupted_on_the_fourth_step)
    config = tiny_run_config(tmp_path, True, "train.checkpoint_interval=100", "train.eval_interval=100")
    result = train(config)
    assert result.interrupted and result.steps == 3
    assert "interrupted at step 3: saving a checkpoint" in capsys.readouterr().err
    run_dir = Path(config.train.out_dir)
    assert ckpt.read_state(ckpt.resolve(run_dir, "latest"))["step"] == 3
    monkeypatch.setattr(trainer_module, "compute_objective", real)
    assert train(config, resume="latest").steps == 6


def test_a_fresh_run_moves_aside_the_log_of_a_run_that_died_before_any_checkpoint(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, False, "train.max_steps=2")
    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')
    train(config)
    moved = list(run_dir.glob("metrics.before-*.jsonl"))
    assert len(moved) == 1 and "9.0" in moved[0].read_text()
    assert [r["step"] for r in read_log(run_dir / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]
