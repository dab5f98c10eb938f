"""Token-routed generation with a KV cache equals full forwards.

Each routing step caches, by position, the keys and values a token's own layer made, with
holes where a token skipped or was dropped, the entry each token chose (co-routed attention
compares it) and each sequence's running capacity counts. Greedy decoding through that cache
must give the very tokens, and to float32 rounding the very logits, of running the whole text
so far at every step (the reference), for 64 new tokens, both attention schemes, with skip and
without, with per-step pools (one layer or skip a step), while the capacity drops tokens.
"""

from typing import Any

import pytest
import torch
from torch import Tensor

from tests.helpers.token_models import token_model
from transformer.inference.generation import generate
from transformer.model.config import ModelConfig
from transformer.routing.token_cache import TokenKVCache
from transformer.routing.token_decoder import TokenRoutedDecoder, TokenRoutingInfo

D_VOCAB = 29
NEW_TOKENS = 64
TOLERANCE: dict[str, Any] = dict(rtol=1e-4, atol=1e-4)  # float32 rounding (measured below 1e-5)


def cached_model(
    scheme: str, skip: bool, positional: str = "learned", kernels: str = "fast", **routing: Any
) -> TokenRoutedDecoder:
    # init_std 0.3 spreads the logits, so no two tokens tie for the argmax to within rounding
    cfg = ModelConfig(
        d_vocab=D_VOCAB,
        d_model=32,
        n_heads=4,
        n_layers=3,
        n_ctx=80,
        positional=positional,
        kernels=kernels,
        init_std=0.3,
    )
    values: dict[str, Any] = dict(pool_size=4, token_attention=scheme, skip=skip, capacity_factor=1.0) | routing
    model = token_model(cfg, seed=0, **values)
    return model.eval()


def assert_matches_full_forwards(model: TokenRoutedDecoder, prompt: Tensor) -> TokenRoutingInfo:
    out = generate(model, prompt, NEW_TOKENS, temperature=0.0)
    assert out.tokens.shape == (prompt.shape[0], prompt.shape[1] + NEW_TOKENS)
    with torch.no_grad():
        full = model(out.tokens[:, :-1])
    torch.testing.assert_close(out.logits, full.logits[:, prompt.shape[1] - 1 :], **TOLERANCE)
    assert torch.equal(out.tokens[:, prompt.shape[1] :], out.logits.argmax(dim=-1))
    info: TokenRoutingInfo = full.routing
    return info


# The default run takes the hardest case of each scheme (skip and drops both leave holes; rotary
# turns keys by their original positions); the rest of the matrix runs with -m slow.
CASES = [
    pytest.param(scheme, skip, positional, marks=() if skip and positional == "rotary" else pytest.mark.slow)
    for scheme in ("all", "co_routed")
    for skip in (False, True)
    for positional in ("learned", "rotary", "alibi")
]


@pytest.mark.parametrize(("scheme", "skip", "positional"), CASES)
def test_greedy_generation_with_the_cache_equals_full_forwards(scheme: str, skip: bool, positional: str) -> None:
    model = cached_model(scheme, skip, positional)
    prompt = torch.randint(0, D_VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    info = assert_matches_full_forwards(model, prompt)
    left_out = ~info.processed
    assert bool(left_out.any()), "the cache must have holes, or this proves less"
    dropped = (info.layer_choices < 4) & left_out
    assert bool(dropped.any()), "the capacity must drop tokens, or the carried counts go untested"
    if skip:
        assert bool((info.layer_choices == 4).any()), "some tokens must skip"


@pytest.mark.parametrize("scheme", ["all", "co_routed"])
def test_per_step_pools_generate_the_same_through_the_cache(scheme: str) -> None:
    """The Mixture-of-Depths form: step k takes its own layer k or skips, the capacity counted
    among those two entries and carried in the cache."""
    model = cached_model(scheme, skip=True, positional="rotary", pool_size=3, pools="per_step")
    prompt = torch.randint(0, D_VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    info = assert_matches_full_forwards(model, prompt)
    for step in range(3):
        assert set(info.layer_choices[..., step].unique().tolist()) == {step, 3}, "its own layer, or skip"
    assert bool(((info.layer_choices < 3) & ~info.processed).any()), "the capacity must drop tokens"


@pytest.mark.slow  # the readable path's cache in the default run: the chunks test below
@pytest.mark.parametrize("scheme", ["all", "co_routed"])
def test_the_readable_path_generates_the_same_through_its_cache(scheme: str) -> None:
    model = cached_model(scheme, skip=True, positional="rotary", kernels="readable")
    prompt = torch.randint(0, D_VOCAB, (2, 3), generator=torch.Generator().manual_seed(2))
    assert_matches_full_forwards(model, prompt)


@pytest.mark.parametrize(("scheme", "kernels"), [("all", "fast"), ("co_routed", "readable")])
def test_feeding_chunks_through_the_cache_equals_one_forward(scheme: str, kernels: str) -> None:
    """Chunks of several tokens after a filled cache: the capacity continues from the carried
    counts and positions, and each new query sees exactly the cached keys it may."""
    model = cached_model(scheme, skip=True, positional="alibi", kernels=kernels)
    tokens = torch.randint(0, D_VOCAB, (3, 30), generator=torch.Generator().manual_seed(3))
    cache = model.new_cache()
    assert isinstance(cache, TokenKVCache)
    with torch.no_grad():
        whole = model(tokens)
        pieces = [model(tokens[:, a:b], cache=cache) for a, b in [(0, 1), (1, 9), (9, 10), (10, 30)]]
    torch.testing.assert_close(torch.cat([p.logits for p in pieces], 1), whole.logits, **TOLERANCE)
    choices = torch.cat([p.routing.layer_choices for p in pieces], 1)
    assert torch.equal(choices, whole.routing.layer_choices)
    assert torch.equal(torch.cat([p.routing.processed for p in pieces], 1), whole.routing.processed)
    for step, step_cache in enumerate(cache.steps):
        assert step_cache.k is not None and step_cache.k.shape == (3, 4, 30, 8)
        assert step_cache.valid is not None and step_cache.choice is not None and step_cache.taken is not None
        assert torch.equal(step_cache.valid, whole.routing.processed[..., step])
        assert torch.equal(step_cache.choice, whole.routing.layer_choices[..., step])
        counts = torch.stack(
            [(whole.routing.processed[..., step] & (choices[..., step] == i)).sum(1) for i in range(4)]
        )
        assert torch.equal(step_cache.taken[:, :4], counts.T)


def test_a_one_token_prompt_is_enough() -> None:
    """No routing prefix: the first token alone can be continued."""
    model = cached_model("all", skip=False)
    assert model.min_prompt_len == 1 and model.first_scored_target == 0
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 5, temperature=0.0)
    assert out.tokens.shape == (1, 6)
