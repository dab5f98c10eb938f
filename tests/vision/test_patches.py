"""The patch embedding is a convolution with kernel = stride = patch: it equals `F.conv2d` with
the same weights, `unpatchify` puts patch values back where `F.unfold` took them from, and an
image that does not tile is refused."""

import pytest
import torch
import torch.nn.functional as F

from transformer.model.config import ConfigError
from transformer.vision.config import ImageConfig
from transformer.vision.patches import PatchEmbedding, unpatchify


@pytest.mark.parametrize(("channels", "patch", "size"), [(1, 2, 8), (3, 4, 8), (2, 1, 3)])
def test_equals_a_strided_convolution_with_the_same_weights(channels: int, patch: int, size: int) -> None:
    torch.manual_seed(0)
    embed = PatchEmbedding(channels, patch, d_model=6).double()
    with torch.no_grad():
        embed.b_P.normal_()
    images = torch.randn(2, channels, size, size, dtype=torch.float64)
    conv_weight = embed.W_P.permute(3, 0, 1, 2)  # [d_model, channels, patch, patch]
    expected = F.conv2d(images, conv_weight, embed.b_P, stride=patch)  # [batch, d_model, rows, cols]
    torch.testing.assert_close(embed(images), expected.flatten(2).transpose(1, 2), atol=1e-10, rtol=0)


def test_unpatchify_inverts_unfold() -> None:
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)  # [batch, n_patches, c * p * p]
    torch.testing.assert_close(unpatchify(patches, channels=3, patch=4), images, atol=0, rtol=0)


def test_an_image_that_does_not_tile_is_refused() -> None:
    with pytest.raises(ConfigError, match="must divide image_size=8"):
        ImageConfig(image_size=8, patch=3)
    with pytest.raises(ConfigError, match="must divide"):
        PatchEmbedding(1, 3, 4)(torch.zeros(1, 1, 8, 8))
