"""Per-step pools at token granularity, and the warm start there.

With `pools: per_step`, `pool_size` = K and `skip: true`, step k offers each token two entries:
its own layer k, or skip. That is a Mixture-of-Depths decoder made causal: every token decides
for itself from its own residual (no top-k over the sequence), and the capacity, if any, is
first come first served among the step's own two entries. Forced to take every layer it is the
plain decoder bit for bit; causality and the KV cache are checked in
tests/routing/test_token_causality.py and tests/routing/test_token_cache.py.
"""

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from tests.helpers.token_models import in_order_route, reference_admit, token_copy_of, token_model, token_routing
from transformer.model.decoder import Decoder
from transformer.routing.token_decoder import TokenRoutedDecoder

STEPS = 3  # tiny_config's n_layers
SKIP = STEPS  # the skip entry of a K-layer pool


def mod_model(seed: int = 0, prime: float = 3.0, **routing: object) -> TokenRoutedDecoder:
    values: dict[str, object] = dict(pool_size=STEPS, pools="per_step", skip=True)
    values.update(routing)
    return token_model(tiny_config(), seed=seed, prime=prime, **values)


@pytest.mark.parametrize("scheme", ["all", "co_routed"])
@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("training", [False, True])
def test_every_token_taking_every_layer_equals_the_plain_decoder_bitwise(
    scheme: str, kernels: str, training: bool
) -> None:
    """Forced k -> k, and the "fixed" policy, which takes step k's own layer unasked."""
    torch.manual_seed(0)
    plain = Decoder(tiny_config(kernels=kernels, positional="rotary")).train(training)
    routing = dict(pool_size=STEPS, pools="per_step", skip=True, capacity_factor=None, token_attention=scheme)
    routed = token_copy_of(plain, token_routing(**routing)).train(training)
    fixed = token_copy_of(plain, token_routing(**routing, route_policy="fixed")).train(training)
    tokens = torch.randint(0, 23, (5, 12))
    expected = plain(tokens).logits
    assert torch.equal(routed(tokens, route=in_order_route(5, 12, STEPS)).logits, expected)
    output = fixed(tokens)
    assert torch.equal(output.logits, expected)
    assert torch.equal(output.routing.layer_choices, in_order_route(5, 12, STEPS))


@pytest.mark.parametrize("training", [False, True])
def test_step_k_chooses_only_its_own_layer_or_skip(training: bool) -> None:
    model = mod_model(capacity_factor=None).train(training)
    tokens = torch.randint(0, 23, (8, 12), generator=torch.Generator().manual_seed(1))
    info = model(tokens).routing
    for step in range(STEPS):
        chosen = info.layer_choices[..., step]
        assert set(chosen.unique().tolist()) == {step, SKIP}, f"step {step}: both entries, and no other"
        others = [layer for layer in range(STEPS) if layer != step]
        assert bool((info.probabilities[..., step, others] == 0).all())
    assert model.choices_per_step == 2
    # one layer per step: the balance among a step's layers has nothing to balance
    assert float(info.balance_loss.detach()) == pytest.approx(1.0, abs=1e-6)
    random = mod_model(capacity_factor=None, route_policy="random").train(training)
    drawn = random(tokens).routing.layer_choices
    for step in range(STEPS):
        assert set(drawn[..., step].unique().tolist()) == {step, SKIP}


def test_a_forced_route_outside_a_steps_own_layer_is_refused() -> None:
    model = mod_model()
    route = in_order_route(2, 5, STEPS)
    route[0, 3, 1] = 0  # step 1 may take layer 1 or skip, not layer 0
    with pytest.raises(IndexError, match="outside that step's own"):
        model(torch.zeros(2, 5, dtype=torch.long), route=route)
    route[0, 3, 1] = SKIP
    model(torch.zeros(2, 5, dtype=torch.long), route=route)


def test_the_capacity_is_shared_among_the_steps_own_entries() -> None:
    """cf = 1 with two entries a step: a layer takes at most ceil(pos / 2) of a sequence's first
    pos tokens (counted by hand: a one-layer pool with skip), so at most K / 2 layers a token."""
    model = mod_model(capacity_factor=1.0)
    forced = in_order_route(4, 12, STEPS)  # every token asks for every layer
    processed = model.eval()(torch.zeros(4, 12, dtype=torch.long), route=forced).routing.processed
    by_hand = reference_admit(torch.zeros(4, 12, dtype=torch.long), 1, 2, 1.0)
    for step in range(STEPS):
        assert torch.equal(processed[..., step], by_hand)
    assert processed.sum(1).tolist() == [[6] * STEPS] * 4
    assert model.most_layers_per_token() == STEPS / 2


@pytest.mark.parametrize("pools", ["shared", "per_step"])
def test_the_warm_start_routes_every_token_to_its_fixed_layer_while_the_router_waits(pools: str) -> None:
    warm = 2
    model = token_model(
        tiny_config(), seed=0, pool_size=STEPS, pools=pools, skip=True, warm_start_steps=warm, reward="readout"
    )
    tokens = torch.randint(0, 23, (6, 12), generator=torch.Generator().manual_seed(2))
    model.train()
    for step in range(warm + 1):
        model.set_training_step(step, 10)
        model.zero_grad(set_to_none=True)
        output = model(tokens)
        assert output.aux_loss is not None
        (output.logits.sum() + output.aux_loss).backward()
        grads = [p.grad for p in model.router.parameters()]
        assert all(g is not None for g in grads), "the router stays in the graph (DDP)"
        moved = sum(int(torch.count_nonzero(g)) for g in grads if g is not None)
        choices = output.routing.layer_choices
        if step < warm:
            assert torch.equal(choices, in_order_route(6, 12, STEPS)), f"update {step}"
            assert float(output.aux_loss.detach()) == 0.0 and moved == 0, "the router waits"
            assert output.routing.readout is None
        else:
            assert not torch.equal(choices, in_order_route(6, 12, STEPS)) and moved > 0
            assert output.routing.readout is not None
    model.set_trained_steps(warm, 10)  # checkpoint `warm` was made by update warm - 1: still fixed
    assert torch.equal(model.eval()(tokens).routing.layer_choices, in_order_route(6, 12, STEPS))
