"""Sorted dispatch equals running every layer on everything, and costs one layer's rows per step."""

import torch

from tests.helpers.routed_models import tiny_config
from transformer.routing.pool import LayerPool


def _pool(seed: int = 0, size: int = 4) -> LayerPool:
    torch.manual_seed(seed)
    return LayerPool(tiny_config(), size).double()


def oracle(pool: LayerPool, resid: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Every layer on every sequence, then pick: N times the compute, for tests only."""
    everything = torch.stack([layer(resid) for layer in pool.layers])  # [N, batch, pos, d_model]
    return everything[choice, torch.arange(resid.shape[0])]


def test_dispatch_equals_compute_all_then_select_including_empty_groups() -> None:
    pool = _pool()
    resid = torch.randn(9, 12, 16, dtype=torch.float64)
    choice = torch.tensor([3, 0, 3, 3, 1, 0, 3, 1, 0])  # layer 2 gets nobody
    torch.testing.assert_close(pool(resid, choice), oracle(pool, resid, choice), rtol=1e-12, atol=1e-12)


def test_every_pool_parameter_gets_a_gradient_and_unused_layers_get_exact_zeros() -> None:
    pool = _pool()
    resid = torch.randn(5, 12, 16, dtype=torch.float64)
    pool(resid, torch.tensor([0, 0, 1, 1, 0])).pow(2).sum().backward()
    for index, layer in enumerate(pool.layers):
        for name, parameter in layer.named_parameters():
            assert parameter.grad is not None, f"layer {index} {name} has no gradient tensor"
            if index in (2, 3):
                assert torch.count_nonzero(parameter.grad) == 0, f"unused layer {index} {name}"
        used = [p.grad for p in layer.parameters() if p.grad is not None]
        if index in (0, 1):
            assert any(torch.count_nonzero(g) > 0 for g in used)


def test_rows_processed_per_step_sum_to_the_batch_not_pool_size_times_batch() -> None:
    pool = _pool()
    rows: list[int] = []
    for layer in pool.layers:
        layer.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    choice = torch.tensor([1, 1, 2, 0, 1, 2, 1])
    pool(torch.randn(7, 12, 16, dtype=torch.float64), choice)
    assert rows == [1, 4, 2, 0]  # every layer runs, each on its own group only
    assert sum(rows) == 7


def test_dispatch_is_deterministic_and_keeps_sequence_order() -> None:
    pool = _pool(seed=1)
    resid = torch.randn(6, 12, 16, dtype=torch.float64)
    choice = torch.tensor([2, 1, 0, 2, 1, 0])
    first, second = pool(resid, choice), pool(resid, choice)
    assert torch.equal(first, second)
    for b in range(6):
        alone = pool.layers[int(choice[b])](resid[b : b + 1])
        torch.testing.assert_close(first[b : b + 1], alone, rtol=1e-12, atol=1e-12)


def test_padding_masks_travel_with_their_sequences() -> None:
    pool = _pool(seed=2)
    resid = torch.randn(4, 12, 16, dtype=torch.float64)
    mask = torch.ones(4, 12, dtype=torch.bool)
    mask[1, :3] = False
    choice = torch.tensor([1, 0, 1, 0])
    out = pool(resid, choice, mask)
    expected = pool.layers[0](resid[1:2], mask[1:2])
    torch.testing.assert_close(out[1:2], expected, rtol=1e-12, atol=1e-12)
