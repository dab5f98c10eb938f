"""The fast dispatch of a token-routed step: every layer's group in one padded batch.

The per-layer dispatch (transformer/routing/dispatch.py, all the readable kernels run) calls
each chosen layer's parts on its own group: at nanoGPT's CPU size (batch 12, context 64, a pool
of 8) that is ~16 calls per step on ~90 tokens each, each call a few dozen small ops, and those
ops, not the arithmetic, set the cost. Here the groups are stacked into one buffer, [layers,
rows, d_model], each group padded to the largest, and each of the layer's matrix multiplies is
one batched multiply (`bmm`) by the pool's weights stacked the same way (once per forward): a
handful of ops per step whatever the number of layers.

Rows are moved by `index_select` only, each real row read from exactly one place, so the result
is deterministic. A padding row, and the row a token no layer took reads back, hold whatever
they were copied from and are never read: their gradients are exact zeros, which add nothing to
any real gradient (see `Batched`).

The padding costs compute: `PADDING_LIMIT` bounds it (a collapsed router, one layer taking
most tokens, would pad every other group to that size); past it, and for a single group, the
step keeps the per-layer dispatch, which for a single group is the plain layer bit for bit.

It computes what the layer's fast path computes, up to the order of floating-point sums
(tests/routing/test_stacked.py: equal to the readable dispatch in float64, outputs and
gradients).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.model.layer import TransformerLayer
from transformer.model.mlp import silu
from transformer.model.norm import LayerNorm

# Batch the groups only while the buffer holds at most this many rows per real one. At the
# bench's size (batch 12, a pool of 8, sampled routes) it holds 1.09-1.17; a collapsed router
# far more. A guard, not a tuned threshold.
PADDING_LIMIT = 1.5


def _norm(norm: nn.Module, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """The layer's norm, with each layer's own gain (and bias) broadcast over its rows."""
    eps: float = norm.eps  # type: ignore[assignment]
    if b is not None:
        return torch.addcmul(b, F.layer_norm(x, x.shape[-1:], eps=eps), w)
    return F.rms_norm(x, x.shape[-1:], eps=eps) * w


def _affine(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    return torch.baddbmm(b, x, W) if b is not None else torch.bmm(x, W)


class StackedWeights:
    """The pool's weights stacked along a leading layer dimension, in the layout the batched
    multiplies take: Q, K and V side by side ([layers, d_model, 3 * n_heads * d_head]), W_O as
    [layers, n_heads * d_head, d_model], vectors as [layers, 1, width]. Built by the first step
    of a forward that needs them and shared by its other steps: stacking copies every weight
    (and its backward copies every gradient back), once per forward rather than per step."""

    def __init__(self, layers: list[TransformerLayer]) -> None:
        self.layers = layers
        self._stacked: dict[str, Tensor] | None = None

    def get(self) -> dict[str, Tensor]:
        if self._stacked is None:
            self._stacked = self._stack()
        return self._stacked

    def _stack(self) -> dict[str, Tensor]:
        layers, attn = self.layers, [layer.attn for layer in self.layers]
        n_layers = len(layers)
        n_heads, d_model, d_head = attn[0].W_Q.shape

        def stack(tensors: list[Tensor | None]) -> Tensor | None:
            present = [t for t in tensors if t is not None]
            return torch.stack(present) if len(present) == len(tensors) else None

        def vector(tensors: list[Tensor | None]) -> Tensor | None:
            stacked = stack(tensors)
            return stacked.reshape(n_layers, 1, -1) if stacked is not None else None

        W_QKV = torch.stack([torch.cat([a.W_Q, a.W_K, a.W_V]) for a in attn])  # [layers, 3 * n_heads, d_model, d_head]
        weights: dict[str, Tensor | None] = {
            "ln1.w": vector([layer.ln1.w for layer in layers]),
            "ln1.b": vector([layer.ln1.b if isinstance(layer.ln1, LayerNorm) else None for layer in layers]),
            "W_QKV": W_QKV.permute(0, 2, 1, 3).reshape(n_layers, d_model, 3 * n_heads * d_head),
            "W_O": torch.stack([a.W_O for a in attn]).reshape(n_layers, n_heads * d_head, d_model),
            "b_O": vector([a.b_O for a in attn]),
        }
        b_Q, b_K, b_V = stack([a.b_Q for a in attn]), stack([a.b_K for a in attn]), stack([a.b_V for a in attn])
        if b_Q is not None and b_K is not None and b_V is not None:
            weights["b_QKV"] = torch.cat([b_Q, b_K, b_V], dim=1).reshape(n_layers, 1, -1)
        mlps = [layer.mlp for layer in layers if layer.mlp is not None]
        norms = [layer.ln2 for layer in layers if layer.ln2 is not None]
        if len(mlps) == n_layers and len(norms) == n_layers:
            weights["ln2.w"] = vector([norm.w for norm in norms])
            weights["ln2.b"] = vector([norm.b if isinstance(norm, LayerNorm) else None for norm in norms])
            weights["W_in"], weights["b_in"] = stack([m.W_in for m in mlps]), vector([m.b_in for m in mlps])
            weights["W_gate"] = stack([m.W_gate for m in mlps])
            weights["W_out"], weights["b_out"] = stack([m.W_out for m in mlps]), vector([m.b_out for m in mlps])
        return {name: tensor for name, tensor in weights.items() if tensor is not None}


class Batched:
    """One step's groups as one buffer, [layers, rows, d_model] (every layer of the pool, a
    layer with no token all padding), with the maps between a token's flat index and its
    buffer row.

    Rows that are not read need no particular value, so none are zeroed: a padding row copies
    token 0, and a token no layer took reads buffer row 0 for its queries, keys and values
    (never a key: attention masks it; its query's output is never read). Their gradients are
    then exact zeros, which add nothing to any real gradient."""

    def __init__(
        self,
        weights: StackedWeights,
        sizes: list[int],
        counts: Int[Tensor, " n_layers"],
        order: Int[Tensor, " admitted"],
        flat: Float[Tensor, "tokens d_model"],
    ) -> None:
        """`order`: the admitted tokens' flat indices, grouped by layer, `sizes` tokens for
        each layer of the pool, and the same `counts` on the device (`sorted_dispatch`)."""
        self.layers, self.w = weights.layers, weights.get()
        n_layers, height, tokens = len(sizes), max(sizes), flat.shape[0]
        device = order.device
        # the buffer row of each token of `order`: its place in `order`, shifted to its layer's
        # block. Computed on the device from `counts`, with only the sizes of the result from the
        # host: no boolean indexing, no copy of the sizes back over (either makes a GPU wait).
        shift = torch.arange(n_layers, device=device) * height - (counts.cumsum(0) - counts)
        admitted = len(order)
        rows = torch.arange(admitted, device=device) + shift.repeat_interleave(counts, output_size=admitted)
        self.source = order.new_zeros(n_layers * height).index_copy(0, rows, order)  # buffer row -> token
        self.slot = order.new_zeros(tokens).index_copy(0, order, rows)  # token -> buffer row
        self.shape = (n_layers, height)
        self.resid = flat.index_select(0, self.source).view(n_layers, height, -1)

    def project_qkv(self) -> Float[Tensor, "tokens three_heads_by_d_head"]:
        """Every admitted token's queries, keys and values by its own layer (ln1, then
        W_Q/W_K/W_V); for a token no layer took, a row not to be read."""
        first, w = self.layers[0], self.w
        x = _norm(first.ln1, self.resid, w["ln1.w"], w.get("ln1.b"))
        qkv = _affine(x, w["W_QKV"], w.get("b_QKV"))
        return qkv.flatten(0, 1).index_select(0, self.slot)

    def finish(self, heads: Float[Tensor, "tokens heads_by_d_head"]) -> Float[Tensor, "tokens d_model"]:
        """The rest of each token's layer: W_O, residual add, then ln2, MLP, residual add (for a
        token no layer took, a row not to be read: the caller keeps its residual)."""
        first, w = self.layers[0], self.w
        n_layers, height = self.shape
        attn_out = _affine(heads.index_select(0, self.source).view(n_layers, height, -1), w["W_O"], w.get("b_O"))
        resid = self.resid + F.dropout(attn_out, first.dropout, first.training)
        if first.mlp is not None and first.ln2 is not None:
            x = _norm(first.ln2, resid, w["ln2.w"], w.get("ln2.b"))
            pre = _affine(x, w["W_in"], w.get("b_in"))
            hidden = silu(torch.bmm(x, w["W_gate"])) * pre if "W_gate" in w else first.mlp.activation(pre)
            out = _affine(hidden, w["W_out"], w.get("b_out"))
            resid = resid + F.dropout(out, first.dropout, first.training)
        return resid.flatten(0, 1).index_select(0, self.slot)
