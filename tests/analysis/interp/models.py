"""Small decoders with every parameter moved off its init, so no part of them is trivially zero."""

import torch

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder


def scrambled_decoder(**overrides: object) -> Decoder:
    values: dict[str, object] = dict(d_vocab=23, d_model=16, n_heads=2, n_layers=2, n_ctx=10, kernels="fast")
    values.update(overrides)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**values)).double().eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(1.0 if name.endswith(".w") else 0.0, 0.3)
    return model


def random_tokens(batch: int = 3, pos: int = 10, d_vocab: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))
