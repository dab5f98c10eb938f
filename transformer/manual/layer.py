"""The pre-norm residual layer by hand: x -> x + attn(ln1(x)) -> (that) + mlp(ln2(that)).

A residual connection y = x + f(x) has the backward dL/dx = dL/dy + (f's backward of dL/dy):
the gradient reaches x twice, once straight down the identity path untouched, once through
the block. That first term is why deep pre-norm stacks train: every layer's input receives the
loss's gradient undiminished, whatever the blocks above it do.
"""

from dataclasses import dataclass

from torch import Tensor

from transformer.manual.attention import AttentionSaved, ManualAttention
from transformer.manual.block import Grads, ManualBackpropError, prefixed
from transformer.manual.mlp import ManualMLP, MLPSaved
from transformer.manual.norm import NormSaved, manual_norm
from transformer.model.layer import TransformerLayer


@dataclass(frozen=True)
class LayerSaved:
    ln1: NormSaved
    attn: AttentionSaved
    ln2: NormSaved | None
    mlp: MLPSaved | None


@dataclass(frozen=True)
class ManualLayer:
    module: TransformerLayer
    key_padding_mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.module.dropout and self.module.training:
            raise ManualBackpropError(
                "the hand-written backward has no dropout: set model.dropout=0 or call model.eval()"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, LayerSaved]:
        m = self.module
        normed, ln1 = manual_norm(m.ln1).forward(x)
        attn_out, attn = ManualAttention(m.attn, self.key_padding_mask).forward(normed)
        resid = x + attn_out
        if m.mlp is None or m.ln2 is None:
            return resid, LayerSaved(ln1, attn, None, None)
        normed2, ln2 = manual_norm(m.ln2).forward(resid)
        mlp_out, mlp = ManualMLP(m.mlp).forward(normed2)
        return resid + mlp_out, LayerSaved(ln1, attn, ln2, mlp)

    def backward(self, saved: LayerSaved, d_y: Tensor) -> tuple[Tensor, Grads]:
        m = self.module
        grads: Grads = {}
        d_resid = d_y  # the identity path
        if m.mlp is not None and m.ln2 is not None and saved.mlp is not None and saved.ln2 is not None:
            d_normed2, mlp_grads = ManualMLP(m.mlp).backward(saved.mlp, d_y)
            d_through_mlp, ln2_grads = manual_norm(m.ln2).backward(saved.ln2, d_normed2)
            d_resid = d_y + d_through_mlp
            grads |= prefixed("mlp", mlp_grads) | prefixed("ln2", ln2_grads)
        d_normed, attn_grads = ManualAttention(m.attn, self.key_padding_mask).backward(saved.attn, d_resid)
        d_through_attn, ln1_grads = manual_norm(m.ln1).backward(saved.ln1, d_normed)
        grads |= prefixed("attn", attn_grads) | prefixed("ln1", ln1_grads)
        return d_resid + d_through_attn, grads
