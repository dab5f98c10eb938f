"""The routed decoder is the plain decoder when routed in order, is causal, and reports its routes."""

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from tests.helpers.routed_models import identity_route, routed_copy_of, tiny_config
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.router import Router
from transformer.training.lm_loss import lm_loss


@pytest.mark.parametrize("mode", ["p", "log_p", "log_p_baseline", "none"])
@pytest.mark.parametrize("training", [False, True])
def test_routed_in_order_equals_plain_decoder_bitwise(mode: str, training: bool) -> None:
    torch.manual_seed(0)
    plain = Decoder(tiny_config())
    routed = routed_copy_of(plain, RoutingConfig(pool_size=3, route_prefix_len=4, gradient=mode))
    plain.train(training)
    routed.train(training)
    tokens = torch.randint(0, 23, (5, 12))
    expected = plain(tokens).logits
    logits = routed(tokens, route=identity_route(5, 3)).logits
    assert torch.equal(logits, expected)
    # gradients of the shared weights are bitwise equal too: the gate leaves d out / d y = I
    expected.sum().backward()
    logits.sum().backward()
    for index, layer in enumerate(plain.layers):
        for (name, p_plain), p_routed in zip(
            layer.named_parameters(), routed.pool.layers[index].parameters(), strict=True
        ):
            assert p_plain.grad is not None and p_routed.grad is not None
            assert torch.equal(p_plain.grad, p_routed.grad), f"layer {index} {name}"
    assert plain.embed.W_E.grad is not None and routed.embed.W_E.grad is not None
    assert torch.equal(plain.embed.W_E.grad, routed.embed.W_E.grad)


def test_a_forced_permutation_equals_the_plain_decoder_with_layers_reordered() -> None:
    torch.manual_seed(1)
    plain = Decoder(tiny_config()).eval()
    routed = routed_copy_of(plain, RoutingConfig(pool_size=3, route_prefix_len=4)).eval()
    permutation = [2, 0, 1]
    plain.layers = torch.nn.ModuleList(plain.layers[i] for i in permutation)
    tokens = torch.randint(0, 23, (4, 12))
    logits = routed(tokens, route=torch.tensor(permutation).expand(4, 3)).logits
    assert torch.equal(logits, plain(tokens).logits)


def test_sequences_on_different_routes_each_get_their_own_path() -> None:
    torch.manual_seed(2)
    cfg = tiny_config(n_layers=2)
    routed = RoutedDecoder(cfg, RoutingConfig(pool_size=3, route_prefix_len=4)).eval()
    tokens = torch.randint(0, 23, (3, 12))
    route = torch.tensor([[0, 1], [2, 2], [1, 0]])
    logits = routed(tokens, route=route).logits
    for b in range(3):
        alone = routed(tokens[b : b + 1], route=route[b : b + 1]).logits
        torch.testing.assert_close(logits[b : b + 1], alone, rtol=0, atol=1e-6)


def _changed_after(tokens: Tensor, t: int, seed: int = 7) -> Tensor:
    changed = tokens.clone()
    generator = torch.Generator().manual_seed(seed)
    changed[:, t + 1 :] = torch.randint(0, 23, changed[:, t + 1 :].shape, generator=generator)
    return changed


@pytest.mark.parametrize("training", [False, True])
def test_changing_tokens_after_t_leaves_logits_up_to_t_unchanged(training: bool) -> None:
    torch.manual_seed(3)
    prefix = 4
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=4, route_prefix_len=prefix))
    _prime_router(routed)
    routed.train(training)
    tokens = torch.randint(0, 23, (6, 12))
    for t in (prefix - 1, prefix + 2, 10):
        routed.router.generator.manual_seed(0)
        before = routed(tokens)
        routed.router.generator.manual_seed(0)
        after = routed(_changed_after(tokens, t))
        assert torch.equal(before.routing.layer_choices, after.routing.layer_choices)
        torch.testing.assert_close(after.logits[:, : t + 1], before.logits[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after.logits[:, t + 1 :], before.logits[:, t + 1 :])  # the test can fail


class LeakyRouter(Router):
    """The published mistake: the router pools the *whole* sequence, future tokens included."""

    def summary(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch d_model"]:
        return self.ln(resid).mean(dim=1) + self.W_step[step]  # type: ignore[no-any-return]


def test_a_whole_sequence_router_leaks_the_future_and_the_causality_check_catches_it() -> None:
    torch.manual_seed(3)
    routing = RoutingConfig(pool_size=4, route_prefix_len=4)
    routed = RoutedDecoder(tiny_config(), routing)
    routed.router = LeakyRouter(routed.cfg, routing)
    _prime_router(routed)
    routed.eval()
    tokens = torch.randint(0, 23, (32, 12))
    t = 5
    before, after = routed(tokens), routed(_changed_after(tokens, t))
    assert not torch.equal(before.routing.layer_choices, after.routing.layer_choices)
    assert not torch.allclose(after.logits[:, : t + 1], before.logits[:, : t + 1], atol=1e-6)


def _prime_router(routed: RoutedDecoder) -> None:
    """A trained-looking router: the zero-initialised readout would route everything alike."""
    with torch.no_grad():
        routed.router.W_R.normal_(0.0, 3.0)


def test_routing_info_describes_the_routes() -> None:
    torch.manual_seed(4)
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=5, route_prefix_len=4))
    _prime_router(routed)
    tokens = torch.randint(0, 23, (7, 12))
    routed.eval()
    info = routed(tokens).routing
    assert info.layer_choices.shape == (7, 3) and info.layer_choices.dtype == torch.long
    assert info.router_logits.shape == (7, 3, 5) and info.router_logits.dtype == torch.float32
    assert torch.equal(info.layer_choices, info.router_logits.argmax(-1))
    torch.testing.assert_close(info.probabilities.sum(-1), torch.ones(7, 3))
    assert info.counts.sum(-1).tolist() == [7.0, 7.0, 7.0]
    routed.train()
    info = routed(tokens).routing
    assert int(info.layer_choices.min()) >= 0 and int(info.layer_choices.max()) < 5
    weights = routed.routing
    expected = weights.balance_weight * info.balance_loss + weights.z_loss_weight * info.z_loss
    torch.testing.assert_close(info.aux_loss, expected)


