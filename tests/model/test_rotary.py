"""Rotary position embedding: against an independent complex-number implementation, the
relative-position property that motivates it, and a model that uses it to find the previous token."""

from typing import Any

import pytest
import torch
from torch import Tensor

from tests.helpers.position_task import train_previous_token
from transformer.model.rotary import Rotary

N_CTX = 32
BASE = 10_000.0


def rotate_as_complex(x: Tensor, rotary_dim: int, offset: int = 0) -> Tensor:
    """RoPE as Su et al. write it: pair (x_2i, x_2i+1) is the complex number x_2i + i x_2i+1,
    and the vector at position p is multiplied by exp(i p theta_i), theta_i = base^(-2i/rotary_dim)."""
    positions = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64)
    theta = BASE ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    turn = torch.polar(torch.ones(len(positions), len(theta), dtype=torch.float64), positions[:, None] * theta)
    pairs = torch.view_as_complex(x[..., :rotary_dim].reshape(*x.shape[:-1], rotary_dim // 2, 2).contiguous())
    rotated = torch.view_as_real(pairs * turn).flatten(-2)
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


def vectors(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# The angle tables are float32 (computed in float64, then rounded): agreement to ~1e-7 relative.
TOLERANCE: dict[str, Any] = {"rtol": 1e-6, "atol": 1e-6}


@pytest.mark.parametrize("rotary_dim", [16, 8, 2])
def test_rotary_matches_complex_multiplication(rotary_dim: int) -> None:
    x = vectors(2, 3, N_CTX, 16)  # batch, n_heads, pos, d_head
    rotary = Rotary(rotary_dim, N_CTX, BASE)
    torch.testing.assert_close(rotary(x), rotate_as_complex(x, rotary_dim), **TOLERANCE)


def test_partial_rotary_passes_the_remaining_dimensions_through_unchanged() -> None:
    x = vectors(2, 3, N_CTX, 16)
    out = Rotary(6, N_CTX, BASE)(x)
    assert torch.equal(out[..., 6:], x[..., 6:])
    assert not torch.allclose(out[..., :6], x[..., :6])


def test_offset_continues_the_positions() -> None:
    # With offset k, a chunk is rotated as if it sat at positions k, k+1, ... (as with a KV cache).
    rotary = Rotary(8, N_CTX, BASE)
    x = vectors(1, 2, N_CTX, 8)
    torch.testing.assert_close(rotary(x[..., 10:15, :], offset=10), rotary(x)[..., 10:15, :])
    torch.testing.assert_close(
        rotary(x[..., 10:15, :], offset=10), rotate_as_complex(x[..., 10:15, :], 8, 10), **TOLERANCE
    )


def test_rotation_preserves_length() -> None:
    x = vectors(4, N_CTX, 8)
    torch.testing.assert_close(Rotary(8, N_CTX, BASE)(x).norm(dim=-1), x.norm(dim=-1), **TOLERANCE)


def test_query_key_score_depends_only_on_relative_position() -> None:
    # One query vector and one key vector, placed at every position: after rotation the score
    # q_m . k_n must be a function of m - n alone, i.e. constant along each diagonal.
    rotary = Rotary(8, N_CTX, BASE)
    q, k = vectors(8, seed=1), vectors(8, seed=2)
    q_rot, k_rot = rotary(q.expand(N_CTX, 8)), rotary(k.expand(N_CTX, 8))
    scores = q_rot @ k_rot.T  # [m, n]
    by_offset = {}
    for offset in [0, 1, 2, 5, 13, 31]:
        diagonal = scores.diagonal(-offset)  # entries with m - n = offset
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), **TOLERANCE)
        by_offset[offset] = float(diagonal[0])
    # ...and it does depend on the offset: otherwise the test above proves nothing.
    assert len({round(score, 3) for score in by_offset.values()}) == len(by_offset), by_offset
    # Without rotation the same vectors score q . k everywhere.
    assert by_offset[0] == pytest.approx(float(q @ k), rel=1e-6)


def test_rotary_rejects_odd_rotary_dim_and_too_long_sequences() -> None:
    with pytest.raises(ValueError, match="even"):
        Rotary(5, N_CTX, BASE)
    with pytest.raises(ValueError, match="n_ctx"):
        Rotary(8, N_CTX, BASE)(vectors(N_CTX + 1, 8))


def test_rotary_lets_attention_find_the_previous_token() -> None:
    # Nothing is added to the residual stream: position reaches the model only by rotating q and k.
    # The negative control (positional="none") is in tests/model/test_positions.py.
    score = train_previous_token("rotary")
    assert score.accuracy > 0.98, str(score)
    assert score.previous_token_attention >= 0.9, f"no head looks one back: {score}"
