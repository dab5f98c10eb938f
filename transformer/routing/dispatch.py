"""One routing step at token granularity: each token through the layer it chose, in one pass.

At step k every token has chosen an entry of the pool, and the capacity has said which tokens a
layer actually takes (`admitted`; the others, and tokens that chose to skip, keep their
residual). A layer is a `TransformerLayer`, and everything in it but attention works on each
position alone, so the step is:

1. Sorted dispatch. Order the admitted tokens by chosen layer (a stable sort: within a layer,
   by sequence and position), split them into one group per layer, and run each layer's ln1
   and W_Q/W_K/W_V on its own group: one matrix multiply per layer, rows summing to the
   admitted tokens, not N dense passes.
2. Attention. Put every token's query, key and value back at its (sequence, position) place,
   rotate queries and keys at their original positions (rotary; ALiBi distances and absolute
   positions are by position too), and run one causal attention whose mask also says which
   keys each query may see. `token_attention` chooses the rule:
   - "all": the keys of every token processed at this step, each projected by its own layer
     (a query of layer i reads what layer j wrote for a token that went to j);
   - "co_routed": only tokens that chose the same layer (Mixture-of-Depths and
     Mixture-of-Recursions), so a layer sees a subsequence of its own tokens.
   Tokens not processed at this step are never keys.
3. Sorted dispatch again: each group through its own layer's W_O, residual add, ln2 and MLP.
   Rows are put back by `index_copy`, each written once: no scatter-add, deterministic.

Every call to a layer's parts is the layer's own code (its readable or fast path, whichever
`ModelConfig.kernels` chose), so when every token goes to the same layer the step computes
exactly what `TransformerLayer.forward` computes (tests/routing/test_token_decoder.py checks it
bitwise). Layers nobody chose are not run at all; the decoder keeps their parameters in the
graph at zero cost (see `TokenRoutedDecoder.forward`).

With a `TokenStepCache` (generation) the new positions' keys, values, validity and choices are
appended to the step's cache and the new queries attend over all of them.

There is one host sync per step: the group sizes, which `split` needs on the host.

With `ModelConfig.kernels == "fast"`, steps 1 and 3 of a step with several groups run as one
padded batch over the layers instead of a call per layer (transformer/routing/stacked.py: at
small batches the calls, not the arithmetic, cost most); the code above stays what the readable
kernels run, and the twin tests hold the two equal.
"""

from typing import cast

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.model.attention import Attention
from transformer.model.config import ModelConfig
from transformer.model.layer import TransformerLayer
from transformer.routing import stacked
from transformer.routing.stacked import Batched, StackedWeights
from transformer.routing.tally import tally
from transformer.routing.token_cache import TokenStepCache


