"""torch's own finite-difference check of the hand-written backward, through `manual_apply`."""

from typing import Any
from unittest import mock

import pytest
import torch

from tests.helpers.backprop import config, random, randomised
from transformer.manual.attention import ManualAttention
from transformer.manual.block import ManualBlock
from transformer.manual.function import manual_apply
from transformer.manual.layer import ManualLayer
from transformer.manual.mlp import ManualMLP
from transformer.manual.norm import ManualLayerNorm
from transformer.model.attention import Attention
from transformer.model.layer import TransformerLayer
from transformer.model.mlp import MLP
from transformer.model.norm import LayerNorm

SMALL = dict(d_model=4, n_heads=2, d_mlp=6, n_ctx=3)
PADDING = torch.tensor([[True, True, True], [False, True, True]])  # row 1's first query sees no key


def block(name: str) -> tuple[ManualBlock[Any], torch.nn.Module]:
    cfg = config(**SMALL)
    if name == "layernorm":
        norm = randomised(LayerNorm(4))
        return ManualLayerNorm(norm), norm
    if name == "mlp":
        mlp = randomised(MLP(cfg))
        return ManualMLP(mlp), mlp
    if name == "attention":
        attn = randomised(Attention(cfg))
        return ManualAttention(attn, PADDING), attn
    layer = randomised(TransformerLayer(cfg))
    return ManualLayer(layer, PADDING), layer


@pytest.mark.parametrize("name", ["layernorm", "mlp", "attention", "layer"])
def test_gradcheck_passes(name: str) -> None:
    """Fast mode: one random direction per input instead of every entry (the full check is
    the slow test below); a wrong backward still fails it, see the last test."""
    manual, module = block(name)
    weights = dict(module.named_parameters())
    x = random(2, 3, 4, seed=1).requires_grad_()
    check = (x, *weights.values())
    assert torch.autograd.gradcheck(lambda x, *_: manual_apply(manual, x, weights), check, fast_mode=True)


@pytest.mark.slow
def test_full_gradcheck_of_the_whole_layer_passes() -> None:
    """Every entry of the input and of every weight perturbed, one by one."""
    manual, module = block("layer")
    weights = dict(module.named_parameters())
    x = random(2, 3, 4, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *_: manual_apply(manual, x, weights), (x, *weights.values()))


def test_gradcheck_catches_a_wrong_backward() -> None:
    """The check has teeth: a backward with the softmax's row term dropped fails it (checked on
    dL/dx alone, since on failure gradcheck re-runs entry by entry to report)."""
    manual, _ = block("attention")
    x = random(2, 3, 4, seed=1).requires_grad_()
    wrong = lambda pattern, d_pattern: pattern * d_pattern  # noqa: E731
    with mock.patch("transformer.manual.attention.masked_softmax_backward", wrong):
        passed = torch.autograd.gradcheck(
            lambda x: manual_apply(manual, x, {}), (x,), fast_mode=True, raise_exception=False
        )
    assert not passed
