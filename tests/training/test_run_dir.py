"""Run directories are never clobbered: resume rules, the lock, and what a stop leaves behind."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config
from transformer.training import checkpoint as ckpt
from transformer.training.objective import Objective, compute_objective
from transformer.training.trainer import TrainingError, train


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))


def _fingerprint(run_dir: Path) -> dict[str, str]:
    """Every file under the run's checkpoints, by relative path, with its sha256."""
    folder = ckpt.checkpoints_dir(run_dir)
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_resume_continues_only_this_directorys_latest_checkpoint_or_branches(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, False)
    run_dir = Path(config.train.out_dir)
    train(config)
    before = _fingerprint(run_dir)
    older = ckpt.checkpoints_dir(run_dir) / "step_0000003"
    with pytest.raises(TrainingError, match="before this run's latest checkpoint step_0000006"):
        train(tiny_run_config(tmp_path, False, "train.max_steps=9"), resume=str(older))
    # another run's checkpoint into a directory holding a run
    other_run = tiny_run_config(tmp_path / "other", False, "train.max_steps=9")
    shutil.copytree(older, ckpt.checkpoints_dir(Path(other_run.train.out_dir)) / "step_0000001")
    with pytest.raises(TrainingError, match="is not one of its own, and .* already holds a run"):
        train(other_run, resume=str(ckpt.checkpoints_dir(run_dir) / "step_0000006"))
    # settings a resume cannot honour are refused, not ignored-but-recorded
    for override, message in (
        (("train.tokenizer=bpe", "train.vocab_size=300"), "train.tokenizer='bpe' cannot apply on resume"),
        (("train.seed=7",), "train.seed=7 cannot apply on resume"),
    ):
        with pytest.raises(ckpt.CheckpointError, match=message):
            train(tiny_run_config(tmp_path, False, "train.max_steps=9", *override), resume="latest")
    with pytest.raises(TrainingError, match="train.max_steps=6: nothing left to train"):
        train(config, resume="latest")
    with pytest.raises(TrainingError, match="--stop-at 4 is not after the checkpoint's step 6"):
        train(tiny_run_config(tmp_path, False, "train.max_steps=9"), resume="latest", stop_at=4)
    with pytest.raises(TrainingError, match="--stop-at -5: give a step of at least 1"):
        train(config, stop_at=-5)
    assert _fingerprint(run_dir) == before, "no refusal touched the run"
    # branching the older checkpoint into a new directory works and leaves the run as it was
    branch = tiny_run_config(tmp_path / "branch", False)
    assert train(branch, resume=str(older)).steps == 6
    assert [p.name for p in ckpt.step_checkpoints(Path(branch.train.out_dir))] == ["step_0000006"]
    assert _fingerprint(run_dir) == before


def test_an_edited_state_is_refused_on_resume(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, False, "train.max_steps=2", "train.checkpoint_interval=2")
    train(config)
    folder = ckpt.resolve(Path(config.train.out_dir), "latest")
    state = torch.load(folder / ckpt.STATE, weights_only=True)
    torch.save({**state, "step": -5}, folder / ckpt.STATE)
    with pytest.raises(ckpt.CheckpointError, match="does not match the sha256"):
        train(config, resume="latest")
    ckpt.record_checksums(folder)  # edited with care: the checksum matches, the value still cannot be
    with pytest.raises(ckpt.CheckpointError, match="state.pt: step must be a non-negative integer, not -5"):
        train(config, resume="latest")


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from transformer.training.run_lock import RunLock
lock = RunLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_trainer_is_refused_and_a_dead_trainers_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_run_config(tmp_path, False, "train.max_steps=1")
    run_dir = Path(config.train.out_dir)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"is in use by another trainer \(pid {holder.pid} on "):
            train(config)
        assert not ckpt.checkpoints_dir(run_dir).exists() and not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything
        holder.wait()
    assert train(config).steps == 1
    assert f"taking over the lock of {run_dir} from pid {holder.pid}" in capsys.readouterr().err
    assert (run_dir / ".lock").read_text() == "", "a trainer that ends releases its lock"
    with pytest.raises(TrainingError, match="is a file, not a directory"):
        train(tiny_run_config(tmp_path, False, f"train.out_dir={tmp_path / 'corpus' / 'doc00.txt'}"))


