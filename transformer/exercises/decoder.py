"""Exercise 10 (docs/modules/decoder.md): the whole GPT.

Write `Decoder.forward`. The parts already exist: `self.embed_tokens(tokens, offset)` (embedding
plus absolute positions), `self.layers` (the TransformerLayers, in order) and
`self.logits(resid)` (final norm and unembedding). Check with `transformer exercise decoder`.
"""

from jaxtyping import Bool, Int
from torch import Tensor

from transformer.model import decoder as solution
from transformer.model.kv_cache import KVCache

__all__ = ["Decoder"]


class Decoder(solution.Decoder):
    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
    ) -> solution.DecoderOutput:
        """Embed the tokens, run every layer in order on the residual stream, and return
        `DecoderOutput(logits)`.

        Hints: with a cache the new tokens start at position `cache.length`, and layer i gets
        `cache.layers[i]`; every layer gets the `key_padding_mask`."""
        raise NotImplementedError("exercise: Decoder.forward (docs/modules/decoder.md)")
