"""The options of every command that opens a trained run, declared once so that generate, chat,
eval and routes spell, default and explain them alike."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from transformer.devices import DEVICE_CHOICES

if TYPE_CHECKING:
    import torch


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """`--run DIR`, `--checkpoint latest|best|PATH` and `--device auto|cpu|cuda`."""
    parser.add_argument("--run", type=Path, required=True, help="the run directory (its train.out_dir)")
    parser.add_argument(
        "--checkpoint",
        default="latest",
        metavar="latest|best|PATH",
        help="which checkpoint of the run (default: latest)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto (default): CUDA where there is one, else the CPU",
    )


def chosen_device(args: argparse.Namespace) -> "torch.device":
    """The device `--device` names on this machine; a `DeviceError` when it names CUDA and there is none."""
    from transformer.devices import resolve_device

    return resolve_device(args.device, "--device")
