"""DiT: the same layers, conditioned by adaLN-Zero, predicting the noise in a noisy image.

    noisy image -> PatchEmbedding + learned positions
                -> n_layers AdaLNZeroLayer, each told c = timestep embedding + label embedding
                -> AdaLNFinal -> noise per patch -> unpatchify -> predicted noise image

There is no class token: the output is one prediction per patch, read back into an image.
The attention and MLP inside each layer are `transformer.model`'s; only the norms and the
residual gates differ from a `TransformerLayer` (adaln.py). Trained and sampled by diffusion.py.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.vision.adaln import AdaLNFinal, AdaLNZeroLayer
from transformer.vision.conditioning import LabelEmbedding, TimestepEmbedding
from transformer.vision.config import ImageConfig, require_bidirectional
from transformer.vision.patches import PatchEmbedding, unpatchify


class DiT(nn.Module):
    def __init__(self, cfg: ModelConfig, image: ImageConfig) -> None:
        super().__init__()
        require_bidirectional(cfg, "a DiT")
        self.cfg, self.image = cfg, image
        self.patches = PatchEmbedding(image.channels, image.patch, cfg.d_model, cfg.init_std)
        self.W_pos = nn.Parameter(torch.randn(image.n_patches, cfg.d_model) * cfg.init_std)
        self.timestep = TimestepEmbedding(cfg.d_model, init_std=cfg.init_std)
        self.label = LabelEmbedding(image.n_classes, cfg.d_model, cfg.init_std)
        self.layers = nn.ModuleList([AdaLNZeroLayer(cfg) for _ in range(cfg.n_layers)])
        self.final = AdaLNFinal(cfg.d_model, image.patch_values, cfg.norm_eps)

    def forward(
        self,
        noisy: Float[Tensor, "batch channels height width"],
        t: Int[Tensor, " batch"],
        labels: Int[Tensor, " batch"],
    ) -> Float[Tensor, "batch channels height width"]:
        """`labels` may hold `self.label.null` ("no label") for unconditional predictions."""
        c = self.timestep(t) + self.label(labels)
        resid = self.patches(noisy) + self.W_pos
        for layer in self.layers:
            resid = layer(resid, c)
        return unpatchify(self.final(resid, c), self.image.channels, self.image.patch)
