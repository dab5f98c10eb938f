"""Any hand-written block as a `torch.autograd.Function`, so torch itself can check it.

`torch.autograd.gradcheck` perturbs each input entry by +-eps, measures how the output moves
(finite differences) and compares that with what the Function's backward returns. Passing the
block's own parameters as inputs lets it perturb the weights too: they are the very tensors the
block reads, so a perturbation reaches its forward without copying anything.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from transformer.manual.block import ManualBlock


class _Manual(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, block: ManualBlock[Any], names: list[str], x: Tensor, *weights: Tensor) -> Tensor:
        y, saved = block.forward(x)
        ctx.block, ctx.names, ctx.saved = block, names, saved
        return y

    @staticmethod
    def backward(ctx: Any, d_y: Tensor) -> tuple[Tensor | None, ...]:
        d_x, grads = ctx.block.backward(ctx.saved, d_y)
        return (None, None, d_x, *(grads.get(name) for name in ctx.names))


def manual_apply(block: ManualBlock[Any], x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
    """`block.forward(x)` whose backward is `block.backward`; `weights`: the parameters the block
    reads (by `named_parameters` name), to differentiate with respect to them too."""
    names = list(weights)
    y: Tensor = _Manual.apply(block, names, x, *weights.values())  # type: ignore[no-untyped-call]
    return y
