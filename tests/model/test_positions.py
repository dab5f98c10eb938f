"""Absolute positions: the sinusoidal table against Vaswani et al.'s formula, the learned table's
slicing, and proof that position information is what lets attention tell tokens' order."""

import math

import pytest
import torch

from tests.helpers.position_task import train_previous_token
from transformer.model.positions import LearnedPositions, SinusoidalPositions, sinusoidal_table


@pytest.mark.parametrize("d_model", [8, 64, 7])
def test_sinusoidal_table_matches_the_paper(d_model: int) -> None:
    # Vaswani et al. 2017, section 3.5: PE(p, 2i) = sin(p / 10000^(2i / d_model)) and
    # PE(p, 2i + 1) = cos(p / 10000^(2i / d_model)). Written out with math, entry by entry.
    n_ctx = 50
    expected = torch.empty(n_ctx, d_model, dtype=torch.float64)
    for p in range(n_ctx):
        for column in range(d_model):
            i = column // 2
            angle = p / 10_000 ** (2 * i / d_model)
            expected[p, column] = math.sin(angle) if column % 2 == 0 else math.cos(angle)
    table = sinusoidal_table(n_ctx, d_model)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, rtol=0, atol=1e-7)


def test_sinusoidal_positions_are_a_fixed_buffer_not_a_parameter() -> None:
    positions = SinusoidalPositions(n_ctx=10, d_model=8)
    assert list(positions.parameters()) == []
    assert positions.state_dict() == {}  # a function of (n_ctx, d_model): nothing to save


@pytest.mark.parametrize("table", [LearnedPositions, SinusoidalPositions])
def test_positions_slice_the_table_from_offset(
    table: type[LearnedPositions] | type[SinusoidalPositions],
) -> None:
    positions = table(12, 8)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    # Rows offset..offset+pos-1: a continuation (e.g. with a KV cache) gets the positions it is at.
    assert torch.equal(positions(tokens, offset=3), positions.W_pos[3:8])
    assert torch.equal(positions(tokens), positions.W_pos[:5])
    with pytest.raises(ValueError, match="n_ctx=12"):
        positions(tokens, offset=8)


def test_learned_positions_are_a_trained_parameter() -> None:
    positions = LearnedPositions(n_ctx=10, d_model=8)
    assert [name for name, _ in positions.named_parameters()] == ["W_pos"]


# --- Learnable: "say the previous token" (see tests/helpers/position_task.py) ----------------


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_absolute_positions_let_attention_find_the_previous_token(positional: str) -> None:
    score = train_previous_token(positional)
    assert score.accuracy > 0.98, f"{positional}: {score}"
    assert score.previous_token_attention >= 0.9, f"{positional}: no head looks one back: {score}"


def test_without_positions_attention_cannot_beat_the_order_blind_optimum() -> None:
    # The negative control for every positional scheme: the same task and model, positional="none".
    # It cannot do better than guessing the most frequent earlier token, and it learns that much.
    score = train_previous_token("none")
    assert score.accuracy < score.order_blind_optimum + 0.02, str(score)
    assert score.accuracy > score.chance, str(score)
    # Uniform attention over the p + 1 visible keys would give ~0.1 here: no head singles out p - 1.
    assert score.previous_token_attention < 0.2, str(score)
