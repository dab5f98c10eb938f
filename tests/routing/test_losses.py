"""Balance loss, z-loss and the routing entropies: exact values at the points where the answer
is known, then what each loss does when it is the thing being trained."""

import math

import pytest
import torch
from torch import Tensor

from transformer.model.config import ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.losses import (
    balance_loss,
    count_choices,
    decision_entropy,
    usage_entropy,
    z_loss,
)

# --- values where the answer is known ---------------------------------------------------------


@pytest.mark.parametrize("pool_size", [2, 3, 4])
def test_balance_loss_is_one_at_uniform_usage(pool_size: int) -> None:
    batch, steps = 12, 2
    counts = torch.full((steps, pool_size), batch / pool_size)
    probabilities = torch.full((batch, steps, pool_size), 1 / pool_size)
    assert float(balance_loss(counts, probabilities)) == pytest.approx(1.0, abs=1e-6)


def test_balance_loss_is_exactly_one_when_fractions_are_powers_of_two() -> None:
    counts = torch.full((1, 4), 8.0)
    probabilities = torch.full((32, 1, 4), 0.25)
    assert float(balance_loss(counts, probabilities)) == 1.0


@pytest.mark.parametrize("pool_size", [2, 3, 4])
def test_balance_loss_is_pool_size_when_everything_goes_to_one_layer(pool_size: int) -> None:
    batch, steps = 12, 2
    counts = torch.zeros(steps, pool_size)
    counts[:, 0] = batch
    probabilities = torch.zeros(batch, steps, pool_size)
    probabilities[..., 0] = 1.0
    assert float(balance_loss(counts, probabilities)) == pytest.approx(pool_size)


