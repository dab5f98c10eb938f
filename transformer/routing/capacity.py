"""Capacity: how many of a sequence's tokens each layer takes at one step, decided causally.

With token routing a popular layer could be handed most of a sequence; a capacity bounds each
layer's share, and so the step's compute. The bound grows with position: of a sequence's first
`pos` tokens (positions 0 .. pos-1) entry i may take at most

    cap(pos) = ceil(capacity_factor * pos / n_entries)

(n_entries counts the skip entry too). Slots go first come, first served along positions: a
token that chose layer i is taken if i has taken fewer than cap(t + 1) of the tokens before it,
otherwise it is *dropped* and passes through the step on the residual, as if it had skipped.
So whether token t is dropped depends only on the choices of tokens 0..t: causal, and the same
whether the sequence is run at once or one token at a time from a KV cache (`taken` carries
the counts from one call to the next).

The recurrence is taken_t = min(taken_{t-1} + chose_t, cap_t) per (sequence, entry): a chosen
token fits when taken_{t-1} + 1 <= cap_t, and otherwise taken_{t-1} already equals cap_t
(cap never falls). Unrolled, with S the running count of choices from the first position of
this call and `before` the count carried in,

    taken_t = S_t + min(before, min_{s <= t} (cap_s - S_s)),

a cumulative minimum: no Python loop over positions. (A capacity chosen by top-k over the
whole sequence, as in expert-choice routing, would let later tokens evict earlier ones: not
causal. tests/routing/test_token_causality.py shows the check catching exactly that.)
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Int
from torch import Tensor


def capacity_at(
    capacity_factor: float, n_entries: int, offset: int, pos: int, device: torch.device
) -> Int[Tensor, " pos"]:
    """cap(t + 1) for the positions t = offset .. offset + pos - 1."""
    seen = torch.arange(offset + 1, offset + pos + 1, dtype=torch.float64, device=device)
    return torch.ceil(seen * capacity_factor / n_entries).long()


def admit(
    choice: Int[Tensor, "batch pos"],
    n_layers: int,
    n_entries: int,
    capacity_factor: float | None,
    offset: int = 0,
    before: Int[Tensor, "batch n_entries"] | None = None,
) -> tuple[Bool[Tensor, "batch pos"], Int[Tensor, "batch n_entries"]]:
    """Which tokens a layer processes (they chose a layer, not skip, and it had room), and each
    entry's count of taken tokens per sequence after them. `offset`: the absolute position of
    the first token; `before`: the counts up to it (a KV cache's; None: none yet).
    `capacity_factor` None: no capacity, every token that chose a layer is processed."""
    chose = F.one_hot(choice, n_entries)  # [batch, pos, n_entries], int64
    carried = before if before is not None else torch.zeros_like(chose[:, 0])
    wants_layer = choice < n_layers
    if capacity_factor is None:
        return wants_layer, carried + chose.sum(dim=1)
    running = chose.cumsum(dim=1)
    cap = capacity_at(capacity_factor, n_entries, offset, choice.shape[1], choice.device)
    slack = (cap[None, :, None] - running).cummin(dim=1).values
    taken = running + torch.minimum(carried[:, None, :], slack)
    previous = torch.cat([carried[:, None, :], taken[:, :-1]], dim=1)
    took = (taken - previous).gather(2, choice[..., None])[..., 0].bool()
    return took & wants_layer, taken[:, -1]
