"""Attention by hand: one head's scores, causal mask, softmax and weighted sum, then all heads.

One head, for queries q, keys k and values v (each `*lead pos d_head`; `lead` is `batch` for one
head and `batch n_heads` for all of them at once, the same algebra):
    S = q k^T / sqrt(d_head)     scores, one per (query, key)
    P = softmax(S masked)        each row sums to 1 over the keys the query may see
    z = P v                      the pattern-weighted values
Backward, from dL/dz:
    dL/dv = P^T dL/dz            dL/dP = dL/dz v^T
    dL/dS = P * (dL/dP - rowsum(dL/dP * P))       the softmax's Jacobian-vector product
    dL/dq = dL/dS k / sqrt(d_head)                dL/dk = dL/dS^T q / sqrt(d_head)
A masked score has P = 0, so its dL/dS is 0 with no extra step: the mask needs no backward of
its own. A query that may see no key at all (padding) gets an all-zero row of P, as in the
package's forward, and hence no gradient.

Multi-head attention adds the projections around it: q = x W_Q + b_Q (and k, v alike) per head,
and y = sum over heads of z W_O, + b_O; their backward is the MLP's (a weight's gradient is
input^T times output gradient; the input's is output gradient times weight^T), per head.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.manual.block import Grads, ManualBackpropError
from transformer.model.attention import Attention


def allowed_keys(pos: int, key_padding_mask: Tensor | None, device: torch.device) -> Tensor:
    """[#batch, 1, q, k]: True where query i may see key j (j <= i, and j not padding)."""
    causal = torch.ones(pos, pos, dtype=torch.bool, device=device).tril()[None, None]
    return causal if key_padding_mask is None else causal & key_padding_mask[:, None, None, :]


def masked_softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """Softmax over the allowed keys of each row; a row with none allowed is all zeros."""
    masked = scores.masked_fill(~allowed, float("-inf"))
    row_max = masked.amax(-1, keepdim=True)
    has_a_key = torch.isfinite(row_max)
    exp = torch.exp(masked - torch.where(has_a_key, row_max, 0.0))  # exp(-inf) = 0 where masked
    total = exp.sum(-1, keepdim=True)
    return torch.where(has_a_key, exp / torch.where(has_a_key, total, 1.0), 0.0)


def masked_softmax_backward(pattern: Tensor, d_pattern: Tensor) -> Tensor:
    """dL/dS from dL/dP: P (dP - <dP, P>), row by row (diag(P) - P P^T applied to dP)."""
    return pattern * (d_pattern - (d_pattern * pattern).sum(-1, keepdim=True))


@dataclass(frozen=True)
class HeadSaved:
    q: Tensor
    k: Tensor
    v: Tensor
    pattern: Tensor  # P


@dataclass(frozen=True)
class ManualHeads:
    """Scores, mask, softmax and weighted sum for one head (`q`: batch pos d_head) or many at
    once (`q`: batch n_heads pos d_head): no weights of its own."""

    allowed: Tensor  # broadcastable to the scores' [*lead, q, k]

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, HeadSaved]:
        scale = 1.0 / math.sqrt(q.shape[-1])
        allowed = self.allowed if q.dim() == 4 else self.allowed[:, 0]  # one head: no head dim
        pattern = masked_softmax(q @ k.transpose(-1, -2) * scale, allowed)
        return pattern @ v, HeadSaved(q, k, v, pattern)

    @staticmethod
    def backward(saved: HeadSaved, d_z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """dL/dz -> (dL/dq, dL/dk, dL/dv): everything it needs is in `saved`."""
        scale = 1.0 / math.sqrt(saved.q.shape[-1])
        d_v = saved.pattern.transpose(-1, -2) @ d_z
        d_scores = masked_softmax_backward(saved.pattern, d_z @ saved.v.transpose(-1, -2))
        d_q = d_scores @ saved.k * scale
        d_k = d_scores.transpose(-1, -2) @ saved.q * scale
        return d_q, d_k, d_v


@dataclass(frozen=True)
class AttentionSaved:
    x: Tensor
    heads: HeadSaved
    z: Tensor  # [batch, n_heads, pos, d_head], what W_O reads


@dataclass(frozen=True)
class ManualAttention:
    """Causal multi-head self-attention, with `key_padding_mask` (True: a key may be seen)."""

    module: Attention
    key_padding_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.module.rotary is not None or self.module.alibi is not None:
            raise ManualBackpropError(
                "the hand-written attention covers learned, sinusoidal or no positions: "
                "use positional='learned' (rotary and ALiBi act inside attention)"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, AttentionSaved]:
        m = self.module
        q, k, v = (self._project(x, W, b) for W, b in ((m.W_Q, m.b_Q), (m.W_K, m.b_K), (m.W_V, m.b_V)))
        heads = ManualHeads(allowed_keys(x.shape[1], self.key_padding_mask, x.device))
        z, head_saved = heads.forward(q, k, v)
        y = torch.einsum("bhpe,hed->bpd", z, m.W_O)
        return (y + m.b_O if m.b_O is not None else y), AttentionSaved(x, head_saved, z)

    @staticmethod
    def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
        out = torch.einsum("bpd,hde->bhpe", x, W)
        return out + b[:, None, :] if b is not None else out

    def backward(self, saved: AttentionSaved, d_y: Tensor) -> tuple[Tensor, Grads]:
        m = self.module
        grads: Grads = {"W_O": torch.einsum("bhpe,bpd->hed", saved.z, d_y)}
        if m.b_O is not None:
            grads["b_O"] = d_y.sum((0, 1))
        d_z = torch.einsum("bpd,hed->bhpe", d_y, m.W_O)
        d_q, d_k, d_v = ManualHeads.backward(saved.heads, d_z)
        d_x = torch.zeros_like(saved.x)
        for name, d_out, W, b in (("Q", d_q, m.W_Q, m.b_Q), ("K", d_k, m.W_K, m.b_K), ("V", d_v, m.W_V, m.b_V)):
            grads[f"W_{name}"] = torch.einsum("bpd,bhpe->hde", saved.x, d_out)
            if b is not None:
                grads[f"b_{name}"] = d_out.sum((0, 2))
            d_x = d_x + torch.einsum("bhpe,hde->bpd", d_out, W)
        return d_x, grads
