"""Sorted dispatch equals running every layer on everything, and costs one layer's rows per step."""

import pytest
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
    rows: list[tuple[int, int]] = []
    for index, layer in enumerate(pool.layers):
        layer.register_forward_hook(lambda module, args, output, i=index: rows.append((i, args[0].shape[0])))
    choice = torch.tensor([1, 1, 2, 0, 1, 2, 1])
    pool(torch.randn(7, 12, 16, dtype=torch.float64), choice)
    assert rows == [(0, 1), (1, 4), (2, 2)]  # each layer on its own group only; layer 3, chosen by none, never runs
    assert sum(size for _, size in rows) == 7


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


def _every_layer_runs(pool: LayerPool, resid: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """The dispatch as it was before empty groups were skipped: every layer called, even on
    zero sequences, so that its parameters stay in the autograd graph."""
    order = torch.argsort(choice, stable=True)
    groups = resid[order].split(torch.bincount(choice, minlength=len(pool.layers)).tolist())
    return torch.cat([layer(group) for layer, group in zip(pool.layers, groups, strict=True)])[torch.argsort(order)]


def _gradients(pool: LayerPool) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in pool.parameters()]


@pytest.mark.parametrize("route", [[4, 0, 4, 1, 0, 4], [2, 2, 2, 2, 2, 2]], ids=["groups", "one-group"])
def test_skipping_empty_groups_changes_no_bit_of_the_output_or_of_any_gradient(route: list[int]) -> None:
    torch.manual_seed(3)
    pool = LayerPool(tiny_config(), 5)  # float32: bitwise equality means something
    resid = torch.randn(6, 12, 16, requires_grad=True)
    choice = torch.tensor(route)  # some layers get nobody; in "one-group", the batch goes unsorted
    weights = torch.randn(6, 12, 16)
    reference = _every_layer_runs(pool, resid, choice)
    (reference * weights).sum().backward()
    expected, expected_input = _gradients(pool), resid.grad
    pool.zero_grad(set_to_none=True)
    resid.grad = None
    out = pool(resid, choice)
    (out * weights).sum().backward()
    assert torch.equal(out, reference)
    assert resid.grad is not None and expected_input is not None and torch.equal(resid.grad, expected_input)
    for got, want in zip(_gradients(pool), expected, strict=True):
        assert got is not None and want is not None and torch.equal(got, want)


def test_unused_layers_get_exact_zero_gradients_even_holding_non_finite_weights() -> None:
    """Where `out + 0 * p.sum()` would turn every gradient into NaN, the zero-gradient node
    stays exact."""
    pool = _pool()
    with torch.no_grad():
        next(pool.layers[3].parameters()).fill_(float("nan"))
    out = pool(torch.randn(4, 12, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    out.sum().backward()
    assert torch.isfinite(out).all()
    for parameter in pool.layers[3].parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) == 0


def test_an_idle_set_defers_the_zeros_to_one_node_for_the_layers_no_call_used() -> None:
    """A caller running the pool once per routing step: layers used by any step keep exactly
    their real gradients; the layers no step used get zeros, once."""
    pool = _pool(seed=4)
    resid = torch.randn(5, 12, 16, dtype=torch.float64)
    first_choice, second_choice = torch.tensor([0, 0, 1, 0, 1]), torch.tensor([1, 1, 1, 1, 0])
    reference = _every_layer_runs(pool, _every_layer_runs(pool, resid, first_choice), second_choice)
    reference.pow(2).sum().backward()
    expected = _gradients(pool)
    pool.zero_grad(set_to_none=True)
    idle = {0, 1, 2, 3}
    hidden = pool(resid, first_choice, idle=idle)
    out = pool(hidden, second_choice, idle=idle)
    assert idle == {2, 3}
    with torch.no_grad():
        assert pool.keep_in_graph(out, idle) is out, "outside autograd there is nothing to keep"
    out = pool.keep_in_graph(out, idle)
    assert torch.equal(out, reference)
    out.pow(2).sum().backward()
    for index, layer in enumerate(pool.layers):
        for parameter in layer.parameters():
            assert parameter.grad is not None
            if index in idle:
                assert torch.count_nonzero(parameter.grad) == 0
    for got, want in zip(_gradients(pool), expected, strict=True):
        assert got is not None and want is not None and torch.equal(got, want)
