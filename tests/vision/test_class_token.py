"""The class token is one learned vector at position 0 of every sequence, and through
bidirectional attention it learns to summarise all of them."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.helpers.attention_tasks import shape_checks_paused, train
from transformer.model.config import ModelConfig
from transformer.model.layer import TransformerLayer
from transformer.vision.class_token import ClassToken


def test_puts_the_same_learned_vector_before_every_sequence() -> None:
    torch.manual_seed(0)
    cls = ClassToken(4)
    x = torch.randn(3, 5, 4)
    out = cls(x)
    assert out.shape == (3, 6, 4)
    torch.testing.assert_close(out[:, 1:], x, atol=0, rtol=0)
    for row in out[:, 0]:
        torch.testing.assert_close(row, cls.w_cls, atol=0, rtol=0)


def test_learns_the_majority_sign_of_the_sequence() -> None:
    """Each position holds +v or -v; the label is which is in the majority (odd length, no ties).
    The class token's own input is the same for every sequence, so its final state can only beat
    chance (loss ln 2) by reading the other positions."""
    torch.manual_seed(0)
    d_model, seq = 16, 7
    cfg = ModelConfig(d_model=d_model, n_heads=2, n_layers=1, n_ctx=seq + 1, positional="none", causal=False)
    v = torch.randn(d_model)
    model = nn.ModuleDict(
        {"cls": ClassToken(d_model, 0.1), "layer": TransformerLayer(cfg), "head": nn.Linear(d_model, 2)}
    )
    generator = torch.Generator().manual_seed(1)

    def loss_of_step(step: int) -> Tensor:
        signs = torch.randint(0, 2, (64, seq), generator=generator) * 2 - 1
        x = signs[..., None].float() * v
        summary = model["layer"](model["cls"](x))[:, 0]
        return F.cross_entropy(model["head"](summary), (signs.sum(-1) > 0).long())

    with shape_checks_paused():
        loss = train(model, loss_of_step, steps=150, lr=1e-2)
    assert loss < 0.15 * math.log(2)
