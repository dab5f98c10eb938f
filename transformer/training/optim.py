"""AdamW with weight decay on matrices only, and a warmup-then-cosine learning rate.

Decay pulls weights toward zero. That regularises the matrices that mix features (W_Q, W_in,
W_U, the router's W_R...), but on an embedding row it would shrink rarely seen tokens toward
nothing, and on a norm's gain or a bias it would fight the very scale it exists to set. So
tables of embeddings (token, position, routing step), norms and biases are not decayed.

The update runs as torch's fused AdamW kernel wherever it exists for every parameter (float
tensors on CPU or CUDA): one pass over each tensor instead of a dozen elementwise ops, ~3x
faster on CPU at nanoGPT's CPU size (bench/README.md), the same AdamW.
"""

import math

import torch
from torch import nn

from transformer.training.config import TrainSettings

NO_DECAY_NAMES = ("W_E", "W_pos", "W_step")


def decays(name: str, parameter: nn.Parameter) -> bool:
    """Weight matrices (W_*, two or more axes) decay; per-head biases such as b_Q [n_heads d_head]
    have two axes too, but they are biases."""
    leaf = name.rsplit(".", 1)[-1]
    return parameter.ndim >= 2 and leaf.startswith("W_") and leaf not in NO_DECAY_NAMES


FUSED_DEVICES = ("cpu", "cuda")


def fused_available(parameters: list[nn.Parameter]) -> bool:
    """torch's fused AdamW takes floating-point tensors on these devices only."""
    return bool(parameters) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in parameters)


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    decayed: list[nn.Parameter] = []
    kept: list[nn.Parameter] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decayed if decays(name, parameter) else kept).append(parameter)
    groups = [
        {"params": decayed, "weight_decay": settings.weight_decay},
        {"params": kept, "weight_decay": 0.0},
    ]
    fused = fused_available(decayed + kept)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), fused=fused or None)


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr` at `max_steps`."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(settings.max_steps - settings.warmup_steps, 1)
    progress = min((step - settings.warmup_steps) / span, 1.0)
    return settings.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (settings.lr - settings.min_lr)
