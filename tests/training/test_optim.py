"""Weight decay reaches matrices only; the learning rate warms up linearly, then decays by cosine."""

import math

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training.config import TrainSettings
from transformer.training.optim import learning_rate, make_optimizer


def _groups(model: DecoderEnds, settings: TrainSettings) -> tuple[set[str], set[str]]:
    optimizer = make_optimizer(model, settings)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in optimizer.param_groups[0]["params"]}
    kept = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == settings.weight_decay
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    return decayed, kept


def test_decay_applies_to_weight_matrices_and_not_to_embeddings_norms_or_biases() -> None:
    decayed, kept = _groups(Decoder(tiny_config()), TrainSettings(weight_decay=0.1))
    assert {"layers.0.attn.W_Q", "layers.0.mlp.W_in", "layers.0.mlp.W_out", "unembed.W_U"} <= decayed
    assert {
        "embed.W_E",
        "pos_embed.W_pos",
        "layers.0.ln1.w",
        "layers.0.ln1.b",
        "layers.0.attn.b_Q",
        "unembed.b_U",
        "ln_final.w",
    } <= kept
    assert not decayed & kept


def test_routed_model_decays_the_router_readout_but_not_its_step_embedding() -> None:
    model = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=4))
    decayed, kept = _groups(model, TrainSettings())
    assert "router.W_R" in decayed and "pool.layers.2.attn.W_O" in decayed
    assert {"router.W_step", "router.b_R", "router.ln.w"} <= kept
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_learning_rate_warms_up_then_follows_a_cosine_to_min_lr() -> None:
    settings = TrainSettings(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert learning_rate(0, settings) == pytest.approx(0.1)
    assert learning_rate(9, settings) == pytest.approx(1.0)
    assert learning_rate(10, settings) == pytest.approx(1.0)
    assert learning_rate(60, settings) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: cos(pi/2) = 0
    assert learning_rate(110, settings) == pytest.approx(0.1)
    assert learning_rate(500, settings) == pytest.approx(0.1)
    values = [learning_rate(s, settings) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert math.isclose(learning_rate(35, settings), 0.1 + 0.45 * (1 + math.cos(math.pi * 0.25)))


def test_adamw_runs_fused_on_cpu_and_updates_as_the_unfused_reference_does() -> None:
    settings = TrainSettings(weight_decay=0.1)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(Decoder(tiny_config()))
    fused = make_optimizer(models[0], settings)
    assert all(group["fused"] for group in fused.param_groups)
    reference = make_optimizer(models[1], settings)
    for group in reference.param_groups:
        group["fused"], group["foreach"] = None, False  # torch's one-tensor-at-a-time loop
    tokens = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(1))
    for model, optimizer in zip(models, (fused, reference), strict=True):
        for _ in range(3):
            model(tokens).logits.square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for (name, after), reference_after in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(after, reference_after, msg=name)
    torch.manual_seed(0)
    start = Decoder(tiny_config())
    assert all(not torch.equal(a, b) for a, b in zip(models[0].parameters(), start.parameters(), strict=True))
