"""What the hand-written backward's tests share: float64 modules with every weight random, and
autograd's gradients through the package's own module to compare against."""

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from transformer.model.config import ModelConfig

M = TypeVar("M", bound=nn.Module)

ATOL = 1e-10  # float64: hand and autograd sums differ only in rounding order
D_MODEL, N_HEADS, D_MLP, POS, BATCH, D_VOCAB = 12, 3, 20, 7, 3, 11


def config(**overrides: Any) -> ModelConfig:
    values: dict[str, Any] = dict(
        d_vocab=D_VOCAB, d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP, n_layers=2, n_ctx=POS, kernels="readable"
    )
    values.update(overrides)
    return ModelConfig(**values)


def randomised(module: M, seed: int = 0) -> M:
    """In float64, every weight drawn at random (norm gains near 1), so a missed term, a
    swapped transpose or a forgotten bias changes the gradients."""
    module = module.double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64) * 0.3
            parameter.copy_(noise + (1.0 if name.endswith(".w") or name == "w" else 0.0))
    return module


def random(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def autograd_grads(
    module: nn.Module, forward: Callable[[Tensor], Tensor], x: Tensor, d_y: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """dL/dx and dL/dW for L = <forward(x), d_y>, by autograd through `module`'s own forward."""
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    forward(x).backward(d_y)
    assert x.grad is not None
    return x.grad, {name: p.grad for name, p in module.named_parameters() if p.grad is not None}


def assert_same_grads(hand: dict[str, Tensor], auto: dict[str, Tensor]) -> None:
    assert set(hand) == set(auto), f"hand {sorted(hand)} vs autograd {sorted(auto)}"
    for name in auto:
        torch.testing.assert_close(hand[name], auto[name], atol=ATOL, rtol=0, msg=named(name))


def named(name: str) -> Callable[[str], str]:
    """An `assert_close` message that says which weight differs."""
    return lambda message: f"{name}: {message}"
