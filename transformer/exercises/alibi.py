"""Exercise 5 (docs/modules/alibi.md): ALiBi, position as a linear penalty on scores.

Write `alibi_slopes` and `ALiBi.forward` (its `self.slopes` buffer is built with your
`alibi_slopes`). Check with `transformer exercise alibi`.
"""

from jaxtyping import Float
from torch import Tensor

from transformer.model import alibi as solution

__all__ = ["alibi_slopes", "ALiBi"]


def alibi_slopes(n_heads: int) -> Float[Tensor, " n_heads"]:
    """For n heads, n a power of two: slope_h = 2^(-8h/n), h = 1..n. Otherwise, with m the largest
    power of two below n: the m slopes for m heads, then every other slope for 2m heads
    (the first, third, ...) until there are n.

    Hint: `math.log2(n).is_integer()` tells a power of two."""
    raise NotImplementedError("exercise: alibi_slopes (docs/modules/alibi.md)")


class ALiBi(solution.ALiBi):
    def forward(self, q_pos: int, k_pos: int, offset: int = 0) -> Float[Tensor, "n_heads q_pos k_pos"]:
        """bias[h, i, j] = -slope_h * ((offset + i) - j): queries at offset..offset+q_pos-1, keys
        at 0..k_pos-1.

        Hints: `torch.arange` on `self.slopes.device`; broadcast [q, 1] - [1, k], as float, times
        `self.slopes[:, None, None]`."""
        raise NotImplementedError("exercise: ALiBi.forward (docs/modules/alibi.md)")
