"""Sampling text from a decoder: temperature, top-k and top-p (nucleus) filtering.

`choose_next` turns one step's logits into a token; `sample` is the simple loop that re-runs
the whole context for each new token (what the trainer uses for its end-of-run sample).
generation.py does the same with a KV cache, and tests/model/test_kv_cache.py proves the two agree.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

from transformer.model.decoder import DecoderEnds


def filter_logits(
    logits: Float[Tensor, "batch d_vocab"], top_k: int | None = None, top_p: float | None = None
) -> Float[Tensor, "batch d_vocab"]:
    """Set to -inf every logit outside the top k, and outside the smallest set of most likely
    tokens whose probabilities sum to at least top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token_logits(model: DecoderEnds, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
    """The last position's logits as a float32 copy: `[:, -1]` alone is a view that keeps the
    forward's whole batch x pos x d_vocab output alive for as long as a caller keeps the step
    (25 MB per step at n_ctx 128, d_vocab 50,304)."""
    return last_position(model(tokens).logits)


def last_position(logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch d_vocab"]:
    return logits[:, -1].to(torch.float32, copy=True)


def choose_next(
    logits: Float[Tensor, "batch d_vocab"],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "batch 1"]:
    """One token per row: a draw from softmax(filtered logits / temperature); temperature 0 is
    the argmax (greedy), the limit of ever smaller temperatures. Draws happen on the CPU, so a
    CPU `generator` serves a model on any device."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probabilities = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probabilities.cpu(), 1, generator=generator).to(logits.device)


@torch.no_grad()
def sample(
    model: DecoderEnds,
    prompt: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Int[Tensor, "batch total"]:
    """Prompt plus `max_new_tokens` sampled tokens; temperature 0 is greedy decoding."""
    n_ctx = model.cfg.n_ctx
    was_training = model.training
    model.eval()
    tokens = prompt
    for _ in range(max_new_tokens):
        logits = next_token_logits(model, tokens[:, -n_ctx:])
        tokens = torch.cat([tokens, choose_next(logits, temperature, top_k, top_p, generator)], dim=1)
    model.train(was_training)
    return tokens
