"""The token-routed decoder: K steps, at each of which every token takes its own pool entry.

tokens -> Embed (+ positions) -> for each step k: the router reads each token's own normed
residual and picks an entry (a pool layer, or skip); the capacity admits tokens first come,
first served; the pool runs each admitted token through its layer (transformer/routing/dispatch.py)
-> final norm -> Unembed -> logits.

What makes it honest and cheap:
- Causal by construction: a token's choice, its admission and its layer's attention depend
  only on tokens at or before it, so every target is scored (`first_scored_target` 0) and a
  one-token prompt can be continued (`min_prompt_len` 1). tests/routing/test_token_causality.py.
- The value-exact gate (transformer/routing/gate.py), per token: out = y + (s - sg(s)) sg(y - x),
  with s the score of the token's own choice. The forward is exactly the layers' output, so
  with N = K and every token forced to layer k at step k the logits equal the plain decoder's
  bit for bit, and the layers get exactly the plain gradient; the router gets, per token,
  <dL/dout, y - x> times the gradient of its score. (Mixture-of-Depths instead multiplies the
  layer's output by the router weight: that changes the function the layers compute, breaks
  the equivalence, and is the "p" score, biased toward layers already likely.) A token that
  skipped or was dropped has y = x and sends no task gradient: reward 0, the natural baseline
  a layer's update is compared with.
- Skip (`RoutingConfig.skip`): entry N is the identity, no parameters, no compute. Compute is
  asked for less by a capacity below 1 and/or `compute_weight` times the expected number of
  layers a token goes through (sum over steps of 1 - p_skip), added to the aux loss.
- Balance (Switch) per step over the N layers only, counted over all tokens of the global
  batch (all ranks, the micro-batches of the optimizer step), with the probabilities
  renormalised over the layers: balancing skip too would fight `compute_weight`. z-loss over
  all entries.
- DDP without `find_unused_parameters`: a layer no token chose at any step never runs; its
  parameters join the graph as 0 * their sum in the aux loss, so they get a zero gradient as
  DDP requires, for nothing.
- Work done: `layers_per_token` (a training metric) is the mean number of layers that actually
  processed a token in the step; `active_parameters` counts the pool by the mean over all
  training so far (kept in the checkpoint), so FLOPs count only the work done.
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.model.config import ConfigError, ModelConfig
from transformer.model.decoder import DecoderOutput
from transformer.model.kv_cache import KVCache
from transformer.routing import losses as routing_losses
from transformer.routing.capacity import admit
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import NotRoutedError, RoutingInfo
from transformer.routing.dispatch import TokenPool
from transformer.routing.gate import choice_score, gate
from transformer.routing.routed_base import RoutedBase
from transformer.routing.token_cache import TokenKVCache, TokenStepCache
from transformer.routing.token_router import TokenRouter


@dataclass
class TokenRoutingInfo(RoutingInfo):
    """`RoutingInfo` with a choice per token: entries 0..N-1 are the pool's layers, N is skip."""

    layer_choices: Int[Tensor, "batch pos steps"]
    router_logits: Float[Tensor, "batch pos steps n_entries"]
    probabilities: Float[Tensor, "batch pos steps n_entries"]
    counts: Float[Tensor, "steps n_entries"]  # tokens choosing each entry (global when training)
    processed: Bool[Tensor, "batch pos steps"]  # a layer processed the token (not skipped, not dropped)
    applied: Float[Tensor, "steps n_entries"]  # tokens each layer processed (global when training)
    compute_loss: Float[Tensor, ""]  # expected layers per token under the router's probabilities
    layers_per_token: Float[Tensor, ""]  # layers that did process a token, per token
    dropped_fraction: Float[Tensor, ""]  # of the tokens choosing a layer, those over its capacity


