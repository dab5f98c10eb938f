"""One rule for which device a choice of `auto`, `cpu` or `cuda` means, for training and for
every command that loads a model.

`auto` takes CUDA where it exists, so the same config or command line runs on a laptop and on a
GPU machine. An explicit `cuda` on a machine without it is the user's mistake, not a bug: it is a
`DeviceError` with one line that says what to use instead, not torch's traceback. torch is
imported only when a device is resolved, so the command line can offer the choices without it.
"""

from typing import TYPE_CHECKING

from transformer.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceError(UserError):
    """A device that is not one of the choices, or CUDA asked for where there is none."""


def resolve_device(choice: str, setting: str = "device") -> "torch.device":
    """The device `choice` means here; `setting` is how the user gave it (`--device`,
    `train.device`), so the error names what to change."""
    import torch

    if choice not in DEVICE_CHOICES:
        raise DeviceError(f"{setting}={choice!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"{setting}=cuda: no CUDA device is available here; use {setting}=cpu "
            f"(or {setting}=auto, which takes CUDA where there is one)"
        )
    return torch.device(choice)
