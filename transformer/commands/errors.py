"""One rule for every command: a user's mistake is one line on stderr and exit status 2.

A missing file, a misspelled config key or a corrupt checkpoint deserves a sentence that says
what to do, not a traceback. Each package error type below carries such a sentence; commands
run their work through `report`, which prints it. Anything else is a bug and keeps its
traceback.
"""

import sys
from collections.abc import Callable

from transformer.errors import UserError


class CommandError(UserError):
    """A request that cannot be carried out as given; a one-line message that says why."""


def user_errors() -> tuple[type[Exception], ...]:
    # imported here, not at the top: `transformer --help` should not have to load torch
    from transformer.data.corpus import DataError
    from transformer.data.tokenizer import TokenizerError
    from transformer.inference.generation import GenerationError
    from transformer.model.config import ConfigError
    from transformer.training.checkpoint import CheckpointError
    from transformer.training.trainer import TrainingError

    return (CommandError, CheckpointError, ConfigError, DataError, GenerationError, TokenizerError, TrainingError)


def report(command: str, action: Callable[[], int]) -> int:
    """`action()`'s exit status, or 2 after printing a user error as `transformer COMMAND: error: ...`."""
    try:
        return action()
    except user_errors() as error:
        print(f"transformer {command}: error: {error}", file=sys.stderr)
        return 2
