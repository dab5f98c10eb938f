"""`transformer train`: argument parsing around `trainer.train`; its errors are printed by main.py."""

import argparse
from pathlib import Path

from transformer.commands.options import positive_int


def add_train_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "train",
        help="train a model (default: the tiny routed model on the built-in corpus)",
        description="Train a decoder. Under torchrun, every process runs this command: "
        "torchrun --standalone --nproc_per_node=N -m transformer train ...",
    )
    parser.add_argument("--config", type=Path, default=None, help="run config YAML (default: configs/tiny-routed.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=200 --set routing=null",
    )
    parser.add_argument(
        "--resume", default=None, metavar="latest|best|PATH", help="continue the run in train.out_dir from a checkpoint"
    )
    parser.add_argument(
        "--stop-at",
        type=positive_int,
        default=None,
        metavar="STEP",
        help="stop (with a checkpoint) after this step, keeping the schedule of train.max_steps",
    )
    parser.set_defaults(handler=run_train, prog=parser.prog)


def run_train(args: argparse.Namespace) -> int:
    from transformer.training.config import check_out_dir, load_run_config
    from transformer.training.trainer import train

    config = load_run_config(args.config, args.overrides)
    check_out_dir(config.train)
    result = train(config, resume=args.resume, stop_at=args.stop_at)
    return 130 if result.interrupted else 0
