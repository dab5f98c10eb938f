"""The options of every command that opens a trained run, declared once so that generate, chat,
eval and routes spell, default and explain them alike."""

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from transformer.devices import DEVICE_CHOICES

if TYPE_CHECKING:
    import torch


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (`--stop-at -5` is refused by argparse's own
    one-line error, not run as a request to do nothing)."""
    return _bounded_int(text, 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    return _bounded_int(text, 0, "a whole number >= 0")


def seed_int(text: str) -> int:
    """An argparse type: a seed torch's generators take, 0 <= seed < 2**63."""
    value = _bounded_int(text, 0, "a whole number >= 0")
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is too large for a seed (at most 2**63 - 1)")
    return value


def finite_float(text: str) -> float:
    """An argparse type: a number that is not nan or infinite (ranges are checked where it is used)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded_int(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


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
