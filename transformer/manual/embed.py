"""The two ends by hand: token (and position) embedding in, unembedding and cross-entropy out.

Embedding: resid[b, p] = W_E[tokens[b, p]] + W_pos[p]. A lookup is a matrix product with a
one-hot matrix, so its backward scatters: row t of dL/dW_E is the sum of dL/dresid over every
position holding token t (`index_add_`; a token seen twice gets both contributions), and row p
of dL/dW_pos is the sum over the batch of dL/dresid at position p.

Unembedding with cross-entropy, per scored position (N of them):
    logits = x W_U + b_U,   L = mean over scored positions of -log softmax(logits)[target]
    dL/dlogits = (softmax(logits) - onehot(target)) / N,  and 0 at unscored positions
    dL/dW_U = x^T dL/dlogits,   dL/db_U = sum of dL/dlogits,   dL/dx = dL/dlogits W_U^T
A target equal to `IGNORE` (-100, PyTorch's `ignore_index`) is not scored: padding.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.manual.block import Grads, ManualBackpropError
from transformer.model.decoder import DecoderEnds
from transformer.model.positions import LearnedPositions

IGNORE = -100


@dataclass(frozen=True)
class ManualEmbed:
    """Token embedding plus absolute positions, reading `ends.embed` and `ends.pos_embed`."""

    ends: DecoderEnds

    def __post_init__(self) -> None:
        if self.ends.cfg.positional not in ("learned", "sinusoidal", "none"):
            raise ManualBackpropError(
                f"positional={self.ends.cfg.positional!r} acts inside attention, which the hand-written "
                "backward does not cover: use 'learned', 'sinusoidal' or 'none'"
            )

    def forward(self, tokens: Tensor) -> Tensor:
        """Nothing to save: the backward needs only the token ids."""
        resid = self.ends.embed.W_E[tokens]
        if self.ends.pos_embed is not None:
            resid = resid + self.ends.pos_embed.W_pos[: tokens.shape[1]]
        return resid

    def backward(self, tokens: Tensor, d_resid: Tensor) -> Grads:
        W_E = self.ends.embed.W_E
        flat = d_resid.reshape(-1, d_resid.shape[-1])
        grads = {"embed.W_E": torch.zeros_like(W_E).index_add_(0, tokens.reshape(-1), flat)}
        if isinstance(self.ends.pos_embed, LearnedPositions):  # sinusoidal: a fixed table, no gradient
            d_pos = torch.zeros_like(self.ends.pos_embed.W_pos)
            d_pos[: tokens.shape[1]] = d_resid.sum(0)
            grads["pos_embed.W_pos"] = d_pos
        return grads


@dataclass(frozen=True)
class LossSaved:
    x: Tensor
    probabilities: Tensor
    targets: Tensor
    scored: Tensor  # bool, targets != IGNORE
    n_scored: int


@dataclass(frozen=True)
class ManualUnembedLoss:
    """Logits from the final (normed) residual stream, and their mean cross-entropy."""

    ends: DecoderEnds

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, LossSaved]:
        logits = x @ self.ends.unembed.weight + self.ends.unembed.b_U
        log_probs = logits - torch.logsumexp(logits, -1, keepdim=True)
        scored = targets != IGNORE
        n_scored = int(scored.sum())
        picked = log_probs.gather(-1, torch.where(scored, targets, 0)[..., None])[..., 0]
        loss = -(picked * scored).sum() / n_scored
        return loss, LossSaved(x, log_probs.exp(), targets, scored, n_scored)

    def backward(self, saved: LossSaved) -> tuple[Tensor, Grads]:
        """dL/dx and the unembedding's gradients, for the loss L itself (dL/dL = 1)."""
        one_hot = torch.zeros_like(saved.probabilities)
        one_hot.scatter_(-1, torch.where(saved.scored, saved.targets, 0)[..., None], 1.0)
        d_logits = (saved.probabilities - one_hot) * saved.scored[..., None] / saved.n_scored
        flat_x, flat_d = saved.x.reshape(-1, saved.x.shape[-1]), d_logits.reshape(-1, d_logits.shape[-1])
        unembed = self.ends.unembed
        grads: Grads = {"unembed.b_U": flat_d.sum(0)}
        d_weight = flat_x.T @ flat_d  # [d_model, d_vocab]
        if unembed.W_U is not None:
            grads["unembed.W_U"] = d_weight
        else:  # tied: W_U is W_E^T, so its gradient joins the embedding's, transposed
            grads["embed.W_E"] = d_weight.T
        return d_logits @ unembed.weight.T, grads
