"""PyTorch's own modules loaded with our weights: the references our raw-tensor modules must equal.

Layout differences are the whole job here. `nn.MultiheadAttention` keeps one [3 * d_model,
d_model] input projection whose rows are [W_Q; W_K; W_V], each block holding the heads one
after another (row h * d_head + e is head h's output e), and it multiplies by the transpose
(`x @ W.T`). Ours keeps per-head [n_heads, d_model, d_head] tensors used as `x @ W`.
"""

import torch
from torch import Tensor, nn

from transformer.model.attention import Attention
from transformer.model.layer import TransformerLayer
from transformer.model.norm import LayerNorm


def causal_float_mask(pos: int, dtype: torch.dtype) -> Tensor:
    """PyTorch's additive mask convention: 0 where allowed, -inf above the diagonal."""
    return torch.full((pos, pos), float("-inf"), dtype=dtype).triu(1)


def _stack_heads_as_rows(W: Tensor) -> Tensor:
    """[n_heads, d_model, d_head] -> [n_heads * d_head, d_model] (out x in, heads contiguous)."""
    return W.permute(0, 2, 1).reshape(-1, W.shape[1])


@torch.no_grad()
def load_attention_into(mha: nn.MultiheadAttention, attn: Attention) -> None:
    assert attn.b_Q is not None and attn.b_K is not None and attn.b_V is not None
    assert attn.b_O is not None and mha.in_proj_bias is not None
    mha.in_proj_weight.copy_(torch.cat([_stack_heads_as_rows(W) for W in (attn.W_Q, attn.W_K, attn.W_V)]))
    mha.in_proj_bias.copy_(torch.cat([b.flatten() for b in (attn.b_Q, attn.b_K, attn.b_V)]))
    mha.out_proj.weight.copy_(attn.W_O.flatten(0, 1).T)  # [n_heads * d_head, d_model] -> out x in
    mha.out_proj.bias.copy_(attn.b_O)


def torch_attention(attn: Attention) -> nn.MultiheadAttention:
    n_heads, d_model, _ = attn.W_Q.shape
    mha = nn.MultiheadAttention(d_model, n_heads, bias=True, batch_first=True, dtype=attn.W_Q.dtype)
    load_attention_into(mha, attn)
    return mha


@torch.no_grad()
def _load_norm(reference: nn.LayerNorm, ours: LayerNorm) -> None:
    reference.weight.copy_(ours.w)
    reference.bias.copy_(ours.b)


def torch_encoder_layer(layer: TransformerLayer) -> nn.TransformerEncoderLayer:
    """A pre-norm GELU `nn.TransformerEncoderLayer` computing what `layer` should."""
    mlp, ln1, ln2 = layer.mlp, layer.ln1, layer.ln2
    assert mlp is not None and isinstance(ln1, LayerNorm) and isinstance(ln2, LayerNorm)
    assert mlp.b_in is not None and mlp.b_out is not None
    n_heads, d_model, _ = layer.attn.W_Q.shape
    reference = nn.TransformerEncoderLayer(
        d_model,
        n_heads,
        dim_feedforward=mlp.W_in.shape[1],
        dropout=0.0,
        activation="gelu",
        layer_norm_eps=ln1.eps,
        batch_first=True,
        norm_first=True,
        dtype=mlp.W_in.dtype,
    )
    load_attention_into(reference.self_attn, layer.attn)
    with torch.no_grad():
        reference.linear1.weight.copy_(mlp.W_in.T)
        reference.linear1.bias.copy_(mlp.b_in)
        reference.linear2.weight.copy_(mlp.W_out.T)
        reference.linear2.bias.copy_(mlp.b_out)
    _load_norm(reference.norm1, ln1)
    _load_norm(reference.norm2, ln2)
    return reference.eval()