class TokenPool(nn.Module):
    def __init__(self, cfg: ModelConfig, pool_size: int, co_routed: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(pool_size))
        self.co_routed = co_routed
        self.batched = cfg.kernels == "fast"  # several groups: one batched pass (`Batched`)

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        choice: Int[Tensor, "batch pos"],
        admitted: Bool[Tensor, "batch pos"],
        offset: int = 0,
        cache: TokenStepCache | None = None,
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        weights: StackedWeights | None = None,
    ) -> tuple[Float[Tensor, "batch pos d_model"], list[int]]:
        """The residual after the step, and how many tokens each layer processed. `weights`:
        the batched dispatch's stacked weights, shared by the steps of one forward
        (`new_weights`), so that they are stacked once, not per step."""
        if cache is not None and key_padding_mask is not None:
            raise ValueError("a KV cache serves generation, which has no padding: pass one or the other")
        batch, pos, d_model = resid.shape
        layers = [cast(TransformerLayer, layer) for layer in self.layers]
        order, sizes, counts = sorted_dispatch(choice, admitted, len(layers))
        flat = resid.reshape(batch * pos, d_model)
        first = layers[0].attn
        n_heads, _, d_head = first.W_Q.shape
        used = [index for index, size in enumerate(sizes) if size]
        batched = None
        if self.batched and len(used) > 1 and len(layers) * max(sizes) <= stacked.PADDING_LIMIT * len(order):
            batched = Batched(weights or self.new_weights(), sizes, counts, order, flat)

        # 1. queries, keys and values, each token by its own layer (a layer with no token does not run)
        if batched is not None:
            qkv = batched.project_qkv().view(batch * pos, 3, n_heads, d_head)
        else:
            groups = flat[order].split(sizes)
            busy = [(layer, group) for layer, group, size in zip(layers, groups, sizes, strict=True) if size]
            rows = [project_qkv(layer.attn, layer.ln1(group[None])) for layer, group in busy]
            projected = torch.cat(rows) if rows else flat.new_zeros(0, 3, n_heads, d_head)
            qkv = flat.new_zeros(batch * pos, 3, n_heads, d_head).index_copy(0, order, projected)
        q, k, v = qkv.view(batch, pos, 3, n_heads, d_head).permute(2, 0, 3, 1, 4)

        # 2. one attention over the step, the mask saying who sees whom
        if first.rotary is not None:
            q, k = first.rotary(q, offset), first.rotary(k, offset)
        keys = admitted if key_padding_mask is None else admitted & key_padding_mask
        key_choice = choice
        if cache is not None:
            k, v = cache.append(k, v)
            keys, key_choice = cache.append_keys(keys, choice)
        everyone = sum(sizes) == batch * pos and (not self.co_routed or max(sizes) == batch * pos)
        plain_causal = everyone and cache is None and key_padding_mask is None
        allowed = step_mask(choice, keys, key_choice, offset, self.co_routed, plain_causal)
        bias = first.alibi(pos, k.shape[2], offset) if first.alibi is not None else None
        z = mix(first, q, k, v, allowed, bias, plain_causal, padded=key_padding_mask is not None)
        if batched is not None:  # 3., every group at once
            finished = batched.finish(z.transpose(1, 2).reshape(batch * pos, n_heads * d_head))
            return torch.where(admitted.view(batch * pos, 1), finished, flat).view(batch, pos, d_model), sizes
        heads = z.transpose(1, 2).reshape(batch * pos, n_heads * d_head)[order].split(sizes)

        # 3. each group through its own layer's W_O, then its MLP block
        outputs = [
            finish(layer, group, head)
            for layer, group, head, size in zip(layers, groups, heads, sizes, strict=True)
            if size
        ]
        finished = torch.cat(outputs) if outputs else flat.new_zeros(0, d_model)
        return flat.index_copy(0, order, finished).view(batch, pos, d_model), sizes

    def new_weights(self) -> StackedWeights:
        """The pool's weights for one forward, stacked by the first step that needs them."""
        return StackedWeights([cast(TransformerLayer, layer) for layer in self.layers])


def sorted_dispatch(
    choice: Int[Tensor, "batch pos"], admitted: Bool[Tensor, "batch pos"], n_layers: int
) -> tuple[Int[Tensor, " admitted"], list[int], Int[Tensor, " n_layers"]]:
    """The flat indices of the admitted tokens grouped by layer (in batch, then position, order
    within a layer), and each layer's group size, on the host and on the tokens' device. Tokens
    not processed sort last, then drop."""
    lane = torch.where(admitted, choice, n_layers).flatten()
    order = torch.argsort(lane, stable=True)
    counts = tally(lane, n_layers + 1)
    sizes = counts.tolist()  # the step's one host sync: the groups' sizes shape what runs next
    if sum(sizes) != len(lane):
        raise IndexError(f"a token was admitted to a layer outside the pool of {n_layers}")
    return order[: sum(sizes[:n_layers])], sizes[:n_layers], counts[:n_layers]


