"""Generating text with a KV cache: the prompt once, then one position per new token.

The loop is `sampling.sample`'s (logits of the last position -> `choose_next` -> append), but
the model is fed through a `KVCache` (transformer/model/kv_cache.py): the first call runs the
whole prompt and fills the cache, each later call feeds only the token just chosen.
tests/model/test_kv_cache.py proves the tokens and every step's logits equal those of full forwards.

Two rules, both documented in docs/generation.md:

- Routed decoder: the prompt must hold at least `route_prefix_len` (P) tokens, or generation
  stops with a `GenerationError`. The router chooses every layer from the first P positions,
  so before P tokens exist the model has no layers to run; training never scores a prediction
  made before the prefix either (transformer/training/lm_loss.py). Once the first call has read the prefix, the
  route is fixed and stored in the cache.
- Context overflow: while the whole text fits in `n_ctx`, the cache is used. Past it, the
  window slides: each new token costs a full forward of the last `n_ctx` tokens, without a
  cache, exactly as `sampling.sample` does. A cache cannot follow a sliding window exactly:
  every kept position moves (learned and sinusoidal positions are absolute), the keys of
  layers past the first were computed while the dropped tokens were still visible, and a
  routed model's window has a new routing prefix, so a new route.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.errors import UserError
from transformer.inference.sampling import choose_next, next_token_logits
from transformer.model.decoder import DecoderEnds
from transformer.model.kv_cache import KVCache


class GenerationError(UserError, ValueError):
    """A generation request that cannot work; the message says what to change."""


@dataclass
class Generation:
    tokens: Int[Tensor, "batch total"]  # the prompt, then the new tokens
    logits: Float[Tensor, "batch new d_vocab"]  # step t's next-token logits: new token t was drawn from them


def check_settings(
    max_new_tokens: int, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> None:
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not 0.0 <= temperature < float("inf"):
        raise GenerationError(f"temperature={temperature} must be >= 0 (0: greedy, 1: the model's own distribution)")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"top_k={top_k} must be >= 1 (or None for no top-k filter)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise GenerationError(f"top_p={top_p} must be in (0, 1] (1: no nucleus filter)")


def check_prompt(model: DecoderEnds, prompt_len: int) -> None:
    if prompt_len < 1:
        raise GenerationError("the prompt is empty: a decoder needs at least one token to predict the next")
    if prompt_len < model.min_prompt_len:  # only a routed decoder asks for more than one: its prefix
        prefix = model.min_prompt_len
        raise GenerationError(
            f"the prompt has {prompt_len} tokens, fewer than the routing prefix route_prefix_len={prefix}: "
            f"a routed model chooses its layers from its first {prefix} tokens, so give a longer prompt"
        )


def cached_logits(
    model: DecoderEnds, fresh: Int[Tensor, "batch new"], cache: KVCache
) -> Float[Tensor, "batch d_vocab"]:
    """Feed the tokens the cache has not seen; the next-token logits after the last of them."""
    last: Tensor = model(fresh, cache=cache).logits[:, -1].float()
    return last


@torch.no_grad()
def generate(
    model: DecoderEnds,
    prompt: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Generation:
    """The prompt plus `max_new_tokens` tokens, each drawn by `choose_next` (temperature 0:
    greedy). `sampling.sample`, a full forward per token, is the reference it must equal."""
    check_settings(max_new_tokens, temperature, top_k, top_p)
    check_prompt(model, prompt.shape[1])
    n_ctx = model.cfg.n_ctx
    was_training = model.training
    model.eval()
    cache: KVCache | None = model.new_cache()
    tokens, fresh = prompt, prompt  # fresh: the tokens the cache has not seen yet
    step_logits = []
    try:
        for _ in range(max_new_tokens):
            if cache is not None and tokens.shape[1] <= n_ctx:
                logits = cached_logits(model, fresh, cache)
            else:
                cache = None  # the window slides from here on: see the module docstring
                logits = next_token_logits(model, tokens[:, -n_ctx:])
            fresh = choose_next(logits, temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, fresh], dim=1)
            step_logits.append(logits)
    finally:
        model.train(was_training)
    if not step_logits:
        return Generation(tokens, torch.zeros(prompt.shape[0], 0, model.embed.W_E.shape[0], device=prompt.device))
    return Generation(tokens, torch.stack(step_logits, dim=1))
