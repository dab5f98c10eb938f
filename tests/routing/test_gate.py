"""The gate changes no forward value, gives layers their plain gradient, and gives the router
the gradient it should: the score-function form is unbiased, the p form is not."""

import pytest
import torch

from transformer.routing.gate import choice_score, gate


@pytest.mark.parametrize("mode", ["p", "log_p", "log_p_baseline", "none"])
def test_forward_value_is_the_chosen_layers_output_bitwise(mode: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 5, 8), torch.randn(4, 5, 8)
    logits = torch.randn(4, 3, requires_grad=True)
    score = choice_score(logits.softmax(-1), torch.tensor([0, 2, 1, 2]), mode)
    assert torch.equal(gate(x, y, score), y)


def test_layer_gets_the_plain_gradient_and_router_gets_inner_product_times_score_gradient() -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 4, 6)
    y = torch.randn(3, 4, 6, requires_grad=True)
    logits = torch.randn(3, 5, requires_grad=True)
    choice = torch.tensor([4, 0, 2])
    upstream = torch.randn(3, 4, 6)
    score = choice_score(logits.softmax(-1), choice, "log_p")
    assert score is not None
    (gate(x, y, score) * upstream).sum().backward()
    assert y.grad is not None and torch.equal(y.grad, upstream)
    reward = (upstream * (y.detach() - x)).sum(dim=(1, 2))  # <dL/dout, y - x> per sequence
    expected = reward[:, None] * (torch.nn.functional.one_hot(choice, 5) - logits.softmax(-1).detach())
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, expected)


def test_no_gradient_mode_gives_the_router_nothing_from_the_task() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    score = choice_score(logits.softmax(-1), torch.tensor([0, 1]), "none")
    out = gate(torch.randn(2, 2, 2), torch.randn(2, 2, 2, requires_grad=True), score)
    out.sum().backward()
    assert logits.grad is None


def _per_sample_router_gradients(
    mode: str, samples: int, seed: int, common_reward: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """K = 1, N = 3, a loss linear in the step's output. Returns per-sample gradients of the
    router logits and the exact gradient of the expected loss. `common_reward` is added to
    every layer's reward <g, y_j - x> (as when all layers help and differ only a little)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.tensor([0.3, -0.5, 0.9])
    x = torch.randn(1, 2, 4, generator=generator)
    layer_outputs = torch.randn(3, 1, 2, 4, generator=generator)  # y_j for each pool layer
    upstream = torch.randn(1, 2, 4, generator=generator)  # g = dL/dout, constant (linear loss)
    layer_outputs = layer_outputs + common_reward * upstream / upstream.pow(2).sum()
    # exact: d/dz sum_j p_j <g, y_j - x>
    rewards = (upstream * (layer_outputs - x)).sum(dim=(1, 2, 3))
    z = logits.clone().requires_grad_(True)
    (z.softmax(-1) * rewards).sum().backward()
    assert z.grad is not None
    exact = z.grad.clone()
    # Monte Carlo: each sample its own leaf copy of the logits, a Gumbel-argmax choice
    per_sample = logits.expand(samples, 3).clone().requires_grad_(True)
    uniform = torch.rand(samples, 3, generator=generator)
    choice = (logits - torch.log(-torch.log(uniform))).argmax(-1)
    score = choice_score(per_sample.softmax(-1), choice, mode)
    assert score is not None
    out = gate(x.expand(samples, 2, 4), layer_outputs[choice, 0], score)
    (out * upstream).sum().backward()
    assert per_sample.grad is not None
    return per_sample.grad, exact


@pytest.mark.parametrize("mode", ["log_p", "log_p_baseline"])
def test_log_p_estimator_is_unbiased_for_the_expected_first_order_loss(mode: str) -> None:
    """With the leave-one-out baseline too: sample b's gradient is (R_b - mean of the others' R)
    times d log p_b, whose expectation is the same."""
    grads, exact = _per_sample_router_gradients(mode, samples=20_000, seed=0)
    mean, standard_error = grads.mean(0), grads.std(0) / grads.shape[0] ** 0.5
    assert torch.all((mean - exact).abs() < 4 * standard_error), (mean, exact, standard_error)


def test_the_baseline_removes_the_variance_a_reward_shared_by_all_layers_adds() -> None:
    plain, _ = _per_sample_router_gradients("log_p", samples=20_000, seed=1, common_reward=5.0)
    baselined, exact = _per_sample_router_gradients("log_p_baseline", samples=20_000, seed=1, common_reward=5.0)
    assert torch.all(baselined.var(0) < 0.2 * plain.var(0)), (baselined.var(0), plain.var(0))
    standard_error = baselined.std(0) / baselined.shape[0] ** 0.5
    assert torch.all((baselined.mean(0) - exact).abs() < 4 * standard_error)


def test_p_estimator_is_biased_toward_likely_layers() -> None:
    grads, exact = _per_sample_router_gradients("p", samples=20_000, seed=0)
    mean, standard_error = grads.mean(0), grads.std(0) / grads.shape[0] ** 0.5
    assert torch.any((mean - exact).abs() > 10 * standard_error), (mean, exact, standard_error)