def project_qkv(attn: Attention, x: Float[Tensor, "1 rows d_model"]) -> Float[Tensor, "rows three n_heads d_head"]:
    """The layer's own projections (fast: one matrix multiply; readable: three einsums) of a
    group of tokens, as rows [token, q/k/v, head, d_head]."""
    if attn.fast:
        q, k, v = Attention._project_qkv_at_once(x, attn.W_Q, attn.W_K, attn.W_V, attn.b_Q, attn.b_K, attn.b_V)
    else:
        q, k, v = (
            Attention.project(x, W, b) for W, b in ((attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V))
        )
    return torch.stack([q[0], k[0], v[0]]).permute(2, 0, 1, 3)


def step_mask(
    choice: Int[Tensor, "batch q"],
    keys: Bool[Tensor, "batch k"],
    key_choice: Int[Tensor, "batch k"],
    offset: int,
    co_routed: bool,
    plain_causal: bool,
) -> Bool[Tensor, "#batch 1 q k"]:
    """Query i (absolute position offset + i) may see key j when j <= offset + i, j was processed
    at this step and, co-routed, chose the query's own layer. `plain_causal`: every token was
    processed (and by one layer, if co-routed): the plain causal mask, exactly as attention builds it."""
    n_queries, n_keys = choice.shape[1], keys.shape[1]
    causal = torch.ones(n_queries, n_keys, dtype=torch.bool, device=choice.device).tril(diagonal=offset)
    if plain_causal:
        return causal[None, None]
    allowed = causal[None] & keys[:, None, :]
    if co_routed:
        allowed = allowed & (choice[:, :, None] == key_choice[:, None, :])
    return allowed[:, None]


def mix(
    attn: Attention,
    q: Float[Tensor, "batch n_heads q d_head"],
    k: Float[Tensor, "batch n_heads k d_head"],
    v: Float[Tensor, "batch n_heads k d_head"],
    allowed: Bool[Tensor, "#batch 1 q k"],
    bias: Float[Tensor, "n_heads q k"] | None,
    plain_causal: bool,
    padded: bool = True,
) -> Float[Tensor, "batch n_heads q d_head"]:
    """Attention's pattern-weighted values, by the same readable or fused path as `Attention`;
    a query with no key (it was not processed, and nobody before it was) gets zeros. Fast path
    without padding (`padded` False): such a query's row is left as SDPA gives it (finite), for
    it is never read: a token processed at this step is a key to itself (the causal diagonal,
    processed, its own layer), so only padding leaves a processed query without a key."""
    if not attn.fast:
        return attn.pattern(q, k, allowed, bias).to(v.dtype) @ v
    if plain_causal and bias is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scale)
    mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
    mask = mask.masked_fill(~allowed, torch.finfo(q.dtype).min)
    if bias is not None:
        mask = mask + bias.to(q.dtype)
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    return z * allowed.any(dim=-1, keepdim=True).to(z.dtype) if padded else z


def finish(
    layer: TransformerLayer, resid: Float[Tensor, "rows d_model"], heads: Float[Tensor, "rows heads_by_d_head"]
) -> Float[Tensor, "rows d_model"]:
    """The rest of the layer for its own tokens: W_O, residual add, then ln2, MLP, residual add."""
    attn = layer.attn
    n_heads, d_head, d_model = attn.W_O.shape
    if attn.fast:
        W_O = attn.W_O.reshape(n_heads * d_head, d_model)
        attn_out = torch.addmm(attn.b_O, heads, W_O) if attn.b_O is not None else heads @ W_O
    else:
        z = heads.view(1, -1, n_heads, d_head).transpose(1, 2)
        attn_out = torch.einsum("bhpe,hed->bpd", z, attn.W_O)[0]
        attn_out = attn_out + attn.b_O if attn.b_O is not None else attn_out
    resid = resid + F.dropout(attn_out, layer.dropout, layer.training)
    if layer.mlp is not None and layer.ln2 is not None:
        resid = resid + F.dropout(layer.mlp(layer.ln2(resid[None]))[0], layer.dropout, layer.training)
    return resid
