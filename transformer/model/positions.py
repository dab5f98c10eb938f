"""Absolute positions: a vector per position, added to the token embedding.

Attention by itself is blind to order (permute the keys and the output is unchanged), so a
model that must know *where* a token is needs position written into the residual stream.
Learned positions (GPT-2) are a trained table W_pos; sinusoidal positions (Vaswani et al.)
are a fixed table of sines and cosines at geometrically spaced frequencies. Rotary and ALiBi
act inside attention instead: see rotary.py and alibi.py.
"""

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def _check_length(pos: int, offset: int, n_ctx: int) -> None:
    if offset + pos > n_ctx:
        raise ValueError(f"sequence of {offset + pos} positions is longer than the model's context n_ctx={n_ctx}")


class AbsolutePositions(nn.Module):
    """Row p of the table W_pos is added to the embedding of the token at position p (shifted
    by `offset` when the tokens continue a sequence, as in cached generation)."""

    W_pos: Tensor

    def forward(self, tokens: Int[Tensor, "batch pos"], offset: int = 0) -> Float[Tensor, "pos d_model"]:
        pos = tokens.shape[1]
        _check_length(pos, offset, self.W_pos.shape[0])
        return self.W_pos[offset : offset + pos]


class LearnedPositions(AbsolutePositions):
    def __init__(self, n_ctx: int, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model) * init_std)


def sinusoidal_table(n_ctx: int, d_model: int) -> Float[Tensor, "n_ctx d_model"]:
    """Row p: sin(p / 10000^(2i/d)) in even columns, cos of the same angle in odd ones."""
    position = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10_000.0) / d_model))
    table = torch.zeros(n_ctx, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table.float()


class SinusoidalPositions(AbsolutePositions):
    def __init__(self, n_ctx: int, d_model: int) -> None:
        super().__init__()
        # Not a parameter and not saved: it is a function of (n_ctx, d_model) alone.
        self.register_buffer("W_pos", sinusoidal_table(n_ctx, d_model), persistent=False)
