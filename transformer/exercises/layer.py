"""Exercise 9 (docs/modules/layer.md): the pre-norm residual block.

Write `TransformerLayer.forward`. The parts already exist: `self.ln1`, `self.attn`, and, unless
the model is attention-only, `self.ln2` and `self.mlp` (None otherwise); `self.dropout` is the
dropout probability. Check with `transformer exercise layer`.
"""

from jaxtyping import Bool, Float
from torch import Tensor

from transformer.model import layer as solution
from transformer.model.kv_cache import LayerCache

__all__ = ["TransformerLayer"]


class TransformerLayer(solution.TransformerLayer):
    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: LayerCache | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """resid + attn(ln1(resid)), then, with an MLP, + mlp(ln2(that)). Each block reads a
        normalised copy and *adds* to the stream; the stream itself is never normalised here.

        Hints: the attention gets `key_padding_mask` and `cache` too; wrap each block's output in
        `F.dropout(out, self.dropout, self.training)` before adding it."""
        raise NotImplementedError("exercise: TransformerLayer.forward (docs/modules/layer.md)")
