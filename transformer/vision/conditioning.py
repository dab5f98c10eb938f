"""What a diffusion model is told besides the noisy image: the timestep and the class label.

DiT (Peebles & Xie, 2023) turns both into one `d_model` vector `c`, which every layer then reads
through adaLN (adaln.py):
- the timestep t, an integer in [0, n_steps), goes through a fixed sinusoidal table (as the
  original transformer's positions, positions.py in transformer/model) and then a two-layer SiLU
  MLP, so the model can learn which frequencies matter;
- the label is a learned row per class, plus one extra row, "no label", which training
  substitutes for the real label a fraction of the time. That lets one network predict both with
  and without the label, which classifier-free guidance (diffusion.py) combines when sampling.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn


def timestep_features(t: Int[Tensor, " batch"], dim: int, max_period: float = 10_000.0) -> Float[Tensor, "batch dim"]:
    """cos(t * f_i) in the first half, sin(t * f_i) in the second, f_i geometric from 1 to 1/max_period."""
    half = dim // 2
    frequency = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angle = t.float()[:, None] * frequency[None]
    return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, d_model: int, n_frequencies: int = 64, init_std: float = 0.02) -> None:
        super().__init__()
        self.n_frequencies = n_frequencies
        self.W_1 = nn.Parameter(torch.randn(n_frequencies, d_model) * init_std)
        self.b_1 = nn.Parameter(torch.zeros(d_model))
        self.W_2 = nn.Parameter(torch.randn(d_model, d_model) * init_std)
        self.b_2 = nn.Parameter(torch.zeros(d_model))

    def forward(self, t: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_model"]:
        hidden = F.silu(timestep_features(t, self.n_frequencies) @ self.W_1 + self.b_1)
        return hidden @ self.W_2 + self.b_2


class LabelEmbedding(nn.Module):
    """Rows 0 .. n_classes - 1 are the classes; row n_classes (`self.null`) means "no label"."""

    def __init__(self, n_classes: int, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.null = n_classes
        self.W_y = nn.Parameter(torch.randn(n_classes + 1, d_model) * init_std)

    def forward(self, labels: Int[Tensor, " batch"]) -> Float[Tensor, "batch d_model"]:
        return self.W_y[labels]

    def drop(self, labels: Int[Tensor, " batch"], p: float, generator: torch.Generator) -> Int[Tensor, " batch"]:
        """`labels` with each replaced by "no label" with probability p (classifier-free guidance training)."""
        dropped = torch.rand(labels.shape, generator=generator).to(labels.device) < p
        return torch.where(dropped, torch.full_like(labels, self.null), labels)