def _signal_on_call(monkeypatch: pytest.MonkeyPatch, call: int, number: int) -> None:
    import transformer.training.trainer as trainer_module

    calls = {"n": 0}

    def signalled(*args: Any, **kwargs: Any) -> Objective:
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), number)
        return compute_objective(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "compute_objective", signalled)


def _signal_during_saves(monkeypatch: pytest.MonkeyPatch, numbers: list[int]) -> list[int]:
    """Each save first receives the signals in `numbers` (then writes): the steps saved."""
    saved: list[int] = []
    real = ckpt.save_checkpoint

    def interrupted_save(run_dir: Path, step: int, *args: Any, **kwargs: Any) -> Path:
        for number in numbers:
            os.kill(os.getpid(), number)
            time.sleep(0.005)
        saved.append(step)
        return real(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", interrupted_save)
    return saved


def test_sigterm_saves_like_ctrl_c_and_signals_during_the_save_only_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_run_config(tmp_path, False, "train.checkpoint_interval=100", "train.eval_interval=100")
    run_dir = Path(config.train.out_dir)
    _signal_on_call(monkeypatch, 4, signal.SIGTERM)
    saved = _signal_during_saves(monkeypatch, [signal.SIGINT, signal.SIGTERM])  # two more, 5 ms apart
    result = train(config)
    assert result.interrupted and result.steps == 3 and saved == [3]
    err = capsys.readouterr().err
    assert "interrupted by SIGTERM at step 3: saving a checkpoint" in err
    assert err.count("already stopping, wait for the checkpoint to be written") == 2 and "Traceback" not in err
    assert f"checkpoint saved in {ckpt.checkpoints_dir(run_dir) / 'step_0000003'}" in err
    assert ckpt.read_state(ckpt.resolve(run_dir, "latest"), ckpt.RESUME_FIELDS)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handlers are put back"
    # the first signal arrives during a periodic save: that save completes, and is the stop's checkpoint
    monkeypatch.undo()
    periodic = tiny_run_config(tmp_path / "periodic", False, "train.checkpoint_interval=2", "train.eval_interval=100")
    saved = _signal_during_saves(monkeypatch, [signal.SIGTERM])
    result = train(periodic)
    assert result.interrupted and result.steps == 2 and saved == [2]
    err = capsys.readouterr().err
    assert "SIGTERM received: stopping once this checkpoint is written" in err
    assert "interrupted by SIGTERM at step 2, already saved in" in err


def test_the_non_finite_stop_names_a_checkpoint_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformer.training.trainer as trainer_module

    calls = {"n": 0}

    def nan_from_the_third_step(*args: Any, **kwargs: Any) -> Objective:
        calls["n"] += 1
        objective = compute_objective(*args, **kwargs)
        if calls["n"] >= 3:
            objective.loss = objective.loss * float("nan")
        return objective

    monkeypatch.setattr(trainer_module, "compute_objective", nan_from_the_third_step)
    config = tiny_run_config(tmp_path, False, "train.checkpoint_interval=1", "train.max_bad_steps=2")
    with pytest.raises(TrainingError, match=r"the last good checkpoint is (\S+)$") as caught:
        train(config)
    named = Path(str(caught.value).rsplit(" ", 1)[-1])
    assert named.name == "step_0000002" and (named / ckpt.WEIGHTS).is_file()
    calls["n"] = 2
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        train(tiny_run_config(tmp_path / "early", False, "train.max_bad_steps=2"))


def test_a_signal_while_the_run_starts_is_one_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformer.training.trainer as trainer_module

    def interrupted_preparation(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(trainer_module, "prepare_corpus", interrupted_preparation)
    with pytest.raises(TrainingError, match="interrupted by SIGTERM outside the training steps"):
        train(tiny_run_config(tmp_path, False))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
