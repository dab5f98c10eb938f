"""The `transformer` command: one entry point, a subcommand per job."""

import argparse
import sys
from collections.abc import Sequence

from transformer.commands.eval import add_eval_command, run_eval
from transformer.commands.generate import add_generate_commands, run_generate_command
from transformer.commands.plot import add_plot_command, run_plot
from transformer.commands.routes import add_routes_command, run_routes
from transformer.commands.tokenizer import add_tokenizer_commands, run_tokenizer_command
from transformer.commands.train import add_train_command, run_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer",
        description="Build, train and study transformers and routed decoders made from raw tensors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_command(commands)
    add_tokenizer_commands(commands)
    add_generate_commands(commands)
    add_plot_command(commands)
    add_eval_command(commands)
    add_routes_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args)
    if args.command == "tokenizer":
        return run_tokenizer_command(args)
    if args.command in ("generate", "chat"):
        return run_generate_command(args)
    if args.command == "plot":
        return run_plot(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "routes":
        return run_routes(args)
    parser.print_help(sys.stdout)
    return 0
