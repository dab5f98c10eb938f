"""Exercise 7 (docs/modules/attention.md): multi-head causal attention, the readable path.

Write the five steps `Attention.forward` calls on the readable path, in this order: `project`
(queries, keys and values), `allowed` (the causal mask), `pattern` (the softmax of the scores),
`mix` (the pattern-weighted values) and `write` (back to the residual stream through W_O). The
parameters already exist (W_Q, W_K, W_V [n_heads, d_model, d_head], W_O [n_heads, d_head,
d_model], the biases b_Q, b_K, b_V, b_O or None, `self.scale` = 1 / sqrt(d_head)); so do rotary
and ALiBi, which `forward` applies between your steps. The fused path (`kernels="fast"`) stays
PyTorch's, but it uses your `allowed`. Check with `transformer exercise attention`.
"""

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from transformer.model import attention as solution

__all__ = ["Attention"]


class Attention(solution.Attention):
    @staticmethod
    def project(
        x: Float[Tensor, "batch pos d_model"],
        W: Float[Tensor, "n_heads d_model d_head"],
        b: Float[Tensor, "n_heads d_head"] | None,
    ) -> Float[Tensor, "batch n_heads pos d_head"]:
        """Every head's x @ W[h] (+ b[h]), heads on axis 1.

        Hint: one `torch.einsum("bpd,hde->bhpe", ...)`; the bias broadcasts as b[:, None, :]."""
        raise NotImplementedError("exercise: Attention.project (docs/modules/attention.md)")

    @staticmethod
    def allowed(
        pos: int,
        key_padding_mask: Bool[Tensor, "batch pos"] | None,
        device: torch.device,
        offset: int = 0,
        causal_mask: bool = True,
    ) -> Bool[Tensor, "#batch 1 q k"]:
        """True where query i (at absolute position offset + i) may see key j: j <= offset + i,
        and, with a padding mask, key j is not padding. Shape [1, 1, pos, offset + pos] without
        a padding mask, [batch, 1, pos, offset + pos] with one. `causal_mask=False` (only the
        image models of docs/vit.md and docs/dit.md pass it): every key is allowed.

        Hint: `torch.ones(...).tril(diagonal=offset)`."""
        raise NotImplementedError("exercise: Attention.allowed (docs/modules/attention.md)")

    def pattern(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
    ) -> Float[Tensor, "batch n_heads q k"]:
        """softmax over keys of (q @ k^T * scale + bias), with keys not allowed masked out.

        Hints: compute in float32 at least (`torch.promote_types(q.dtype, torch.float32)`): a
        bfloat16 softmax is off by 1e-3. Fill masked scores with `torch.finfo(dtype).min`, not
        -inf: a query with no allowed key (left padding) would get NaN. Such a query's row must
        come out all zeros."""
        raise NotImplementedError("exercise: Attention.pattern (docs/modules/attention.md)")

    def mix(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        v: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
    ) -> Float[Tensor, "batch n_heads q d_head"]:
        """Each query's average of the values, weighted by its row of `self.pattern(...)`.

        Hint: the pattern is float32; cast it back to v's dtype before the matrix multiply."""
        raise NotImplementedError("exercise: Attention.mix (docs/modules/attention.md)")

    def write(self, z: Float[Tensor, "batch n_heads pos d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """Every head's z through its own W_O[h], summed over heads, plus b_O when there is one.

        Hint: one `torch.einsum("bhpe,hed->bpd", ...)`."""
        raise NotImplementedError("exercise: Attention.write (docs/modules/attention.md)")
