"""LayerNorm and RMSNorm by hand.

Forward, for one position's vector x of width d (LayerNorm):
    x_hat = (x - mean(x)) * r,   r = 1 / sqrt(var(x) + eps),   y = x_hat * w + b
Backward: with g = dL/dy * w (the gradient reaching x_hat),
    dL/dw = sum over positions of dL/dy * x_hat,   dL/db = sum over positions of dL/dy,
    dL/dx = r * (g - mean(g) - x_hat * mean(g * x_hat))
The two subtracted means are what the normalisation takes away: moving x along the all-ones
direction changes nothing (the centring), nor does scaling it (the division by its spread).
RMSNorm skips the centring, so only the second term remains.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.manual.block import Grads, ManualBackpropError
from transformer.model.norm import LayerNorm, RMSNorm


@dataclass(frozen=True)
class NormSaved:
    x_hat: Tensor  # the normalised input, before gain and bias
    r: Tensor  # 1 / sqrt(var + eps) (RMSNorm: 1 / sqrt(mean square + eps)), one per position


def _sum_over_positions(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1]).sum(0)


@dataclass(frozen=True)
class ManualLayerNorm:
    module: LayerNorm

    def forward(self, x: Tensor) -> tuple[Tensor, NormSaved]:
        centred = x - x.mean(-1, keepdim=True)
        r = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + self.module.eps)
        x_hat = centred * r
        return x_hat * self.module.w + self.module.b, NormSaved(x_hat, r)

    def backward(self, saved: NormSaved, d_y: Tensor) -> tuple[Tensor, Grads]:
        g = d_y * self.module.w
        d_x = saved.r * (g - g.mean(-1, keepdim=True) - saved.x_hat * (g * saved.x_hat).mean(-1, keepdim=True))
        grads = {"w": _sum_over_positions(d_y * saved.x_hat), "b": _sum_over_positions(d_y)}
        return d_x, grads


@dataclass(frozen=True)
class ManualRMSNorm:
    module: RMSNorm

    def forward(self, x: Tensor) -> tuple[Tensor, NormSaved]:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.module.eps)
        x_hat = x * r
        return x_hat * self.module.w, NormSaved(x_hat, r)

    def backward(self, saved: NormSaved, d_y: Tensor) -> tuple[Tensor, Grads]:
        g = d_y * self.module.w
        d_x = saved.r * (g - saved.x_hat * (g * saved.x_hat).mean(-1, keepdim=True))
        return d_x, {"w": _sum_over_positions(d_y * saved.x_hat)}


def manual_norm(module: object) -> ManualLayerNorm | ManualRMSNorm:
    if isinstance(module, LayerNorm):
        return ManualLayerNorm(module)
    if isinstance(module, RMSNorm):
        return ManualRMSNorm(module)
    raise ManualBackpropError(f"no hand-written backward for the norm {type(module).__name__}")
