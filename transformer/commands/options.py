"""The options of every command that opens a trained run, declared once so that generate, chat,
eval and routes spell, default and explain them alike."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from transformer.devices import DEVICE_CHOICES

if TYPE_CHECKING:
    import torch


def add_run_options(parser: argparse.ArgumentParser, hf: bool = False) -> None:
    """`--run DIR`, `--checkpoint latest|best|PATH` and `--device auto|cpu|cuda`; with `hf`,
    `--hf NAME` in place of `--run` (a Hugging Face model: transformer/inference/hf_run.py)."""
    source = parser.add_mutually_exclusive_group(required=True) if hf else parser
    source.add_argument("--run", type=Path, required=not hf, help="the run directory (its train.out_dir)")
    if hf:
        source.add_argument(
            "--hf",
            metavar="NAME|FOLDER",
            help="a Hugging Face GPT-2 model instead of a run: a Hub id (e.g. gpt2; downloads once) or a folder",
        )
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
