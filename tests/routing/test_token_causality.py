"""Token routing is causal: changing the tokens after position t leaves every logit up to t as
it was, whichever attention scheme, with skip or without, with the capacity dropping tokens,
in training (sampled routes) and evaluation (argmax), with per-step pools (the
Mixture-of-Depths form) too. A capacity chosen by top-k over the whole
sequence, the expert-choice rule, fails the same check: the check can catch a leak."""

import math

import pytest
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tests.helpers.routed_models import tiny_config
from tests.helpers.token_models import token_model
from transformer.routing.token_cache import TokenStepCache
from transformer.routing.token_decoder import TokenRoutedDecoder, TokenRoutingInfo

CHANGED_AFTER = (0, 5, 10)


def _changed_after(tokens: Tensor, t: int, seed: int = 7) -> Tensor:
    changed = tokens.clone()
    generator = torch.Generator().manual_seed(seed)
    changed[:, t + 1 :] = torch.randint(0, 23, changed[:, t + 1 :].shape, generator=generator)
    return changed


def _run(model: TokenRoutedDecoder, tokens: Tensor) -> tuple[Tensor, TokenRoutingInfo]:
    model.router.generator.manual_seed(0)  # training draws the same noise for both runs
    output = model(tokens)
    return output.logits, output.routing


@pytest.mark.parametrize("scheme", ["all", "co_routed"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_changing_tokens_after_t_leaves_logits_up_to_t_unchanged(scheme: str, skip: bool, training: bool) -> None:
    model = token_model(tiny_config(), seed=3, pool_size=3, token_attention=scheme, skip=skip, capacity_factor=1.0)
    model.train(training)
    tokens = torch.randint(0, 23, (6, 12), generator=torch.Generator().manual_seed(4))
    for t in CHANGED_AFTER:
        before, info = _run(model, tokens)
        after, changed = _run(model, _changed_after(tokens, t))
        dropped = (info.layer_choices < 3) & ~info.processed
        assert bool(dropped.any()), "the capacity should drop tokens, or the test proves less"
        assert torch.equal(info.layer_choices[:, : t + 1], changed.layer_choices[:, : t + 1])
        assert torch.equal(info.processed[:, : t + 1], changed.processed[:, : t + 1])
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])  # the test can fail


@pytest.mark.parametrize("scheme", ["all", "co_routed"])
@pytest.mark.parametrize("training", [False, True])
def test_per_step_pools_with_skip_are_causal_too(scheme: str, training: bool) -> None:
    """The Mixture-of-Depths form (step k: its own layer k or skip), the capacity shared among a
    step's two entries and dropping tokens: no top-k over the sequence, nothing leaks."""
    model = token_model(
        tiny_config(), seed=3, pool_size=3, pools="per_step", skip=True, token_attention=scheme, capacity_factor=1.0
    )
    model.train(training)
    tokens = torch.randint(0, 23, (6, 12), generator=torch.Generator().manual_seed(4))
    for t in CHANGED_AFTER:
        before, info = _run(model, tokens)
        after, changed = _run(model, _changed_after(tokens, t))
        assert bool(((info.layer_choices < 3) & ~info.processed).any()), "the capacity should drop tokens"
        assert torch.equal(info.processed[:, : t + 1], changed.processed[:, : t + 1])
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


class ExpertChoiceCapacity(TokenRoutedDecoder):
    """The leak, built here only: each layer keeps the ceil(cf * pos / n_entries) tokens of the
    *whole* sequence that are most sure of it (top-k, as expert-choice routing does), so a later
    token can push an earlier one out."""

    def admit(
        self,
        choice: Int[Tensor, "batch pos"],
        probabilities: Float[Tensor, "batch pos n_entries"],
        offset: int,
        cache: TokenStepCache | None,
        step: int = 0,
    ) -> Bool[Tensor, "batch pos"]:
        routing = self.routing
        assert routing.capacity_factor is not None
        keep = math.ceil(routing.capacity_factor * choice.shape[1] / routing.n_entries)
        admitted = torch.zeros_like(choice, dtype=torch.bool)
        for layer in range(routing.pool_size):
            sure = torch.where(choice == layer, probabilities[..., layer], -1.0)
            top = sure.topk(keep, dim=1)
            admitted.scatter_(1, top.indices, top.values >= 0)
        return admitted


@pytest.mark.parametrize("scheme", ["all", "co_routed"])
def test_a_capacity_by_top_k_over_the_sequence_leaks_the_future_and_the_check_catches_it(scheme: str) -> None:
    honest = token_model(tiny_config(), seed=3, pool_size=3, token_attention=scheme, capacity_factor=1.0)
    leaky = ExpertChoiceCapacity(honest.cfg, honest.routing)
    leaky.load_state_dict(honest.state_dict())
    leaky.eval()
    tokens = torch.randint(0, 23, (6, 12), generator=torch.Generator().manual_seed(4))
    t = 5
    before, info = _run(leaky, tokens)
    after, changed = _run(leaky, _changed_after(tokens, t))
    assert torch.equal(info.layer_choices[:, : t + 1, 0], changed.layer_choices[:, : t + 1, 0])  # first choices
    assert not torch.equal(info.processed[:, : t + 1], changed.processed[:, : t + 1])  # admission is not
    assert not torch.allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-6)
