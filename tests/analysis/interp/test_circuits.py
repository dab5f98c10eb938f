"""Circuits are the weight products they name, and the scores built on them mean what they say."""

import pytest
import torch

from tests.analysis.interp.models import scrambled_decoder
from transformer.analysis.interp.circuits import (
    composition_score,
    copying_score,
    full_ov_circuit,
    full_qk_circuit,
    ov_circuit,
    qk_circuit,
)
from transformer.analysis.interp.hooks import blocks


def test_circuits_are_the_products_of_the_head_weights() -> None:
    model = scrambled_decoder(tie_embeddings=False)
    attn = blocks(model)[1].attn
    W_E, W_U = model.embed.W_E, model.unembed.weight
    with torch.no_grad():
        qk = torch.einsum("de,fe->df", attn.W_Q[1], attn.W_K[1])
        ov = torch.einsum("de,ef->df", attn.W_V[1], attn.W_O[1])
        full_qk = torch.einsum("ad,df,bf->ab", W_E, qk, W_E)
        full_ov = torch.einsum("ad,df,fb->ab", W_E, ov, W_U)
    assert qk_circuit(model, 1, 1).shape == (16, 16) and full_ov_circuit(model, 1, 1).shape == (23, 23)
    torch.testing.assert_close(qk_circuit(model, 1, 1), qk)
    torch.testing.assert_close(ov_circuit(model, 1, 1), ov)
    torch.testing.assert_close(full_qk_circuit(model, 1, 1), full_qk)
    torch.testing.assert_close(full_ov_circuit(model, 1, 1), full_ov)


def test_qk_circuit_gives_the_attention_score() -> None:
    """Without biases or positions, a head's score of query x_q against key x_k is
    x_q QK x_k^T / sqrt(d_head)."""
    model = scrambled_decoder(bias=False)
    x_q, x_k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    attn = blocks(model)[0].attn
    with torch.no_grad():
        direct = (x_q @ attn.W_Q[0]) @ (x_k @ attn.W_K[0])
    torch.testing.assert_close(x_q @ qk_circuit(model, 0, 0) @ x_k, direct)


def test_copying_score_is_one_for_the_identity_and_low_for_noise() -> None:
    assert copying_score(torch.eye(50) * 3 + 0.1) == 1.0
    noise = torch.randn(400, 400, generator=torch.Generator().manual_seed(0))
    assert copying_score(noise) < 0.02


def test_k_composition_is_zero_for_disjoint_subspaces_and_rises_when_keys_read_the_write() -> None:
    """Head (0, 0) writes only into the first d_head dimensions of the stream. Keys of head
    (1, 0) that read only the other dimensions ignore it (score 0); keys that read only those
    dimensions score higher than the random weights did."""
    model = scrambled_decoder(d_model=32, n_heads=4, bias=False)
    attn0, attn1 = blocks(model)[0].attn, blocks(model)[1].attn
    d_head = model.cfg.d_head
    with torch.no_grad():
        attn0.W_O[0, :, d_head:] = 0.0
    random_keys = composition_score(model, (0, 0), (1, 0), "k")
    with torch.no_grad():
        attn1.W_K[0, :d_head] = 0.0
    assert composition_score(model, (0, 0), (1, 0), "k") < 1e-12
    with torch.no_grad():
        attn1.W_K[0, :d_head] = torch.randn(d_head, d_head, dtype=torch.float64)
        attn1.W_K[0, d_head:] = 0.0
    aligned = composition_score(model, (0, 0), (1, 0), "k")
    assert aligned > 1.5 * random_keys, f"K-composition random {random_keys:.3f}, aligned {aligned:.3f}"
    with pytest.raises(ValueError, match="earlier layer"):
        composition_score(model, (1, 0), (0, 0), "q")
