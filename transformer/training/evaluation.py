"""Validation loss and perplexity; for routed models with argmax routes and sampled routes.

Evaluation draws its windows and its sampled routes from generators of its own, so running
it never shifts the training run's random streams (a resumed run stays exact).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor, nn

from transformer.routing import losses as routing_losses
from transformer.routing.decoder import RoutedDecoder
from transformer.training.objective import compute_objective


@dataclass
class Evaluation:
    val_loss: float
    val_ppl: float
    sampled_route_loss: float | None = None
    usage: list[list[float]] = field(default_factory=list)  # [steps][pool] fraction, argmax routes
    usage_entropy: float | None = None
    decision_entropy: float | None = None

    def as_record(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != []}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: list[Tensor],
    route_samples: int = 2,
    seed: int = 0,
) -> Evaluation:
    """Mean loss over `batches` (each [batch, pos + 1] tokens), summed across ranks when the
    batches are split between them. `model` is the bare model, not the DDP wrapper."""
    was_training = model.training
    model.eval()
    losses, usage_counts, decision = [], [], []
    for tokens in batches:
        objective = compute_objective(model, tokens)
        losses.append(objective.lm_loss.float())
        if objective.routing is not None:
            usage_counts.append(objective.routing.counts)
            decision.append(objective.routing.decision_entropy)
    # A rank may have no batch (fewer batches than ranks): it still joins every all-reduce.
    device = next(model.parameters()).device
    total = _global_mean(_stack_or_empty(losses, device))
    result = Evaluation(val_loss=total, val_ppl=math.exp(min(total, 700.0)))
    if isinstance(model, RoutedDecoder):
        shape = (model.n_steps, model.routing.pool_size)
        local = torch.stack(usage_counts).sum(0) if usage_counts else torch.zeros(shape, device=device)
        counts = _global_sum(local)
        result.usage = (counts / counts.sum(-1, keepdim=True).clamp_min(1)).tolist()
        result.usage_entropy = float(routing_losses.usage_entropy(counts))
        result.decision_entropy = _global_mean(_stack_or_empty(decision, device))
        if route_samples > 0:
            result.sampled_route_loss = _sampled_route_loss(model, batches, route_samples, seed)
    model.train(was_training)
    return result


@contextmanager
def sampled_routes(model: RoutedDecoder, seed: int) -> Iterator[None]:
    """Routes drawn as in training (Gumbel-argmax at the router's temperature) from a generator
    seeded with `seed`, swapped in for the router's own, the rest of the model in eval mode
    (no dropout): evaluating never shifts the training run's routing stream."""
    own_generator, was_training = model.router.generator, model.training
    model.eval()
    model.router.generator = torch.Generator().manual_seed(seed)
    model.router.train()
    try:
        yield
    finally:
        model.router.generator = own_generator
        model.train(was_training)


def _sampled_route_loss(model: RoutedDecoder, batches: list[Tensor], samples: int, seed: int) -> float:
    with sampled_routes(model, seed):
        losses = [compute_objective(model, tokens).lm_loss.float() for tokens in batches for _ in range(samples)]
    return _global_mean(_stack_or_empty(losses, next(model.parameters()).device))


def _stack_or_empty(values: list[Tensor], device: torch.device) -> Tensor:
    return torch.stack(values) if values else torch.zeros(0, device=device)


def _global_sum(value: Float[Tensor, "*shape"]) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def _global_mean(values: Float[Tensor, " n"]) -> float:
    both = _global_sum(torch.stack([values.sum(), torch.tensor(float(values.numel()), device=values.device)]))
    return float(both[0] / both[1])
