"""The `transformer` entry point: every user error of every command is caught in one place and
printed as `transformer COMMAND: error: MESSAGE` on one line with status 2, bugs keep their
traceback, the run commands share one spelling of --run/--checkpoint/--device, and `--help`
answers without importing torch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import run_cli
from transformer.commands.main import build_parser, main
from transformer.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "tokenizers", "matplotlib", "dash", "plotly")


def _imported_modules(*argv: str) -> set[str]:
    """The modules `python -m transformer ARGV...` imports (from -X importtime), after checking it exits 0."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "transformer", *argv],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: transformer" in done.stdout
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["eval", "--help"],
        ["generate", "--help"],
        ["chat", "--help"],
        ["routes", "--help"],
        ["plot", "--help"],
        ["dashboard", "--help"],
        ["tokenizer", "train", "--help"],
    ],
)
def test_help_does_not_import_torch_or_other_heavy_libraries(argv: list[str]) -> None:
    modules = _imported_modules(*argv)
    assert "transformer.commands.main" in modules  # the measurement sees the package's own imports
    heavy = sorted(name for name in modules if name.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_a_user_error_from_any_command_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(*_: object) -> None:
        raise UserError("the config says one thing\n  and then another")

    monkeypatch.setattr("transformer.training.config.load_run_config", refuse)
    code, out, err = run_cli(["train"], capsys)
    assert (code, out) == (2, "")
    assert err == "transformer train: error: the config says one thing and then another\n"


def test_an_error_that_is_not_a_user_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("transformer.training.config.load_run_config", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train"])


def test_training_on_cuda_without_cuda_is_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["train", "--set", "train.device=cuda", "--set", "train.threads=0"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "transformer train: error: train.device=cuda: no CUDA device is available here; use train.device=cpu "
        "(or train.device=auto, which takes CUDA where there is one)\n"
    )


@pytest.mark.parametrize("command", ["generate", "chat", "eval", "routes"])
def test_the_run_commands_share_run_checkpoint_and_device(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    needed = ["--data", "builtin"] if command == "routes" else []
    args = parser.parse_args([command, "--run", "runs/x", *needed])
    assert (args.run, args.checkpoint, args.device) == (Path("runs/x"), "latest", "auto")
    args = parser.parse_args([command, "--run", "runs/x", "--checkpoint", "best", "--device", "cpu", *needed])
    assert (args.checkpoint, args.device) == ("best", "cpu")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--run", "runs/x", "--device", "tpu", *needed])
    assert exit_info.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err
