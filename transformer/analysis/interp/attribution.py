"""The residual stream as a sum of writes, and direct logit attribution (DLA).

Every block adds to the residual stream, so the final stream is exactly the sum of the
embedding, the positions, each head's output (its z through its slice of W_O), each
attention block's output bias b_O, and each MLP's output. `residual_components` returns those
parts; they add up to `blocks.{last}.hook_resid_post`.

The final norm is the one non-linear step between the stream and the logits. The convention
here (TransformerLens's too): freeze its scale at the value it took on the whole stream. With
the scale fixed the norm is affine, so a logit splits exactly into one term per part plus a
constant from the norm's bias and the unembedding's bias:

    LayerNorm: logit_t = sum_c (c - mean(c)) / sigma * w @ W_U[:, t]  +  (b @ W_U[:, t] + b_U[t])
    RMSNorm:   logit_t = sum_c c / rms * w @ W_U[:, t]               +  b_U[t]

with sigma = sqrt(var(resid) + eps) (rms = sqrt(mean(resid^2) + eps)) of the whole final stream
at that position. `direct_logit_attribution` returns the terms and the constant; they sum to the
logit up to float rounding (tests/analysis/interp/test_attribution.py).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.analysis.interp.hooks import ActivationCache, blocks
from transformer.model.decoder import Decoder
from transformer.model.norm import LayerNorm


@dataclass
class Components:
    labels: list[str]  # "embed", "pos_embed", "L0H1", "L0 b_O", "L1 mlp", ...
    values: Float[Tensor, "component batch pos d_model"]


def head_outputs(model: Decoder, cache: ActivationCache, layer: int) -> Float[Tensor, "batch n_heads pos d_model"]:
    """What each head of `layer` wrote into the stream: z_h @ W_O[h] (without b_O, which
    belongs to no head)."""
    z = cache[f"blocks.{layer}.attn.hook_z"]
    return torch.einsum("bhpe,hed->bhpd", z, blocks(model)[layer].attn.W_O.detach().to(z.dtype))


def residual_components(model: Decoder, cache: ActivationCache) -> Components:
    """The parts that add up to the final residual stream (before the final norm)."""
    embed = cache["hook_embed"]
    labels, parts = ["embed"], [embed]
    if "hook_pos_embed" in cache:
        labels.append("pos_embed")
        parts.append(cache["hook_pos_embed"].expand_as(embed))
    for index, layer in enumerate(blocks(model)):
        outputs = head_outputs(model, cache, index)
        for head in range(outputs.shape[1]):
            labels.append(f"L{index}H{head}")
            parts.append(outputs[:, head])
        if layer.attn.b_O is not None:
            labels.append(f"L{index} b_O")
            parts.append(layer.attn.b_O.detach().to(embed.dtype).expand_as(embed))
        if f"blocks.{index}.hook_mlp_out" in cache:
            labels.append(f"L{index} mlp")
            parts.append(cache[f"blocks.{index}.hook_mlp_out"])
    return Components(labels, torch.stack(parts))


@dataclass
class Attribution:
    labels: list[str]
    terms: Float[Tensor, "component batch pos"]  # each part's direct contribution to the logit
    constant: Float[Tensor, "batch pos"]  # the final norm's bias and b_U: no part owns them

    def total(self) -> Float[Tensor, "batch pos"]:
        return self.terms.sum(0) + self.constant


def direct_logit_attribution(model: Decoder, cache: ActivationCache, targets: Int[Tensor, "batch pos"]) -> Attribution:
    """Each part's share of the logit of `targets[b, p]` at position p, the final norm's scale
    frozen at its value on the whole stream (module docstring)."""
    components = residual_components(model, cache)
    resid = components.values.sum(0)
    norm = model.ln_final
    W_U = model.unembed.weight.detach().to(resid.dtype)
    directions = W_U.T[targets] * norm.w.detach().to(resid.dtype)  # [batch pos d_model]
    parts = components.values
    if isinstance(norm, LayerNorm):
        centred = resid - resid.mean(-1, keepdim=True)
        scale = torch.sqrt(centred.pow(2).mean(-1) + norm.eps)
        parts = parts - parts.mean(-1, keepdim=True)
        constant = (W_U.T[targets] * norm.b.detach().to(resid.dtype)).sum(-1)
    else:
        scale = torch.sqrt(resid.pow(2).mean(-1) + norm.eps)
        constant = torch.zeros_like(scale)
    terms = (parts * directions).sum(-1) / scale
    constant = constant + model.unembed.b_U.detach().to(resid.dtype)[targets]
    return Attribution(components.labels, terms, constant)
