"""The whole decoder's hand-written backward: the gradient of every parameter equals autograd's,
and one AdamW step with it leaves the same parameters as one with autograd's."""

import copy
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.backprop import ATOL, BATCH, D_VOCAB, POS, assert_same_grads, config, named, randomised
from tests.manual.test_attention import LEFT_PADDED
from transformer.manual.block import ManualBackpropError
from transformer.manual.decoder import ManualDecoder
from transformer.manual.embed import IGNORE
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder


def batch(padded: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokens, next-token targets and a key padding mask; padded rows are padded on the left
    (their first queries see no key) and their padding targets are not scored."""
    ids = torch.randint(0, D_VOCAB, (BATCH, POS + 1), generator=torch.Generator().manual_seed(3))
    tokens, targets = ids[:, :-1], ids[:, 1:].clone()
    if not padded:
        return tokens, targets, None
    targets[~LEFT_PADDED] = IGNORE
    return tokens, targets, LEFT_PADDED


def autograd_loss(
    model: Decoder, tokens: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    logits = model(tokens, mask).logits
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())  # float64 (lm_loss casts to float32)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_embeddings": True, "positional": "sinusoidal"}, {"norm": "rmsnorm", "mlp": "swiglu", "bias": False}],
    ids=str,
)
def test_every_parameter_gradient_equals_autograd(padded: bool, overrides: dict[str, object]) -> None:
    model = randomised(Decoder(config(**overrides)))
    tokens, targets, mask = batch(padded)
    loss, grads = ManualDecoder(model).loss_and_grads(tokens, targets, mask)
    expected = autograd_loss(model, tokens, targets, mask)
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), atol=ATOL, rtol=0)
    assert_same_grads(grads, {name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert set(grads) == {name for name, _ in model.named_parameters()}


def test_one_adamw_step_leaves_the_same_parameters_as_autograd() -> None:
    torch.manual_seed(0)
    hand_model = randomised(Decoder(config()))
    auto_model, initial = copy.deepcopy(hand_model), copy.deepcopy(hand_model)
    tokens, targets, mask = batch(padded=True)
    options = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    hand_optimizer = torch.optim.AdamW(hand_model.parameters(), **options)  # type: ignore[arg-type]
    auto_optimizer = torch.optim.AdamW(auto_model.parameters(), **options)  # type: ignore[arg-type]
    manual = ManualDecoder(hand_model)
    for _ in range(2):  # the second step uses AdamW's moments from the first
        manual.set_grads(manual.loss_and_grads(tokens, targets, mask)[1])
        hand_optimizer.step()
        auto_optimizer.zero_grad()
        autograd_loss(auto_model, tokens, targets, mask).backward()
        auto_optimizer.step()
    moved = False
    for (name, hand), (_, auto) in zip(hand_model.named_parameters(), auto_model.named_parameters(), strict=True):
        torch.testing.assert_close(hand, auto, atol=ATOL, rtol=0, msg=named(name))
        moved = moved or not torch.equal(hand, initial.get_parameter(name))
    assert moved


def test_no_autograd_is_used() -> None:
    """The gradients come out with autograd's entry points disabled and no graph built."""
    model = randomised(Decoder(config()))
    tokens, targets, _ = batch(padded=False)
    forbidden = mock.Mock(side_effect=AssertionError("autograd was called"))
    with mock.patch("torch.autograd.backward", forbidden), mock.patch("torch.autograd.grad", forbidden):
        loss, grads = ManualDecoder(model).loss_and_grads(tokens, targets)
    assert loss.grad_fn is None and all(grad.grad_fn is None for grad in grads.values())
    assert all(p.grad is None for p in model.parameters())


def test_the_routed_decoder_is_refused() -> None:
    model = RoutedDecoder(config(), RoutingConfig(pool_size=2, route_prefix_len=2))
    with pytest.raises(ManualBackpropError, match="plain Decoder"):
        ManualDecoder(model)
