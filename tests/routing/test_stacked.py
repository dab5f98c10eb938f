"""The batched token dispatch (every layer's group in one padded batch, stacked.py) equals its
readable twin (each chosen layer's parts called on its group): outputs and every gradient, in
float64, through whole token-routed decoders."""

import pytest
import torch
from torch import nn

from tests.helpers.routed_models import tiny_config
from tests.helpers.token_models import token_model
from transformer.routing import stacked
from transformer.routing.dispatch import TokenPool
from transformer.routing.token_decoder import TokenRoutedDecoder

VARIANTS: dict[str, dict[str, object]] = {
    "defaults": {},
    "rmsnorm-swiglu-no-bias": dict(norm="rmsnorm", mlp="swiglu", bias=False),
    "rotary-gelu-tanh": dict(positional="rotary", mlp="gelu_tanh"),
    "alibi-attn-only": dict(positional="alibi", attn_only=True),
}


def _twins(variant: str, **routing: object) -> tuple[TokenRoutedDecoder, TokenRoutedDecoder]:
    readable = token_model(tiny_config(kernels="readable", **VARIANTS[variant]), seed=9, prime=0.3, **routing)
    readable = readable.double()
    fast = token_model(tiny_config(kernels="fast", **VARIANTS[variant]), seed=9, prime=0.3, **routing).double()
    fast.load_state_dict(readable.state_dict())
    return readable, fast


def _gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, f"{name} has no gradient"
        grads[name] = parameter.grad
    return grads


def _count_batched_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(buffer rows, real rows) of every step the batched dispatch ran."""
    seen: list[tuple[int, int]] = []
    original = stacked.Batched.__init__

    def spy(self: stacked.Batched, weights: stacked.StackedWeights, sizes: list[int], *args: torch.Tensor) -> None:
        seen.append((len(sizes) * max(sizes), sum(sizes)))
        original(self, weights, sizes, *args)

    monkeypatch.setattr(stacked.Batched, "__init__", spy)
    return seen


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attention", ["all", "co_routed"])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_the_batched_dispatch_trains_as_the_readable_one(
    variant: str, attention: str, padded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learned routes with skip and a capacity that drops tokens, in training mode, through the
    LM loss and the auxiliary losses: logits, losses and every gradient."""
    readable, fast = _twins(
        variant, pool_size=4, skip=True, capacity_factor=1.25, token_attention=attention, compute_weight=0.1
    )
    tokens = torch.randint(0, 23, (8, 12), generator=torch.Generator().manual_seed(10))
    mask = None
    if padded:
        mask = torch.ones(8, 12, dtype=torch.bool)
        mask[1, :3] = False
        mask[4, :1] = False
    batched = _count_batched_steps(monkeypatch)
    results = []
    for model in (readable.train(), fast.train()):
        output = model(tokens, key_padding_mask=mask)
        assert output.aux_loss is not None
        loss = output.logits.pow(2).mean() + output.aux_loss
        loss.backward()
        results.append((output, loss))
    assert batched, "the fast model never took the batched dispatch"
    (slow_out, slow_loss), (fast_out, fast_loss) = results
    assert torch.equal(slow_out.routing.layer_choices, fast_out.routing.layer_choices)
    torch.testing.assert_close(fast_out.logits, slow_out.logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_loss, slow_loss, rtol=1e-12, atol=1e-12)
    expected, got = _gradients(readable), _gradients(fast)
    for name, want in expected.items():
        torch.testing.assert_close(got[name], want, rtol=1e-12, atol=1e-12, msg=name)


def test_a_layer_no_token_chose_gets_exact_zero_gradients_in_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its rows are all padding, never read: exact zeros, as DDP without find_unused_parameters
    needs, and the same for every other layer's padding rows."""
    model = token_model(tiny_config(n_layers=2), seed=3, pool_size=4, capacity_factor=None).double().train()
    batched = _count_batched_steps(monkeypatch)
    tokens = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(4))
    position = torch.arange(12)[None, :, None]
    route = ((position + torch.arange(2)) % 3).expand(3, 12, 2)  # 12 tokens to each of layers 0-2, 3: nobody
    output = model(tokens, route=route)
    assert output.aux_loss is not None
    (output.logits.pow(2).mean() + output.aux_loss).backward()
    assert len(batched) == 2 and all(real == 36 for _, real in batched)  # both steps batched, every token
    for name, parameter in model.pool.layers[3].named_parameters():
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) == 0, name


def test_a_collapsed_route_keeps_the_readable_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    """One layer taking nearly every token would pad every other group to its size: past
    `PADDING_LIMIT` the step calls the layers one by one instead."""
    pool = TokenPool(tiny_config(), 4, co_routed=False)
    batched = _count_batched_steps(monkeypatch)
    choice = torch.zeros(2, 12, dtype=torch.long)
    choice[0, 5] = 1  # 23 tokens to layer 0, 1 to layer 1: 4 x 23 buffer rows for 24
    pool(torch.randn(2, 12, 16), choice, torch.ones(2, 12, dtype=torch.bool))
    assert batched == []
    balanced = (torch.arange(12) % 4).expand(2, 12)  # 6 tokens each: 24 buffer rows for 24
    pool(torch.randn(2, 12, 16), balanced, torch.ones(2, 12, dtype=torch.bool))
    assert batched == [(24, 24)]


def test_the_batched_dispatch_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same step twice, from the same weights and route: the same bits, logits and gradients."""
    _, fast = _twins("defaults", pool_size=4, skip=True, capacity_factor=1.25)
    tokens = torch.randint(0, 23, (8, 12), generator=torch.Generator().manual_seed(11))
    route = torch.randint(0, 5, (8, 12, 3), generator=torch.Generator().manual_seed(12))
    batched = _count_batched_steps(monkeypatch)
    runs = []
    for _ in range(2):
        fast.zero_grad(set_to_none=True)
        output = fast.train()(tokens, route=route)
        assert output.aux_loss is not None
        (output.logits.pow(2).mean() + output.aux_loss).backward()
        runs.append((output.logits, {name: grad.clone() for name, grad in _gradients(fast).items()}))
    assert len(batched) == 6, "each of the 3 steps of both runs batched"
    assert torch.equal(runs[0][0], runs[1][0])
    for name, grad in runs[0][1].items():
        assert torch.equal(grad, runs[1][1][name]), name
