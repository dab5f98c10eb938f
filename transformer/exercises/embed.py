"""Exercise 2 (docs/modules/embed.md): the two ends of the residual stream.

Write `Embed.forward` (token ids -> rows of W_E) and `Unembed.forward` (residual stream ->
logits). The parameters already exist. Check with `transformer exercise embed`.
"""

from jaxtyping import Float, Int
from torch import Tensor

from transformer.model import embed as solution

__all__ = ["Embed", "Unembed"]


class Embed(solution.Embed):
    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """Row `tokens[b, p]` of W_E for every batch element b and position p.

        Hints: indexing a matrix with an integer tensor gathers rows. An id outside
        [0, d_vocab) must raise `IndexError` with a message naming d_vocab (a negative id would
        otherwise silently read from the end of the table)."""
        raise NotImplementedError("exercise: Embed.forward (docs/modules/embed.md)")


class Unembed(solution.Unembed):
    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        """One score per vocabulary entry: resid @ W_U + b_U.

        Hint: use the `self.weight` property, not `self.W_U`: with tied embeddings W_U is None
        and the weight is the embedding's W_E transposed."""
        raise NotImplementedError("exercise: Unembed.forward (docs/modules/embed.md)")
