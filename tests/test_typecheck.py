"""Proves runtime shape checks are on in this test run: each canary passes silently without them."""

import subprocess
import sys

import pytest
import torch
from jaxtyping import TypeCheckError

from transformer import typecheck


def test_wrong_return_shape_raises() -> None:
    with pytest.raises(TypeCheckError):
        typecheck.canary_wrong_return(torch.zeros(2, 3))


def test_correct_shapes_pass() -> None:
    square = torch.ones(3, 3)
    assert typecheck.canary_wrong_return(square).shape == (3, 3)
    assert typecheck.canary_row_sums(torch.ones(2, 3)).tolist() == [3.0, 3.0]


def test_wrong_argument_rank_raises() -> None:
    with pytest.raises(TypeCheckError):
        typecheck.canary_row_sums(torch.ones(2, 3, 4))


def test_wrong_argument_dtype_raises() -> None:
    with pytest.raises(TypeCheckError):
        typecheck.canary_count(torch.ones(4))


def test_environment_switch_installs_checks_in_a_fresh_process() -> None:
    """What a torchrun worker sees: a fresh interpreter, checked only when the switch is set."""
    probe = (
        "import torch; from transformer import typecheck\n"
        "try:\n    typecheck.canary_wrong_return(torch.zeros(2, 3)); print('unchecked')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )

    def run(env_value: str) -> str:
        env = {"PATH": "", typecheck.ENV_SWITCH: env_value}
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    assert run("1") == "TypeCheckError"
    assert run("0") == "unchecked"
