"""The KV cache of a token-routed decoder: one per routing step, by position, with holes.

In a plain decoder every position has keys and values in every layer. With token routing, at
step k a position's keys and values were made by the layer *that token* chose, and a token that
skipped the step (or was dropped by the capacity) made none: a hole. So each step keeps, for
every position so far,

- k, v: [batch, n_heads, pos, d_head], zeros at holes;
- valid: [batch, pos], False at holes (never a key: the attention mask says so);
- choice: [batch, pos], the entry each token chose (co-routed attention compares it with the
  query's own choice);
- taken: [batch, n_entries], how many of each sequence's tokens each entry has taken so far,
  which is all the capacity (transformer/routing/capacity.py) needs to admit the next token.

Each call appends the new positions of each step; attention then sees exactly the keys a full
forward over the whole text would (tests/routing/test_token_cache.py).
"""

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from transformer.model.kv_cache import KVCache, LayerCache


class TokenStepCache(LayerCache):
    """One routing step's keys and values by position, and what routing needs to continue."""

    def __init__(self) -> None:
        super().__init__()
        self.valid: Tensor | None = None
        self.choice: Tensor | None = None
        self.taken: Tensor | None = None

    def append_keys(
        self, valid: Bool[Tensor, "batch new"], choice: Int[Tensor, "batch new"]
    ) -> tuple[Bool[Tensor, "batch total"], Int[Tensor, "batch total"]]:
        """Store which new positions are keys and what they chose (`append` stores k and v);
        return both for every position so far."""
        if self.valid is None or self.choice is None:
            self.valid, self.choice = valid, choice
        else:
            self.valid, self.choice = torch.cat([self.valid, valid], 1), torch.cat([self.choice, choice], 1)
        return self.valid, self.choice


class TokenKVCache(KVCache):
    """What `TokenRoutedDecoder.new_cache` hands generation: a `TokenStepCache` per step."""

    def __init__(self, n_steps: int) -> None:
        super().__init__(n_steps)
        self.steps = [TokenStepCache() for _ in range(n_steps)]
        self.layers = list(self.steps)  # `length` reads the first
