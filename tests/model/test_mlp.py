"""The MLP block: exact against PyTorch's linear maps and activations, and able to learn a
per-position function no linear map can fit (XOR)."""

import pytest
import torch
import torch.nn.functional as F

from transformer.model.config import ModelConfig
from transformer.model.mlp import MLP


def mlp_in_float64(mlp: str, bias: bool = True, seed: int = 0, path: str = "readable") -> MLP:
    """A float64 MLP whose biases are non-zero, so the reference checks where they are added.
    `path="readable"` uses the hand-written erf GELU, "fast" PyTorch's fused one."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=8, n_heads=2, d_mlp=24, mlp=mlp, bias=bias, init_std=0.5, kernels=path)
    module = MLP(cfg).double()
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("b_"):
                parameter.normal_()
    return module


def activations() -> torch.Tensor:
    return torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_gelu_mlp_matches_linear_gelu_linear(bias: bool) -> None:
    mlp = mlp_in_float64("gelu", bias)
    x = activations()
    hidden = F.gelu(F.linear(x, mlp.W_in.T, mlp.b_in), approximate="none")  # the exact erf form
    expected = F.linear(hidden, mlp.W_out.T, mlp.b_out)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_fast_path_mlp_equals_the_readable_one_values_and_gradients() -> None:
    readable, fast = mlp_in_float64("gelu", path="readable"), mlp_in_float64("gelu", path="fast")
    x = activations().requires_grad_(True)
    out_readable, out_fast = readable(x), fast(x)
    torch.testing.assert_close(out_fast, out_readable, rtol=1e-12, atol=1e-12)
    (grad_readable,) = torch.autograd.grad(out_readable.pow(2).sum(), x)
    (grad_fast,) = torch.autograd.grad(out_fast.pow(2).sum(), x)
    torch.testing.assert_close(grad_fast, grad_readable, rtol=1e-12, atol=1e-12)


def test_gelu_is_the_exact_form_not_the_tanh_estimate() -> None:
    # The two forms differ by up to ~1e-3 around |x| = 2: far above float64 rounding.
    mlp = mlp_in_float64("gelu")
    x = activations() * 3
    tanh_estimate = F.linear(F.gelu(F.linear(x, mlp.W_in.T, mlp.b_in), approximate="tanh"), mlp.W_out.T, mlp.b_out)
    assert (mlp(x) - tanh_estimate).abs().max() > 1e-6


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_mlp_matches_its_formula(bias: bool) -> None:
    # SwiGLU (Shazeer 2020): (SiLU(x W_gate) * (x W_in + b_in)) W_out + b_out; the gate has no bias.
    mlp = mlp_in_float64("swiglu", bias)
    x = activations()
    assert mlp.W_gate is not None
    gate = F.silu(x @ mlp.W_gate)
    expected = F.linear(gate * F.linear(x, mlp.W_in.T, mlp.b_in), mlp.W_out.T, mlp.b_out)
    torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_mlp_acts_on_each_position_alone() -> None:
    # Changing one position's input changes that position's output and no other.
    mlp = mlp_in_float64("gelu")
    x = activations()
    changed = x.clone()
    changed[1, 2] += 1.0
    moved = (mlp(changed) - mlp(x)).abs().amax(-1) > 0
    expected = torch.zeros(3, 5, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(moved, expected)


# --- Learnable: XOR, the function no linear map can compute -----------------------------------

D_MODEL = 16


def xor_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two +-1 features a, b written along fixed directions of the residual stream (plus a little
    noise everywhere); the target is a*b along a third direction. a*b is uncorrelated with a, b
    and 1, so the best linear (affine) map can only predict its mean, 0."""
    directions = torch.linalg.qr(torch.randn(D_MODEL, 3, generator=torch.Generator().manual_seed(0)))[0].T
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, 2), generator=generator) * 2.0 - 1.0
    a, b = signs[:, :1], signs[:, 1:]
    x = a * directions[0] + b * directions[1] + 0.1 * torch.randn(n, D_MODEL, generator=generator)
    y = (a * b) * directions[2]
    return x, y


def test_mlp_learns_xor_far_below_the_best_linear_map() -> None:
    x, y = xor_data(4096, seed=1)
    x_test, y_test = xor_data(1024, seed=2)

    # The best affine map, fit by least squares on the training set, scored on the test set.
    def with_ones(inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat((inputs, torch.ones(len(inputs), 1)), dim=1)

    solution = torch.linalg.lstsq(with_ones(x), y).solution
    linear_error = float(((with_ones(x_test) @ solution - y_test) ** 2).sum(-1).mean())

    torch.manual_seed(0)
    mlp = MLP(ModelConfig(d_model=D_MODEL, n_heads=1, d_mlp=32, n_layers=1, kernels="readable"))
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    # The MLP works per position: each sample is a position of a (batch, pos) grid.
    grid, targets = x.reshape(64, 64, D_MODEL), y.reshape(64, 64, D_MODEL)
    for step in range(300):
        batch = step % 8 * 8
        loss = ((mlp(grid[batch : batch + 8]) - targets[batch : batch + 8]) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        mlp_error = float(((mlp(x_test[None]) - y_test[None]) ** 2).sum(-1).mean())

    report = f"test squared error: MLP {mlp_error:.4f}, best linear map {linear_error:.4f}"
    assert linear_error > 0.9, "the task should defeat every linear map (error ~ Var(a*b) = 1): " + report
    assert mlp_error < 0.05 * linear_error, report
