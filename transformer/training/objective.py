"""What training minimises: next-token loss, plus whatever auxiliary loss the decoder reports.

One function for both decoders (bare or wrapped in DistributedDataParallel), so the trainer,
the evaluation and the distributed tests all compute the loss the same way.
"""

from dataclasses import dataclass

from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.model.decoder import DecoderEnds, DecoderOutput
from transformer.routing.decoder import RoutingInfo
from transformer.training.lm_loss import lm_loss


@dataclass
class Objective:
    loss: Float[Tensor, ""]  # what backward() is called on
    lm_loss: Float[Tensor, ""]  # nats per scored token
    output: DecoderOutput

    @property
    def routing(self) -> RoutingInfo | None:
        """The routed decoder's report on this forward; None for the plain decoder."""
        routing: RoutingInfo | None = self.output.routing
        return routing


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, under any wrappers: torch.compile's (`_orig_mod`) and
    DistributedDataParallel's (`module`)."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def decoder_of(model: nn.Module) -> DecoderEnds:
    """The decoder under any wrappers: what its interface says holds for the wrapper too."""
    inner = unwrap(model)
    if not isinstance(inner, DecoderEnds):
        raise TypeError(f"{type(inner).__name__} is not a decoder")
    return inner


def first_scored_target(model: nn.Module) -> int:
    """Routed models score only targets from the routing prefix on (see lm_loss.py)."""
    return decoder_of(model).first_scored_target


def compute_objective(
    model: nn.Module, tokens: Int[Tensor, "batch pos_plus_1"], route: Tensor | None = None
) -> Objective:
    """`tokens` holds inputs and targets: position t predicts position t + 1."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    decoder = decoder_of(model)
    if route is None:
        output = model(inputs)
    elif decoder.kind == "routed":
        output = model(inputs, route=route)
    else:
        raise ValueError("a route can only be given to a routed decoder")
    language = lm_loss(output.logits, targets, decoder.first_scored_target)
    loss = language if output.aux_loss is None else language + output.aux_loss
    reward = decoder.reward_term(output, targets)
    if reward is not None:
        loss = loss + reward
    return Objective(loss=loss, lm_loss=language, output=output)
