"""LayerNorm and RMSNorm: exact against PyTorch's functional forms, and the properties that
make them useful (each position comes out on a fixed scale, whatever its batch shape)."""

import math

import pytest
import torch
import torch.nn.functional as F
from jaxtyping import TypeCheckError

from transformer.model.config import ModelConfig
from transformer.model.norm import LayerNorm, RMSNorm, make_norm

D_MODEL = 16


def norm_of(kind: str, eps: float = 1e-5, kernels: str = "readable") -> LayerNorm | RMSNorm:
    return make_norm(ModelConfig(d_model=D_MODEL, norm=kind, norm_eps=eps, kernels=kernels))


def randomised(norm: LayerNorm | RMSNorm, seed: int) -> LayerNorm | RMSNorm:
    """The norm in float64 with a gain (and bias) far from their 1 (and 0) initialisation, so a
    misplaced w or b cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    norm = norm.double()
    with torch.no_grad():
        for parameter in norm.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return norm


def residual(*shape: int, seed: int = 0) -> torch.Tensor:
    """A residual stream with an offset and a scale, as it looks deep in a model."""
    generator = torch.Generator().manual_seed(seed)
    return 3.0 + 5.0 * torch.randn(*shape, D_MODEL, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layernorm_matches_f_layer_norm(eps: float) -> None:
    # eps = 0.1 is as large as a small variance, so eps outside the square root, or added to
    # the standard deviation instead of the variance, changes the output visibly.
    norm = randomised(LayerNorm(D_MODEL, eps), seed=1)
    assert isinstance(norm, LayerNorm)
    x = residual(4, 5) * torch.linspace(0.05, 1.0, 5, dtype=torch.float64)[:, None]
    expected = F.layer_norm(x, (D_MODEL,), norm.w, norm.b, eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_rmsnorm_matches_its_formula_and_f_rms_norm(eps: float) -> None:
    norm = randomised(RMSNorm(D_MODEL, eps), seed=2)
    x = residual(4, 5) * torch.linspace(0.05, 1.0, 5, dtype=torch.float64)[:, None]
    by_formula = x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * norm.w
    torch.testing.assert_close(norm(x), by_formula, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (D_MODEL,), norm.w, eps), rtol=1e-12, atol=1e-12)


def test_rmsnorm_does_not_centre() -> None:
    # The difference from LayerNorm: a constant offset survives RMSNorm (only rescaled).
    x = torch.full((2, D_MODEL), 4.0, dtype=torch.float64)
    out = RMSNorm(D_MODEL, eps=0.0).double()(x)
    torch.testing.assert_close(out, torch.ones_like(x))


def test_layernorm_output_has_zero_mean_unit_variance_per_position() -> None:
    norm = LayerNorm(D_MODEL, eps=0.0).double()  # w = 1, b = 0: the normalised vector itself
    out = norm(residual(8, 3))
    torch.testing.assert_close(out.mean(-1), torch.zeros(8, 3, dtype=torch.float64))
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(8, 3, dtype=torch.float64))


def test_rmsnorm_output_has_unit_root_mean_square_per_position() -> None:
    out = RMSNorm(D_MODEL, eps=0.0).double()(residual(8, 3))
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(8, 3, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("batch_shape", [(), (7,), (2, 3), (2, 3, 4)])
def test_norm_works_per_position_on_any_leading_shape(kind: str, batch_shape: tuple[int, ...]) -> None:
    norm = randomised(norm_of(kind), seed=3)
    n_positions = math.prod(batch_shape)
    rows = residual(n_positions)
    out = norm(rows.reshape(*batch_shape, D_MODEL))
    assert out.shape == (*batch_shape, D_MODEL)
    # Each position is normalised on its own: the same vectors give the same rows in any layout.
    torch.testing.assert_close(out.reshape(n_positions, D_MODEL), norm(rows), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_make_norm_picks_the_configs_kind_width_eps_and_kernels(kernels: str) -> None:
    for kind, norm_class in (("layernorm", LayerNorm), ("rmsnorm", RMSNorm)):
        norm = norm_of(kind, eps=0.25, kernels=kernels)
        assert type(norm) is norm_class and norm.w.shape == (D_MODEL,) and norm.eps == 0.25
        assert norm.fast == (kernels == "fast")


@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
def test_width_one_input_is_caught_by_the_shape_check(norm_class: type[LayerNorm | RMSNorm]) -> None:
    # A last axis of 1 broadcasts against w silently: torch returns a (3, D_MODEL) tensor built
    # from nothing. Only the annotation (input and output share d_model) catches it.
    with pytest.raises(TypeCheckError):
        norm_class(D_MODEL)(torch.randn(3, 1))


@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
def test_wrong_width_input_fails_loudly(norm_class: type[LayerNorm | RMSNorm]) -> None:
    # Any other wrong width cannot broadcast against w; torch refuses it before the shape check
    # of the return value is reached (the annotation does not bind d_model to w's length).
    with pytest.raises((TypeCheckError, RuntimeError)):
        norm_class(D_MODEL)(torch.randn(3, D_MODEL - 1))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_fast_path_norms_equal_the_readable_ones_values_and_gradients(kind: str, eps: float) -> None:
    readable = randomised(norm_of(kind, eps, kernels="readable"), seed=3)
    fast = randomised(norm_of(kind, eps, kernels="fast"), seed=3)
    x = residual(3, 4, seed=4).requires_grad_(True)
    out_readable, out_fast = readable(x), fast(x)
    torch.testing.assert_close(out_fast, out_readable, rtol=1e-12, atol=1e-12)
    grads_readable = torch.autograd.grad(out_readable.pow(3).sum(), [x, *readable.parameters()])
    grads_fast = torch.autograd.grad(out_fast.pow(3).sum(), [x, *fast.parameters()])
    for g_fast, g_readable in zip(grads_fast, grads_readable, strict=True):
        torch.testing.assert_close(g_fast, g_readable, rtol=1e-10, atol=1e-10)
