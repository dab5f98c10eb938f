"""What single heads do, measured on their attention patterns, and what happens without them.

On a random sequence repeated once (length 2L), an induction head at position t of the repeat
attends to t - L + 1: the token *after* the earlier copy of the current token, the one it
predicts next. Its induction score is the mean attention on that position over the repeat; a
previous-token head's score is its mean attention on t - 1. A head that attends uniformly over
its causal window scores about the mean of 1/(t + 1): small for long sequences.

Ablation removes a head: its z (the pattern-weighted values, before W_O) is replaced by zero
or by its mean over the batch and positions of a reference cache, and the model runs on. The
rise in loss is what the rest of the model could not make up for.
"""

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.analysis.interp.hooks import ActivationCache, HookFn


def repeated_random_tokens(generator: torch.Generator, batch: int, half: int, d_vocab: int) -> Int[Tensor, "batch pos"]:
    """[batch, 2 * half]: uniform random tokens, then the same tokens again."""
    first = torch.randint(0, d_vocab, (batch, half), generator=generator)
    return torch.cat((first, first), dim=1)


def repeated_distinct_tokens(
    generator: torch.Generator, batch: int, half: int, d_vocab: int
) -> Int[Tensor, "batch pos"]:
    """[batch, 2 * half]: `half` distinct tokens, then the same tokens again. Distinct, so the
    token that followed the current one's earlier copy is never ambiguous: the task an induction
    head solves exactly (tests/model/test_attention.py and experiments/induction_heads.py train on it)."""
    first = torch.rand(batch, d_vocab, generator=generator).argsort(dim=-1)[:, :half]
    return torch.cat((first, first), dim=1)


def induction_scores(cache: ActivationCache, half: int) -> Float[Tensor, "n_layers n_heads"]:
    """Mean attention from position t of the repeat to t - half + 1, per layer and head."""
    scores = []
    for layer in _layers(cache):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch head q k]
        queries = torch.arange(half, 2 * half)
        scores.append(pattern[:, :, queries, queries - half + 1].mean(dim=(0, 2)))
    return torch.stack(scores)


def previous_token_scores(cache: ActivationCache) -> Float[Tensor, "n_layers n_heads"]:
    """Mean attention from position t to t - 1 (t >= 1), per layer and head."""
    scores = []
    for layer in _layers(cache):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        queries = torch.arange(1, pattern.shape[2])
        scores.append(pattern[:, :, queries, queries - 1].mean(dim=(0, 2)))
    return torch.stack(scores)


def _layers(cache: ActivationCache) -> list[int]:
    return sorted(int(name.split(".")[1]) for name in cache if name.endswith("attn.hook_pattern"))


Ablation = Literal["zero", "mean"]


def ablate_head(head: int, how: Ablation = "zero", reference: Tensor | None = None) -> HookFn:
    """A hook for `blocks.{layer}.attn.hook_z` that removes `head`: its z becomes zero, or
    (`how="mean"`) its mean over batch and positions in `reference`, that hook's z on other
    inputs (a cache's `blocks.{layer}.attn.hook_z`)."""
    if how == "mean" and reference is None:
        raise ValueError("mean ablation needs a reference z to average: pass cache['blocks.L.attn.hook_z']")

    def hook(z: Tensor, _: str) -> Tensor:
        z = z.clone()
        if how == "zero":
            z[:, head] = 0.0
        else:
            assert reference is not None
            z[:, head] = reference[:, head].mean(dim=(0, 1)).to(z.dtype)
        return z

    return hook
