"""adaLN-Zero: a transformer layer told what to do by a conditioning vector (DiT's block).

A `TransformerLayer` (transformer/model/layer.py) normalises its input with a LayerNorm whose
gain and bias are parameters, fixed after training. Adaptive LayerNorm computes them instead,
per example, from the conditioning vector c (timestep and label, conditioning.py):

    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = SiLU(c) @ W_mod + b_mod
    x = x + gate_a * attn(norm(x) * (1 + scale_a) + shift_a)
    x = x + gate_m * mlp(norm(x) * (1 + scale_m) + shift_m)

"-Zero": W_mod and b_mod start at zero, so every gate starts at 0 and each layer starts as the
identity; the network begins as a function of its input alone and learns how much of each block
to let through. DiT found this the best of its conditioning schemes. With scales and shifts 0 and
gates 1 the layer *is* a pre-norm `TransformerLayer` whose norms have unit gain and zero bias:
tests/vision/test_adaln.py checks exactly that, and that conditioning carries the label.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from transformer.model.attention import Attention
from transformer.model.config import ConfigError, ModelConfig
from transformer.model.mlp import MLP


def normalise(x: Float[Tensor, "batch pos d_model"], eps: float) -> Float[Tensor, "batch pos d_model"]:
    """LayerNorm with no gain or bias of its own: adaLN supplies both."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def modulate(
    x: Float[Tensor, "batch pos d_model"], shift: Float[Tensor, "batch d_model"], scale: Float[Tensor, "batch d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    """`1 + scale`, so a zero modulation leaves the normalised input as it is."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class AdaLNZeroLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.causal:
            raise ConfigError("an adaLN-Zero layer denoises whole images: build it with ModelConfig(causal=False)")
        if cfg.attn_only:
            raise ConfigError("an adaLN-Zero layer has an MLP block: build it with ModelConfig(attn_only=False)")
        self.eps = cfg.norm_eps
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.W_mod = nn.Parameter(torch.zeros(cfg.d_model, 6 * cfg.d_model))
        self.b_mod = nn.Parameter(torch.zeros(6 * cfg.d_model))

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], c: Float[Tensor, "batch d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (F.silu(c) @ self.W_mod + self.b_mod).chunk(6, dim=-1)
        x = x + gate_a[:, None, :] * self.attn(modulate(normalise(x, self.eps), shift_a, scale_a))
        mlp_out: Tensor = self.mlp(modulate(normalise(x, self.eps), shift_m, scale_m))
        return x + gate_m[:, None, :] * mlp_out


class AdaLNFinal(nn.Module):
    """The last norm, modulated the same way, then a projection to each patch's pixel values;
    both start at zero, so an untrained DiT predicts zero noise."""

    def __init__(self, d_model: int, patch_values: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.W_mod = nn.Parameter(torch.zeros(d_model, 2 * d_model))
        self.b_mod = nn.Parameter(torch.zeros(2 * d_model))
        self.W_out = nn.Parameter(torch.zeros(d_model, patch_values))
        self.b_out = nn.Parameter(torch.zeros(patch_values))

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], c: Float[Tensor, "batch d_model"]
    ) -> Float[Tensor, "batch pos patch_values"]:
        shift, scale = (F.silu(c) @ self.W_mod + self.b_mod).chunk(2, dim=-1)
        return modulate(normalise(x, self.eps), shift, scale) @ self.W_out + self.b_out
