"""`auto`, `cpu` and `cuda` mean one device everywhere, and CUDA asked for where there is none is
one line that says what to use, not torch's traceback."""

import pytest
import torch

from transformer.devices import DeviceError, resolve_device
from transformer.errors import UserError
from transformer.training import distributed


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without CUDA, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_is_the_cpu_and_auto_is_the_cpu_without_cuda(no_cuda: None) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_takes_cuda_where_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_is_a_one_line_user_error_naming_the_setting(no_cuda: None) -> None:
    with pytest.raises(DeviceError) as raised:
        resolve_device("cuda", "--device")
    assert isinstance(raised.value, UserError)
    assert str(raised.value) == (
        "--device=cuda: no CUDA device is available here; use --device=cpu "
        "(or --device=auto, which takes CUDA where there is one)"
    )


def test_a_device_outside_the_choices_is_a_user_error() -> None:
    with pytest.raises(DeviceError, match=r"^train.device='tpu' is not one of auto, cpu, cuda$"):
        resolve_device("tpu", "train.device")


def test_the_trainer_resolves_its_device_the_same_way(no_cuda: None) -> None:
    assert distributed.start("auto").device == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^train.device=cuda: no CUDA device is available here"):
        distributed.start("cuda")
