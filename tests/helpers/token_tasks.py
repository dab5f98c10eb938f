"""Synthetic streams whose tokens need different computations, for the token-routing learning tests.

`marker_stream`: values and markers alternate, v0 m0 v1 m1 ...; each marker is of kind A or B
and says what the next value is: kind A repeats the value before it, kind B maps it through a
fixed permutation. A marker's target thus needs a layer that reads the previous token and
applies its kind's map; a value's target (the next marker) is uniform, nothing to learn.

`copy_or_look_back`: a Markov-like stream over 16 tokens: after a "copy" token (ids 0..7) comes
the same token again, after a "look-back" token (8..15) that follows another look-back token
the token before it, each with probability 1 - noise (else a uniform token). A copy token's
target is its input: the direct path from embedding to unembedding predicts it, no layer
needed. A look-back token needs attention to the previous position. A look-back token right
after a copy token has no rule (a uniform target), so no target ever needs a copy token's keys
and values: a copy token that skips a step (and so is no key at it) costs nobody anything.
"""

import torch
from torch import Tensor

N_VALUES, MARKERS_PER_KIND = 8, 2
SHIFT = torch.roll(torch.arange(N_VALUES), 3)  # kind B's map: no value maps to itself


def marker_stream(batch: int, pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Tokens [batch, 2 * pairs + 1] (values 0..7, kind-A markers 8, 9, kind-B markers 10, 11)
    and each marker's kind [batch, pairs] (0: A, 1: B)."""
    values = torch.empty(batch, pairs + 1, dtype=torch.long)
    values[:, 0] = torch.randint(N_VALUES, (batch,), generator=generator)
    markers = torch.randint(2 * MARKERS_PER_KIND, (batch, pairs), generator=generator)
    kind = markers // MARKERS_PER_KIND
    for i in range(pairs):
        values[:, i + 1] = torch.where(kind[:, i] == 0, values[:, i], SHIFT[values[:, i]])
    tokens = torch.stack([values[:, :-1], N_VALUES + markers], dim=-1).flatten(1)
    return torch.cat([tokens, values[:, -1:]], dim=1), kind


def marker_vocab() -> int:
    return N_VALUES + 2 * MARKERS_PER_KIND


def is_kind_b_marker(tokens: Tensor) -> Tensor:
    return tokens >= N_VALUES + MARKERS_PER_KIND


COPY_TOKENS, LOOK_BACK_TOKENS = 8, 8


def copy_or_look_back(batch: int, length: int, noise: float, generator: torch.Generator) -> Tensor:
    """Tokens [batch, length]: ids < 8 are followed by themselves, ids >= 8 after an id >= 8 by
    the token before them, ids >= 8 after an id < 8 by a uniform token."""
    vocab = COPY_TOKENS + LOOK_BACK_TOKENS
    tokens = torch.empty(batch, length, dtype=torch.long)
    tokens[:, :2] = torch.randint(vocab, (batch, 2), generator=generator)
    for t in range(1, length - 1):
        rule = torch.where(tokens[:, t] < COPY_TOKENS, tokens[:, t], tokens[:, t - 1])
        uniform = torch.randint(vocab, (batch,), generator=generator)
        no_rule = (tokens[:, t] >= COPY_TOKENS) & (tokens[:, t - 1] < COPY_TOKENS)
        noisy = (torch.rand(batch, generator=generator) < noise) | no_rule
        tokens[:, t + 1] = torch.where(noisy, uniform, rule)
    return tokens
