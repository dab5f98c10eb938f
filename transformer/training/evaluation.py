"""Validation loss and perplexity; for routed models with argmax routes and sampled routes.

Evaluation draws its windows and its sampled routes from generators of its own, so running
it never shifts the training run's random streams (a resumed run stays exact).
"""

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

from transformer.model.decoder import DecoderEnds
from transformer.routing import losses as routing_losses
from transformer.training.objective import compute_objective


@dataclass
class Evaluation:
    val_loss: float
    val_ppl: float
    sampled_route_loss: float | None = None
    usage: list[list[float]] = field(default_factory=list)  # [steps][pool] fraction, argmax routes
    usage_entropy: float | None = None
    decision_entropy: float | None = None
    work: dict[str, float] = field(default_factory=dict)  # token routing: layers_per_token, dropped, skip

    def as_record(self) -> dict[str, object]:
        record = {k: v for k, v in self.__dict__.items() if k != "work" and v is not None and v != []}
        return {**record, **self.work}


@torch.no_grad()
def evaluate(
    model: DecoderEnds,
    batches: list[Tensor],
    route_samples: int = 2,
    seed: int = 0,
) -> Evaluation:
    """Mean loss over `batches` (each [batch, pos + 1] tokens), summed across ranks when the
    batches are split between them. `model` is the bare model, not the DDP wrapper."""
    was_training = model.training
    model.eval()
    losses, usage_counts, decision, applied = [], [], [], []
    for tokens in batches:
        objective = compute_objective(model, tokens)
        losses.append(objective.lm_loss.float())
        if objective.routing is not None:
            usage_counts.append(objective.routing.counts)
            decision.append(objective.routing.decision_entropy)
            done = model.applied_counts(objective.routing)
            if done is not None:
                applied.append(done)
    # A rank may have no batch (fewer batches than ranks): it still joins every all-reduce.
    device = next(model.parameters()).device
    total = _global_mean(_stack_or_empty(losses, device))
    result = Evaluation(val_loss=total, val_ppl=math.exp(min(total, 700.0)))
    if model.kind == "routed":
        shape = (model.n_steps, model.pool_size)
        local = torch.stack(usage_counts).sum(0) if usage_counts else torch.zeros(shape, device=device)
        counts = _global_sum(local)
        result.usage = (counts / counts.sum(-1, keepdim=True).clamp_min(1)).tolist()
        result.usage_entropy = float(routing_losses.usage_entropy(counts))
        result.decision_entropy = _global_mean(_stack_or_empty(decision, device))
        local_applied = torch.stack(applied).sum(0) if applied else torch.zeros(shape, device=device)
        result.work = model.work_metrics(counts, _global_sum(local_applied))
        if route_samples > 0:
            result.sampled_route_loss = _sampled_route_loss(model, batches, route_samples, seed)
    model.train(was_training)
    return result


def _sampled_route_loss(model: DecoderEnds, batches: list[Tensor], samples: int, seed: int) -> float:
    with model.sampled_routes(seed):
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
