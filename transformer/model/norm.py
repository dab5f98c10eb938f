"""Normalisation of the residual stream before each block reads it.

LayerNorm centres each position's vector and scales it to unit variance, then applies a
learned gain `w` and bias `b`. RMSNorm skips the centring and the bias: it only rescales by
the root-mean-square. Both keep a block's input on a fixed scale however large the residual
stream grows with depth. Epsilon goes *inside* the square root, added to the variance.

With `fast=True` (`ModelConfig.kernels == "fast"`) the same function runs as
PyTorch's fused kernel, one pass instead of five; tests/model/test_norm.py proves they agree.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from transformer.model.config import ModelConfig


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, fast: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.fast = fast
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if self.fast:
            return F.layer_norm(x, self.w.shape, self.w, self.b, self.eps)
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = centred.pow(2).mean(dim=-1, keepdim=True)  # biased, as in the paper
        return centred / torch.sqrt(variance + self.eps) * self.w + self.b


class RMSNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5, fast: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.fast = fast
        self.w = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Float[Tensor, "*batch d_model"]) -> Float[Tensor, "*batch d_model"]:
        if self.fast:
            return F.rms_norm(x, self.w.shape, self.w, self.eps)
        mean_square = x.pow(2).mean(dim=-1, keepdim=True)
        return x * torch.rsqrt(mean_square + self.eps) * self.w


def make_norm(cfg: ModelConfig) -> LayerNorm | RMSNorm:
    """The norm every block and the router use, so one config field changes all of them."""
    norm = LayerNorm if cfg.norm == "layernorm" else RMSNorm
    return norm(cfg.d_model, cfg.norm_eps, fast=cfg.kernels == "fast")
