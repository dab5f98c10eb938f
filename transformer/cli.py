"""The `transformer` command: one entry point, a subcommand per job."""

import argparse
import sys
from collections.abc import Sequence

from transformer.tokenizer_cli import add_tokenizer_commands, run_tokenizer_command
from transformer.train_cli import add_train_command, run_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer",
        description="Build, train and study transformers and routed decoders made from raw tensors.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="train a tiny decoder on the built-in corpus and print its loss (about a minute)"
    )
    demo.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    demo.add_argument("--seed", type=int, default=0)
    add_train_command(commands)
    add_tokenizer_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from transformer.demo import run_demo

        if args.steps <= 0:
            parser.error(f"--steps must be positive, got {args.steps}")
        run_demo(steps=args.steps, seed=args.seed)
        return 0
    if args.command == "train":
        return run_train(args)
    if args.command == "tokenizer":
        return run_tokenizer_command(args)
    parser.print_help(sys.stdout)
    return 0
