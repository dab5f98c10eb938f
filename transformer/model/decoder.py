"""The plain decoder: tokens -> Embed (+ positions) -> n_layers in a fixed order -> norm -> Unembed.

This is GPT-2's shape. The routed decoder (transformer/routing/decoder.py) reuses every part of
it and replaces only the fixed order of layers with a router's choice from a pool.
With a `KVCache` (see kv_cache.py here and transformer/inference/generation.py), `tokens` are the
positions after those already cached, and the logits are theirs alone.
"""

import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.model.config import ConfigError, ModelConfig
from transformer.model.embed import Embed, Unembed
from transformer.model.kv_cache import KVCache
from transformer.model.layer import TransformerLayer
from transformer.model.norm import make_norm
from transformer.model.positions import LearnedPositions, SinusoidalPositions


def make_positions(cfg: ModelConfig) -> LearnedPositions | SinusoidalPositions | None:
    """Absolute positions live here; rotary and ALiBi live inside attention."""
    if cfg.positional == "learned":
        return LearnedPositions(cfg.n_ctx, cfg.d_model, cfg.init_std)
    if cfg.positional == "sinusoidal":
        return SinusoidalPositions(cfg.n_ctx, cfg.d_model)
    return None


class DecoderEnds(nn.Module):
    """What every decoder shares around its layers: embedding and positions in, norm and
    unembedding out. The plain and routed decoders differ only in what runs in between."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_vocab is None:
            raise ConfigError(
                "model.d_vocab is not set: give it, or fill in the tokenizer's size with RunConfig.with_vocab"
            )
        self.cfg = cfg
        self.embed = Embed(cfg.d_vocab, cfg.d_model, cfg.init_std)
        self.pos_embed = make_positions(cfg)
        self.ln_final = make_norm(cfg)
        self.unembed = Unembed(
            cfg.d_model, cfg.d_vocab, cfg.init_std, tied_to=self.embed if cfg.tie_embeddings else None
        )

    def embed_tokens(self, tokens: Int[Tensor, "batch pos"], offset: int = 0) -> Float[Tensor, "batch pos d_model"]:
        """`offset`: the absolute position of the first token (the KV cache's length)."""
        if offset + tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence of {offset + tokens.shape[1]} tokens is longer than the model's context "
                f"n_ctx={self.cfg.n_ctx}: crop the input to its last {self.cfg.n_ctx} tokens"
            )
        resid: Tensor = self.embed(tokens)
        if self.pos_embed is not None:
            resid = resid + self.pos_embed(tokens, offset)
        return F.dropout(resid, self.cfg.dropout, self.training)

    def logits(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        logits: Tensor = self.unembed(self.ln_final(resid))
        return logits


class Decoder(DecoderEnds):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        resid = self.embed_tokens(tokens, cache.length if cache is not None else 0)
        for index, layer in enumerate(self.layers):
            resid = layer(resid, key_padding_mask, cache.layers[index] if cache is not None else None)
        return self.logits(resid)
