"""Causal multi-head self-attention: the only block that moves information between positions.

Each head reads the residual stream at every position through W_Q, W_K and W_V, scores each
query against every earlier key (the causal mask hides later ones), turns the scores into a
probability pattern with a softmax, and writes the pattern-weighted values back through W_O.

Two paths compute the same function, chosen by `ModelConfig.kernels`:
- "readable": one einsum per projection, then explicit scores, mask, float32 softmax and
  weighted sum, to read and to probe;
- "fast": Q, K and V from one matrix multiply (the heads' weights laid side by side), then
  `torch.nn.functional.scaled_dot_product_attention`, PyTorch's fused kernel.
tests/model/test_attention.py proves the two agree, values and gradients.

W_Q, W_K and W_V are stored as one parameter, `W_QKV` [d_model, 3, n_heads, d_head] (biases:
`b_QKV` [3, n_heads, d_head]), in the layout the fast path multiplies by, so a step neither
concatenates the three into one matrix nor backpropagates through that concatenation (and AdamW
updates one tensor, not three). `attn.W_Q` etc. stay readable as views of it, with the
Framework's [n_heads, d_model, d_head] shape, writable in place; state dicts and checkpoints
keep the three names (see `_save_to_state_dict`), so old checkpoints load and new ones read
the same.

With a `LayerCache` (generation, see kv_cache.py) `x` holds only the new positions: their keys
and values are appended to the cache, and their queries attend over every cached key.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from transformer.model.alibi import ALiBi
from transformer.model.config import ModelConfig
from transformer.model.kv_cache import LayerCache
from transformer.model.rotary import Rotary

# Shapes inside attention: batch, n_heads, pos (queries q, keys k), d_head.

FUSED_WEIGHTS, FUSED_BIASES = ("W_Q", "W_K", "W_V"), ("b_Q", "b_K", "b_V")


def _weights_side_by_side(parts: list[Tensor]) -> Tensor:
    """[n_heads, d_model, d_head] x 3 -> W_QKV's [d_model, 3, n_heads, d_head]."""
    return torch.stack(parts).permute(2, 0, 1, 3).contiguous()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        # W_Q, W_K, W_V drawn one after the other (as when each was its own parameter, so a seed
        # gives the same weights), then stored side by side: see `W_QKV` in the module docstring.
        w_q, w_k, w_v = (torch.randn(n_heads, d_model, d_head) * cfg.init_std for _ in range(3))
        self.W_QKV = nn.Parameter(torch.stack([w_q, w_k, w_v]).permute(2, 0, 1, 3).contiguous())
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * cfg.residual_out_std)
        self.b_QKV = nn.Parameter(torch.zeros(3, n_heads, d_head)) if cfg.bias else None
        self.b_O = nn.Parameter(torch.zeros(d_model)) if cfg.bias else None
        self.rotary = Rotary(cfg.rotary_dim, cfg.n_ctx, cfg.rope_base) if cfg.positional == "rotary" else None
        self.alibi = ALiBi(n_heads) if cfg.positional == "alibi" else None
        self.fast = cfg.kernels == "fast"
        self.scale = 1.0 / math.sqrt(d_head)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: LayerCache | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """`key_padding_mask`: True where a key may be attended to (False marks padding).
        `cache`: keys and values of earlier positions; `x` is then the positions after them."""
        if cache is not None and key_padding_mask is not None:
            raise ValueError("a KV cache serves generation, which has no padding: pass one or the other")
        offset = cache.length if cache is not None else 0
        q, k, v = self.project_qkv(x)
        # new positions start at `offset` (0 without a cache)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)  # from here on, keys and values of all offset + pos positions
        allowed = self._allowed(x.shape[1], key_padding_mask, x.device, offset)
        bias = self.alibi(x.shape[1], k.shape[2], offset) if self.alibi is not None else None
        if self.fast:
            return self._write_at_once(self._fast_mix(q, k, v, allowed, bias, key_padding_mask))
        z = self._readable_mix(q, k, v, allowed, bias, every_query_has_a_key=key_padding_mask is None)
        out = torch.einsum("bhpe,hed->bpd", z, self.W_O)
        return out + self.b_O if self.b_O is not None else out

    # --- the named views of the fused parameters -------------------------------------------

    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 0].transpose(0, 1)

    @property
    def W_K(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 1].transpose(0, 1)

    @property
    def W_V(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 2].transpose(0, 1)

    @property
    def b_Q(self) -> Float[Tensor, "n_heads d_head"] | None:
        return self.b_QKV[0] if self.b_QKV is not None else None

    @property
    def b_K(self) -> Float[Tensor, "n_heads d_head"] | None:
        return self.b_QKV[1] if self.b_QKV is not None else None

    @property
    def b_V(self) -> Float[Tensor, "n_heads d_head"] | None:
        return self.b_QKV[2] if self.b_QKV is not None else None

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Saved under the Framework's names, W_Q, W_K, W_V (b_Q, b_K, b_V), each its own tensor:
        checkpoints read the same before and after the parameters were fused. Copies, not views:
        safetensors refuses tensors that share storage."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for fused, names in ((prefix + "W_QKV", FUSED_WEIGHTS), (prefix + "b_QKV", FUSED_BIASES)):
            if fused in destination:
                del destination[fused]
                for name in names:
                    view = getattr(self, name)
                    destination[prefix + name] = (
                        view if keep_vars else view.detach().clone(memory_format=torch.contiguous_format)
                    )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accepts W_Q, W_K, W_V (b_Q, b_K, b_V) as `_save_to_state_dict` writes them (and as
        every checkpoint from before the fusion holds them), and stacks them into W_QKV (b_QKV)."""
        for fused, names, to_fused in (
            (prefix + "W_QKV", FUSED_WEIGHTS, _weights_side_by_side),
            (prefix + "b_QKV", FUSED_BIASES, torch.stack),
        ):
            keys = [prefix + name for name in names]
            if fused not in state_dict and all(key in state_dict for key in keys):
                parts = [state_dict.pop(key) for key in keys]
                if all(part.shape == parts[0].shape for part in parts):
                    state_dict[fused] = to_fused(parts)
                else:
                    error_msgs.append(f"{', '.join(keys)} must have one shape; got {[tuple(p.shape) for p in parts]}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # --- projections ---------------------------------------------------------------------

    def project_qkv(
        self, x: Float[Tensor, "batch pos d_model"]
    ) -> tuple[
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
    ]:
        """Queries, keys and values of every head: readable, one einsum per named matrix; fast,
        one matrix multiply against W_QKV as it is stored (no copy, no concatenation)."""
        if not self.fast:
            return (
                self._project(x, self.W_Q, self.b_Q),
                self._project(x, self.W_K, self.b_K),
                self._project(x, self.W_V, self.b_V),
            )
        return self._project_fused(x, self.W_QKV, self.b_QKV)

    @staticmethod
    def _project_fused(
        x: Float[Tensor, "batch pos d_model"],
        W_QKV: Float[Tensor, "d_model 3 n_heads d_head"],
        b_QKV: Float[Tensor, "3 n_heads d_head"] | None,
    ) -> tuple[
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
    ]:
        d_model, _, n_heads, d_head = W_QKV.shape
        flat, W = x.reshape(-1, d_model), W_QKV.view(d_model, 3 * n_heads * d_head)
        qkv = torch.addmm(b_QKV.view(-1), flat, W) if b_QKV is not None else flat @ W
        qkv = qkv.view(x.shape[0], x.shape[1], 3, n_heads, d_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # one backward node (a stack); indexing 3 times would zero-fill 3 times
        return q, k, v

    def _write_at_once(self, z: Float[Tensor, "batch n_heads pos d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """`einsum("bhpe,hed->bpd", z, W_O) + b_O` as one matrix multiply over all heads."""
        batch, n_heads, pos, d_head = z.shape
        flat = z.transpose(1, 2).reshape(batch * pos, n_heads * d_head)
        d_model = self.W_O.shape[-1]
        W_O = self.W_O.reshape(n_heads * d_head, d_model)
        out = torch.addmm(self.b_O, flat, W_O) if self.b_O is not None else flat @ W_O
        return out.view(batch, pos, d_model)

    @staticmethod
    def _project(
        x: Float[Tensor, "batch pos d_model"],
        W: Float[Tensor, "n_heads d_model d_head"],
        b: Float[Tensor, "n_heads d_head"] | None,
    ) -> Float[Tensor, "batch n_heads pos d_head"]:
        out = torch.einsum("bpd,hde->bhpe", x, W)
        return out + b[:, None, :] if b is not None else out

    @staticmethod
    def _allowed(
        pos: int, key_padding_mask: Bool[Tensor, "batch pos"] | None, device: torch.device, offset: int = 0
    ) -> Bool[Tensor, "#batch 1 q k"]:
        """Query i, at absolute position offset + i, may see keys 0 .. offset + i."""
        causal = torch.ones(pos, offset + pos, dtype=torch.bool, device=device).tril(diagonal=offset)
        if key_padding_mask is None:
            return causal[None, None]
        return causal[None, None] & key_padding_mask[:, None, None, :]

    def pattern(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
        every_query_has_a_key: bool = False,
    ) -> Float[Tensor, "batch n_heads q k"]:
        """Attention probabilities, in float32 or wider whatever the parameters' dtype (float64
        stays float64). A query with no key allowed (possible with padding) gets an all-zero
        row, never NaN. `every_query_has_a_key`: the caller knows no row is fully masked (no
        padding: the causal diagonal is always allowed), so the zeroing is skipped; it is a
        flag, not a check of `allowed`, because reading a GPU tensor's value stalls the host."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * self.scale
        if bias is not None:
            scores = scores + bias
        # A finite fill (not -inf) keeps fully masked rows finite in the forward *and* backward
        # pass; such rows are zeroed below.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probabilities = scores.softmax(dim=-1)
        if every_query_has_a_key:
            return probabilities
        return probabilities * allowed.any(dim=-1, keepdim=True)

    def _readable_mix(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        v: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
        every_query_has_a_key: bool = False,
    ) -> Float[Tensor, "batch n_heads q d_head"]:
        return self.pattern(q, k, allowed, bias, every_query_has_a_key).to(v.dtype) @ v

    def _fast_mix(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        v: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
        key_padding_mask: Bool[Tensor, "batch k"] | None,
    ) -> Float[Tensor, "batch n_heads q d_head"]:
        if bias is None and key_padding_mask is None:
            if q.shape[2] == k.shape[2]:  # no cache: SDPA's own causal mask is ours
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            if q.shape[2] == 1:  # one new query after the cached keys: it may see them all
                return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)
        if bias is not None:
            mask = mask + bias.to(q.dtype)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return z * allowed.any(dim=-1, keepdim=True).to(z.dtype)
