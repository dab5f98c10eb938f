"""The digits split is fixed and disjoint, pixels lie in [0, 1], and a random shift moves a
digit by at most one pixel without changing it otherwise."""

import torch

from transformer.vision.digits import N_TEST, load_digits, random_shifts


def test_fixed_disjoint_split_of_all_1797_images() -> None:
    first, again = load_digits(), load_digits()
    assert len(first.train_labels) == 1797 - N_TEST and len(first.test_labels) == N_TEST
    assert torch.equal(first.test_images, again.test_images)
    assert first.train_images.min() >= 0 and first.train_images.max() == 1
    train_rows = {tuple(row.tolist()) for row in first.train_images.flatten(1)}
    leaked = sum(tuple(row.tolist()) in train_rows for row in first.test_images.flatten(1))
    assert leaked == 0
    assert set(first.test_labels.tolist()) == set(range(10))


def test_random_shift_moves_each_image_by_at_most_one_pixel() -> None:
    images = torch.zeros(200, 1, 8, 8)
    images[:, 0, 3:5, 3:5] = torch.arange(1.0, 5.0).reshape(2, 2)  # away from the border
    shifted = random_shifts(images, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.sum((1, 2, 3)), images.sum((1, 2, 3)))
    offsets = set()
    for before, after in zip(images, shifted, strict=True):
        found = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(torch.roll(before, (dy, dx), dims=(1, 2)), after)
        ]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) == 9
