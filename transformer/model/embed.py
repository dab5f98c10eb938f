"""Tokens in, logits out: the two ends of the residual stream.

`Embed` looks each token's row up in W_E; `Unembed` reads the final residual stream back out
as one score per vocabulary entry. Alone, the pair is a bigram model: logits for the next
token depend only on the current one, through W_E @ W_U (tests/model/test_embed.py shows it
learns a Markov chain's transition table down to the chain's entropy).
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(d_vocab, d_model) * init_std)

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """Ids out of range raise, without making a GPU wait: on the CPU the check reads the ids
        (nothing is queued there, so reading costs nothing); on another device it is queued as an
        asynchronous device-side assert, because reading the ids back would stall the host on every
        forward. The trainer checks each batch's ids on the host before it is copied over
        (`TokenData.sample_windows`), so there a bad id is a one-line error, not a device assert."""
        if not tokens.numel():
            return self.W_E[tokens]
        d_vocab = self.W_E.shape[0]
        if tokens.device.type != "cpu":
            in_range = (tokens.min() >= 0) & (tokens.max() < d_vocab)
            torch._assert_async(
                in_range, f"token ids must lie in [0, {d_vocab}): is the vocabulary larger than d_vocab?"
            )
            return self.W_E[tokens]
        low, high = (int(bound) for bound in torch.aminmax(tokens))
        if low < 0 or high >= d_vocab:
            raise IndexError(
                f"token ids must lie in [0, {d_vocab}); got min {low}, max {high}: "
                "is the tokenizer's vocabulary larger than d_vocab?"
            )
        return self.W_E[tokens]


class Unembed(nn.Module):
    """Logits = resid @ W_U + b_U. With `tied_to`, W_U is the embedding's W_E transposed
    (one matrix both reads and writes tokens; saves d_vocab * d_model parameters)."""

    def __init__(self, d_model: int, d_vocab: int, init_std: float = 0.02, tied_to: Embed | None = None) -> None:
        super().__init__()
        # A plain list keeps the tied Embed out of this module's children: its parameter is
        # owned (and saved, and counted) once, by the Embed.
        self._tied_to = [tied_to] if tied_to is not None else []
        self.W_U = None if tied_to else nn.Parameter(torch.randn(d_model, d_vocab) * init_std)
        self.b_U = nn.Parameter(torch.zeros(d_vocab))

    @property
    def weight(self) -> Float[Tensor, "d_model d_vocab"]:
        if self.W_U is not None:
            return self.W_U
        return self._tied_to[0].W_E.T

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return resid @ self.weight + self.b_U
