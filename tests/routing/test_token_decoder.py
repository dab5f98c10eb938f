"""The token-routed decoder: forced in order it is the plain decoder, its sorted dispatch is the
token-by-token reference, its compute is the tokens it admits, and it reports its routes."""

import math

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from tests.helpers.token_models import (
    in_order_route,
    reference_admit,
    reference_forward,
    token_copy_of,
    token_model,
    token_routing,
)
from transformer.model.decoder import Decoder
from transformer.model.kv_cache import KVCache
from transformer.model.layer import TransformerLayer
from transformer.routing.capacity import admit, capacity_at
from transformer.routing.token_cache import TokenKVCache
from transformer.routing.token_decoder import TokenRoutingInfo

SCHEMES = ["all", "co_routed"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("positional", ["learned", "rotary", "alibi"])
@pytest.mark.parametrize("training", [False, True])
def test_every_token_in_order_equals_the_plain_decoder_bitwise(
    scheme: str, kernels: str, positional: str, training: bool
) -> None:
    """N = K, every token forced to layer k at step k, capacity off: the logits are bitwise the
    plain decoder's (the gate's forward is exact), and so are the gradients of every shared
    weight on the fast path (d out / d y is the identity, and every matrix multiply and fused
    norm sees the same [batch * pos] rows). On the readable path a weight's gradient sums over
    [1, batch * pos] rows instead of [batch, pos]: equal to float32 rounding."""
    torch.manual_seed(0)
    plain = Decoder(tiny_config(kernels=kernels, positional=positional)).train(training)
    routed = token_copy_of(plain, token_routing(capacity_factor=None, token_attention=scheme)).train(training)
    tokens = torch.randint(0, 23, (5, 12))
    expected = plain(tokens).logits
    output = routed(tokens, route=in_order_route(5, 12, 3))
    assert torch.equal(output.logits, expected)
    expected.sum().backward()
    output.logits.sum().backward()
    for index, layer in enumerate(plain.layers):
        # readable path: measured at most 3e-7 of the layer's largest gradient entry (b_K's true
        # gradient is 0: a shift of every key leaves the softmax alone; it holds rounding alone)
        scale = max(float(p.grad.abs().max()) for p in layer.parameters() if p.grad is not None)
        for (name, p_plain), p_routed in zip(
            layer.named_parameters(), routed.pool.layers[index].parameters(), strict=True
        ):
            assert p_plain.grad is not None and p_routed.grad is not None
            if kernels == "fast":
                assert torch.equal(p_plain.grad, p_routed.grad), f"layer {index} {name}"
            else:
                torch.testing.assert_close(
                    p_routed.grad, p_plain.grad, rtol=0, atol=1e-6 * scale, msg=f"{index} {name}"
                )
    assert plain.embed.W_E.grad is not None and routed.embed.W_E.grad is not None
    if kernels == "fast":
        assert torch.equal(plain.embed.W_E.grad, routed.embed.W_E.grad)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("positional", ["learned", "rotary", "alibi"])
@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_sorted_dispatch_equals_the_token_by_token_reference(
    scheme: str, skip: bool, positional: str, kernels: str
) -> None:
    """Random-looking routes (a primed router), capacity 1.0 so some tokens are dropped, skip
    on and off: the batched forward equals loops over tokens (float64, to 1e-10)."""
    cfg = tiny_config(positional=positional, kernels=kernels, n_ctx=16)
    model = token_model(cfg, seed=1, token_attention=scheme, skip=skip, capacity_factor=1.0).double().eval()
    tokens = torch.randint(0, 23, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = model(tokens)
        logits, choices, admitted = reference_forward(model, tokens)
    info: TokenRoutingInfo = output.routing
    assert torch.equal(info.layer_choices, choices)
    assert torch.equal(info.processed, admitted)
    assert not bool(admitted.all()), "the test needs tokens left out: dropped, or skipping"
    assert len(set(choices.flatten().tolist())) == model.routing.n_entries, "every entry should be chosen"
    torch.testing.assert_close(output.logits, logits, rtol=0, atol=1e-10)


def test_capacity_admits_first_come_first_served_exactly_as_counting_by_hand() -> None:
    """The cumulative-minimum form of the capacity equals walking each sequence and counting,
    for pools with and without skip and factors below, at and above 1; a sequence fed in two
    calls (positions carried by `offset`, counts by `before`) is admitted as in one."""
    generator = torch.Generator().manual_seed(0)
    dropped = 0
    for trial in range(60):
        n_entries = 2 + trial % 4
        n_layers = n_entries - trial % 2
        factor = [None, 0.5, 1.0, 1.25, 2.0][trial % 5]
        choice = torch.randint(0, n_entries, (3, 17), generator=generator)
        admitted, _ = admit(choice, n_layers, n_entries, factor)
        assert torch.equal(admitted, reference_admit(choice, n_layers, n_entries, factor)), trial
        first, taken = admit(choice[:, :7], n_layers, n_entries, factor)
        rest, _ = admit(choice[:, 7:], n_layers, n_entries, factor, offset=7, before=taken)
        assert torch.equal(torch.cat([first, rest], 1), admitted), trial
        dropped += int(((choice < n_layers) & ~admitted).sum())
    assert dropped > 100, "the capacity should have dropped tokens"
    # cap(pos) = ceil(cf * pos / n_entries): with cf 1.25 and 6 entries, 1 for pos 1..4, 2 for 5..9
    assert capacity_at(1.25, 6, 0, 10, torch.device("cpu")).tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 3]


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_each_layer_processes_only_its_own_tokens_and_an_unchosen_layer_does_not_run(kernels: str) -> None:
    """Rows through each layer per step sum to the tokens admitted, not N x batch x pos; a
    layer no token chose is never called, yet every pool parameter gets a gradient (exact
    zeros for the idle layer), as DDP without find_unused_parameters needs. (The fast
    dispatch calls no layer module when a step has several groups: its rows are counted in
    tests/routing/test_stacked.py.)"""
    cfg = tiny_config(n_layers=2, kernels=kernels)
    model = token_model(cfg, seed=3, pool_size=4, capacity_factor=None).train()
    rows: list[list[int]] = [[] for _ in model.pool.layers]
    for index, layer in enumerate(model.pool.layers):
        assert isinstance(layer, TransformerLayer) and layer.mlp is not None
        layer.mlp.register_forward_hook(lambda module, args, output, i=index: rows[i].append(args[0].shape[1]))
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(4))
    route = torch.randint(0, 3, (3, 12, 2), generator=torch.Generator().manual_seed(5))  # layer 3: nobody
    output = model(tokens, route=route)
    if kernels == "readable":
        for index in range(3):
            assert rows[index] == [int((route[..., step] == index).sum()) for step in range(2)]
        assert [sum(rows[i][step] for i in range(3)) for step in range(2)] == [36, 36]  # batch x pos, not N times it
    assert rows[3] == []
    assert output.aux_loss is not None
    (output.logits.pow(2).mean() + output.aux_loss).backward()
    for index, layer in enumerate(model.pool.layers):
        for name, parameter in layer.named_parameters():
            assert parameter.grad is not None, f"layer {index} {name} has no gradient"
            if index == 3:
                assert torch.count_nonzero(parameter.grad) == 0, f"idle layer {index} {name}"
        assert index == 3 or any(torch.count_nonzero(p.grad) > 0 for p in layer.parameters() if p.grad is not None)


