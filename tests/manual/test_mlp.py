"""Hand-written MLP gradients (GELU and SwiGLU) equal autograd's through the package's MLP."""

import pytest
import torch

from tests.helpers.backprop import ATOL, D_MODEL, assert_same_grads, autograd_grads, config, random, randomised
from transformer.manual.mlp import ManualMLP, gelu_derivative, silu_derivative
from transformer.model.mlp import MLP, gelu, silu


@pytest.mark.parametrize(("derivative", "function"), [(gelu_derivative, gelu), (silu_derivative, silu)])
def test_activation_derivative_equals_autograd_of_the_package_activation(derivative, function) -> None:  # type: ignore[no-untyped-def]
    u = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(function(u).sum(), u)
    torch.testing.assert_close(derivative(u.detach()), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_hand_gradients_equal_autograd(mlp: str, bias: bool, kernels: str) -> None:
    module = randomised(MLP(config(mlp=mlp, bias=bias, kernels=kernels)))
    x, d_y = random(2, 5, D_MODEL, seed=1), random(2, 5, D_MODEL, seed=2)
    manual = ManualMLP(module)
    y, saved = manual.forward(x)
    torch.testing.assert_close(y, module(x), atol=ATOL, rtol=0)
    d_x, grads = manual.backward(saved, d_y)
    auto_d_x, auto_grads = autograd_grads(module, module, x, d_y)
    torch.testing.assert_close(d_x, auto_d_x, atol=ATOL, rtol=0)
    assert_same_grads(grads, auto_grads)
