"""The training objective: next-token loss (from the routing prefix on, for routed models) plus
the routed decoder's auxiliary losses, through any wrapper."""

from typing import cast

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training.lm_loss import lm_loss
from transformer.training.objective import compute_objective, unwrap


def test_plain_objective_is_the_loss_over_every_target() -> None:
    torch.manual_seed(0)
    model = Decoder(tiny_config())
    tokens = torch.randint(0, 23, (3, 12))
    objective = compute_objective(model, tokens)
    expected = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).logits.flatten(0, 1), tokens[:, 1:].flatten())
    torch.testing.assert_close(objective.loss, expected)
    assert objective.routing is None and objective.lm_loss is objective.loss
    with pytest.raises(ValueError, match="only be given to a routed decoder"):
        compute_objective(model, tokens, route=torch.zeros(3, 3, dtype=torch.long))


def test_routed_objective_adds_the_auxiliary_losses_to_the_loss_from_the_prefix_on() -> None:
    torch.manual_seed(1)
    model = RoutedDecoder(tiny_config(), RoutingConfig(pool_size=3, route_prefix_len=5)).eval()
    tokens = torch.randint(0, 23, (4, 12))
    objective = compute_objective(model, tokens)
    output = model(tokens[:, :-1])
    logits, info = output.logits, output.routing
    assert objective.routing is not None
    torch.testing.assert_close(objective.lm_loss, lm_loss(logits, tokens[:, 1:], first_target=5))
    torch.testing.assert_close(objective.loss, objective.lm_loss + info.aux_loss)


def test_unwrap_sees_through_torch_compile() -> None:
    model = Decoder(tiny_config())
    compiled = cast(torch.nn.Module, torch.compile(model))  # wrapping is lazy: nothing compiles until it is called
    assert unwrap(compiled) is model and unwrap(model) is model
