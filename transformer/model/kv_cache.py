"""The KV cache: keys and values kept from earlier forwards, so each new token costs one position.

Generating token t with a full forward recomputes every earlier position's keys and values,
although with a causal mask they cannot change: position i only ever sees positions <= i.
A cache keeps them. The first call (the prompt, "prefill") fills it; each later call feeds only
the new tokens, computes *their* queries, keys and values, appends the keys and values, and lets
the new queries attend over everything stored. Work per new token drops from O(pos) layer
applications to one; attention itself still reads all `pos` cached keys.

Shapes: per attention layer, k and v are [batch, n_heads, pos, d_head], `pos` growing by the
number of tokens fed each call. New tokens sit at absolute positions `length .. length+new-1`,
which is the `offset` every positional scheme takes (learned and sinusoidal tables, rotary
angles, ALiBi distances).

The routed decoder keeps one `LayerCache` per routing *step*, not per pool layer: row b of
step k's cache holds sequence b's keys and values as made by the layer its route names at
step k (the pool hands each layer the rows of the sequences it serves). The route itself is
fixed by the first call, which must hold the whole routing prefix, and stored in `route`.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


class LayerCache:
    """The keys and values one attention layer has computed so far."""

    def __init__(
        self,
        k: Float[Tensor, "batch n_heads pos d_head"] | None = None,
        v: Float[Tensor, "batch n_heads pos d_head"] | None = None,
    ) -> None:
        self.k = k
        self.v = v

    @property
    def length(self) -> int:
        """How many positions are stored (0 before the first call)."""
        return 0 if self.k is None else self.k.shape[2]

    def append(
        self, k: Float[Tensor, "batch n_heads new d_head"], v: Float[Tensor, "batch n_heads new d_head"]
    ) -> tuple[Float[Tensor, "batch n_heads total d_head"], Float[Tensor, "batch n_heads total d_head"]]:
        """Store the new positions' keys and values; return those of every position so far."""
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def rows(self, index: Int[Tensor, " rows"]) -> "LayerCache":
        """A cache holding only the sequences `index` names (the layer pool's dispatch)."""
        if self.k is None or self.v is None:
            return LayerCache()
        return LayerCache(self.k[index], self.v[index])

    def gather(self, parts: list["LayerCache"], order: Int[Tensor, " batch"]) -> None:
        """Take back what `rows` handed out: `parts`, concatenated, hold the rows in the order
        `order` lists them; put them back in batch order."""
        ks = [part.k for part in parts if part.k is not None]
        vs = [part.v for part in parts if part.v is not None]
        if len(ks) != len(parts) or len(vs) != len(parts):
            raise ValueError("every part of a dispatched cache must have been filled")
        unsort = torch.argsort(order)
        self.k, self.v = torch.cat(ks)[unsort], torch.cat(vs)[unsort]


@dataclass
class FixedRoute:
    """A routed decoder's decisions, made once from the routing prefix and reused each call."""

    choices: Int[Tensor, "batch steps"]
    logits: Float[Tensor, "batch steps n_pool"]
    probabilities: Float[Tensor, "batch steps n_pool"]

    def at(
        self, step: int
    ) -> tuple[Int[Tensor, " batch"], Float[Tensor, "batch n_pool"], Float[Tensor, "batch n_pool"]]:
        """The choice, router logits and probabilities of one routing step."""
        return self.choices[:, step], self.logits[:, step], self.probabilities[:, step]


class KVCache:
    """One `LayerCache` per layer (plain decoder) or per routing step (routed decoder)."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.route: FixedRoute | None = None  # routed decoder only: set by the first call

    @property
    def length(self) -> int:
        """Positions seen so far: the absolute position of the next token fed."""
        return self.layers[0].length
