"""What every hand-written module shares: the shape of its forward and backward, and its one error.

A forward returns its output *and* a record of what the backward will need (`Saved`), rather
than caching it on the module: the record is made fresh by each call and never mutated, so a
later in-place update of an activation cannot corrupt a gradient (the bug that per-module tests
miss and a whole-model comparison with autograd catches).
"""

from typing import Protocol, TypeVar

from torch import Tensor

from transformer.errors import UserError

# Gradient of the loss with respect to each weight, keyed by the name the weight has in
# `module.named_parameters()`, so it can be compared with (or written into) `parameter.grad`.
Grads = dict[str, Tensor]

Saved = TypeVar("Saved")


class ManualBackpropError(UserError, ValueError):
    """A model or setting the hand-written backward does not cover; the message says which."""


class ManualBlock(Protocol[Saved]):
    """One differentiable step of the residual stream: `x` in, `y` out, weights read from a
    package module."""

    def forward(self, x: Tensor) -> tuple[Tensor, Saved]: ...

    def backward(self, saved: Saved, d_y: Tensor) -> tuple[Tensor, Grads]:
        """d_y = dL/dy  ->  (dL/dx, dL/dW for every weight W)."""
        ...


def prefixed(prefix: str, grads: Grads) -> Grads:
    """A child module's gradients under the names its parent's `named_parameters` gives them."""
    return {f"{prefix}.{name}": grad for name, grad in grads.items()}
