"""The MLP block: the only place a transformer computes a non-linear function of one position.

Attention moves information between positions but, per head, only mixes vectors linearly;
the MLP reads the residual stream at each position, applies a non-linearity, and writes back.
GELU uses the exact erf form ("gelu_tanh": the tanh estimate GPT-2's checkpoints were
trained with, which loading them needs); SwiGLU gates one projection with the SiLU of another. With
`ModelConfig.kernels == "fast"` the GELU is PyTorch's fused `F.gelu` (the same exact erf
form in one pass over the activation instead of five); tests/model/test_mlp.py proves they agree.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.hooks import HookPoint


def gelu(x: Tensor) -> Tensor:
    """x * Phi(x), with Phi the standard normal CDF (the exact form, not the tanh estimate)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x: Tensor) -> Tensor:
    """GPT-2's GELU ("gelu_new"): Phi(x) estimated by 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _fast_gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def silu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d_model, d_mlp = cfg.d_model, cfg.d_mlp
        self.gated = cfg.mlp == "swiglu"
        self.fast = cfg.kernels == "fast"
        self.activation: Callable[[Tensor], Tensor]
        if cfg.mlp == "gelu_tanh":
            self.activation = _fast_gelu_tanh if self.fast else gelu_tanh
        else:
            self.activation = F.gelu if self.fast else gelu
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) * cfg.init_std)
        self.b_in = nn.Parameter(torch.zeros(d_mlp)) if cfg.bias else None
        self.W_gate = nn.Parameter(torch.randn(d_model, d_mlp) * cfg.init_std) if self.gated else None
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) * cfg.residual_out_std)
        self.b_out = nn.Parameter(torch.zeros(d_model)) if cfg.bias else None
        # Readable path only (hooks.py): pre-activations (SwiGLU: gate, linear), the hidden layer.
        self.hook_pre, self.hook_pre_linear, self.hook_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self._affine(x, self.W_in, self.b_in)
        if self.W_gate is not None:
            gate = x @ self.W_gate
            if not self.fast:
                gate, pre = self.hook_pre(gate), self.hook_pre_linear(pre)
            hidden = silu(gate) * pre
        else:
            hidden = self.activation(pre if self.fast else self.hook_pre(pre))
        if not self.fast:
            hidden = self.hook_post(hidden)
        return self._affine(hidden, self.W_out, self.b_out)

    def _affine(self, x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        """x @ W + b; on the fast path as one fused multiply-add (addmm)."""
        if b is None:
            return x @ W
        if self.fast:
            return torch.addmm(b, x.reshape(-1, W.shape[0]), W).view(*x.shape[:-1], W.shape[1])
        return x @ W + b
