"""Synthetic tasks only attention can solve, and a small training loop to learn them.

`uniform_tokens` + "predict the token k positions back": the target is independent of the
current token and of the position, so a model whose positions cannot talk to each other is
stuck at chance, 1/d_vocab. One attention head that looks k back solves it exactly.

`repeated_halves`: a random first half, then the same tokens again. The first half is
unpredictable (loss ln(d_vocab) is the best possible); in the second half each next token is
the one that followed the current token's earlier occurrence. Finding it takes two steps of
composition (an induction head): layer 0 writes "my previous token" into each position, and
layer 1 looks for the position whose previous token is the current one. One layer cannot.
The half length varies between batches so "look L - 1 back" (a one-layer trick) does not work.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import jaxtyping
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transformer.analysis.interp.heads import repeated_distinct_tokens
from transformer.model.decoder import Decoder
from transformer.model.layer import TransformerLayer


def uniform_tokens(generator: torch.Generator, batch: int, seq_len: int, d_vocab: int) -> Tensor:
    return torch.randint(0, d_vocab, (batch, seq_len), generator=generator)


# [batch, 2 * half]: distinct tokens, then the same again; the package's generator, so
# experiments/induction_heads.py trains on exactly this task.
repeated_halves = repeated_distinct_tokens


def attention_patterns(model: Decoder, tokens: Tensor) -> list[Tensor]:
    """Each layer's attention pattern [batch, n_heads, q, k] on `tokens`, computed as the readable
    path computes it: the layer's own `project`, rotary, ALiBi bias, `allowed` and `pattern`.
    For a plain `Decoder` without padding or cache."""
    patterns = []
    with torch.no_grad():
        resid = model.embed_tokens(tokens)
        pos = tokens.shape[1]
        for layer in model.layers:
            assert isinstance(layer, TransformerLayer)
            attn, x = layer.attn, layer.ln1(resid)
            q, k = attn.project(x, attn.W_Q, attn.b_Q), attn.project(x, attn.W_K, attn.b_K)
            if attn.rotary is not None:
                q, k = attn.rotary(q), attn.rotary(k)
            bias = attn.alibi(pos, pos) if attn.alibi is not None else None
            patterns.append(attn.pattern(q, k, attn.allowed(pos, None, tokens.device), bias))
            resid = layer(resid)
    return patterns


def attention_on_offset(pattern: Tensor, offset: int, first_query: int) -> Tensor:
    """[n_heads]: each head's mean attention from query p to key p - offset, over the batch and
    the queries p >= first_query (1.0: the head looks exactly `offset` back, always)."""
    queries = torch.arange(first_query, pattern.shape[2])
    return pattern[:, :, queries, queries - offset].mean(dim=(0, 2))


def next_token_losses(model: nn.Module, tokens: Tensor) -> Tensor:
    """[batch, pos - 1]: cross-entropy of predicting tokens[:, t + 1] at position t."""
    logits = model(tokens).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")


@contextmanager
def shape_checks_paused() -> Iterator[None]:
    """Runtime shape checks cost ~2.5x the compute of these tiny models. Step 0 of a training
    run is checked like any other call; the identical steps after it need not be."""
    was_disabled = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", was_disabled)


def train(model: nn.Module, loss_of_step: Callable[[int], Tensor], steps: int, lr: float) -> float:
    """AdamW without weight decay; `loss_of_step(step)` draws a batch and returns its loss.
    Returns the last step's loss."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)

    def step(index: int) -> float:
        loss = loss_of_step(index)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    last = step(0)
    with shape_checks_paused():
        for index in range(1, steps):
            last = step(index)
    return last