def test_balance_loss_gradient_lowers_the_overloaded_layers_probability() -> None:
    """f = (0.7, 0.1, 0.1, 0.1): layer 0 is overloaded. For sequence b,
    d loss / d z_b0 = (N / B) p_b0 (f_0 - sum_i f_i p_bi) > 0 since f_0 is the largest f_i, so a
    gradient step lowers P_0 and raises every other P_i."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 1, 4, generator=generator).requires_grad_(True)
    counts = torch.tensor([[7.0, 1.0, 1.0, 1.0]])
    balance_loss(counts, logits.softmax(-1)).backward()
    assert logits.grad is not None
    assert (logits.grad[..., 0] > 0).all()
    with torch.no_grad():
        before = logits.softmax(-1).mean(dim=0)[0]
        after = (logits - 0.5 * logits.grad).softmax(-1).mean(dim=0)[0]
    assert after[0] < before[0]
    assert (after[1:] > before[1:]).all()


def test_count_choices_is_a_per_step_bincount() -> None:
    choices = torch.tensor([[0, 2], [0, 2], [1, 2], [0, 0]])
    expected = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.0, 3.0]])
    assert torch.equal(count_choices(choices, pool_size=3, all_ranks=True), expected)


def test_z_loss_is_mean_squared_logsumexp() -> None:
    logits = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(1)) * 3
    wide = logits.double()
    largest = wide.max(dim=-1, keepdim=True).values  # computed independently, in float64
    logsumexp = largest[..., 0] + (wide - largest).exp().sum(dim=-1).log()
    expected = (logsumexp**2).mean()
    assert float(z_loss(logits)) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("pool_size", [2, 3, 8])
def test_usage_entropy_is_log_pool_size_for_even_counts_and_zero_for_collapse(pool_size: int) -> None:
    even = torch.full((3, pool_size), 5.0)
    assert float(usage_entropy(even)) == pytest.approx(math.log(pool_size), rel=1e-6)
    collapsed = torch.zeros(3, pool_size)
    collapsed[:, 1] = 15.0
    assert float(usage_entropy(collapsed)) == 0.0


@pytest.mark.parametrize("pool_size", [2, 3, 8])
def test_decision_entropy_of_uniform_probabilities_is_log_pool_size(pool_size: int) -> None:
    uniform = torch.full((7, 2, pool_size), 1 / pool_size)
    assert float(decision_entropy(uniform)) == pytest.approx(math.log(pool_size), rel=1e-6)
    sure = torch.nn.functional.one_hot(torch.zeros(7, 2, dtype=torch.long), pool_size).float()
    assert float(decision_entropy(sure)) == 0.0


# --- counting across micro-batches ------------------------------------------------------------


def small_routed(pool_size: int) -> RoutedDecoder:
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=16, d_model=16, n_heads=2, n_layers=2, n_ctx=8)
    model = RoutedDecoder(cfg, RoutingConfig(pool_size=pool_size, route_prefix_len=4))
    with torch.no_grad():  # a router with opinions, so micro-batches route differently
        model.router.W_R.normal_(0, 3.0)
    return model


def step_bincount(choices: Tensor, pool_size: int) -> Tensor:
    return torch.stack([torch.bincount(column, minlength=pool_size) for column in choices.T]).float()


def test_counting_window_accumulates_counts_across_micro_batches() -> None:
    model = small_routed(pool_size=3).train()
    generator = torch.Generator().manual_seed(3)
    micro_batches = [torch.randint(16, (batch, 8), generator=generator) for batch in (5, 7, 4)]
    with model.counting_window():
        infos = [model(tokens).routing for tokens in micro_batches]
    seen = []
    for info in infos:
        seen.append(info.layer_choices)
        # Each micro-batch's counts cover every choice made so far in the window...
        assert torch.equal(info.counts, step_bincount(torch.cat(seen), 3))
        # ...and its balance loss uses those window counts with its own probabilities.
        assert torch.equal(info.balance_loss, balance_loss(info.counts, info.probabilities))
    assert float(infos[-1].counts.sum()) == 2 * (5 + 7 + 4)  # two routing steps per sequence

    # Outside a window each forward counts alone, and a new window starts from zero.
    alone = model(micro_batches[0]).routing
    assert torch.equal(alone.counts, step_bincount(alone.layer_choices, 3))
    with model.counting_window():
        fresh = model(micro_batches[1]).routing
    assert torch.equal(fresh.counts, step_bincount(fresh.layer_choices, 3))


# --- what each loss does when trained ---------------------------------------------------------


def primed_router_usage(balance_weight: float, steps: int = 60) -> tuple[float, float]:
    """Usage entropy (nats) before and after training only the router on the aux loss.

    The router starts primed: b_R[0] = 5 puts 98% of the probability on layer 0 (usage
    entropy about 0.09 ln N). The data, random tokens, gives it no reason to prefer any layer, and
    the task loss is off, so the aux loss (balance at `balance_weight`, z-loss at its default
    weight) is the only force. Usage is measured on 1024 fresh sequences routed by sampling at
    temperature 1 (what the balance loss counts).
    """
    pool_size, prefix = 4, 4
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=16, d_model=32, n_heads=2, n_layers=1, n_ctx=16, d_mlp=64)
    routing = RoutingConfig(
        pool_size=pool_size,
        route_prefix_len=prefix,
        balance_weight=balance_weight,
        temperature_start=1.0,
        temperature_end=1.0,
    )
    model = RoutedDecoder(cfg, routing).train()
    with torch.no_grad():
        model.router.b_R[0] = 5.0
    optimizer = torch.optim.AdamW(model.router.parameters(), lr=1e-2, weight_decay=0.0)
    data = torch.Generator().manual_seed(1)
    probe = torch.randint(16, (1024, 16), generator=torch.Generator().manual_seed(2))

    def usage() -> float:
        with torch.no_grad():
            return float(model(probe).routing.usage_entropy)

    start = usage()
    for _ in range(steps):
        info = model(torch.randint(16, (64, 16), generator=data)).routing
        optimizer.zero_grad()
        info.aux_loss.backward()
        optimizer.step()
    return start, usage()


def test_balance_loss_spreads_a_collapsed_router_over_the_pool() -> None:
    log_n = math.log(4)
    start, end = primed_router_usage(balance_weight=1e-2)
    print(f"with balance: usage entropy {start / log_n:.3f} -> {end / log_n:.3f} ln N")
    assert start < 0.3 * log_n
    assert end > 0.95 * log_n


def test_without_balance_loss_a_collapsed_router_stays_collapsed() -> None:
    """The control: the same training with balance_weight = 0. The z-loss left in the aux loss
    lowers all logits together and does nothing for usage."""
    log_n = math.log(4)
    start, end = primed_router_usage(balance_weight=0.0)
    print(f"without balance: usage entropy {start / log_n:.3f} -> {end / log_n:.3f} ln N")
    assert start < 0.3 * log_n
    assert end < 0.3 * log_n


def test_z_loss_alone_shrinks_router_logits() -> None:
    """ST-MoE's z-loss keeps router logits small: trained on it alone, a router whose logits
    start large comes down to logsumexp near 0 (the loss's minimum) and its logits' RMS halves.

    Plain SGD, on purpose: the loss pins logsumexp, not the norm, and its gradient
    2 lse * softmax(z) mostly lowers the largest logits. Adam moves every logit at about the
    same rate, so it lowers them all together; logsumexp still falls but the RMS can grow
    (3.5 -> 3.9 for this start)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=16, d_model=16, n_heads=2, n_layers=2, n_ctx=8)
    model = RoutedDecoder(cfg, RoutingConfig(pool_size=4, route_prefix_len=4))
    with torch.no_grad():
        model.router.b_R.copy_(torch.tensor([6.0, -2.0, 3.0, 1.0]))
    optimizer = torch.optim.SGD(model.router.parameters(), lr=2e-2)
    tokens = torch.randint(16, (32, 8), generator=torch.Generator().manual_seed(4))

    def logits_rms_and_z() -> tuple[float, float]:
        with torch.no_grad():
            info = model(tokens).routing
        return float(info.router_logits.pow(2).mean().sqrt()), float(info.z_loss)

    rms_before, z_before = logits_rms_and_z()
    for _ in range(50):
        info = model(tokens).routing
        optimizer.zero_grad()
        info.z_loss.backward()
        optimizer.step()
    rms_after, z_after = logits_rms_and_z()
    print(f"logit rms {rms_before:.2f} -> {rms_after:.2f}, z-loss {z_before:.2f} -> {z_after:.3f}")
    assert rms_after < 0.5 * rms_before
    assert z_after < 0.01 * z_before
