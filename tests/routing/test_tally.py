"""`tally` counts what `torch.bincount` counts, in a result sized in advance (so a GPU never
waits), and the dispatchers built on it still refuse a layer outside the pool."""

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.routing.dispatch import sorted_dispatch
from transformer.routing.pool import LayerPool
from transformer.routing.tally import tally


def test_tally_equals_bincount_per_column_and_weighted_by_a_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 7, (500, 3), generator=generator)
    where = torch.rand(500, 3, generator=generator) < 0.4
    counts, masked = tally(values, 7), tally(values, 7, where=where)
    assert counts.shape == (3, 7) and counts.dtype == torch.long
    for column in range(3):
        assert torch.equal(counts[column], torch.bincount(values[:, column], minlength=7))
        weighted = torch.bincount(values[:, column], weights=where[:, column].float(), minlength=7)
        assert torch.equal(masked[column].float(), weighted)
    assert int(masked.sum()) == int(where.sum()) < int(counts.sum()) == 1500


def test_values_outside_the_range_count_nowhere() -> None:
    assert tally(torch.tensor([0, 2, 2, 5, -1]), 3).tolist() == [1, 0, 2]


def test_the_dispatchers_refuse_a_layer_outside_the_pool() -> None:
    admitted = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(IndexError, match="outside the pool of 3"):
        sorted_dispatch(torch.tensor([[0, 1, 7, 2]]), admitted, 3)
    pool = LayerPool(tiny_config(), 3)
    with pytest.raises(IndexError, match="route names layer -1; the pool has 3"):
        pool(torch.zeros(2, 4, 16), torch.tensor([0, -1]))
