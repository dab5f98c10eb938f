"""Causal multi-head self-attention: the only block that moves information between positions.

Each head reads the residual stream at every position through W_Q, W_K and W_V, scores each
query against every earlier key (the causal mask hides later ones), turns the scores into a
probability pattern with a softmax, and writes the pattern-weighted values back through W_O.

Two paths compute the same function, chosen by `ModelConfig.kernels`:
- "readable": one einsum per projection, then explicit scores, mask, float32 softmax and
  weighted sum, to read and to probe;
- "fast": Q, K and V from one matrix multiply (the heads' weights laid side by side), then
  `torch.nn.functional.scaled_dot_product_attention`, PyTorch's fused kernel.
tests/model/test_attention.py proves the two agree, values and gradients. On the CPU the fast
path attends in float32 when q, k and v are bfloat16 or float16 (bf16 autocast, `train.dtype:
bfloat16`), as the readable path's pattern does: torch's low-precision attention backward there
is several times slower than its float32 one (bench/README.md).

`ModelConfig.causal=False` drops the causal mask (padding still applies): every query sees every
key, as an encoder over image patches needs (transformer/vision).

With a `LayerCache` (generation, see kv_cache.py) `x` holds only the new positions: their keys
and values are appended to the cache, and their queries attend over every cached key.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from transformer.model.alibi import ALiBi
from transformer.model.config import ModelConfig
from transformer.model.hooks import HookPoint
from transformer.model.kv_cache import LayerCache
from transformer.model.rotary import Rotary

# Shapes inside attention: batch, n_heads, pos (queries q, keys k), d_head.

LOW_PRECISION = (torch.bfloat16, torch.float16)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n_heads, d_model, d_head = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_model, d_head) * cfg.init_std)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_model, d_head) * cfg.init_std)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_model, d_head) * cfg.init_std)
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) * cfg.residual_out_std)
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head)) if cfg.bias else None
        self.b_K = nn.Parameter(torch.zeros(n_heads, d_head)) if cfg.bias else None
        self.b_V = nn.Parameter(torch.zeros(n_heads, d_head)) if cfg.bias else None
        self.b_O = nn.Parameter(torch.zeros(d_model)) if cfg.bias else None
        self.rotary = Rotary(cfg.rotary_dim, cfg.n_ctx, cfg.rope_base) if cfg.positional == "rotary" else None
        self.alibi = ALiBi(n_heads) if cfg.positional == "alibi" else None
        self.fast = cfg.kernels == "fast"
        self.causal = cfg.causal
        self.scale = 1.0 / math.sqrt(d_head)
        # Readable path only (hooks.py): q, k, v before rotary, [batch n_heads pos d_head].
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z = HookPoint(), HookPoint()

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
        if self.fast:
            q, k, v = self._project_qkv_at_once(x, self.W_Q, self.W_K, self.W_V, self.b_Q, self.b_K, self.b_V)
        else:
            q = self.hook_q(self.project(x, self.W_Q, self.b_Q))
            k = self.hook_k(self.project(x, self.W_K, self.b_K))
            v = self.hook_v(self.project(x, self.W_V, self.b_V))
        # new positions start at `offset` (0 without a cache)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)  # from here on, keys and values of all offset + pos positions
        if self.causal:
            allowed = self.allowed(x.shape[1], key_padding_mask, x.device, offset)
        else:  # images and diffusion (transformer/vision/): every query sees every key
            allowed = self.allowed(x.shape[1], key_padding_mask, x.device, offset, causal_mask=False)
        bias = self.alibi(x.shape[1], k.shape[2], offset) if self.alibi is not None else None
        if self.fast:
            return self._write_at_once(self._fast_mix(q, k, v, allowed, bias, key_padding_mask))
        return self.write(self.hook_z(self.mix(q, k, v, allowed, bias)))

    @staticmethod
    def _project_qkv_at_once(
        x: Float[Tensor, "batch pos d_model"],
        W_Q: Float[Tensor, "n_heads d_model d_head"],
        W_K: Float[Tensor, "n_heads d_model d_head"],
        W_V: Float[Tensor, "n_heads d_model d_head"],
        b_Q: Float[Tensor, "n_heads d_head"] | None,
        b_K: Float[Tensor, "n_heads d_head"] | None,
        b_V: Float[Tensor, "n_heads d_head"] | None,
    ) -> tuple[
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
        Float[Tensor, "batch n_heads pos d_head"],
    ]:
        """The same three projections as `project`, as a single [d_model, 3 * n_heads * d_head]
        matrix multiply: one large kernel instead of three einsums with their reshapes."""
        n_heads, d_model, d_head = W_Q.shape
        side_by_side = torch.cat([W.permute(1, 0, 2).reshape(d_model, n_heads * d_head) for W in (W_Q, W_K, W_V)], 1)
        flat = x.reshape(-1, d_model)
        if b_Q is not None and b_K is not None and b_V is not None:
            qkv = torch.addmm(torch.cat([b_Q.reshape(-1), b_K.reshape(-1), b_V.reshape(-1)]), flat, side_by_side)
        else:
            qkv = flat @ side_by_side
        qkv = qkv.view(x.shape[0], x.shape[1], 3, n_heads, d_head).permute(2, 0, 3, 1, 4)
        # unbind: one backward node that stacks the three gradients; indexing three times would
        # make three zero-filled gradients of qkv's size and add them up
        q, k, v = qkv.unbind(0)
        return q, k, v

    def _write_at_once(self, z: Float[Tensor, "batch n_heads pos d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """`einsum("bhpe,hed->bpd", z, W_O) + b_O` as one matrix multiply over all heads."""
        batch, n_heads, pos, d_head = z.shape
        flat = z.transpose(1, 2).reshape(batch * pos, n_heads * d_head)
        d_model = self.W_O.shape[-1]
        W_O = self.W_O.reshape(n_heads * d_head, d_model)
        out = torch.addmm(self.b_O, flat, W_O) if self.b_O is not None else flat @ W_O
        return out.view(batch, pos, d_model)

    # The readable path, one public method per step, so that a learner's version of each
    # (exercises/attention.py, see docs/exercises.md) can stand in for it under the same name.

    @staticmethod
    def project(
        x: Float[Tensor, "batch pos d_model"],
        W: Float[Tensor, "n_heads d_model d_head"],
        b: Float[Tensor, "n_heads d_head"] | None,
    ) -> Float[Tensor, "batch n_heads pos d_head"]:
        """Every head's queries (or keys, or values) at every position: x @ W[h] + b[h]."""
        out = torch.einsum("bpd,hde->bhpe", x, W)
        return out + b[:, None, :] if b is not None else out

    @staticmethod
    def allowed(
        pos: int,
        key_padding_mask: Bool[Tensor, "batch pos"] | None,
        device: torch.device,
        offset: int = 0,
        causal_mask: bool = True,
    ) -> Bool[Tensor, "#batch 1 q k"]:
        """Query i, at absolute position offset + i, may see keys 0 .. offset + i (all keys
        without `causal_mask`)."""
        causal = torch.ones(pos, offset + pos, dtype=torch.bool, device=device)
        if causal_mask:
            causal = causal.tril(diagonal=offset)
        if key_padding_mask is None:
            return causal[None, None]
        return causal[None, None] & key_padding_mask[:, None, None, :]

    def pattern(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
    ) -> Float[Tensor, "batch n_heads q k"]:
        """Attention probabilities, in float32 or wider whatever the parameters' dtype (float64
        stays float64). A query with no key allowed (possible with padding) gets an all-zero
        row, never NaN."""
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(dtype) @ k.to(dtype).transpose(-1, -2)) * self.scale
        if bias is not None:
            scores = scores + bias
        # A finite fill (not -inf) keeps fully masked rows finite in the forward *and* backward
        # pass; such rows are zeroed below.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probabilities = scores.softmax(dim=-1)
        # Zero the rows of queries that may see no key. Always multiplied, never checked first:
        # reading a GPU tensor's value (`bool(...)`) would make the host wait for the device.
        return probabilities * allowed.any(dim=-1, keepdim=True)

    def mix(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        v: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
    ) -> Float[Tensor, "batch n_heads q d_head"]:
        """Each query's pattern-weighted average of the values it may see."""
        pattern: Tensor = self.hook_pattern(self.pattern(q, k, allowed, bias))
        return pattern.to(v.dtype) @ v

    def write(self, z: Float[Tensor, "batch n_heads pos d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """Every head's mix back into the residual stream through its own W_O, summed over heads."""
        out = torch.einsum("bhpe,hed->bpd", z, self.W_O)
        return out + self.b_O if self.b_O is not None else out

    def _fast_mix(
        self,
        q: Float[Tensor, "batch n_heads q d_head"],
        k: Float[Tensor, "batch n_heads k d_head"],
        v: Float[Tensor, "batch n_heads k d_head"],
        allowed: Bool[Tensor, "#batch 1 q k"],
        bias: Float[Tensor, "n_heads q k"] | None,
        key_padding_mask: Bool[Tensor, "batch k"] | None,
    ) -> Float[Tensor, "batch n_heads q d_head"]:
        if q.device.type == "cpu" and q.dtype in LOW_PRECISION:
            # torch's fused attention backward on the CPU takes ~4x as long in bfloat16 as in float32
            # (bench/README.md), and the rest of the step gains from bfloat16: attend in float32
            # (as the readable path's pattern does) and hand the result back in the low precision.
            with torch.autocast("cpu", enabled=False):
                z = self._fast_mix(q.float(), k.float(), v.float(), allowed, bias, key_padding_mask)
            return z.to(q.dtype)
        if bias is None and key_padding_mask is None:
            if q.shape[2] == k.shape[2]:  # no cache: SDPA's own causal mask is ours
                return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
            if q.shape[2] == 1:  # one new query after the cached keys: it may see them all
                return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)
        if bias is not None:
            mask = mask + bias.to(q.dtype)
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return z * allowed.any(dim=-1, keepdim=True).to(z.dtype)
