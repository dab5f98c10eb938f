"""A pool of N transformer layers, each sequence sent through the one its route names.

Dispatch costs about one dense layer per step, not N: sort the batch by chosen layer, run
each layer on its own group, concatenate, and undo the sort. Each row is written exactly
once (no scatter-add), so the result is deterministic. Every layer runs at every step, even
on an empty group: its parameters stay in the autograd graph and get a zero gradient rather
than none, so DistributedDataParallel needs no `find_unused_parameters` and AdamW treats an
unused layer the same whatever the number of ranks.

With a `LayerCache` (generation: one per routing step, rows in batch order), each layer gets
the cached rows of the sequences it serves, appends to them, and the rows are put back in batch
order; layers nobody chose are skipped.
"""

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.kv_cache import LayerCache
from transformer.model.layer import TransformerLayer


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
    ) -> Float[Tensor, "batch pos d_model"]:
        pool_size = len(self.layers)
        order = torch.argsort(choice, stable=True)
        group_sizes = torch.bincount(choice, minlength=pool_size).tolist()
        if len(group_sizes) > pool_size:
            raise IndexError(f"route names layer {int(choice.max())}; the pool has {pool_size}")
        groups = resid[order].split(group_sizes)
        masks = key_padding_mask[order].split(group_sizes) if key_padding_mask is not None else [None] * pool_size
        if cache is None:
            outputs = [layer(group, mask) for layer, group, mask in zip(self.layers, groups, masks, strict=True)]
            return torch.cat(outputs)[torch.argsort(order)]
        # Generation: each layer serves its sequences with their own rows of this step's cache.
        # A layer with no sequence is skipped: there is no training step to keep its gradient for.
        outputs, caches = [], []
        for layer, group, mask, rows in zip(self.layers, groups, masks, order.split(group_sizes), strict=True):
            if len(rows):
                caches.append(cache.rows(rows))
                outputs.append(layer(group, mask, caches[-1]))
        cache.gather(caches, order)
        return torch.cat(outputs)[torch.argsort(order)]
