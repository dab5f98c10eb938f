"""Rotary position embedding (RoPE, Su et al. 2021): position as a rotation of queries and keys.

Split the first `rotary_dim` dimensions of each query and key into pairs and turn pair i of
the vector at position p by the angle p * theta_i, with theta_i = base^(-2i / rotary_dim).
A rotation preserves lengths, and the dot product of two rotated vectors depends only on
the *difference* of their angles: q_m . k_n becomes a function of m - n. So attention
scores see relative position while nothing is added to the residual stream. Dimensions past
`rotary_dim` are left unrotated (partial rotary, as in GPT-NeoX), carrying pure content.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn


class Rotary(nn.Module):
    cos: Tensor
    sin: Tensor

    def __init__(self, rotary_dim: int, n_ctx: int, base: float = 10_000.0) -> None:
        super().__init__()
        if rotary_dim % 2:
            raise ValueError(f"rotary_dim={rotary_dim} must be even: rotary turns pairs")
        self.rotary_dim = rotary_dim
        theta = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
        angles = torch.arange(n_ctx, dtype=torch.float64)[:, None] * theta  # [n_ctx, pairs]
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Float[Tensor, "*batch pos d_head"], offset: int = 0) -> Float[Tensor, "*batch pos d_head"]:
        pos = x.shape[-2]
        if offset + pos > self.cos.shape[0]:
            raise ValueError(
                f"sequence of {offset + pos} positions is longer than the rotary table ({self.cos.shape[0]} = n_ctx)"
            )
        cos = self.cos[offset : offset + pos].to(x.dtype)
        sin = self.sin[offset : offset + pos].to(x.dtype)
        rotated, passed = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        even, odd = rotated[..., 0::2], rotated[..., 1::2]
        turned = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return torch.cat((turned.flatten(-2), passed), dim=-1)
