"""The run's metrics: one JSON object per line, appended, flushed as written.

Append-only JSONL survives crashes (every finished line is valid), resumes by appending, and
plots with a few lines of code. Records carry `kind` ("train" or "eval"); a resumed
run may repeat steps after its checkpoint, and readers keep the last record per step.
"""

import json
import math
from pathlib import Path
from typing import Any, TextIO

import torch

from transformer.training.tensorboard_log import FOLDER as TENSORBOARD_FOLDER
from transformer.training.tensorboard_log import TensorBoardLog, summary_writer_class

# Dense bf16 peak FLOP/s of common accelerators, for the MFU estimate (none on CPU).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


class RunLog:
    """`tensorboard`: also write each record's numbers as TensorBoard scalars into
    `tensorboard/` beside the log (transformer/training/tensorboard_log.py). Every process
    checks that TensorBoard is installed, so a missing one stops all ranks alike; only an
    enabled log (rank 0) writes."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._board: TensorBoardLog | None = None
        if tensorboard:
            summary_writer_class()
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
            if tensorboard:
                self._board = TensorBoardLog(path.parent / TENSORBOARD_FOLDER)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            finite = _finite(record)
            self._file.write(json.dumps(finite) + "\n")
            self._file.flush()
            if self._board is not None:
                self._board.write(finite)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._board is not None:
            self._board.close()


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The log's records (lines torn by a crash are skipped: see `read_records`)."""
    return read_records(path)[0]


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a metrics log, and the numbers of the lines that are not JSON objects: a
    line torn by a crash (the process killed mid-write, then resumed, appending after the
    fragment) is skipped and reported rather than making the whole log unreadable."""
    records, torn = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn.append(number)
    return records, torn


def flops_per_token(active_parameters: int, n_layers: int, d_model: int, n_ctx: int) -> float:
    """Forward + backward: 6 per active weight (`DecoderEnds.active_parameters`), plus
    attention's score and mix (PaLM, app. B)."""
    return 6.0 * active_parameters + 12.0 * n_layers * d_model * n_ctx


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
