"""Patch embedding: an image becomes a sequence of vectors, one per non-overlapping patch.

A transformer reads a sequence; ViT (Dosovitskiy et al., 2020) makes one from an image by
cutting it into `patch x patch` squares, flattening each and projecting it to `d_model` with one
shared matrix. That is exactly a convolution whose kernel size and stride are both `patch`:
tests/vision/test_patches.py proves it equals `F.conv2d` with the same weights. Written here as
a reshape and one einsum, so the patch grid is visible. `unpatchify` is the inverse layout, for
a model (DiT) whose outputs are patches of an image.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from transformer.model.config import ConfigError


def patch_grid(image_size: int, patch: int) -> int:
    """Patches along one side; the image must tile exactly (a partial patch would be dropped)."""
    if patch <= 0 or image_size <= 0 or image_size % patch != 0:
        raise ConfigError(f"patch={patch} must divide image_size={image_size}: e.g. patch=2 for 8x8 images")
    return image_size // patch


class PatchEmbedding(nn.Module):
    """W_P[c, i, j, :] is what pixel (i, j) of channel c in any patch adds to that patch's vector."""

    def __init__(self, channels: int, patch: int, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.patch = patch
        self.W_P = nn.Parameter(torch.randn(channels, patch, patch, d_model) * init_std)
        self.b_P = nn.Parameter(torch.zeros(d_model))

    def forward(self, images: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch n_patches d_model"]:
        batch, channels, height, width = images.shape
        p = self.patch
        patch_grid(height, p), patch_grid(width, p)
        # [batch, channels, row, i, col, j]: pixel (row * p + i, col * p + j)
        grid = images.reshape(batch, channels, height // p, p, width // p, p)
        out = torch.einsum("bcyixj,cijd->byxd", grid, self.W_P) + self.b_P
        return out.reshape(batch, (height // p) * (width // p), -1)  # patches row by row


def unpatchify(
    patches: Float[Tensor, "batch n_patches patch_values"], channels: int, patch: int
) -> Float[Tensor, "batch channels height width"]:
    """Patch vectors of `channels * patch * patch` values (ordered c, i, j) back into a square image."""
    batch, n_patches, _ = patches.shape
    side = round(n_patches**0.5)
    grid = patches.reshape(batch, side, side, channels, patch, patch)  # row, col, c, i, j
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, side * patch, side * patch)
