"""Hand-written embedding and unembedding-with-cross-entropy gradients equal autograd's through
the package's `Embed`, positions and `Unembed`."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.backprop import ATOL, BATCH, D_MODEL, D_VOCAB, POS, assert_same_grads, config, random, randomised
from transformer.manual.embed import IGNORE, ManualEmbed, ManualUnembedLoss
from transformer.model.decoder import Decoder


def tokens(seed: int = 5) -> torch.Tensor:
    """Random ids, so some token appears more than once: its row must add both gradients."""
    ids = torch.randint(0, D_VOCAB, (BATCH, POS), generator=torch.Generator().manual_seed(seed))
    assert ids.unique().numel() < ids.numel()
    return ids


def grads_of(model: Decoder) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "none"])
def test_embedding_gradients_equal_autograd(positional: str) -> None:
    model = randomised(Decoder(config(positional=positional)))
    ids, d_resid = tokens(), random(BATCH, POS, D_MODEL, seed=2)
    manual = ManualEmbed(model)
    torch.testing.assert_close(manual.forward(ids), model.embed_tokens(ids), atol=ATOL, rtol=0)
    model.embed_tokens(ids).backward(d_resid)
    assert_same_grads(manual.backward(ids, d_resid), grads_of(model))


def test_unused_token_rows_get_zero_gradient() -> None:
    model = randomised(Decoder(config()))
    ids = torch.zeros(BATCH, POS, dtype=torch.long)
    grads = ManualEmbed(model).backward(ids, random(BATCH, POS, D_MODEL, seed=2))
    assert torch.equal(grads["embed.W_E"][1:], torch.zeros(D_VOCAB - 1, D_MODEL, dtype=torch.float64))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_cross_entropy_gradients_equal_autograd(tied: bool, padded: bool) -> None:
    """The loss is F.cross_entropy's (mean over scored targets; -100 is not scored)."""
    model = randomised(Decoder(config(tie_embeddings=tied)))
    x, targets = random(BATCH, POS, D_MODEL, seed=1), tokens(seed=6)
    if padded:
        targets[1, 4:] = IGNORE
    manual = ManualUnembedLoss(model)
    loss, saved = manual.forward(x, targets)
    x_auto = x.clone().requires_grad_()
    expected = F.cross_entropy(model.unembed(x_auto).flatten(0, 1), targets.flatten())
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=ATOL, rtol=0)
    d_x, grads = manual.backward(saved)
    torch.testing.assert_close(d_x, x_auto.grad, atol=ATOL, rtol=0)
    assert_same_grads(grads, grads_of(model))
    assert ("embed.W_E" in grads) is tied
