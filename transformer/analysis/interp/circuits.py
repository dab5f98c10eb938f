"""A head's two circuits, read from its weights alone (Elhage et al. 2021).

In this package's row-vector convention (x @ W), head h of a layer scores query stream x_q
against key stream x_k by x_q W_Q[h] W_K[h]^T x_k^T: the QK circuit W_Q W_K^T [d_model, d_model]
says *where* the head looks. What it moves from a key position into the query's stream is
x_k W_V[h] W_O[h]: the OV circuit [d_model, d_model] says *what* it writes. Biases, the
rotation of rotary positions, and the norms before each block are left out, as is usual.

Multiplied by the embedding and unembedding they read in tokens: the full OV circuit
W_E W_V W_O W_U [d_vocab, d_vocab] says which logits rise when the head attends to a token (a
copying head has a large positive diagonal); the full QK circuit W_E W_Q W_K^T W_E^T which
key tokens a query token prefers.

Heads compose through the stream: a later head B reads, through its queries, keys or values,
what an earlier head A wrote (Q-, K- and V-composition). The score is the Frobenius norm of the
product of A's OV circuit with B's reading matrix, over the product of the norms: near 0 when B
ignores A's subspace. An induction head K-composes with a previous-token head.
"""

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from transformer.analysis.interp.hooks import blocks
from transformer.model.decoder import Decoder


def qk_circuit(model: Decoder, layer: int, head: int) -> Float[Tensor, "d_model d_model"]:
    attn = blocks(model)[layer].attn
    return (attn.W_Q[head] @ attn.W_K[head].T).detach()


def ov_circuit(model: Decoder, layer: int, head: int) -> Float[Tensor, "d_model d_model"]:
    attn = blocks(model)[layer].attn
    return (attn.W_V[head] @ attn.W_O[head]).detach()


def full_qk_circuit(model: Decoder, layer: int, head: int) -> Float[Tensor, "d_vocab d_vocab"]:
    """Query token (rows) against key token (columns), through the embedding alone."""
    W_E = model.embed.W_E.detach()
    return W_E @ qk_circuit(model, layer, head) @ W_E.T


def full_ov_circuit(model: Decoder, layer: int, head: int) -> Float[Tensor, "d_vocab d_vocab"]:
    """Attended token (rows) -> the logits it raises (columns), through embedding and unembedding."""
    return model.embed.W_E.detach() @ ov_circuit(model, layer, head) @ model.unembed.weight.detach()


def copying_score(circuit: Float[Tensor, "d_vocab d_vocab"]) -> float:
    """The share of rows whose largest entry is on the diagonal: 1 for a head that raises the
    logit of the very token it attends to, about 1 / d_vocab for a random one."""
    rows = torch.arange(circuit.shape[0])
    return float((circuit.argmax(-1) == rows).float().mean())


Composition = Literal["q", "k", "v"]


def composition_score(model: Decoder, earlier: tuple[int, int], later: tuple[int, int], kind: Composition) -> float:
    """How much head `later` = (layer, head) reads, through its queries, keys or values, the
    subspace head `earlier` writes to: ||product|| / (||OV_A|| ||reader_B||), Frobenius norms."""
    if earlier[0] >= later[0]:
        raise ValueError(f"head {earlier} must be in an earlier layer than head {later}")
    ov_a = ov_circuit(model, *earlier)
    if kind == "q":
        reader, product = qk_circuit(model, *later), ov_a @ qk_circuit(model, *later)
    elif kind == "k":
        reader, product = qk_circuit(model, *later), qk_circuit(model, *later) @ ov_a.T
    else:
        reader, product = ov_circuit(model, *later), ov_a @ ov_circuit(model, *later)
    return float(product.norm() / (ov_a.norm() * reader.norm()))
