"""A pool of N transformer layers, each sequence sent through the one its route names.

Dispatch costs about one dense layer per step, not N: sort the batch by chosen layer, run
each layer on its own group, concatenate, and undo the sort. Each row is written exactly
once (no scatter-add), so the result is deterministic. When every sequence chose the same
layer (the fixed order, the warm start, a collapsed router), the batch goes to it unsorted.

A layer whose group is empty is not run (a `TransformerLayer` call costs ~0.7 ms forward and
backward even on zero sequences, a hundred small ops), but its parameters still get a gradient
of exact zeros rather than none: `ZeroGradients` hangs them on the pool's output. So
DistributedDataParallel needs no `find_unused_parameters` (it waits for a gradient of every
parameter on every backward), and AdamW treats an unused layer the same whatever the number
of ranks (momentum and weight decay still apply).

A caller that runs the pool several times per forward (the routed decoder, once per routing
step) can pass an `idle` set instead: the pool then only crosses off the layers it ran, and the
caller gives the layers still idle at the end their zeros once (`keep_in_graph`), rather than
every step adding zeros to the gradient of a layer another step used.

With a `LayerCache` (generation: one per routing step, rows in batch order), each layer gets
the cached rows of the sequences it serves, appends to them, and the rows are put back in batch
order.
"""

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.kv_cache import LayerCache
from transformer.model.layer import TransformerLayer
from transformer.routing.tally import tally


class ZeroGradients(torch.autograd.Function):
    """The identity on `out`, whose backward also gives each of `parameters` a zero gradient:
    one autograd node, instead of running the layers those parameters belong to. Exact zeros,
    even if a parameter holds inf or NaN (where `out + 0 * p.sum()` would give NaN)."""

    @staticmethod
    def forward(ctx: Any, out: Tensor, *parameters: Tensor) -> Tensor:
        ctx.layouts = [(p.shape, p.dtype, p.device) for p in parameters]
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        zeros = (torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.layouts)
        return (grad, *zeros)


class LayerPool(nn.Module):
    def __init__(self, cfg: ModelConfig, pool_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(pool_size))

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        choice: Int[Tensor, " batch"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: LayerCache | None = None,
        idle: set[int] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`idle`: see the module docstring; without it, this call's unused layers get their
        zero gradients here."""
        pool_size = len(self.layers)
        order = torch.argsort(choice, stable=True)
        group_sizes = tally(choice, pool_size).tolist()  # one host sync per step
        if sum(group_sizes) != len(choice):
            outside = sorted({int(c) for c in choice.tolist() if not 0 <= c < pool_size})
            raise IndexError(f"route names layer {outside[0]}; the pool has {pool_size}")
        used = [index for index, size in enumerate(group_sizes) if size]
        if len(used) == 1:  # one layer for all (fixed order, warm start): nothing to sort
            out: Tensor = self.layers[used[0]](resid, key_padding_mask, cache)
        else:
            out = self._dispatch(resid, order, group_sizes, used, key_padding_mask, cache)
        if idle is not None:
            idle.difference_update(used)
            return out
        return self.keep_in_graph(out, set(range(pool_size)).difference(used))

    def _dispatch(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        order: Int[Tensor, " batch"],
        group_sizes: list[int],
        used: list[int],
        key_padding_mask: Bool[Tensor, "batch pos"] | None,
        cache: LayerCache | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Sort by layer, run each used layer on its group, undo the sort."""
        groups = resid[order].split(group_sizes)
        masks = key_padding_mask[order].split(group_sizes) if key_padding_mask is not None else [None] * len(groups)
        if cache is None:
            outputs = [self.layers[i](groups[i], masks[i]) for i in used]
        else:  # generation: each layer serves its sequences with their own rows of this step's cache
            rows = order.split(group_sizes)
            caches = [cache.rows(rows[i]) for i in used]
            outputs = [
                self.layers[i](groups[i], masks[i], layer_cache) for i, layer_cache in zip(used, caches, strict=True)
            ]
            cache.gather(caches, order)
        return torch.cat(outputs)[torch.argsort(order)]

    def keep_in_graph(self, out: Tensor, idle: set[int]) -> Tensor:
        """`out`, with a zero gradient on its way back for every parameter of the `idle` layers
        (nothing to do outside autograd: no backward will come)."""
        if not idle or not torch.is_grad_enabled():
            return out
        parameters = [p for i in sorted(idle) for p in self.layers[i].parameters() if p.requires_grad]
        result: Tensor = ZeroGradients.apply(out, *parameters)  # type: ignore[no-untyped-call]
        return result
