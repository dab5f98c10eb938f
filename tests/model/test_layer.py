"""A TransformerLayer is PyTorch's pre-norm `nn.TransformerEncoderLayer` under a causal mask, and
its blocks only ever *add* to the residual stream."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.torch_references import causal_float_mask, torch_attention, torch_encoder_layer
from transformer.model.config import ModelConfig
from transformer.model.layer import TransformerLayer
from transformer.model.norm import LayerNorm

D_MODEL, N_HEADS, D_MLP, POS = 16, 4, 48, 9


def layer(**overrides: object) -> TransformerLayer:
    """Float64, with every parameter (norm gains and biases included) random, so a swapped
    norm, a missing bias or a mis-stacked head shows."""
    values: dict[str, object] = dict(d_model=D_MODEL, n_heads=N_HEADS, d_mlp=D_MLP, n_layers=2, n_ctx=16)
    values.update(overrides)
    torch.manual_seed(0)
    module = TransformerLayer(ModelConfig(**values)).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.normal_(1.0 if name.endswith(".w") else 0.0, 0.3)  # norm gains near 1
    return module


def residual_stream(batch: int = 3) -> Tensor:
    return torch.randn(batch, POS, D_MODEL, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_equals_torch_pre_norm_encoder_layer_with_causal_mask() -> None:
    ours = layer()
    reference = torch_encoder_layer(ours)
    x = residual_stream()
    mask = causal_float_mask(POS, torch.float64)
    expected = reference(x, src_mask=mask, is_causal=True)
    torch.testing.assert_close(ours(x), expected, atol=1e-10, rtol=0)


def test_attention_only_layer_is_residual_plus_attention_of_normed_input() -> None:
    ours = layer(attn_only=True)
    assert ours.mlp is None and ours.ln2 is None and isinstance(ours.ln1, LayerNorm)
    x = residual_stream()
    normed = F.layer_norm(x, (D_MODEL,), ours.ln1.w, ours.ln1.b, eps=ours.ln1.eps)
    mixed, _ = torch_attention(ours.attn)(
        normed, normed, normed, attn_mask=causal_float_mask(POS, torch.float64), need_weights=False
    )
    torch.testing.assert_close(ours(x), x + mixed, atol=1e-10, rtol=0)


@pytest.mark.parametrize("attn_only", [False, True])
def test_layer_that_writes_nothing_is_the_identity(attn_only: bool) -> None:
    """Zero the projections into the residual stream (W_O, W_out and their biases): whatever
    the norms and the other weights compute, the stream passes through bit for bit."""
    ours = layer(attn_only=attn_only)
    with torch.no_grad():
        ours.attn.W_O.zero_()
        assert ours.attn.b_O is not None
        ours.attn.b_O.zero_()
        if ours.mlp is not None:
            assert ours.mlp.b_out is not None
            ours.mlp.W_out.zero_()
            ours.mlp.b_out.zero_()
    x = residual_stream()
    assert torch.equal(ours(x), x)
    # ...and each of those projections alone is enough to change it
    with torch.no_grad():
        ours.attn.b_O.fill_(0.5)
    assert not torch.allclose(ours(x), x)


def test_dropout_is_only_active_in_training() -> None:
    ours = layer(dropout=0.5)
    x = residual_stream()
    ours.eval()
    torch.testing.assert_close(ours(x), ours(x), atol=0, rtol=0)
    ours.train()
    torch.manual_seed(5)
    first = ours(x)
    assert not torch.allclose(first, ours(x))
