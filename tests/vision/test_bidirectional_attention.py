"""`ModelConfig(causal=False)`: attention without the causal mask equals `nn.MultiheadAttention`
given no mask, on both kernel paths, and learns what a causal layer cannot: to read a later
position. A decoder refuses the flag (it would see the tokens it predicts)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.attention_tasks import shape_checks_paused, train
from tests.helpers.torch_references import torch_attention
from transformer.model.attention import Attention
from transformer.model.config import ConfigError, ModelConfig
from transformer.model.decoder import Decoder

D_MODEL, N_HEADS, POS = 16, 4, 10


def attention(kernels: str, causal: bool = False, dtype: torch.dtype = torch.float64) -> Attention:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=D_MODEL, n_heads=N_HEADS, n_layers=1, n_ctx=16, positional="none", kernels=kernels)
    module = Attention(ModelConfig(**{**cfg.to_dict(), "causal": causal})).to(dtype)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.25)  # sharp patterns, so a stray mask cannot hide
    return module


def inputs(dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(3, POS, D_MODEL, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_equals_torch_multihead_attention_without_a_mask(kernels: str) -> None:
    ours = attention(kernels)
    x = inputs()
    expected, _ = torch_attention(ours)(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-10, rtol=0)


def test_the_first_position_sees_the_last_only_without_the_mask() -> None:
    x = inputs()
    changed = x.clone()
    changed[:, -1] += 1.0
    for kernels in ("readable", "fast"):
        bidirectional, causal = attention(kernels), attention(kernels, causal=True)
        assert not torch.allclose(bidirectional(x)[:, 0], bidirectional(changed)[:, 0])
        torch.testing.assert_close(causal(x)[:, 0], causal(changed)[:, 0], atol=0, rtol=0)


def test_padding_still_hides_keys_without_the_causal_mask() -> None:
    x = inputs()
    mask = torch.ones(3, POS, dtype=torch.bool)
    mask[:, -3:] = False
    changed = x.clone()
    changed[:, -3:] = 5.0
    for kernels in ("readable", "fast"):
        ours = attention(kernels)
        torch.testing.assert_close(ours(x, mask)[:, :-3], ours(changed, mask)[:, :-3], atol=1e-12, rtol=0)


def test_a_decoder_refuses_to_see_its_targets() -> None:
    with pytest.raises(ConfigError, match="causal: true"):
        Decoder(ModelConfig(d_vocab=5, d_model=8, n_heads=2, n_layers=1, n_ctx=4, causal=False))


def copy_last_to_first_loss(causal: bool, d_vocab: int, seq: int) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_heads=2, n_layers=1, n_ctx=seq, positional="none", causal=causal)
    model = torch.nn.ModuleDict(
        {"embed": torch.nn.Embedding(d_vocab, 32), "attn": Attention(cfg), "head": torch.nn.Linear(32, d_vocab)}
    )
    model.register_parameter("positions", torch.nn.Parameter(torch.randn(seq, 32) * 0.5))
    generator = torch.Generator().manual_seed(1)

    def loss_of_step(step: int) -> Tensor:
        tokens = torch.randint(0, d_vocab, (64, seq), generator=generator)
        x = model["embed"](tokens) + model.positions
        first = (x + model["attn"](x))[:, 0]
        return F.cross_entropy(model["head"](first), tokens[:, -1])

    with shape_checks_paused():
        return train(model, loss_of_step, steps=300, lr=1e-2)


def test_learns_to_copy_the_last_token_to_the_first_position_which_causal_cannot() -> None:
    """Target at position 0: the token at the last position. Causal attention at position 0 sees
    only itself, which is independent of the target: its best loss is ln(d_vocab). Without the mask
    one head can look there."""
    chance = math.log(6)
    assert copy_last_to_first_loss(causal=True, d_vocab=6, seq=5) > 0.9 * chance
    assert copy_last_to_first_loss(causal=False, d_vocab=6, seq=5) < 0.2 * chance
