"""adaLN-Zero: a fresh layer is the identity; with zero shift and scale and unit gates it is a
pre-norm bidirectional `TransformerLayer` (itself proven equal to `nn.TransformerEncoderLayer`
in tests/model/test_layer.py); a shift and scale act as that layer's norm bias and gain; and the
conditioning vector is how the label gets in."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.helpers.attention_tasks import shape_checks_paused, train
from transformer.model.config import ModelConfig
from transformer.model.layer import TransformerLayer
from transformer.model.norm import LayerNorm
from transformer.vision.adaln import AdaLNFinal, AdaLNZeroLayer

D = 8


def config(kernels: str = "readable") -> ModelConfig:
    return ModelConfig(d_model=D, n_heads=2, n_layers=1, n_ctx=5, positional="none", causal=False, kernels=kernels)


def pair(shift: Tensor, scale: Tensor) -> tuple[AdaLNZeroLayer, TransformerLayer]:
    """An adaLN layer whose modulation ignores c and outputs (shift, scale, gate 1) for both
    blocks, and a TransformerLayer with the same attention and MLP and norms of gain 1 + scale."""
    torch.manual_seed(0)
    ours = AdaLNZeroLayer(config()).double()
    with torch.no_grad():
        for parameter in [*ours.attn.parameters(), *ours.mlp.parameters()]:
            parameter.normal_(0.0, 0.3)
        ours.b_mod.copy_(torch.cat([shift, scale, torch.ones(D)] * 2))
    reference = TransformerLayer(config()).double()
    reference.attn.load_state_dict(ours.attn.state_dict())
    assert reference.mlp is not None
    reference.mlp.load_state_dict(ours.mlp.state_dict())
    for norm in (reference.ln1, reference.ln2):
        assert isinstance(norm, LayerNorm)
        with torch.no_grad():
            norm.w.copy_(1 + scale)
            norm.b.copy_(shift)
    return ours, reference


def test_a_fresh_layer_is_the_identity_and_the_final_layer_predicts_zero() -> None:
    x, c = torch.randn(2, 5, D), torch.randn(2, D)
    torch.testing.assert_close(AdaLNZeroLayer(config("fast"))(x, c), x, atol=0, rtol=0)
    assert AdaLNFinal(D, 4, 1e-5)(x, c).abs().max() == 0


def test_unit_gates_and_no_modulation_give_a_pre_norm_transformer_layer() -> None:
    ours, reference = pair(torch.zeros(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64))
    x, c = torch.randn(3, 5, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(ours(x, c), reference(x), atol=1e-10, rtol=0)


def test_shift_and_scale_are_the_norms_bias_and_gain_minus_one() -> None:
    generator = torch.Generator().manual_seed(2)
    shift, scale = torch.randn(D, generator=generator).double(), torch.randn(D, generator=generator).double()
    ours, reference = pair(shift, scale)
    x, c = torch.randn(3, 5, D, dtype=torch.float64), torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(ours(x, c), reference(x), atol=1e-10, rtol=0)


def test_learns_to_write_what_only_the_conditioning_knows() -> None:
    """Target: the label's class at every position, from inputs that are pure noise. A readout of
    the layer's output beats chance (ln 4) only if adaLN lets the label in; the same network given
    a shuffled label stays near chance."""
    torch.manual_seed(0)
    n_classes = 4
    model = nn.ModuleDict(
        {"labels": nn.Embedding(n_classes, D), "layer": AdaLNZeroLayer(config("fast")), "head": nn.Linear(D, n_classes)}
    )
    generator = torch.Generator().manual_seed(1)

    def loss_with(labels: Tensor, told: Tensor, x: Tensor) -> Tensor:
        out = model["layer"](x, model["labels"](told))
        return F.cross_entropy(model["head"](out).flatten(0, 1), labels.repeat_interleave(5))

    def loss_of_step(step: int) -> Tensor:
        labels = torch.randint(0, n_classes, (32,), generator=generator)
        return loss_with(labels, labels, torch.randn(32, 5, D, generator=generator))

    with shape_checks_paused():
        train(model, loss_of_step, steps=150, lr=1e-2)
    labels = torch.randint(0, n_classes, (256,), generator=generator)
    x = torch.randn(256, 5, D, generator=generator)
    with torch.no_grad():
        told = loss_with(labels, labels, x).item()
        shuffled = loss_with(labels, labels[torch.randperm(256, generator=generator)], x).item()
    assert told < 0.1 * math.log(n_classes)
    assert shuffled > 0.9 * math.log(n_classes)
