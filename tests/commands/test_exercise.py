"""`transformer exercise`: the first run copies the stub for the learner, --reset restores it,
and the chapter's tests run with the learner's code swapped in; outside a checkout it is one
line of error."""

import subprocess
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from transformer.exercises.swap import pristine_path


def test_reset_restores_the_untouched_stub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "exercises" / "attention.py"
    code, out, _ = run_cli(["exercise", "attention", "--reset"], capsys)
    assert code == 0 and "reset" in out
    assert own.read_text() == pristine_path("attention").read_text()
    own.write_text("# the learner's half-done work\n")
    run_cli(["exercise", "attention", "--reset"], capsys)
    assert own.read_text() == pristine_path("attention").read_text()


def test_outside_a_checkout_the_stub_is_copied_then_one_line_of_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["exercise", "norm"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "tests/model/test_norm.py not found" in err
    assert (tmp_path / "exercises" / "norm.py").read_text() == pristine_path("norm").read_text()


def test_runs_the_chapters_tests_with_the_learners_code_and_keeps_their_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests" / "model").mkdir(parents=True)
    (tmp_path / "tests" / "model" / "test_mlp.py").write_text("")
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "mlp.py").write_text("# the learner's work\n")
    ran: list[list[str]] = []

    def fake_call(command: list[str]) -> int:
        ran.append(command)
        return 1

    monkeypatch.setattr(subprocess, "call", fake_call)
    code, _, _ = run_cli(["exercise", "mlp"], capsys)
    assert code == 1  # pytest's status: a test failed
    assert ran[0][-6:] == ["--exercises", "tests/model/test_mlp.py", "-q", "-p", "no:randomly", "-x"]
    assert (tmp_path / "exercises" / "mlp.py").read_text() == "# the learner's work\n"


def test_an_unknown_chapter_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(["exercise", "config"], capsys)
    assert exited.value.code == 2
    assert "invalid choice: 'config'" in capsys.readouterr().err
