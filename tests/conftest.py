"""Suite-wide settings. Tests' models are tiny: one thread each runs them fastest, and keeps the
suite's timing steady on a loaded 2-core machine (several threads per process oversubscribe it).

`--exercises`: run a chapter's tests against the learner's code instead of the package's
(docs/exercises.md). `pytest --exercises tests/model/test_norm.py` swaps `exercises/norm.py` (or
the pristine stub, if the learner has no copy yet) in for transformer/model/norm.py's names
before any test module is imported."""

import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--exercises",
        action="store_true",
        help="test the learner's exercises/<chapter>.py in place of the package's model/<chapter>.py, "
        "for each chapter whose model/test_<chapter>.py is named on the command line",
    )
    parser.addoption(
        "--exercises-dir", default="exercises", help="the folder of the learner's exercises (default: exercises)"
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("--exercises"):
        return
    from jaxtyping import jaxtyped
    from typeguard import typechecked

    from transformer.exercises import CHAPTERS
    from transformer.exercises.swap import learner_path, load, swap_in

    chapters = [m.group(1) for arg in config.args if (m := re.search(r"test_(\w+)\.py", arg))]
    chapters = [chapter for chapter in chapters if chapter in CHAPTERS]
    if not chapters:
        raise pytest.UsageError(
            "--exercises needs a chapter's test file, tests/model/test_norm.py for norm, "
            f"chapter one of {', '.join(CHAPTERS)}"
        )
    folder = Path(config.getoption("--exercises-dir"))
    if not folder.is_absolute():
        folder = config.rootpath / folder
    used = []
    for chapter in chapters:
        path = learner_path(chapter, folder)
        swap_in(chapter, load(chapter, path), wrap=lambda function: jaxtyped(typechecker=typechecked)(function))
        used.append(f"{chapter} from {path}")
    config.stash[EXERCISES] = used


EXERCISES = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Said last, after the failures, so that the learner sees whose code was judged."""
    used = config.stash.get(EXERCISES, None)
    if used:
        terminalreporter.write_line(f"exercises under test: {'; '.join(used)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a GPU: without one they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
