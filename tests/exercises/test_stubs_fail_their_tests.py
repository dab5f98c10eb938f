"""What CI proves about the exercises (slow: a pytest run per chapter): each chapter's tests fail
on the untouched stub, and pass on a stub solved with the package's own code, swapped in by
`pytest --exercises` exactly as a learner's is. (The package passing them is the default suite.)"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.solved_exercises import write_solved
from transformer.exercises import CHAPTERS

ROOT = Path(__file__).resolve().parents[2]


def chapter_tests(chapter: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "--exercises", str(Path("tests", "model", f"test_{chapter}.py"))]
    command += ["--exercises-dir", str(folder), "-q", "-p", "no:randomly", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_untouched_stub_fails_the_chapters_tests(chapter: str, tmp_path: Path) -> None:
    done = chapter_tests(chapter, tmp_path, "-x")  # an empty folder: the pristine stub is used
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]  # 1: tests failed (not a usage error)
    assert "NotImplementedError: exercise: " in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_stub_solved_right_passes_the_chapters_tests(chapter: str, tmp_path: Path) -> None:
    write_solved(chapter, tmp_path)
    done = chapter_tests(chapter, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"exercises under test: {chapter} from {tmp_path / chapter}.py" in done.stdout
