"""The MLP block by hand: two affine maps around GELU (or SwiGLU's gated SiLU).

Forward:  pre = x W_in + b_in,  h = gelu(pre),  y = h W_out + b_out.
Backward, from dL/dy:
    dL/dW_out = h^T dL/dy            dL/db_out = sum of dL/dy over positions
    dL/dh     = dL/dy W_out^T
    dL/dpre   = dL/dh * gelu'(pre)   (elementwise: GELU acts on each unit alone)
    dL/dW_in  = x^T dL/dpre          dL/db_in  = sum of dL/dpre over positions
    dL/dx     = dL/dpre W_in^T
with gelu(u) = u Phi(u), so gelu'(u) = Phi(u) + u phi(u): the exact erf form's derivative, the
same function the package's forward uses (its tanh estimate would differ by ~1e-3).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.manual.block import Grads
from transformer.model.mlp import MLP


def normal_cdf(u: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(u / math.sqrt(2.0)))


def normal_pdf(u: Tensor) -> Tensor:
    return torch.exp(-0.5 * u * u) / math.sqrt(2.0 * math.pi)


def gelu(u: Tensor) -> Tensor:
    return u * normal_cdf(u)


def gelu_derivative(u: Tensor) -> Tensor:
    """d/du [u Phi(u)] = Phi(u) + u Phi'(u), and Phi' is the normal density."""
    return normal_cdf(u) + u * normal_pdf(u)


def silu(u: Tensor) -> Tensor:
    return u * torch.sigmoid(u)


def silu_derivative(u: Tensor) -> Tensor:
    """d/du [u sigma(u)] = sigma(u) + u sigma(u) (1 - sigma(u))."""
    s = torch.sigmoid(u)
    return s * (1.0 + u * (1.0 - s))


def _flat(t: Tensor) -> Tensor:
    """[*positions, width] -> [positions, width], so a weight's gradient is one matrix product."""
    return t.reshape(-1, t.shape[-1])


@dataclass(frozen=True)
class MLPSaved:
    x: Tensor
    pre: Tensor  # x W_in + b_in
    gate_pre: Tensor | None  # x W_gate (SwiGLU only)
    hidden: Tensor  # what W_out reads


@dataclass(frozen=True)
class ManualMLP:
    module: MLP

    def forward(self, x: Tensor) -> tuple[Tensor, MLPSaved]:
        m = self.module
        pre = x @ m.W_in + m.b_in if m.b_in is not None else x @ m.W_in
        gate_pre = x @ m.W_gate if m.W_gate is not None else None
        hidden = gelu(pre) if gate_pre is None else silu(gate_pre) * pre
        y = hidden @ m.W_out
        return (y + m.b_out if m.b_out is not None else y), MLPSaved(x, pre, gate_pre, hidden)

    def backward(self, saved: MLPSaved, d_y: Tensor) -> tuple[Tensor, Grads]:
        m = self.module
        grads: Grads = {"W_out": _flat(saved.hidden).T @ _flat(d_y)}
        if m.b_out is not None:
            grads["b_out"] = _flat(d_y).sum(0)
        d_hidden = d_y @ m.W_out.T
        if saved.gate_pre is None:
            d_pre = d_hidden * gelu_derivative(saved.pre)
            d_x = d_pre @ m.W_in.T
        else:  # hidden = silu(gate_pre) * pre: each factor's gradient is the other times d_hidden
            assert m.W_gate is not None
            d_pre = d_hidden * silu(saved.gate_pre)
            d_gate_pre = d_hidden * saved.pre * silu_derivative(saved.gate_pre)
            grads["W_gate"] = _flat(saved.x).T @ _flat(d_gate_pre)
            d_x = d_pre @ m.W_in.T + d_gate_pre @ m.W_gate.T
        grads["W_in"] = _flat(saved.x).T @ _flat(d_pre)
        if m.b_in is not None:
            grads["b_in"] = _flat(d_pre).sum(0)
        return d_x, grads
