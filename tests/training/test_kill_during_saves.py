"""Real trainer processes: killed with SIGKILL at random moments while checkpoints are written,
stopped by SIGTERM from outside, and raced by a second trainer into the same directory."""

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.helpers.tiny_runs import tiny_run_config
from transformer.inference.loading import load_trained
from transformer.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

# The trainer, with every rename, link and state write of a save slowed a little, so that random
# kill times land inside the save sequence rather than between saves.
_SLOW_SAVES = """
import os, sys, time
import torch
from transformer.commands.main import main
from transformer.training import checkpoint
def slowed(real):
    def call(*args, **kwargs):
        time.sleep(0.01)
        return real(*args, **kwargs)
    return call
os.replace, os.link, checkpoint.torch.save = slowed(os.replace), slowed(os.link), slowed(torch.save)
sys.exit(main(sys.argv[1:]))
"""


def _cli_args(tmp_path: Path, *extra: str) -> list[str]:
    config = tiny_run_config(tmp_path, False)
    settings = {
        "model.d_model": 16,
        "model.n_heads": 2,
        "model.n_layers": 2,
        "model.n_ctx": 16,
        "routing": "null",
        "train.data": config.train.data,
        "train.out_dir": config.train.out_dir,
        "train.batch_size": 4,
        "train.eval_batches": 1,
        "train.sample_tokens": 0,
        "train.threads": 1,
    }
    pairs = [f"{key}={value}" for key, value in settings.items()] + list(extra)
    return ["train", *[part for pair in pairs for part in ("--set", pair)]]


def _start(args: list[str], env: dict[str, str], slow_saves: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _SLOW_SAVES, *args] if slow_saves else [sys.executable, "-m", "transformer", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TRANSFORMER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _saving_or_ended(run_dir: Path, trainer: subprocess.Popen[str]) -> bool:
    return _saving_started(run_dir) or trainer.poll() is not None


def _saving_started(run_dir: Path) -> bool:
    folder = ckpt.checkpoints_dir(run_dir)
    return folder.is_dir() and any(folder.iterdir())


def test_killed_at_random_moments_during_saves_the_run_always_resumes(tmp_path: Path) -> None:
    rng = random.Random(0)
    env = _env(tmp_path)
    run_dir = tmp_path / "run"
    every_step = ("train.max_steps=400", "train.checkpoint_interval=1", "train.eval_interval=1", "train.keep_last=2")
    args = _cli_args(tmp_path, *every_step)
    kills, leftovers_seen = 0, 0
    while kills < 6:
        resume = ["--resume", "latest"] if ckpt.step_checkpoints(run_dir) else []
        trainer = _start(args + resume, env, slow_saves=True)
        _wait_for(partial(_saving_or_ended, run_dir, trainer), "the first save")
        time.sleep(rng.uniform(0.0, 0.6))
        trainer.send_signal(signal.SIGKILL)
        trainer.communicate()
        kills += 1
        folder = ckpt.checkpoints_dir(run_dir)
        leftovers_seen += sum(p.name.startswith(ckpt.LEFTOVER_PREFIXES) for p in folder.iterdir())
        latest = load_trained(run_dir, "latest")  # verified against its checksums, weights finite
        best = load_trained(run_dir, "best")
        assert latest.step >= best.step >= 1
    assert leftovers_seen > 0, "no kill landed inside a save: the test did not test the save sequence"
    step = load_trained(run_dir, "latest").step
    final = _start([*args, "--resume", "latest", "--stop-at", str(step + 2)], env)
    _, err = final.communicate()
    assert final.returncode == 0, err
    names = sorted(p.name for p in ckpt.checkpoints_dir(run_dir).iterdir())
    assert not [n for n in names if n.startswith(ckpt.LEFTOVER_PREFIXES)], names
    assert [n for n in names if n.startswith("best")] == ["best", os.readlink(ckpt.checkpoints_dir(run_dir) / "best")]
    assert load_trained(run_dir, "latest").step == step + 2


def test_a_second_trainer_is_refused_and_sigterm_stops_the_first_with_a_checkpoint(tmp_path: Path) -> None:
    env = _env(tmp_path)
    run_dir = tmp_path / "run"
    args = _cli_args(
        tmp_path, "train.max_steps=100000", "train.checkpoint_interval=100000", "train.eval_interval=100000"
    )
    first = _start(args, env)
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() or first.poll() is not None, "the first trainer's steps")
    second = subprocess.run([sys.executable, "-m", "transformer", *args], env=env, capture_output=True, text=True)
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and f"is in use by another trainer (pid {first.pid} on " in second.stderr
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "interrupted by SIGTERM at step" in err and "Traceback" not in err
    step = load_trained(run_dir, "latest").step
    assert step >= 1 and f"checkpoint saved in {ckpt.checkpoints_dir(run_dir) / f'step_{step:07d}'}" in err
