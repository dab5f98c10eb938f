"""The run's metrics also as TensorBoard scalars (`train.tensorboard: true`), for users whose
tools already read event files.

Tags are the metrics.jsonl names under their record's kind, `train/loss`, `eval/val_loss`,
`train/usage/1/0` (a nested list flattened by index), so one name means one number in both
places; `step` is the event's step. The writer is torch's own `SummaryWriter`, which needs
the `tensorboard` package (the optional `tensorboard` extra): asked for and missing is a
one-line error before training starts. Values are already Python floats when they arrive
here (the trainer logs them), so writing costs no host-device synchronisation.
"""

from pathlib import Path
from typing import Any

from transformer.errors import UserError

MISSING_TENSORBOARD = "train.tensorboard=true needs TensorBoard: pip install 'transformer[tensorboard]'"
FOLDER = "tensorboard"  # under train.out_dir


class TensorBoardError(UserError):
    """TensorBoard logging was asked for and cannot be done; one line that says how to fix it."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers by tag; `kind` and `step` name the tag and the step, nulls are skipped."""
    kind = record.get("kind", "metrics")
    found: dict[str, float] = {}

    def add(tag: str, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int | float):
            found[tag] = float(value)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                add(f"{tag}/{index}", item)

    for key, value in record.items():
        if key not in ("kind", "step"):
            add(f"{kind}/{key}", value)
    return found


def summary_writer_class() -> Any:
    """torch's SummaryWriter, or a `TensorBoardError` when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardError(MISSING_TENSORBOARD) from None
    return SummaryWriter


class TensorBoardLog:
    def __init__(self, folder: Path) -> None:
        self._writer = summary_writer_class()(log_dir=str(folder))

    def write(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()  # a run still training shows its latest step, as metrics.jsonl does

    def close(self) -> None:
        self._writer.close()
