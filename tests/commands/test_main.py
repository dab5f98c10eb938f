"""The `transformer` entry point: every user error of every command is caught in one place and
printed as `transformer COMMAND: error: MESSAGE` on one line with status 2, bugs keep their
traceback, the run commands share one spelling of --run/--checkpoint/--device, and `--help`
answers without importing torch."""

import signal
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


@pytest.mark.parametrize(
    ("command", "handler", "argv"),
    [
        ("chat", "transformer.commands.generate.chat", ["chat", "--run", "RUN"]),
        ("generate", "transformer.commands.generate.continuation", ["generate", "--run", "RUN"]),
        ("eval", "transformer.commands.eval.run_eval", ["eval", "--run", "RUN"]),
        ("routes", "transformer.commands.routes.run_routes", ["routes", "--run", "RUN", "--data", "builtin"]),
        ("plot", "transformer.analysis.plotting.plot_runs", ["plot", "RUN"]),
        (
            "data prepare",
            "transformer.commands.data._prepare",
            ["data", "prepare", "SRC", "--out", "OUT", "--tokenizer", "char"],
        ),
    ],
)
def test_ctrl_c_in_any_command_is_one_line_and_status_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, handler: str, argv: list[str]
) -> None:
    """Before, Ctrl-C in `chat` (waiting on input) or a long `eval` printed a KeyboardInterrupt traceback."""

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(handler, interrupted)
    monkeypatch.setattr("transformer.inference.loading.load_trained", lambda *_: None)
    monkeypatch.setattr("transformer.commands.generate.chosen_device", lambda *_: "cpu")
    code, out, err = run_cli(argv, capsys)
    assert (code, out) == (130, "")
    assert err.endswith(f"transformer {command}: interrupted\n") and err.count("\n") == 1, err


def test_sigint_to_a_waiting_command_ends_it_quietly_with_status_130() -> None:
    """A real SIGINT, not a raised exception: `transformer plot`'s handler, replaced by one that
    waits on stdin as `chat` does (and imports no torch, so the process starts fast), gets Ctrl-C."""
    script = (
        "import sys, transformer.commands.plot as plot\n"
        "plot.run_plot = lambda args: (print('waiting', flush=True), sys.stdin.readline(), 0)[2]\n"
        "from transformer.commands.main import main\n"
        "sys.exit(main(['plot', 'RUN']))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline() == "waiting\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err == "transformer plot: interrupted\n"


def test_stop_at_must_be_a_positive_step(capsys: pytest.CaptureFixture[str]) -> None:
    """Before, `--stop-at -5` exited 0 having done nothing."""
    for value in ("-5", "0", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--stop-at", value])
        assert exit_info.value.code == 2
        assert f"argument --stop-at: '{value}' is not a whole number >= 1" in capsys.readouterr().err


def test_an_out_dir_that_is_a_file_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    code, _, err = run_cli(["train", "--set", f"train.out_dir={taken}"], capsys)
    assert code == 2
    assert err == f"transformer train: error: train.out_dir='{taken}': {taken} is a file, not a folder\n"


@pytest.mark.parametrize("command", [["eval", "--run", "RUN"], ["routes", "--run", "RUN", "--data", "builtin"]])
def test_a_seed_torch_cannot_take_is_refused_by_argparse(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, `--seed 10**30` reached `torch.Generator().manual_seed` and died with its ValueError."""
    for value in (str(10**30), "-1"):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--seed", value])
        assert exit_info.value.code == 2 and "argument --seed:" in capsys.readouterr().err
