"""A ViT starts at chance (its head is zero: loss exactly ln 10), refuses a causal config, and
learns to tell two digits apart far above chance in a few seconds. The 97% goal on all ten
digits is in test_goals.py (slow)."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.attention_tasks import shape_checks_paused
from transformer.model.config import ConfigError
from transformer.vision.config import ImageConfig
from transformer.vision.digits import Digits, load_digits
from transformer.vision.fit import FitConfig, accuracy, train_vit, vit_config
from transformer.vision.vit import ViT


def test_starts_at_chance_and_refuses_the_causal_mask() -> None:
    torch.manual_seed(0)
    model = ViT(vit_config(n_layers=1), ImageConfig())
    images = torch.rand(4, 1, 8, 8)
    logits = model(images)
    assert logits.shape == (4, 10)
    torch.testing.assert_close(F.cross_entropy(logits, torch.arange(4)), torch.tensor(math.log(10)))
    with pytest.raises(ConfigError, match="causal=False"):
        ViT(vit_config(causal=True), ImageConfig())


def test_every_patch_reaches_the_prediction() -> None:
    """Bidirectional attention and the class token: a change to any one patch changes the logits."""
    torch.manual_seed(0)
    model = ViT(vit_config(n_layers=1), ImageConfig())
    with torch.no_grad():
        model.W_head.normal_()
    images = torch.rand(1, 1, 8, 8)
    for row in range(0, 8, 2):
        for col in range(0, 8, 2):
            changed = images.clone()
            changed[0, 0, row, col] += 1.0
            assert (model(changed) - model(images)).abs().max() > 1e-4


def test_learns_zeros_from_ones_far_above_chance() -> None:
    data = load_digits()
    keep_train, keep_test = data.train_labels < 2, data.test_labels < 2
    two = Digits(
        data.train_images[keep_train],
        data.train_labels[keep_train],
        data.test_images[keep_test],
        data.test_labels[keep_test],
    )
    with shape_checks_paused():
        model, _ = train_vit(two, FitConfig(steps=300, batch=32, warmup=10), vit_config(d_model=32, n_layers=1))
    assert accuracy(model, two.test_images, two.test_labels) > 0.95  # chance: 0.5
