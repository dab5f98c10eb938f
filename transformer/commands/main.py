"""The `transformer` command: one entry point, a subcommand per job.

Each subcommand's parser names its handler (`set_defaults(handler=...)`); `main` calls it and is
the one place a `UserError` becomes `transformer COMMAND: error: MESSAGE` on stderr with exit
status 2, the form and status of argparse's own errors, and where Ctrl-C (KeyboardInterrupt)
becomes `transformer COMMAND: interrupted` with status 130 (128 + SIGINT, what a shell reports),
so leaving `chat`, `eval` or `plot` early is never a traceback. Any other exception is a bug
and keeps its traceback. Handlers import torch and the rest themselves, so `transformer --help` does not.
"""

import argparse
import sys
from collections.abc import Sequence

from transformer.commands.dashboard import add_dashboard_command
from transformer.commands.data import add_data_commands
from transformer.commands.eval import add_eval_command
from transformer.commands.exercise import add_exercise_command
from transformer.commands.generate import add_generate_commands
from transformer.commands.plot import add_plot_command
from transformer.commands.routes import add_routes_command
from transformer.commands.tokenizer import add_tokenizer_commands
from transformer.commands.train import add_train_command
from transformer.errors import UserError

INTERRUPTED = 130  # 128 + SIGINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer",
        description="Build, train and study transformers and routed decoders made from raw tensors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_command(commands)
    add_tokenizer_commands(commands)
    add_data_commands(commands)
    add_generate_commands(commands)
    add_plot_command(commands)
    add_eval_command(commands)
    add_routes_command(commands)
    add_dashboard_command(commands)
    add_exercise_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stdout)
        return 0
    try:
        status: int = args.handler(args)
    except UserError as error:
        print(f"{args.prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return status


def one_line(error: UserError) -> str:
    """The message with any line breaks folded into spaces: a user error is one line."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
