"""The plain decoder: tokens -> Embed (+ positions) -> n_layers in a fixed order -> norm -> Unembed.

This is GPT-2's shape. The routed decoder (transformer/routing/decoder.py) reuses every part of
it and replaces only the fixed order of layers with a router's choice from a pool.
With a `KVCache` (see kv_cache.py here and transformer/inference/generation.py), `tokens` are the
positions after those already cached, and the logits are theirs alone.

Both decoders return a `DecoderOutput` and answer the same questions through `DecoderEnds`
(which targets are scored, how long a prompt must be, what one training step sets, what a
checkpoint keeps), so training, generation and analysis never ask which decoder they hold.
The plain answers live here; the routed decoder overrides them.
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

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


DecoderKind = Literal["plain", "routed"]


@dataclass
class DecoderOutput:
    """What one forward pass of either decoder returns."""

    logits: Float[Tensor, "batch pos d_vocab"]
    # What the objective adds to the language-model loss (the routed decoder's balance and z
    # losses); None when there is nothing to add.
    aux_loss: Float[Tensor, ""] | None = None
    # The routed decoder's `transformer.routing.decoder.RoutingInfo`; None for the plain one.
    # `Any`, because model/ may not import routing/ (see pyproject.toml's import contracts).
    routing: Any = None


class DecoderEnds(nn.Module):
    """What every decoder shares around its layers: embedding and positions in, norm and
    unembedding out. The plain and routed decoders differ only in what runs in between.

    The methods and properties below hold the plain decoder's answer to everything that
    depends on the kind of decoder; `RoutedDecoder` overrides them."""

    kind: ClassVar[DecoderKind] = "plain"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.d_vocab is None:
            raise ConfigError(
                "model.d_vocab is not set: give it, or fill in the tokenizer's size with RunConfig.with_vocab"
            )
        if not cfg.causal:
            raise ConfigError(
                "model.causal=false lets each position see the tokens it must predict: a decoder needs causal: true"
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

    # --- what depends on the kind of decoder (plain answers; RoutedDecoder overrides) ------

    @property
    def n_steps(self) -> int:
        """Layers one token passes through, whichever layers they are."""
        return self.cfg.n_layers

    @property
    def pool_size(self) -> int:
        """Entries in the pool the steps draw from, all steps together (with per-step pools a
        step sees only its own share: `choices_per_step`); a plain decoder's step k always runs
        its layer k."""
        return 1

    @property
    def choices_per_step(self) -> int:
        """Entries one step chooses among, so a route is one of choices_per_step ** n_steps."""
        return 1

    @property
    def route_granularity(self) -> str | None:
        """What one route decision covers: "sequence", "token", or None (no routes)."""
        return None

    @property
    def route_temperature(self) -> float | None:
        """The temperature sampled routes are drawn at now; None: this decoder draws none."""
        return None

    @property
    def first_scored_target(self) -> int:
        """The first target position the training loss scores (see training/lm_loss.py)."""
        return 0

    @property
    def min_prompt_len(self) -> int:
        """The fewest prompt tokens generation can start from: one, to predict the next."""
        return 1

    def active_parameters(self) -> int:
        """Weights one token's forward pass multiplies by, for FLOP counts: embedding tables
        are lookups, not multiplies."""
        return sum(p.numel() for name, p in self.named_parameters() if not name.endswith(("W_E", "W_pos")))

    def set_training_step(self, step: int, total_steps: int) -> None:
        """Set what is scheduled over training (a routed decoder's route temperature) for the
        update `step` of `total_steps`; a plain decoder has no schedule of its own."""

    def set_trained_steps(self, steps: int, total_steps: int) -> None:
        """Set the schedule as it stood when `steps` updates were done, so a loaded checkpoint
        behaves as training last saw it."""

    def counting_window(self) -> contextlib.AbstractContextManager[None]:
        """Mark the forwards inside the block as the micro-batches of one optimizer step: a
        routed decoder balances its layer usage over all of them; a plain one counts nothing."""
        return contextlib.nullcontext()

    def seed_route_rng(self, derive: Callable[[int], int]) -> None:
        """Restart the random stream routes are drawn from at `derive(the routing seed)`;
        `derive` mixes in what must differ (each distributed rank draws its own routes)."""

    def route_rng_state(self) -> Tensor | None:
        """The route stream's state, which a checkpoint keeps for an exact resume; None: this
        decoder draws no routes."""
        return None

    def set_route_rng_state(self, state: Tensor | None) -> None:
        """Continue the route stream from a state `route_rng_state` returned."""

    def new_cache(self) -> KVCache:
        """An empty KV cache for generation: one `LayerCache` per layer (or routing step). A
        token-routed decoder keeps more per step (its holes and choices) and makes its own."""
        return KVCache(self.cfg.n_layers)

    def applied_counts(self, routing: Any) -> Tensor | None:
        """Tokens each pool layer processed at each step in one forward (its `routing` info),
        for evaluation's totals; None where every token runs one layer every step."""
        return None

    def work_metrics(self, chosen: Tensor, applied: Tensor) -> dict[str, float]:
        """Layers per token, dropped and skipped shares, from summed `routing.counts` (`chosen`)
        and `applied_counts`; empty where a token always runs n_steps layers."""
        return {}

    def training_metrics(self, output: DecoderOutput) -> dict[str, Any]:
        """What a training log record adds from an optimizer step's last forward `output`."""
        return {}

    def reward_term(self, output: DecoderOutput, targets: Tensor) -> Tensor | None:
        """A term the objective adds to the loss, zero in value, whose gradient carries a reward
        the forward could not (a token-routed decoder's readout reward); None for the others."""
        return None

    def sampled_routes(self, seed: int) -> contextlib.AbstractContextManager[None]:
        """Inside the block, forwards draw routes as training does, from a stream seeded with
        `seed`, so evaluation sees what training saw without shifting training's own stream."""
        raise ValueError("sampled routes need a routed decoder")


class Decoder(DecoderEnds):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layers))

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        cache: KVCache | None = None,
    ) -> DecoderOutput:
        resid = self.embed_tokens(tokens, cache.length if cache is not None else 0)
        for index, layer in enumerate(self.layers):
            resid = layer(resid, key_padding_mask, cache.layers[index] if cache is not None else None)
        return DecoderOutput(self.logits(resid))