def test_bad_inputs_give_clear_errors() -> None:
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=4))
    with pytest.raises(ValueError, match="shorter than the routing prefix"):
        routed(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="route must have shape"):
        routed(torch.zeros(2, 8, dtype=torch.long), route=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(IndexError, match="the pool has 3"):
        routed(torch.zeros(2, 8, dtype=torch.long), route=torch.full((2, 3), 5))
    with pytest.raises(ValueError, match="route_prefix_len"):
        RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=13))


def test_lm_loss_scores_only_targets_from_the_routing_prefix_on() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 6, 9)
    targets = torch.randint(0, 9, (2, 6))
    prefix = 3
    scored = lm_loss(logits, targets, first_target=prefix)
    # targets[:, t] is sequence position t + 1, so positions >= 3 are targets[:, 2:]
    expected = torch.nn.functional.cross_entropy(logits[:, 2:].flatten(0, 1), targets[:, 2:].flatten())
    torch.testing.assert_close(scored, expected)
    spoiled = logits.clone()
    spoiled[:, :2] = 100.0 * torch.randn(2, 2, 9)  # predictions inside the prefix do not count
    torch.testing.assert_close(lm_loss(spoiled, targets, first_target=prefix), scored)
    torch.testing.assert_close(
        lm_loss(logits, targets), torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    )


def test_fixed_policy_is_the_in_order_route_and_the_router_gets_no_task_gradient() -> None:
    torch.manual_seed(6)
    plain = Decoder(tiny_config())
    routed = routed_copy_of(plain, RoutingConfig(pool_size=3, route_prefix_len=4, route_policy="fixed"))
    _prime_router(routed)
    tokens = torch.randint(0, 23, (4, 12))
    output = routed(tokens)
    logits, info = output.logits, output.routing
    assert info.layer_choices.tolist() == [[0, 1, 2]] * 4
    assert torch.equal(logits, plain(tokens).logits)
    logits.sum().backward()
    assert routed.router.W_R.grad is None  # the gate carries no score: nothing reaches the router


def test_random_policy_draws_uniform_routes_and_evaluation_repeats_its_own() -> None:
    torch.manual_seed(7)
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=4, route_prefix_len=4, route_policy="random"))
    _prime_router(routed)  # a strongly opinionated router, ignored by the random policy
    tokens = torch.randint(0, 23, (500, 12))
    routed.train()
    state = routed.router.generator.get_state()
    info = routed(tokens).routing
    frequencies = torch.bincount(info.layer_choices.flatten(), minlength=4).float() / info.layer_choices.numel()
    torch.testing.assert_close(frequencies, torch.full((4,), 0.25), rtol=0, atol=0.04)  # 1500 draws: SE 0.011
    assert not torch.equal(routed.router.generator.get_state(), state)
    routed.eval()
    state = routed.router.generator.get_state()
    first = routed(tokens).routing
    second = routed(tokens).routing
    assert torch.equal(first.layer_choices, second.layer_choices)
    assert torch.equal(routed.router.generator.get_state(), state), "evaluation leaves training's stream alone"
    assert len(set(first.layer_choices[:, 0].tolist())) == 4


def test_after_one_backward_every_pool_parameter_has_a_gradient_and_unused_layers_exact_zeros() -> None:
    """What DDP without `find_unused_parameters` needs, though layers no sequence chose never run:
    a forced route leaves layers 3 and 4 unused at every step and layer 1 used at one step only."""
    torch.manual_seed(8)
    routed = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=5, route_prefix_len=4))
    _prime_router(routed)
    calls: list[int] = []
    for index, layer in enumerate(routed.pool.layers):
        layer.register_forward_hook(lambda module, args, output, i=index: calls.append(i))
    routed.train()
    tokens = torch.randint(0, 23, (4, 13))
    route = torch.tensor([[0, 2, 0], [0, 1, 2], [2, 2, 0], [0, 2, 2]])
    output = routed(tokens[:, :-1], route=route)
    (lm_loss(output.logits, tokens[:, 1:], 4) + output.aux_loss).backward()
    assert calls == [0, 2, 1, 2, 0, 2], "each step runs only the layers its sequences chose"
    for name, parameter in routed.named_parameters():
        assert parameter.grad is not None, name
    for index, layer in enumerate(routed.pool.layers):
        nonzero = sum(int(torch.count_nonzero(p.grad)) for p in layer.parameters() if p.grad is not None)
        assert (nonzero == 0) == (index in (3, 4)), f"layer {index}: {nonzero} non-zero gradient entries"
