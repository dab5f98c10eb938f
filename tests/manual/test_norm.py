"""Hand-written LayerNorm and RMSNorm gradients equal autograd's through the package's norms."""

import pytest
import torch

from tests.helpers.backprop import ATOL, D_MODEL, assert_same_grads, autograd_grads, random, randomised
from transformer.manual.norm import ManualLayerNorm, ManualRMSNorm, manual_norm
from transformer.model.norm import LayerNorm, RMSNorm


@pytest.mark.parametrize("eps", [1e-5, 0.1])
@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
@pytest.mark.parametrize("fast", [False, True])
def test_hand_gradients_equal_autograd(norm_class: type[LayerNorm | RMSNorm], eps: float, fast: bool) -> None:
    """eps=0.1 is as large as a small variance: eps in the wrong place in r would show."""
    norm = randomised(norm_class(D_MODEL, eps=eps, fast=fast))
    x, d_y = random(2, 5, D_MODEL, seed=1) * 0.5, random(2, 5, D_MODEL, seed=2)
    manual = manual_norm(norm)
    assert isinstance(manual, ManualLayerNorm if norm_class is LayerNorm else ManualRMSNorm)
    y, saved = manual.forward(x)
    torch.testing.assert_close(y, norm(x), atol=ATOL, rtol=0)
    d_x, grads = manual.backward(saved, d_y)
    auto_d_x, auto_grads = autograd_grads(norm, norm, x, d_y)
    torch.testing.assert_close(d_x, auto_d_x, atol=ATOL, rtol=0)
    assert_same_grads(grads, auto_grads)


def test_layer_norm_input_gradient_is_orthogonal_to_what_the_norm_removes() -> None:
    """Shifting x by a constant or scaling it leaves LayerNorm's output (nearly: eps) unchanged,
    so dL/dx has zero sum over each position: the centring term's work."""
    norm = randomised(LayerNorm(D_MODEL))
    x, d_y = random(4, D_MODEL, seed=3), random(4, D_MODEL, seed=4)
    manual = ManualLayerNorm(norm)
    d_x, _ = manual.backward(manual.forward(x)[1], d_y)
    torch.testing.assert_close(d_x.sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
