"""The KV cache changes how much is computed, never what: cached generation equals full forwards.

The reference everywhere is the model's own full forward over the whole text so far: the
logits a cached call returns for new tokens must be those the full forward gives at the same
positions (allclose: a different summation order moves float32 by ~1e-6), and greedy tokens,
chosen from them, must be identical.
"""

from typing import Any

import pytest
import torch
from torch import Tensor

from transformer.inference.generation import GenerationError, generate
from transformer.inference.sampling import sample
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.kv_cache import KVCache
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder

D_VOCAB = 29
NEW_TOKENS = 32
# Logits from full forwards and from the cache differ by float32 rounding only (measured ~5e-6).
TOLERANCE: dict[str, Any] = dict(rtol=1e-4, atol=1e-4)


def plain_model(positional: str = "learned", kernels: str = "fast", n_ctx: int = 64) -> Decoder:
    # init_std 0.3 (not 0.02) spreads the logits, so no two tokens tie for the argmax to within
    # rounding and greedy decoding is a sharp comparison.
    cfg = ModelConfig(
        d_vocab=D_VOCAB,
        d_model=32,
        n_heads=4,
        n_layers=2,
        n_ctx=n_ctx,
        positional=positional,
        kernels=kernels,
        init_std=0.3,
    )
    torch.manual_seed(0)
    return Decoder(cfg).eval()


def routed_model(kernels: str = "fast", n_ctx: int = 64, prefix: int = 4) -> RoutedDecoder:
    cfg = ModelConfig(d_vocab=D_VOCAB, d_model=32, n_heads=4, n_layers=3, n_ctx=n_ctx, kernels=kernels, init_std=0.3)
    torch.manual_seed(0)
    model = RoutedDecoder(cfg, RoutingConfig(pool_size=4, route_prefix_len=prefix)).eval()
    with torch.no_grad():  # W_R starts at zero (every sequence on layer 0): spread the routes
        model.router.W_R.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(1))
    return model


def full_logits(model: Decoder | RoutedDecoder, tokens: Tensor) -> Tensor:
    logits: Tensor = model(tokens).logits
    return logits


def assert_matches_full_forwards(model: Decoder | RoutedDecoder, prompt: Tensor, new_tokens: int) -> None:
    """Greedy generation with the cache: each step's logits equal a full forward's at that
    position (one forward of the finished text gives them all: it is causal), and each token
    is their argmax."""
    out = generate(model, prompt, new_tokens, temperature=0.0)
    assert out.tokens.shape == (prompt.shape[0], prompt.shape[1] + new_tokens)
    with torch.no_grad():
        reference = full_logits(model, out.tokens[:, :-1])[:, prompt.shape[1] - 1 :]
    torch.testing.assert_close(out.logits, reference, **TOLERANCE)
    assert torch.equal(out.tokens[:, prompt.shape[1] :], out.logits.argmax(dim=-1))


@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary", "alibi"])
def test_feeding_tokens_in_chunks_through_the_cache_equals_one_forward(positional: str, kernels: str) -> None:
    """Chunks of several tokens after a filled cache exercise the general causal mask: query i
    at absolute position offset + i sees keys 0 .. offset + i, never a later one."""
    model = plain_model(positional, kernels)
    tokens = torch.randint(0, D_VOCAB, (3, 20), generator=torch.Generator().manual_seed(2))
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        whole = model(tokens).logits
        pieces = [
            model(tokens[:, start:stop], cache=cache).logits for start, stop in [(0, 5), (5, 6), (6, 13), (13, 20)]
        ]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, **TOLERANCE)
    cfg = model.cfg
    for layer_cache in cache.layers:
        assert layer_cache.k is not None and layer_cache.v is not None
        assert layer_cache.k.shape == layer_cache.v.shape == (3, cfg.n_heads, 20, cfg.d_head)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary", "alibi"])
def test_greedy_generation_with_the_cache_equals_full_forwards(positional: str, kernels: str) -> None:
    model = plain_model(positional, kernels)
    prompt = torch.randint(0, D_VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    assert_matches_full_forwards(model, prompt, NEW_TOKENS)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_routed_greedy_generation_with_the_cache_equals_full_forwards(kernels: str) -> None:
    """Six sequences on different routes in one batch: each keeps the keys and values of the
    layers its own route names at each step."""
    model = routed_model(kernels)
    prompt = torch.randint(0, D_VOCAB, (6, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        info = model(prompt).routing
    routes = {tuple(route) for route in info.layer_choices.tolist()}
    assert len(routes) >= 3, f"the test needs sequences on different routes, got {routes}"
    assert_matches_full_forwards(model, prompt, NEW_TOKENS)
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        model(prompt, cache=cache)
    assert cache.route is not None and torch.equal(cache.route.choices, info.layer_choices)


@pytest.mark.parametrize("routed", [False, True])
def test_past_the_context_the_window_slides_like_the_uncached_loop(routed: bool) -> None:
    """n_ctx = 16, 6 + 14 tokens: the cache serves steps 0-10 (up to 16 tokens), then every step
    is a full forward of the last 16, exactly the trainer's uncached loop (a routed window
    re-routes from its own first P tokens)."""
    model = routed_model(n_ctx=16) if routed else plain_model(n_ctx=16)
    prompt = torch.randint(0, D_VOCAB, (3, 6), generator=torch.Generator().manual_seed(5))
    out = generate(model, prompt, 14, temperature=0.0)
    assert torch.equal(out.tokens, sample(model, prompt, 14, temperature=0.0))
    with torch.no_grad():
        for step in (10, 11, 13):  # the last cached step, the first sliding one, the last
            context = out.tokens[:, : prompt.shape[1] + step][:, -16:]
            torch.testing.assert_close(out.logits[:, step], full_logits(model, context)[:, -1], **TOLERANCE)


def test_a_routed_prompt_shorter_than_the_routing_prefix_is_refused() -> None:
    model = routed_model(prefix=4)
    with pytest.raises(GenerationError, match="fewer than the routing prefix route_prefix_len=4"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 5)
    assert generate(model, torch.zeros(1, 4, dtype=torch.long), 5).tokens.shape == (1, 9)
    with pytest.raises(GenerationError, match="empty"):
        generate(plain_model(), torch.zeros(1, 0, dtype=torch.long), 5)


def test_a_cache_refuses_padding_and_a_second_route() -> None:
    model = routed_model()
    tokens = torch.randint(0, D_VOCAB, (2, 6), generator=torch.Generator().manual_seed(6))
    cache = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        model(tokens, route=torch.tensor([[0, 1, 2], [3, 2, 1]]), cache=cache)
        with pytest.raises(ValueError, match="another route"):
            model(tokens[:, :1], route=torch.tensor([[0, 1, 2], [3, 2, 0]]), cache=cache)
        with pytest.raises(ValueError, match="no padding"):
            plain_model()(tokens, torch.ones_like(tokens, dtype=torch.bool), cache=KVCache(2))
