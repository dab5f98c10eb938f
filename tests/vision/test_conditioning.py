"""Timestep features are the sinusoidal table's values; label dropout replaces a label by
"no label" at the rate asked and never otherwise."""

import math

import torch

from transformer.vision.conditioning import LabelEmbedding, TimestepEmbedding, timestep_features


def test_timestep_features_are_cosines_then_sines_of_geometric_frequencies() -> None:
    features = timestep_features(torch.tensor([0, 3]), dim=4, max_period=100.0)
    # frequencies 1 and 100^(-1/2) = 0.1
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(3), math.cos(0.3), math.sin(3), math.sin(0.3)]])
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)


def test_timestep_embedding_tells_steps_apart() -> None:
    torch.manual_seed(0)
    out = TimestepEmbedding(8, init_std=0.5)(torch.tensor([0, 1, 500]))
    assert out.shape == (3, 8)
    assert (out[0] - out[1]).abs().max() > 1e-3 and (out[0] - out[2]).abs().max() > 1e-3


def test_label_dropout_rate() -> None:
    embedding = LabelEmbedding(10, 4)
    labels = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(embedding.drop(labels, 0.0, generator), labels)
    assert bool((embedding.drop(labels, 1.0, generator) == embedding.null).all())
    dropped = embedding.drop(labels, 0.1, generator)
    kept = dropped != embedding.null
    assert torch.equal(dropped[kept], labels[kept])
    assert abs((~kept).float().mean().item() - 0.1) < 0.01  # 4 standard deviations at n = 20000
    torch.testing.assert_close(embedding(torch.tensor([10])), embedding.W_y[10:])