class TokenRoutedDecoder(RoutedBase):
    router: TokenRouter
    work: Tensor

    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        if routing.granularity != "token":
            raise ConfigError(f"a token-routed decoder needs routing.granularity='token', got {routing.granularity!r}")
        super().__init__(cfg, routing)
        self.pool = TokenPool(cfg, routing.pool_size, co_routed=routing.token_attention == "co_routed")
        self.router = TokenRouter(cfg, routing)
        # layer applications and tokens over all training forwards so far (all ranks): the work done
        self.register_buffer("work", torch.zeros(2, dtype=torch.long))

    # --- the DecoderEnds interface ------------------------------------------------------------

    @property
    def pool_size(self) -> int:
        """Entries each token chooses among: the layers, and skip if there is one."""
        return self.routing.n_entries

    @property
    def choices_per_step(self) -> int:
        return self.routing.n_entries

    @property
    def route_granularity(self) -> str:
        return "token"

    def applied_counts(self, routing: Any) -> Tensor:
        info: TokenRoutingInfo = routing
        return info.applied

    def work_metrics(self, chosen: Tensor, applied: Tensor) -> dict[str, float]:
        """Over all tokens counted: layers that processed a token, per token; the share of layer
        requests the capacity turned away; and (with skip) the share of choices that were skip."""
        layers = self.routing.pool_size
        wanted = chosen[:, :layers].sum()
        metrics = {
            "layers_per_token": float(applied.sum() / chosen[0].sum().clamp_min(1.0)),
            "dropped_fraction": float((wanted - applied.sum()) / wanted.clamp_min(1.0)),
        }
        if self.routing.skip:
            metrics["skip_fraction"] = float(chosen[:, -1].sum() / chosen.sum().clamp_min(1.0))
        return metrics

    def active_parameters(self) -> int:
        """A token runs the pool's layers `layers_per_token` times: the mean over training so
        far, or before any training the most the capacity allows."""
        pool = sum(p.numel() for p in self.pool.parameters())
        applied, tokens = (int(count) for count in self.work.tolist())
        layers = applied / tokens if tokens else self.most_layers_per_token()
        return super().active_parameters() - pool + round(pool * layers / self.routing.pool_size)

    def most_layers_per_token(self) -> float:
        """K, or less when the capacity cannot take every token: each of the N layers takes at
        most capacity_factor / n_entries of the tokens per step."""
        factor = self.routing.capacity_factor
        share = 1.0 if factor is None else min(1.0, factor * self.routing.pool_size / self.routing.n_entries)
        return self.n_steps * share

    def new_cache(self) -> TokenKVCache:
        return TokenKVCache(self.n_steps)

    def training_metrics(self, output: DecoderOutput) -> dict[str, Any]:
        """The last micro-batch's counts cover the whole counting window: every micro-batch
        of the step, on every rank."""
        info: TokenRoutingInfo = output.routing
        metrics = self._usage_metrics(info) | {
            "layers_per_token": float(info.layers_per_token),
            "dropped_fraction": float(info.dropped_fraction),
        }
        if self.routing.skip:
            metrics["skip_fraction"] = float(info.counts[:, -1].sum() / info.counts.sum())
        return metrics

    # --- the forward pass ---------------------------------------------------------------------

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        route: Int[Tensor, "batch pos steps"] | None = None,
        cache: KVCache | None = None,
    ) -> DecoderOutput:
        """`route` forces each token's entry at each step (tests, baselines, analysis); the
        capacity still applies. `cache`: one from `new_cache`, for generation."""
        batch, pos = tokens.shape
        self._check_route(route, batch, pos)
        steps = self._step_caches(cache)
        offset = cache.length if cache is not None else 0
        resid = self.embed_tokens(tokens, offset)
        learned = self.routing.route_policy == "learned"
        choices, processed, all_logits, all_probabilities, used = [], [], [], [], set()
        weights = self.pool.new_weights()  # stacked once per forward, if a step batches its groups
        for step in range(self.n_steps):
            step_cache = steps[step] if steps is not None else None
            logits = self.router(resid, step)
            choice = route[..., step] if route is not None else self._choose(logits, step)
            probabilities = self.router.probabilities(logits)
            admitted = self.admit(choice, probabilities, offset, step_cache)
            layer_out, sizes = self.pool(resid, choice, admitted, offset, step_cache, key_padding_mask, weights)
            used |= {index for index, size in enumerate(sizes) if size}
            score = (
                choice_score(probabilities.flatten(0, 1), choice.flatten(), self.routing.gradient) if learned else None
            )
            resid = gate(resid.flatten(0, 1)[:, None], layer_out.flatten(0, 1)[:, None], score).view(resid.shape)
            choices.append(choice)
            processed.append(admitted)
            all_logits.append(logits)
            all_probabilities.append(probabilities)
        info = self._routing_info(
            torch.stack(choices, -1),
            torch.stack(processed, -1),
            torch.stack(all_logits, -2),
            torch.stack(all_probabilities, -2),
            used,
        )
        return DecoderOutput(self.logits(resid), aux_loss=info.aux_loss, routing=info)

    def admit(
        self,
        choice: Int[Tensor, "batch pos"],
        probabilities: Float[Tensor, "batch pos n_entries"],
        offset: int,
        cache: TokenStepCache | None,
    ) -> Bool[Tensor, "batch pos"]:
        """The tokens a layer takes (transformer/routing/capacity.py): causal, first come first
        served along positions; a cache carries each sequence's counts to the next call. Only
        the choices count, never the probabilities: ranking a layer's tokens by probability over
        the whole sequence (expert choice) would let later tokens evict earlier ones."""
        routing = self.routing
        before = cache.taken if cache is not None else None
        admitted, taken = admit(choice, routing.pool_size, routing.n_entries, routing.capacity_factor, offset, before)
        if cache is not None:
            cache.taken = taken
        return admitted

    def _check_route(self, route: Tensor | None, batch: int, pos: int) -> None:
        if route is None:
            return
        if route.shape != (batch, pos, self.n_steps):
            raise ValueError(f"route must have shape (batch, pos, steps) = {(batch, pos, self.n_steps)}")
        if route.numel() and (int(route.min()) < 0 or int(route.max()) >= self.routing.n_entries):
            skip = " and skip" if self.routing.skip else ""
            raise IndexError(
                f"route names entry {int(route.max())}; the pool has {self.routing.pool_size} layers{skip}"
            )

    @staticmethod
    def _step_caches(cache: KVCache | None) -> list[TokenStepCache] | None:
        if cache is None:
            return None
        if not isinstance(cache, TokenKVCache):
            raise ValueError("a token-routed decoder keeps its keys by position and step: use model.new_cache()")
        return cache.steps

    def _choose(self, logits: Float[Tensor, "batch pos n_entries"], step: int) -> Int[Tensor, "batch pos"]:
        """The router's choice, or a baseline policy's: "fixed" sends every token to layer k at
        step k (mod N); "random" draws an entry uniformly per token, in training from the
        router's generator, in evaluation from a fresh one seeded with `routing.seed`."""
        policy, shape, entries = self.routing.route_policy, logits.shape[:2], self.routing.n_entries
        if policy == "fixed":
            return torch.full(shape, step % self.routing.pool_size, dtype=torch.long, device=logits.device)
        if policy == "random":
            generator = self._random_policy_generator(step)
            return torch.randint(entries, shape, generator=generator).to(logits.device)
        return self.router.choose(logits)

    # --- what the routes cost and owe ---------------------------------------------------------

    def _routing_info(
        self,
        choices: Int[Tensor, "batch pos steps"],
        processed: Bool[Tensor, "batch pos steps"],
        logits: Float[Tensor, "batch pos steps n_entries"],
        probabilities: Float[Tensor, "batch pos steps n_entries"],
        used: set[int],
    ) -> TokenRoutingInfo:
        counts = self._count(choices, processed)
        if self.training:
            self._record_work(counts)
        counts = self._window_total(counts)
        chosen, applied = counts[0], counts[1]
        n_layers, steps = self.routing.pool_size, self.n_steps
        flat = probabilities.reshape(-1, steps, self.routing.n_entries)
        layer_probabilities = flat[..., :n_layers]
        if self.routing.skip:  # balance the layers among themselves, whatever skip takes
            layer_probabilities = layer_probabilities / layer_probabilities.sum(-1, keepdim=True).clamp_min(1e-30)
        balance = routing_losses.balance_loss(chosen[:, :n_layers], layer_probabilities)
        z = routing_losses.z_loss(logits.reshape(-1, steps, self.routing.n_entries))
        compute = flat[..., :n_layers].sum(dim=(-1, -2)).mean()
        weights = self.routing
        aux = weights.balance_weight * balance + weights.z_loss_weight * z + weights.compute_weight * compute
        wanted = chosen[:, :n_layers].sum()
        return TokenRoutingInfo(
            layer_choices=choices,
            router_logits=logits,
            probabilities=probabilities,
            counts=chosen,
            processed=processed,
            applied=applied,
            usage_entropy=routing_losses.usage_entropy(chosen),
            decision_entropy=routing_losses.decision_entropy(flat.detach()),
            balance_loss=balance,
            z_loss=z,
            compute_loss=compute,
            layers_per_token=applied.sum() / chosen[0].sum().clamp_min(1.0),
            dropped_fraction=(wanted - applied.sum()) / wanted.clamp_min(1.0),
            aux_loss=aux + self._zero_for_unused(used),
        )

    def _count(
        self, choices: Int[Tensor, "batch pos steps"], processed: Bool[Tensor, "batch pos steps"]
    ) -> Float[Tensor, "2 steps n_entries"]:
        """Tokens choosing each entry and tokens each layer processed, per step: one bincount
        each, summed over ranks in training (one all-reduce)."""
        steps, entries = self.n_steps, self.routing.n_entries
        index = (choices + entries * torch.arange(steps, device=choices.device)).flatten()
        chosen = torch.bincount(index, minlength=steps * entries).float()
        applied = torch.bincount(index, weights=processed.flatten().float(), minlength=steps * entries)
        counts = torch.stack([chosen, applied]).view(2, steps, entries)
        if self.training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        return counts

    def _record_work(self, counts: Float[Tensor, "2 steps n_entries"]) -> None:
        """Add this forward's layer applications and tokens to the running total (no host sync)."""
        done = torch.stack([counts[1].sum(), counts[0, 0].sum()]).round().long()
        self.work += done.to(self.work.device)

    def _zero_for_unused(self, used: set[int]) -> Tensor | float:
        """0 * the sum of every parameter of the layers no token went through: a zero gradient
        for each (what DDP needs from every parameter), without running them."""
        if not torch.is_grad_enabled():
            return 0.0
        idle = [
            p.sum() for index, layer in enumerate(self.pool.layers) if index not in used for p in layer.parameters()
        ]
        return 0.0 * torch.stack(idle).sum() if idle else 0.0


def as_token_routed(model: nn.Module, needed_by: str = "this") -> TokenRoutedDecoder:
    """`model` typed as the token-routed decoder it is, for callers that read per-token routes
    (after checking `model.route_granularity`)."""
    if not isinstance(model, TokenRoutedDecoder):
        raise NotRoutedError(f"{needed_by} needs a token-routed decoder, not a {type(model).__name__}")
    return model
