"""Exercise 6 (docs/modules/norm.md): LayerNorm and RMSNorm, the readable path.

Write the two `forward`s. The parameters already exist (`self.w`, the gain; `self.b`, LayerNorm's
bias; `self.eps`); the fused path (`fast=True`) stays PyTorch's. Check with
`transformer exercise norm`.
"""

from jaxtyping import Float
from torch import Tensor

from transformer.model import norm as solution

__all__ = ["LayerNorm", "RMSNorm"]


class LayerNorm(solution.LayerNorm):
    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """Centre each position's vector (mean over the last axis), divide by the square root of
        its variance plus eps, then scale by w and shift by b.

        Hints: `x.mean(dim=-1, keepdim=True)`; the variance is the *biased* one (divide by
        d_model, not d_model - 1); eps goes inside the square root."""
        if self.fast:
            return super().forward(x)
        raise NotImplementedError("exercise: LayerNorm.forward (docs/modules/norm.md)")


class RMSNorm(solution.RMSNorm):
    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        """Divide each position's vector by its root-mean-square (eps added to the mean square
        inside the root), then scale by w. No centring, no bias.

        Hint: `torch.rsqrt` is 1 / sqrt."""
        if self.fast:
            return super().forward(x)
        raise NotImplementedError("exercise: RMSNorm.forward (docs/modules/norm.md)")
