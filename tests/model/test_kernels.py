"""`ModelConfig.kernels` is the one switch between the readable forms and PyTorch's fused
kernels: "readable" must call none of the fused functions anywhere in a decoder (router
included), "fast" must call each one its blocks have (attention, the config's norm, GELU)."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder

FUSED = ("scaled_dot_product_attention", "layer_norm", "rms_norm", "gelu")


def fused_calls(monkeypatch: pytest.MonkeyPatch, build: Callable[[], torch.nn.Module]) -> set[str]:
    """The fused functions a model calls on one forward. Spies go in before the model is
    built: a block may keep a reference to its function (the MLP keeps its activation)."""
    called: set[str] = set()
    for name in FUSED:
        original = getattr(F, name)

        def spy(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            called.add(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(F, name, spy)
    model = build()
    model(torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(0)))
    return called


def config(kernels: str, norm: str) -> ModelConfig:
    return ModelConfig(d_vocab=13, d_model=16, n_heads=2, n_layers=2, n_ctx=8, norm=norm, kernels=kernels)


@pytest.mark.parametrize("routed", [False, True])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_kernels_switch_every_block_between_readable_and_fused(
    monkeypatch: pytest.MonkeyPatch, norm: str, routed: bool
) -> None:
    def build(kernels: str) -> Callable[[], torch.nn.Module]:
        if routed:
            return lambda: RoutedDecoder(config(kernels, norm), RoutingConfig(pool_size=3, route_prefix_len=4))
        return lambda: Decoder(config(kernels, norm))

    assert fused_calls(monkeypatch, build("readable")) == set()
    fused_norm = "layer_norm" if norm == "layernorm" else "rms_norm"
    assert fused_calls(monkeypatch, build("fast")) == {"scaled_dot_product_attention", fused_norm, "gelu"}
