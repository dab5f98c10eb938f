"""One transformer layer: a pre-norm residual block, `x + attn(norm(x))`, then `x + mlp(norm(x))`.

The residual stream is the model's memory; each block reads a normalised copy of it and
*adds* what it computed. Pre-norm (GPT-2 onwards) keeps an untouched identity path from the
embedding to the unembedding, which is what lets deep stacks train without warm-up tricks.
This module is the unit the plain decoder stacks and the routed decoder's pool holds.
A `LayerCache` passed in goes to the attention block, the only one that looks at other positions.
"""

import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from transformer.model.attention import Attention
from transformer.model.config import ModelConfig
from transformer.model.kv_cache import LayerCache
from transformer.model.mlp import MLP
from transformer.model.norm import make_norm


class TransformerLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ln2 = None if cfg.attn_only else make_norm(cfg)
        self.mlp = None if cfg.attn_only else MLP(cfg)
        self.dropout = cfg.dropout

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: LayerCache | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        attn_out = self.attn(self.ln1(resid), key_padding_mask, cache)
        resid = resid + F.dropout(attn_out, self.dropout, self.training)
        if self.mlp is not None and self.ln2 is not None:
            mlp_out = self.mlp(self.ln2(resid))
            resid = resid + F.dropout(mlp_out, self.dropout, self.training)
        return resid