def test_routing_info_describes_the_routes_and_owes_the_weighted_losses() -> None:
    model = token_model(seed=6, pool_size=4, skip=True, compute_weight=0.1, capacity_factor=1.0)
    tokens = torch.randint(0, 23, (7, 12), generator=torch.Generator().manual_seed(7))
    model.eval()
    info: TokenRoutingInfo = model(tokens).routing
    assert info.layer_choices.shape == (7, 12, 3) and info.layer_choices.dtype == torch.long
    assert info.router_logits.shape == (7, 12, 3, 5) and info.router_logits.dtype == torch.float32
    assert torch.equal(info.layer_choices, info.router_logits.argmax(-1))
    torch.testing.assert_close(info.probabilities.sum(-1), torch.ones(7, 12, 3))
    assert info.counts.sum(-1).tolist() == [84.0] * 3  # every token chooses once per step
    assert info.applied[:, 4].tolist() == [0.0] * 3  # skip processes nothing
    assert torch.equal(info.applied.sum(-1), info.processed.sum(dim=(0, 1)).float())
    assert float(info.layers_per_token) == float(info.processed.float().sum(-1).mean())
    chose_layer = info.layer_choices < 4
    dropped = (chose_layer & ~info.processed).sum() / chose_layer.sum()
    torch.testing.assert_close(info.dropped_fraction, dropped.float())
    expected_layers = info.probabilities[..., :4].sum(dim=(-1, -2)).mean()
    torch.testing.assert_close(info.compute_loss, expected_layers)
    model.train()
    info = model(tokens).routing
    weights = model.routing
    expected = (
        weights.balance_weight * info.balance_loss + weights.z_loss_weight * info.z_loss + 0.1 * info.compute_loss
    )
    torch.testing.assert_close(info.aux_loss, expected)


def test_balance_counts_the_layers_alone_whatever_skip_takes() -> None:
    """With skip, the balance loss sees only the layers: tokens spread evenly over them cost
    the minimum, 1.0, however much probability skip holds (balancing skip too would argue with
    compute_weight). Without renormalising over the layers it would read 0.75 here, then less."""
    tokens = torch.randint(0, 23, (4, 12), generator=torch.Generator().manual_seed(9))
    even = (torch.arange(4 * 12 * 3) % 3).view(4, 12, 3)  # layers 0, 1, 2 in turn
    for skip_bias in (0.0, 2.0):
        model = token_model(seed=8, prime=0.0, pool_size=3, skip=True, capacity_factor=None).eval()
        with torch.no_grad():
            model.router.b_R[3] = skip_bias
        info = model(tokens, route=even).routing
        skip_share = math.exp(skip_bias) / (math.exp(skip_bias) + 3)  # 0.25, then 0.71
        torch.testing.assert_close(info.probabilities[..., 3], torch.full((4, 12, 3), skip_share))
        torch.testing.assert_close(info.balance_loss, torch.tensor(1.0))


def test_bad_inputs_give_clear_errors() -> None:
    model = token_model(pool_size=3)
    tokens = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"route must have shape \(batch, pos, steps\)"):
        model(tokens, route=torch.zeros(2, 8, 2, dtype=torch.long))
    with pytest.raises(IndexError, match="the pool has 3 layers"):
        model(tokens, route=torch.full((2, 8, 3), 3))
    with pytest.raises(IndexError, match="the pool has 3 layers and skip"):
        token_model(pool_size=3, skip=True)(tokens, route=torch.full((2, 8, 3), 4))
    assert isinstance(model.new_cache(), TokenKVCache)
    with pytest.raises(ValueError, match=r"use model.new_cache\(\)"):
        model(tokens, cache=KVCache(3))
