"""Sampling draws from the distribution it claims: softmax(logits / T), cut to the top k or the
nucleus p, greedy in the limit T -> 0, and the same tokens for the same seed.

Frequencies are measured on 10,000 draws: a frequency's standard error is at most
sqrt(0.25 / 10,000) = 0.005, so the 0.01 tolerance is two standard errors; the seeds are fixed,
so the tests are deterministic.
"""

import pytest
import torch
from torch import Tensor

from transformer.inference.generation import GenerationError, check_settings, generate
from transformer.inference.sampling import choose_next, filter_logits, sample
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder

DRAWS = 10_000
LOGITS = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0]])


def frequencies(logits: Tensor, seed: int = 0, **settings: float | int | None) -> Tensor:
    """How often each token is drawn in DRAWS independent draws from the same logits."""
    generator = torch.Generator().manual_seed(seed)
    tokens = choose_next(logits.expand(DRAWS, -1), generator=generator, **settings)  # type: ignore[arg-type]
    return torch.bincount(tokens[:, 0], minlength=logits.shape[-1]).float() / DRAWS


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_match_the_softmax_of_logits_over_temperature(temperature: float) -> None:
    expected = (LOGITS[0] / temperature).softmax(dim=-1)
    measured = frequencies(LOGITS, temperature=temperature)
    assert (measured - expected).abs().max() < 0.01, (measured, expected)


def test_temperature_towards_zero_becomes_greedy() -> None:
    """The argmax's share grows as T shrinks and is every draw at T = 1e-3 (logit gaps of 0.5
    become 500: the runner-up's probability is e^-500)."""
    shares = [float(frequencies(LOGITS, temperature=t)[0]) for t in (2.0, 1.0, 0.3, 0.1, 1e-3)]
    assert shares == sorted(shares) and shares[-1] == 1.0, shares
    torch.manual_seed(0)
    model = Decoder(ModelConfig(d_vocab=31, d_model=32, n_heads=4, n_layers=2, n_ctx=48, init_std=0.3))
    prompt = torch.randint(0, 31, (3, 4), generator=torch.Generator().manual_seed(1))
    greedy = generate(model, prompt, 32, temperature=0.0)
    cold = generate(model, prompt, 32, temperature=1e-4, generator=torch.Generator().manual_seed(2))
    assert torch.equal(cold.tokens, greedy.tokens)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_top_k_never_emits_a_token_outside_the_top_k(temperature: float) -> None:
    """At T = 3 the tail is likely (tokens 3-7 would get 45% of the draws), yet none is drawn;
    inside the top 3, draws follow the renormalised softmax."""
    measured = frequencies(LOGITS, temperature=temperature, top_k=3)
    assert measured[3:].sum() == 0.0
    expected = (LOGITS[0, :3] / temperature).softmax(dim=-1)
    assert (measured[:3] - expected).abs().max() < 0.01, (measured, expected)


def test_top_p_keeps_the_smallest_set_of_likely_tokens_reaching_p() -> None:
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    for top_p, kept in [(0.4, 1), (0.7, 2), (0.85, 3), (0.99, 4)]:
        filtered = filter_logits(probabilities.log(), top_p=top_p)
        assert torch.isfinite(filtered[0]).sum() == kept, (top_p, filtered)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        logits = torch.randn(1, 12, generator=generator) * 2
        top_p = float(torch.rand(1, generator=generator)) * 0.98 + 0.01
        keep = torch.isfinite(filter_logits(logits, top_p=top_p))[0]
        order = logits[0].argsort(descending=True)
        kept_sorted = keep[order]
        n_kept = int(kept_sorted.sum())
        assert kept_sorted[:n_kept].all(), "the kept tokens are the most likely ones"
        mass = logits[0].softmax(-1)[order]
        assert mass[:n_kept].sum() >= top_p - 1e-6, "the kept set reaches p"
        assert mass[: n_kept - 1].sum() < top_p, "no smaller set reaches p"
    measured = frequencies(probabilities.log(), top_p=0.7)
    assert measured[2:].sum() == 0.0
    assert abs(float(measured[0]) - 0.5 / 0.8) < 0.01, measured


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others() -> None:
    torch.manual_seed(0)
    model = Decoder(ModelConfig(d_vocab=31, d_model=32, n_heads=4, n_layers=2, n_ctx=48))
    prompt = torch.randint(0, 31, (2, 4), generator=torch.Generator().manual_seed(1))

    def draw(seed: int) -> Tensor:
        return generate(model, prompt, 32, temperature=1.0, generator=torch.Generator().manual_seed(seed)).tokens

    first = draw(7)
    assert torch.equal(draw(7), first)
    uncached = sample(model, prompt, 32, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(uncached, first), "the cache changes no draw"
    assert not torch.equal(draw(8), first)


def test_impossible_settings_are_refused() -> None:
    impossible: list[dict[str, float]] = [
        dict(temperature=-0.1),
        dict(temperature=float("inf")),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(max_new_tokens=-1),
    ]
    for settings in impossible:
        values: dict[str, float] = dict(max_new_tokens=1, temperature=1.0)
        values.update(settings)
        with pytest.raises(GenerationError):
            check_settings(**values)  # type: ignore[arg-type]
