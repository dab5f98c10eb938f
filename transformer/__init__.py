"""A transformer, and a routed decoder, built from raw tensors.

Read it the way data flows, one subpackage per stage:
`model` (tokens -> Embed (+ positions) -> layers -> final norm -> Unembed -> logits),
`routing` (a router picks each step's layer from a pool), `data` (text -> token ids),
`training`, `inference` (sampling, generation, loading a trained run), `analysis`, and
`commands` (the `transformer` command line).

The names most users need are importable from here: `from transformer import Decoder, ModelConfig`.
They load on first use, so `transformer --help` does not wait for torch.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any

if os.environ.get("TRANSFORMER_TYPECHECK", "") == "1":
    # Workers spawned by torchrun/mp.spawn do not inherit pytest's import hook; install it
    # here, before any checked module is imported (see transformer/typecheck.py).
    from jaxtyping import install_import_hook

    install_import_hook("transformer", "typeguard.typechecked")

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "ModelConfig": "transformer.model.config",
    "Decoder": "transformer.model.decoder",
    "DecoderOutput": "transformer.model.decoder",
    "KVCache": "transformer.model.kv_cache",
    "RoutingConfig": "transformer.routing.config",
    "RoutedDecoder": "transformer.routing.decoder",
    "RoutingInfo": "transformer.routing.decoder",
    "TextTokenizer": "transformer.data.tokenizer",
    "train_tokenizer": "transformer.data.tokenizer",
    "RunConfig": "transformer.training.config",
    "load_run_config": "transformer.training.config",
    "build_model": "transformer.training.config",
    "train": "transformer.training.trainer",
    "generate": "transformer.inference.generation",
    "load_trained": "transformer.inference.loading",
    "UserError": "transformer.errors",
}
__all__ = [
    "Decoder",
    "DecoderOutput",
    "KVCache",
    "ModelConfig",
    "RoutedDecoder",
    "RoutingConfig",
    "RoutingInfo",
    "RunConfig",
    "TextTokenizer",
    "UserError",
    "build_model",
    "generate",
    "load_run_config",
    "load_trained",
    "train",
    "train_tokenizer",
]

if TYPE_CHECKING:
    from transformer.data.tokenizer import TextTokenizer, train_tokenizer
    from transformer.errors import UserError
    from transformer.inference.generation import generate
    from transformer.inference.loading import load_trained
    from transformer.model.config import ModelConfig
    from transformer.model.decoder import Decoder, DecoderOutput
    from transformer.model.kv_cache import KVCache
    from transformer.routing.config import RoutingConfig
    from transformer.routing.decoder import RoutedDecoder, RoutingInfo
    from transformer.training.config import RunConfig, build_model, load_run_config
    from transformer.training.trainer import train


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'transformer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
