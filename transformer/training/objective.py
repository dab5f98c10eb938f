"""What training minimises: next-token loss, plus the routed decoder's auxiliary losses.

One function for both decoders (bare or wrapped in DistributedDataParallel), so the trainer,
the evaluation and the distributed tests all compute the loss the same way.
"""

from dataclasses import dataclass

from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.routing.decoder import RoutedDecoder, RoutingInfo
from transformer.training.lm_loss import lm_loss


@dataclass
class Objective:
    loss: Float[Tensor, ""]  # what backward() is called on
    lm_loss: Float[Tensor, ""]  # nats per scored token
    routing: RoutingInfo | None


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under any wrappers: torch.compile's (`_orig_mod`) and
    DistributedDataParallel's (`module`)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def first_scored_target(model: nn.Module) -> int:
    """Routed models score only targets from the routing prefix on (see lm_loss.py)."""
    inner = unwrap(model)
    return inner.routing.route_prefix_len if isinstance(inner, RoutedDecoder) else 0


def compute_objective(
    model: nn.Module, tokens: Int[Tensor, "batch pos_plus_1"], route: Tensor | None = None
) -> Objective:
    """`tokens` holds inputs and targets: position t predicts position t + 1."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if isinstance(unwrap(model), RoutedDecoder):
        logits, info = model(inputs, route=route)
        language = lm_loss(logits, targets, first_scored_target(model))
        return Objective(loss=language + info.aux_loss, lm_loss=language, routing=info)
    if route is not None:
        raise ValueError("a route can only be given to a routed decoder")
    language = lm_loss(model(inputs), targets)
    return Objective(loss=language, lm_loss=language, routing=None)
