"""Exercise 4 (docs/modules/rotary.md): RoPE, the rotation of queries and keys.

Write `Rotary.forward`. The tables already exist: `self.cos` and `self.sin`, [n_ctx, pairs],
hold cos(p * theta_i) and sin(p * theta_i) for position p and pair i. Check with
`transformer exercise rotary`.
"""

from jaxtyping import Float
from torch import Tensor

from transformer.model import rotary as solution

__all__ = ["Rotary"]


class Rotary(solution.Rotary):
    def forward(self, x: Float[Tensor, "*batch pos d_head"], offset: int = 0) -> Float[Tensor, "*batch pos d_head"]:
        """Turn pair i = (x[..., 2i], x[..., 2i + 1]) of the vector at position offset + p by the
        angle (offset + p) * theta_i; leave dimensions from `self.rotary_dim` on unchanged.

        Hints: the rotation of (a, b) by an angle t is (a cos t - b sin t, a sin t + b cos t);
        slice the tables with `self.cos[offset : offset + pos]`; `torch.stack(..., dim=-1)`
        then `.flatten(-2)` interleaves the turned pairs back. A sequence past the table must
        raise `ValueError`."""
        raise NotImplementedError("exercise: Rotary.forward (docs/modules/rotary.md)")
