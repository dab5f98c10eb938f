"""`transformer exercise CHAPTER [--reset]`: run a chapter's tests against the learner's code.

The learner's code is `exercises/CHAPTER.py` in the current folder (a repository checkout: the
tests live in tests/, not in the installed package). The first run copies the pristine stub
there; `--reset` copies it back over the learner's work. The tests run with pytest (the dev
dependency group), stopping at the first failure, in file order: small checks, then the exact
reference, then what the module learns. docs/exercises.md walks through it.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from transformer.commands.errors import CommandError
from transformer.exercises import CHAPTERS


def add_exercise_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "exercise",
        help="test your own exercises/CHAPTER.py against the chapter's tests (see docs/exercises.md)",
        description="Copies the chapter's stub to exercises/CHAPTER.py if it is not there yet, then runs "
        "the chapter's test file, model/test_CHAPTER.py, with your code in place of the package's. "
        "Run it from the repository root.",
    )
    parser.add_argument("chapter", choices=CHAPTERS, metavar="CHAPTER", help=f"one of: {', '.join(CHAPTERS)}")
    parser.add_argument("--reset", action="store_true", help="restore exercises/CHAPTER.py to the untouched stub")
    parser.add_argument(
        "--all", action="store_true", help="run every test, not only up to the first failure (default: stop there)"
    )
    parser.set_defaults(handler=run_exercise, prog=parser.prog)


def run_exercise(args: argparse.Namespace) -> int:
    from transformer.exercises.swap import pristine_path

    chapter: str = args.chapter
    tests = Path("tests") / "model" / f"test_{chapter}.py"
    own = Path("exercises") / f"{chapter}.py"
    if args.reset or not own.exists():
        own.parent.mkdir(exist_ok=True)
        shutil.copyfile(pristine_path(chapter), own)
        print(f"{own}: {'reset to' if args.reset else 'copied from'} the untouched stub; fill it in")
        if args.reset:
            return 0
    if not tests.is_file():
        raise CommandError(f"{tests} not found: run `transformer exercise` from the root of a repository checkout")
    command = [sys.executable, "-m", "pytest", "--exercises", str(tests), "-q", "-p", "no:randomly"]
    if not args.all:
        command.append("-x")
    return subprocess.call(command)
