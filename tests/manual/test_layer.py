"""Hand-written gradients of the residual layer equal autograd's through `TransformerLayer`."""

import pytest
import torch

from tests.helpers.backprop import (
    ATOL,
    BATCH,
    D_MODEL,
    POS,
    assert_same_grads,
    autograd_grads,
    config,
    random,
    randomised,
)
from tests.manual.test_attention import LEFT_PADDED, RIGHT_PADDED
from transformer.manual.block import ManualBackpropError
from transformer.manual.layer import ManualLayer
from transformer.model.layer import TransformerLayer


@pytest.mark.parametrize("padding", [None, RIGHT_PADDED, LEFT_PADDED], ids=["causal", "right-padded", "left-padded"])
@pytest.mark.parametrize("overrides", [{}, {"attn_only": True}, {"norm": "rmsnorm", "mlp": "swiglu"}], ids=str)
def test_hand_gradients_equal_autograd(padding: torch.Tensor | None, overrides: dict[str, object]) -> None:
    layer = randomised(TransformerLayer(config(**overrides)))
    x, d_y = random(BATCH, POS, D_MODEL, seed=1), random(BATCH, POS, D_MODEL, seed=2)
    manual = ManualLayer(layer, padding)
    y, saved = manual.forward(x)
    torch.testing.assert_close(y, layer(x, padding), atol=ATOL, rtol=0)
    d_x, grads = manual.backward(saved, d_y)
    auto_d_x, auto_grads = autograd_grads(layer, lambda t: layer(t, padding), x, d_y)
    torch.testing.assert_close(d_x, auto_d_x, atol=ATOL, rtol=0)
    assert_same_grads(grads, auto_grads)


def test_the_identity_path_passes_the_gradient_through_unchanged() -> None:
    """With the blocks writing nothing (W_O, W_out and biases zero), dL/dx is dL/dy exactly."""
    layer = randomised(TransformerLayer(config()))
    with torch.no_grad():
        for parameter in (layer.attn.W_O, layer.attn.b_O, layer.mlp.W_out, layer.mlp.b_out):  # type: ignore[union-attr]
            parameter.zero_()  # type: ignore[union-attr]
    d_y = random(BATCH, POS, D_MODEL, seed=2)
    manual = ManualLayer(layer)
    d_x, _ = manual.backward(manual.forward(random(BATCH, POS, D_MODEL, seed=1))[1], d_y)
    assert torch.equal(d_x, d_y)


def test_dropout_in_training_is_refused() -> None:
    with pytest.raises(ManualBackpropError, match="dropout"):
        ManualLayer(TransformerLayer(config(dropout=0.1)))
