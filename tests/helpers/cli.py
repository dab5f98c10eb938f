"""Run the `transformer` command in-process and capture what it printed."""

import pytest

from transformer.commands.main import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `transformer ARGS...`."""
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
