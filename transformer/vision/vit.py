"""ViT: the decoder's layers, without the causal mask, classifying an image.

    images -> PatchEmbedding -> [class token; patches] + learned positions
           -> n_layers TransformerLayer (bidirectional) -> norm -> class token's state -> head

Everything between the embedding and the head is `transformer.model` unchanged: the same
`TransformerLayer` a GPT stacks, built from `ModelConfig(causal=False)`. Positions are a learned
table, one row per patch and one for the class token; attention itself is blind to where a
patch came from. `ModelConfig.positional` is not used here (this model adds its own table).
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.layer import TransformerLayer
from transformer.model.norm import make_norm
from transformer.vision.class_token import ClassToken
from transformer.vision.config import ImageConfig, require_bidirectional
from transformer.vision.patches import PatchEmbedding


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, image: ImageConfig) -> None:
        super().__init__()
        require_bidirectional(cfg, "a ViT")
        self.cfg, self.image = cfg, image
        self.patches = PatchEmbedding(image.channels, image.patch, cfg.d_model, cfg.init_std)
        self.cls = ClassToken(cfg.d_model, cfg.init_std)
        self.W_pos = nn.Parameter(torch.randn(image.n_patches + 1, cfg.d_model) * cfg.init_std)
        self.layers = nn.ModuleList([TransformerLayer(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(cfg)
        self.W_head = nn.Parameter(torch.zeros(cfg.d_model, image.n_classes))  # zero: start at chance, loss ln 10
        self.b_head = nn.Parameter(torch.zeros(image.n_classes))

    def forward(self, images: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch n_classes"]:
        resid: Tensor = self.cls(self.patches(images)) + self.W_pos
        for layer in self.layers:
            resid = layer(resid)
        summary: Tensor = self.ln_final(resid[:, 0])  # the class token's final state
        return summary @ self.W_head + self.b_head
