"""Per-head scores read the pattern where they claim to: a head built to look one back scores
1 as a previous-token head; the induction score indexes the token after the earlier copy."""

import torch

from transformer.analysis.interp.heads import (
    induction_scores,
    previous_token_scores,
    repeated_distinct_tokens,
    repeated_random_tokens,
)
from transformer.analysis.interp.hooks import ActivationCache


def one_hot_pattern(pos: int, look: list[int]) -> torch.Tensor:
    """[1 batch, 1 head, pos, pos]: query t attends only to look[t]."""
    pattern = torch.zeros(1, 1, pos, pos)
    pattern[0, 0, torch.arange(pos), torch.tensor(look)] = 1.0
    return pattern


def test_previous_token_and_induction_scores_read_the_right_cells() -> None:
    half = 5
    previous = one_hot_pattern(2 * half, [0] + list(range(2 * half - 1)))
    induction = one_hot_pattern(2 * half, list(range(half)) + [t - half + 1 for t in range(half, 2 * half)])
    cache = ActivationCache({"blocks.0.attn.hook_pattern": previous, "blocks.1.attn.hook_pattern": induction})
    torch.testing.assert_close(previous_token_scores(cache)[:, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(induction_scores(cache, half)[:, 0], torch.tensor([0.0, 1.0]))


def test_repeated_random_tokens_repeat() -> None:
    tokens = repeated_random_tokens(torch.Generator().manual_seed(0), 4, 7, 50)
    assert tokens.shape == (4, 14)
    assert torch.equal(tokens[:, :7], tokens[:, 7:])


def test_repeated_distinct_tokens_repeat_a_half_without_duplicates() -> None:
    tokens = repeated_distinct_tokens(torch.Generator().manual_seed(0), 64, 9, 12)
    assert tokens.shape == (64, 18)
    assert torch.equal(tokens[:, :9], tokens[:, 9:])
    assert all(len(set(row[:9].tolist())) == 9 for row in tokens)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 12
