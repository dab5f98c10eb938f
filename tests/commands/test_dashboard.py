"""`transformer dashboard`'s one-line errors, before any server starts: no runs where it looks,
a bad port, and the dashboard extra missing."""

import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from transformer.commands.dashboard import MISSING_DASH


def fake_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 2.0}\n')
    return folder


def test_a_folder_without_runs_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["dashboard", str(tmp_path)], capsys)
    assert code == 2
    assert (
        err
        == f"transformer dashboard: error: {tmp_path} holds no run: no metrics.jsonl in it or in any folder below it\n"
    )


def test_a_bad_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["dashboard", str(fake_run(tmp_path / "a")), "--port", "70000"], capsys)
    assert (code, err) == (2, "transformer dashboard: error: --port 70000 is not a port number (1-65535)\n")


def test_without_the_extra_the_error_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("transformer.dashboard.app", "transformer.dashboard.figures"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "dash", None)  # import dash now raises ImportError
    code, _, err = run_cli(["dashboard", str(fake_run(tmp_path / "a"))], capsys)
    assert (code, err) == (2, f"transformer dashboard: error: {MISSING_DASH}\n")
    assert "pip install 'transformer[dashboard]'" in MISSING_DASH
