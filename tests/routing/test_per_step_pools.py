"""Per-step pools: step k chooses only among its own layers, so each layer sees one depth."""

import pytest
import torch

from tests.helpers.routed_models import identity_route, routed_copy_of, tiny_config
from transformer.model.config import ConfigError
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.losses import balance_loss

PER_STEP = RoutingConfig(pool_size=6, route_prefix_len=4, pools="per_step")  # K = 3: two layers a step


def _primed(routing: RoutingConfig, seed: int = 0) -> RoutedDecoder:
    """A router with strong, random opinions over all N layers: unmasked, it would send every
    step everywhere."""
    torch.manual_seed(seed)
    routed = RoutedDecoder(tiny_config(), routing)
    with torch.no_grad():
        routed.router.W_R.normal_(0.0, 3.0)
    return routed


def _outside_own_layers(choices: torch.Tensor, own: int) -> int:
    """How many choices of step k fall outside [k * own, (k + 1) * own)."""
    first = torch.arange(choices.shape[1]) * own
    return int(((choices < first) | (choices >= first + own)).sum())


def test_step_layers_split_the_pool_into_consecutive_blocks() -> None:
    assert [PER_STEP.step_layers(k, 3) for k in range(3)] == [range(0, 2), range(2, 4), range(4, 6)]
    assert [PER_STEP.fixed_layer(k, 3) for k in range(3)] == [0, 2, 4]
    shared = RoutingConfig(pool_size=2)
    assert [shared.step_layers(k, 3) for k in range(3)] == [range(2)] * 3
    assert [shared.fixed_layer(k, 3) for k in range(3)] == [0, 1, 0]  # k mod N, as before


@pytest.mark.parametrize("policy", ["learned", "random", "fixed"])
@pytest.mark.parametrize("training", [True, False], ids=["sampled", "argmax"])
def test_per_step_never_routes_a_step_outside_its_own_layers(policy: str, training: bool) -> None:
    routed = _primed(RoutingConfig(pool_size=6, route_prefix_len=4, pools="per_step", route_policy=policy))
    routed.train(training)
    tokens = torch.randint(0, 23, (300, 12), generator=torch.Generator().manual_seed(1))
    output = routed(tokens)
    info = output.routing
    assert _outside_own_layers(info.layer_choices, 2) == 0
    for step in range(3):
        outside = [i for i in range(6) if i // 2 != step]
        assert torch.count_nonzero(info.probabilities[:, step, outside]) == 0, "other steps' layers: p exactly 0"
        if policy == "random" or (policy == "learned" and training):  # both of its own layers get used
            assert set(info.layer_choices[:, step].tolist()) == {2 * step, 2 * step + 1}
    if training:  # the masked logits (-inf) leave every gradient finite
        (output.logits.sum() + output.aux_loss).backward()
        for name, parameter in routed.named_parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
        assert routed.router.W_R.grad is not None and torch.count_nonzero(routed.router.W_R.grad) > 0


def test_the_same_primed_router_with_a_shared_pool_does_route_outside_them() -> None:
    """The control: without per-step pools the check above fails."""
    routed = _primed(RoutingConfig(pool_size=6, route_prefix_len=4)).train()
    info = routed(torch.randint(0, 23, (300, 12), generator=torch.Generator().manual_seed(1))).routing
    assert _outside_own_layers(info.layer_choices, 2) > 300


@pytest.mark.parametrize("training", [False, True])
def test_one_layer_per_step_is_the_plain_decoder_bitwise_without_forcing_the_route(training: bool) -> None:
    """N = K per step: every step owns exactly one layer, so the learned route must be k -> k."""
    torch.manual_seed(2)
    plain = Decoder(tiny_config())
    routed = routed_copy_of(plain, RoutingConfig(pool_size=3, route_prefix_len=4, pools="per_step"))
    with torch.no_grad():
        routed.router.W_R.normal_(0.0, 3.0)
    plain.train(training)
    routed.train(training)
    tokens = torch.randint(0, 23, (5, 12))
    output = routed(tokens)
    assert torch.equal(output.routing.layer_choices, identity_route(5, 3))
    assert torch.equal(output.logits, plain(tokens).logits)


def test_a_forced_route_through_each_steps_first_layer_is_the_plain_decoder_bitwise() -> None:
    torch.manual_seed(3)
    plain = Decoder(tiny_config())
    routed = RoutedDecoder(plain.cfg, PER_STEP)
    routed.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith("layers.")}, strict=False)
    for step, layer in enumerate(plain.layers):
        routed.pool.layers[2 * step].load_state_dict(layer.state_dict())
    plain.train()
    routed.train()
    tokens = torch.randint(0, 23, (4, 12))
    expected = plain(tokens).logits
    logits = routed(tokens, route=torch.tensor([0, 2, 4]).expand(4, 3)).logits
    assert torch.equal(logits, expected)
    expected.sum().backward()
    logits.sum().backward()
    for step, layer in enumerate(plain.layers):
        for p_plain, p_routed in zip(layer.parameters(), routed.pool.layers[2 * step].parameters(), strict=True):
            assert p_plain.grad is not None and p_routed.grad is not None
            assert torch.equal(p_plain.grad, p_routed.grad)


def test_balance_loss_is_one_at_even_use_of_each_steps_own_layers() -> None:
    """Normalised by the N / K layers a step may choose, not N: even use is 1.0 either way."""
    counts = torch.tensor([[6.0, 6.0, 0.0, 0.0], [0.0, 0.0, 6.0, 6.0]])
    probabilities = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]).expand(12, 2, 4)
    assert float(balance_loss(counts, probabilities, choices_per_step=2)) == 1.0
    assert float(balance_loss(counts, probabilities)) == 2.0  # normalised by N it would read as imbalance
    routed = RoutedDecoder(tiny_config(n_layers=2), RoutingConfig(pool_size=4, route_prefix_len=4, pools="per_step"))
    routed.train()
    route = torch.tensor([[0, 2], [1, 3]]).repeat(3, 1)  # zero-initialised router: p = 1/2 on its own layers
    assert float(routed(torch.randint(0, 23, (6, 12)), route=route).routing.balance_loss.detach()) == 1.0


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        (dict(pools="stacked"), r"pools='stacked' is not one of \['shared', 'per_step'\]"),
        (dict(warm_start_steps=-1), r"warm_start_steps=-1 must be a non-negative integer"),
    ],
)
def test_bad_routing_values_are_one_line_config_errors(routing: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        RoutingConfig(**routing)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_per_step_pools_need_a_pool_size_that_is_a_multiple_of_the_steps() -> None:
    with pytest.raises(ConfigError, match=r"pools='per_step' needs pool_size=4 to be a multiple of the 3") as caught:
        RoutedDecoder(tiny_config(), RoutingConfig(pool_size=4, route_prefix_len=4, pools="per_step"))
    assert "\n" not in str(caught.value)


def test_a_forced_route_outside_a_steps_own_layers_is_refused() -> None:
    routed = RoutedDecoder(tiny_config(), PER_STEP)
    with pytest.raises(ValueError, match=r"step k's route must name one of its layers"):
        routed(torch.zeros(2, 8, dtype=torch.long), route=torch.tensor([[0, 2, 4], [0, 1, 4]]))
