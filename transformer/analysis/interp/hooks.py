"""Named activations of a plain `Decoder`, under TransformerLens's names, to read or replace.

Names follow TransformerLens (`hook_embed`, `blocks.0.hook_resid_pre`,
`blocks.0.attn.hook_pattern`, `blocks.0.hook_resid_post`, `ln_final.hook_normalized`, ...) so a
learner can move between this code and its tutorials. Where the activation is a module's input or
output (the residual stream, a block's output, a norm's output) a PyTorch forward hook on that
module provides it, and the model's code knows nothing about it; inside attention and the MLP,
identity `HookPoint`s mark the rest (transformer/model/hooks.py).

One difference from TransformerLens: q, k, v and z keep this package's layout
[batch n_heads pos d_head] (TransformerLens has [batch pos n_heads d_head]); the pattern is
[batch n_heads query key] in both.

The hooks inside attention and the MLP fire on the readable path only, so `hooked` and
`run_with_cache` switch the model to it for their duration (`readable_kernels`) and back after:
the fast path that trains never pays for analysis.
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from transformer.errors import UserError
from transformer.model.decoder import Decoder
from transformer.model.layer import TransformerLayer

# A hook gets the activation and its name; it returns a replacement, or None to leave it as it was.
HookFn = Callable[[Tensor, str], Tensor | None]


class HookError(UserError, KeyError):
    """A hook name the model does not have, or a hook that cannot do what it was asked."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class HookSite:
    """Where a named activation lives: a module's output, or its first input (`input=True`).
    `writable`: whether a replacement changes what the model computes after it."""

    module: nn.Module
    input: bool = False
    writable: bool = True


def blocks(model: Decoder) -> list[TransformerLayer]:
    """The layers of `model`, typed (an `nn.ModuleList` holds plain modules)."""
    return [cast(TransformerLayer, layer) for layer in model.layers]


def hook_sites(model: Decoder) -> dict[str, HookSite]:
    """Every hook name of `model`, in the order the forward pass reaches them."""
    sites: dict[str, HookSite] = {"hook_embed": HookSite(model.embed)}
    if model.pos_embed is not None:
        sites["hook_pos_embed"] = HookSite(model.pos_embed)
    for index, layer in enumerate(blocks(model)):
        block = f"blocks.{index}"
        sites[f"{block}.hook_resid_pre"] = HookSite(layer, input=True)
        sites[f"{block}.ln1.hook_normalized"] = HookSite(layer.ln1)
        for name in ("hook_q", "hook_k", "hook_v", "hook_pattern", "hook_z"):
            sites[f"{block}.attn.{name}"] = HookSite(getattr(layer.attn, name))
        sites[f"{block}.hook_attn_out"] = HookSite(layer.attn)
        if layer.mlp is not None and layer.ln2 is not None:
            # ln2 reads resid_mid but the block adds the MLP's output to its own copy, so a
            # replacement here would reach the MLP alone: read-only.
            sites[f"{block}.hook_resid_mid"] = HookSite(layer.ln2, input=True, writable=False)
            sites[f"{block}.ln2.hook_normalized"] = HookSite(layer.ln2)
            names = ("hook_pre", "hook_pre_linear", "hook_post") if layer.mlp.gated else ("hook_pre", "hook_post")
            for name in names:
                sites[f"{block}.mlp.{name}"] = HookSite(getattr(layer.mlp, name))
            sites[f"{block}.hook_mlp_out"] = HookSite(layer.mlp)
        sites[f"{block}.hook_resid_post"] = HookSite(layer)
    sites["ln_final.hook_normalized"] = HookSite(model.ln_final)
    return sites


@contextlib.contextmanager
def readable_kernels(model: nn.Module) -> Iterator[None]:
    """Inside the block every module of `model` with a fast path takes its readable one."""
    switched = [module for module in model.modules() if getattr(module, "fast", False) is True]
    for module in switched:
        module.fast = False  # type: ignore[assignment]
    try:
        yield
    finally:
        for module in switched:
            module.fast = True  # type: ignore[assignment]


def _attach(name: str, site: HookSite, fn: HookFn) -> RemovableHandle:
    def replace(value: Tensor) -> Tensor | None:
        new = fn(value, name)
        if new is not None and not site.writable:
            raise HookError(f"{name} is read-only (the block keeps its own copy): hook the block's output instead")
        if new is not None and new.shape != value.shape:
            raise HookError(f"a hook on {name} returned shape {tuple(new.shape)}, expected {tuple(value.shape)}")
        return new

    if site.input:

        def before(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            new = replace(args[0])
            return None if new is None else (new, *args[1:])

        return site.module.register_forward_pre_hook(before)

    def after(_: nn.Module, __: tuple[Any, ...], output: Tensor) -> Tensor | None:
        return replace(output)

    return site.module.register_forward_hook(after)


@contextlib.contextmanager
def hooked(model: Decoder, hooks: Mapping[str, HookFn] | list[tuple[str, HookFn]]) -> Iterator[None]:
    """Inside the block, each (name, fn) hook sees its activation on every forward of `model`
    (on the readable path) and may replace it. Unknown names fail before anything runs."""
    sites = hook_sites(model)
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    for name, _ in pairs:
        if name not in sites:
            raise HookError(f"no hook named {name!r}: the model has {', '.join(sites)}")
    handles = [_attach(name, sites[name], fn) for name, fn in pairs]
    try:
        with readable_kernels(model):
            yield
    finally:
        for handle in handles:
            handle.remove()


class ActivationCache(dict[str, Tensor]):
    """Hook name -> the activation recorded there (detached), in forward order."""

    def heads(self, layer: int) -> int:
        return int(self[f"blocks.{layer}.attn.hook_pattern"].shape[1])


def run_with_cache(
    model: Decoder,
    tokens: Int[Tensor, "batch pos"],
    names: Callable[[str], bool] | None = None,
    hooks: Mapping[str, HookFn] | None = None,
) -> tuple[Float[Tensor, "batch pos d_vocab"], ActivationCache]:
    """The logits of `tokens` and every activation (those `names` accepts), recorded on the
    readable path. `hooks` run first, so the cache holds what they replaced activations with."""
    cache = ActivationCache()

    def record(value: Tensor, name: str) -> None:
        cache[name] = value.detach()

    wanted = [name for name in hook_sites(model) if names is None or names(name)]
    pairs: list[tuple[str, HookFn]] = list((hooks or {}).items()) + [(name, record) for name in wanted]
    with hooked(model, pairs), torch.no_grad():
        logits = model(tokens).logits
    return logits, cache
