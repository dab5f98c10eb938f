"""ALiBi (Press et al. 2022): position as a linear penalty on attention scores.

Head h subtracts slope_h * (query position - key position) from each score, so distant keys
are down-weighted, each head at its own rate. Slopes form a geometric sequence: with n heads
(a power of two) slope_h = 2^(-8h/n) for h = 1..n; for other counts the paper interleaves the
sequences of the two nearest powers of two. Nothing is added to the residual stream.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn


def alibi_slopes(n_heads: int) -> Float[Tensor, " n_heads"]:
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        below = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(below)
        slopes += power_of_two_slopes(2 * below)[0::2][: n_heads - below]
    return torch.tensor(slopes)


class ALiBi(nn.Module):
    slopes: Tensor

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(self, q_pos: int, k_pos: int, offset: int = 0) -> Float[Tensor, "n_heads q_pos k_pos"]:
        """Bias for queries at positions offset..offset+q_pos-1 over keys 0..k_pos-1."""
        query = torch.arange(offset, offset + q_pos, device=self.slopes.device)[:, None]
        key = torch.arange(k_pos, device=self.slopes.device)[None, :]
        distance = (query - key).float()
        return -self.slopes[:, None, None] * distance
