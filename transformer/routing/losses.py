"""Balance and stability losses, and the two entropies that tell routing's story.

Balance (Switch Transformer): at each step, N * sum_i f_i * P_i, with f_i the fraction of
sequences sent to layer i (a count: no gradient) and P_i the mean router probability of i
(differentiable). Its minimum, 1.0, is at uniform usage; its gradient lowers P_i for layers
that are over-used. f is counted over the *global* batch (all ranks, and the micro-batches
of the optimizer step so far: see RoutedDecoder.counting_window): balancing each small
batch, or worse each sequence, would forbid the router from sending different inputs to
different layers, which is the whole point.

z-loss (ST-MoE): mean(logsumexp(z)^2) keeps router logits small, so the softmax stays in a
range where float32 rounding does not decide routes.

Usage entropy H(f) says whether the pool is used evenly (ln N) or collapsed (0). Decision
entropy, the mean of H(p) per decision, says whether each choice is confident (0) or a coin
flip (ln N). Even usage with confident decisions is specialisation.
"""

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor

from transformer.routing.tally import tally


def count_choices(
    choices: Int[Tensor, "batch steps"], pool_size: int, all_ranks: bool
) -> Float[Tensor, "steps n_pool"]:
    """How many sequences each step sent to each layer; summed over ranks when asked."""
    counts = tally(choices, pool_size).float()
    if all_ranks and dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)
    return counts


def balance_loss(
    counts: Float[Tensor, "steps n_pool"],
    probabilities: Float[Tensor, "batch steps n_pool"],
    choices_per_step: int | None = None,
) -> Float[Tensor, ""]:
    """`choices_per_step`: how many layers each step may choose (N, or N / K with per-step
    pools), which scales the loss so that even use of them is 1.0 either way."""
    fractions = counts / counts.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean_probability = probabilities.mean(dim=0)
    choices = counts.shape[-1] if choices_per_step is None else choices_per_step
    return (choices * (fractions * mean_probability).sum(dim=-1)).mean()


def z_loss(router_logits: Float[Tensor, "batch steps n_pool"]) -> Float[Tensor, ""]:
    return torch.logsumexp(router_logits, dim=-1).pow(2).mean()


def entropy(distribution: Float[Tensor, "*batch n"]) -> Float[Tensor, "*batch"]:
    logs = distribution.clamp_min(1e-30).log()
    return -(distribution * logs).sum(dim=-1)


def usage_entropy(counts: Float[Tensor, "steps n_pool"]) -> Float[Tensor, ""]:
    """Mean over steps of the entropy of that step's layer usage (nats; ln N is even use)."""
    return entropy(counts / counts.sum(dim=-1, keepdim=True).clamp_min(1.0)).mean()


def decision_entropy(probabilities: Float[Tensor, "batch steps n_pool"]) -> Float[Tensor, ""]:
    """Mean entropy of a single routing decision (nats; 0 is a sure choice)."""
    return entropy(probabilities).mean()
