"""scikit-learn's bundled 8x8 handwritten digits: a real image set that needs no download.

1797 images of the digits 0-9 (16 grey levels), shipped inside scikit-learn (the optional extra
`vision`: `pip install 'transformer[vision]'`). The train/test split is a fixed permutation
(seed 0) so every run, and every figure in docs/vit.md, scores the same 360 test images.
"""

from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.errors import UserError

N_TEST = 360  # 20% of 1797


class MissingExtraError(UserError, ImportError):
    """An optional dependency the requested feature needs is not installed."""


@dataclass
class Digits:
    train_images: Float[Tensor, "n_train 1 8 8"]  # pixel values in [0, 1]
    train_labels: Int[Tensor, " n_train"]
    test_images: Float[Tensor, "n_test 1 8 8"]
    test_labels: Int[Tensor, " n_test"]


def load_digits(split_seed: int = 0) -> Digits:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise MissingExtraError(
            "the digits data set ships with scikit-learn: pip install 'transformer[vision]'"
        ) from None
    data = sklearn_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(data.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(split_seed).permutation(len(labels)))
    test, train = order[:N_TEST], order[N_TEST:]
    return Digits(images[train], labels[train], images[test], labels[test])


def random_shifts(
    images: Float[Tensor, "batch channels height width"], generator: torch.Generator, max_shift: int = 1
) -> Float[Tensor, "batch channels height width"]:
    """Each image moved by up to `max_shift` pixels in each direction, the uncovered border black:
    a digit means the same one pixel to the left, and 1437 training images need the reminder."""
    batch, channels, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
    b = torch.arange(batch)[:, None, None, None]
    c = torch.arange(channels)[None, :, None, None]
    return padded[b, c, rows, cols]
