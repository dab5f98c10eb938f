"""ALiBi: the slopes of Press et al. (2022), the distance penalty they scale, and a model that uses
the penalty's recency preference to find the previous token."""

import dataclasses

import pytest
import torch

from tests.helpers.position_task import train_previous_token
from transformer.model.alibi import ALiBi, alibi_slopes
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder


def test_slopes_for_eight_heads_are_the_papers_geometric_sequence() -> None:
    # Press et al., section 3: "For models with 8 heads, our slopes are 1/2, 1/4, ..., 1/256."
    assert alibi_slopes(8).tolist() == [2.0**-h for h in range(1, 9)]


def test_slopes_for_a_power_of_two_start_at_two_to_the_minus_eight_over_n() -> None:
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]))
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2.0 ** (-h / 2) for h in range(1, 17)]))


@pytest.mark.parametrize(
    ("n_heads", "expected_exponents"),
    [
        # 6 heads: the 4-head sequence (2^-2 .. 2^-8), then every other slope of the 8-head
        # sequence (2^-1, 2^-3, ...) until there are 6.
        (6, [-2, -4, -6, -8, -1, -3]),
        # 12 heads: the 8-head sequence, then every other slope of the 16-head sequence
        # (2^-0.5, 2^-1.5, ...), 4 of them.
        (12, [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]),
    ],
)
def test_slopes_for_other_head_counts_interleave_the_nearest_powers_of_two(
    n_heads: int, expected_exponents: list[float]
) -> None:
    expected = torch.tensor([2.0**e for e in expected_exponents])
    torch.testing.assert_close(alibi_slopes(n_heads), expected)


@pytest.mark.parametrize("offset", [0, 3])
def test_bias_is_minus_slope_times_distance(offset: int) -> None:
    n_heads, q_pos, k_pos = 6, 4, 7
    bias = ALiBi(n_heads)(q_pos, k_pos, offset=offset)
    assert bias.shape == (n_heads, q_pos, k_pos)
    slopes = alibi_slopes(n_heads)
    for h in range(n_heads):
        for q in range(q_pos):
            for k in range(k_pos):
                distance = (offset + q) - k  # the query sits at absolute position offset + q
                assert float(bias[h, q, k]) == pytest.approx(-float(slopes[h]) * distance)


def test_bias_is_zero_on_the_diagonal_and_falls_with_distance() -> None:
    bias = ALiBi(8)(10, 10)
    assert torch.equal(bias.diagonal(dim1=-2, dim2=-1), torch.zeros(8, 10))
    past = bias[:, 9, :]  # the last query over keys 0..9: the more distant, the lower
    assert bool((past.diff(dim=-1) > 0).all())


def test_alibi_adds_no_parameters() -> None:
    alibi = ALiBi(8)
    assert list(alibi.parameters()) == []
    assert alibi.state_dict() == {}  # slopes are a function of n_heads: nothing to save


def test_alibi_weights_run_unchanged_in_a_longer_context() -> None:
    """Decoder refuses a sequence past n_ctx, whatever the positions; to run ALiBi past its training
    length, build the model with a larger n_ctx: no weight depends on n_ctx, so the trained state
    loads as it is and computes the same logits on the positions both contexts share."""
    short = ModelConfig(d_vocab=13, d_model=16, n_heads=4, n_layers=2, n_ctx=8, positional="alibi", kernels="readable")
    torch.manual_seed(0)
    trained = Decoder(short)
    longer = Decoder(dataclasses.replace(short, n_ctx=32))
    longer.load_state_dict(trained.state_dict())  # strict: the same keys and shapes
    tokens = torch.randint(0, 13, (2, 32), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="longer than the model's context"):
        trained(tokens)
    torch.testing.assert_close(longer(tokens).logits[:, :8], trained(tokens[:, :8]).logits, atol=1e-6, rtol=0)


def test_alibi_lets_attention_find_the_previous_token() -> None:
    # ALiBi's bias prefers the nearest keys; content scores can push the query's own position
    # down, leaving p - 1 the nearest candidate. But the position part of a score separates
    # p - 1 from p - 2 by the slope alone, at most 1/2 (fixed, not learned), so ALiBi stays a
    # little below the other schemes (~0.97 measured), far above the order-blind optimum
    # (~0.23) that the no-position control reaches (tests/model/test_positions.py).
    score = train_previous_token("alibi")
    assert score.accuracy > 0.9, str(score)
    # No single head reaches the others' 0.9 on p - 1 (seed 0: 0.28): ALiBi's heads share the job,
    # each penalising distance at its own fixed rate, so the mechanism is asserted for the others only.
