"""Hand-written attention gradients equal autograd's through the package's `Attention`: one head
and several, causal alone and with padding (including queries that may see no key at all)."""

import pytest
import torch

from tests.helpers.backprop import (
    ATOL,
    BATCH,
    D_MODEL,
    POS,
    assert_same_grads,
    autograd_grads,
    config,
    random,
    randomised,
)
from transformer.manual.attention import ManualAttention, ManualHeads, allowed_keys, masked_softmax
from transformer.manual.block import ManualBackpropError
from transformer.model.attention import Attention

RIGHT_PADDED = torch.tensor([[True] * POS, [True] * 4 + [False] * (POS - 4), [True] * 2 + [False] * (POS - 2)])
# The first query of row 1 and the first three of row 2 may see no key: all-zero pattern rows.
LEFT_PADDED = torch.tensor([[True] * POS, [False] + [True] * (POS - 1), [False] * 3 + [True] * (POS - 3)])
MASKS = {"causal": None, "right-padded": RIGHT_PADDED, "left-padded": LEFT_PADDED}


@pytest.mark.parametrize("mask", MASKS)
def test_masked_softmax_equals_the_package_pattern(mask: str) -> None:
    attn = randomised(Attention(config()))
    q, k = random(BATCH, 3, POS, 4, seed=1), random(BATCH, 3, POS, 4, seed=2)
    allowed = allowed_keys(POS, MASKS[mask], q.device)
    pattern = masked_softmax(q @ k.transpose(-1, -2) * attn.scale, allowed)
    torch.testing.assert_close(pattern, attn.pattern(q, k, allowed, None), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mask", MASKS)
def test_one_head_mix_gradients_equal_autograd(mask: str) -> None:
    """Scores, mask, softmax and weighted sum for a single head ([batch, pos, d_head], no head
    dimension), against autograd through the package's `Attention.pattern`."""
    attn = randomised(Attention(config(n_heads=1)))
    q, k, v = (random(BATCH, POS, D_MODEL, seed=s).requires_grad_() for s in (1, 2, 3))  # d_head = d_model
    d_z = random(BATCH, POS, D_MODEL, seed=4)
    allowed = allowed_keys(POS, MASKS[mask], q.device)
    (attn.pattern(q[:, None], k[:, None], allowed, None)[:, 0] @ v).backward(d_z)
    heads = ManualHeads(allowed)
    _, saved = heads.forward(q.detach(), k.detach(), v.detach())
    for hand, tensor in zip(ManualHeads.backward(saved, d_z), (q, k, v), strict=True):
        torch.testing.assert_close(hand, tensor.grad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("n_heads", [1, 3])
@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_hand_gradients_equal_autograd(mask: str, n_heads: int, kernels: str) -> None:
    attn = randomised(Attention(config(n_heads=n_heads, kernels=kernels)))
    x, d_y = random(BATCH, POS, D_MODEL, seed=1), random(BATCH, POS, D_MODEL, seed=2)
    padding = MASKS[mask]
    manual = ManualAttention(attn, padding)
    y, saved = manual.forward(x)
    torch.testing.assert_close(y, attn(x, padding), atol=ATOL, rtol=0)
    d_x, grads = manual.backward(saved, d_y)
    auto_d_x, auto_grads = autograd_grads(attn, lambda t: attn(t, padding), x, d_y)
    torch.testing.assert_close(d_x, auto_d_x, atol=ATOL, rtol=0)
    assert_same_grads(grads, auto_grads)


def test_without_biases_there_are_no_bias_gradients() -> None:
    attn = randomised(Attention(config(bias=False)))
    x, d_y = random(BATCH, POS, D_MODEL, seed=1), random(BATCH, POS, D_MODEL, seed=2)
    manual = ManualAttention(attn)
    _, grads = manual.backward(manual.forward(x)[1], d_y)
    assert_same_grads(grads, autograd_grads(attn, attn, x, d_y)[1])
    assert sorted(grads) == ["W_K", "W_O", "W_Q", "W_V"]


def test_a_future_token_gets_no_gradient_from_an_earlier_output() -> None:
    """The causal mask's backward: the output at position 2 depends on no input after it."""
    attn = randomised(Attention(config()))
    x = random(1, POS, D_MODEL, seed=1)
    d_y = torch.zeros(1, POS, D_MODEL, dtype=torch.float64)
    d_y[0, 2] = 1.0
    manual = ManualAttention(attn)
    d_x, _ = manual.backward(manual.forward(x)[1], d_y)
    assert d_x[0, :3].abs().sum() > 0
    assert torch.equal(d_x[0, 3:], torch.zeros_like(d_x[0, 3:]))


@pytest.mark.parametrize("positional", ["rotary", "alibi"])
def test_positions_inside_attention_are_refused(positional: str) -> None:
    with pytest.raises(ManualBackpropError, match="learned"):
        ManualAttention(Attention(config(positional=positional)))
