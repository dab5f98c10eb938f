"""Small seeded routed and plain decoders that share weights, for routing tests."""

import torch

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder


def tiny_config(**overrides: object) -> ModelConfig:
    values: dict[str, object] = dict(d_vocab=23, d_model=16, n_heads=2, n_layers=3, n_ctx=12)
    values.update(overrides)
    return ModelConfig(**values)  # type: ignore[arg-type]


def routed_copy_of(plain: Decoder, routing: RoutingConfig) -> RoutedDecoder:
    """A routed decoder whose embedding, norm, unembedding and pool layers are the plain one's."""
    routed = RoutedDecoder(plain.cfg, routing)
    shared = {k: v for k, v in plain.state_dict().items() if not k.startswith("layers.")}
    missing, unexpected = routed.load_state_dict(shared, strict=False)
    assert not unexpected and all(k.startswith(("pool.", "router.")) for k in missing)
    for index, layer in enumerate(plain.layers):
        routed.pool.layers[index].load_state_dict(layer.state_dict())
    return routed


def identity_route(batch: int, steps: int) -> torch.Tensor:
    return torch.arange(steps).expand(batch, steps).clone()
