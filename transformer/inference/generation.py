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

And one bound: `stream` holds at most `n_ctx` cached positions and the last `n_ctx` tokens,
so memory stays flat however many tokens it writes (`transformer generate` keeps only the
ids); a request is at most `MAX_NEW_TOKENS`.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from math import inf

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.errors import UserError
from transformer.inference.limits import MAX_NEW_TOKENS
from transformer.inference.sampling import choose_next, last_position, next_token_logits
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
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise GenerationError(
            f"max_new_tokens={max_new_tokens} must be between 0 and {MAX_NEW_TOKENS:,} "
            "(past the context each new token costs a full forward)"
        )
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
    """Feed the tokens the cache has not seen; the next-token logits after the last of them
    (a copy, as in `next_token_logits`: not a view holding the prefill's whole output)."""
    return last_position(model(fresh, cache=cache).logits)


@torch.no_grad()
def stream(
    model: DecoderEnds,
    prompt: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    n_decodable: int | None = None,
) -> Iterator[tuple[Int[Tensor, "batch 1"], Float[Tensor, "batch d_vocab"]]]:
    """Each new token with the logits it was drawn from, one step at a time.

    What it holds stays bounded however long it runs: the cache (at most `n_ctx` positions,
    dropped once the window slides) and the last `n_ctx` tokens. The caller decides what to
    keep; `generate` keeps everything, `transformer generate` only the ids.

    `n_decodable`: ids at and above it get logit -inf, so they are never drawn. A `d_vocab`
    padded above the tokenizer's size (e.g. to 50304) has rows no text maps to; an
    untrained or damaged model may still rank them high, and the tokenizer cannot decode them.
    """
    check_settings(max_new_tokens, temperature, top_k, top_p)
    check_prompt(model, prompt.shape[1])
    n_ctx = model.cfg.n_ctx
    was_training = model.training
    model.eval()
    cache: KVCache | None = model.new_cache()
    total = prompt.shape[1]  # tokens so far: prompt and new ones
    window, fresh = prompt[:, -n_ctx:], prompt  # fresh: the tokens the cache has not seen yet
    try:
        for _ in range(max_new_tokens):
            if cache is not None and total <= n_ctx:
                logits = cached_logits(model, fresh, cache)
            else:
                cache = None  # the window slides from here on: see the module docstring
                logits = next_token_logits(model, window)
            if n_decodable is not None and n_decodable < logits.shape[-1]:
                logits = logits.masked_fill(torch.arange(logits.shape[-1], device=logits.device) >= n_decodable, -inf)
            fresh = choose_next(logits, temperature, top_k, top_p, generator)
            window = torch.cat([window, fresh], dim=1)[:, -n_ctx:]
            total += 1
            yield fresh, logits
    finally:
        model.train(was_training)


def generate(
    model: DecoderEnds,
    prompt: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    n_decodable: int | None = None,
) -> Generation:
    """The prompt plus `max_new_tokens` tokens, each drawn by `choose_next` (temperature 0:
    greedy), and every step's logits. `sampling.sample`, a full forward per token, is the
    reference it must equal. It keeps batch x new x d_vocab floats of logits (1.6 GB for 8,000
    tokens of a 50,304-id vocabulary): for long texts use `stream` and keep only the ids."""
    steps = list(stream(model, prompt, max_new_tokens, temperature, top_k, top_p, generator, n_decodable))
    if not steps:
        return Generation(prompt, torch.zeros(prompt.shape[0], 0, model.embed.W_E.shape[0], device=prompt.device))
    return Generation(
        torch.cat([prompt, *(token for token, _ in steps)], dim=1), torch.stack([logits for _, logits in steps], dim=1)
    )
