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
- Learning to skip needs more than the gate: the readout normalises the residual, so the gate's
  reward, the effect of *scaling* an update, is near zero for a layer whose update dominates it,
  however much removing the layer would cost. `reward: readout` swaps the direct part of each
  step's reward for the exact loss change at the readout when the step's update is removed
  (`readout_reward`, which `compute_objective` adds through `reward_term`), and `warm_start_steps` lets the layers
  learn before the router judges them (docs/routing.md, section 12).
- Per-step pools (`RoutingConfig.pools`): step k chooses among its own layers and skip, with the
  capacity counted among those entries. With N = K and skip each step is its own layer or skip:
  Mixture-of-Depths, causal because each token decides for itself.
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
import torch.nn.functional as F
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
from transformer.routing.tally import tally
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
    readout: "ReadoutTerms | None" = None  # with `reward: readout`, in training: what `readout_reward` needs


@dataclass
class ReadoutTerms:
    """What the readout reward needs from a forward: the final residual, each step's update of
    each token (zero where it skipped or was dropped) and each choice's score, all per token."""

    final: Float[Tensor, "batch pos d_model"]  # detached
    updates: Float[Tensor, "steps batch pos d_model"]  # detached
    scores: Float[Tensor, "steps batch pos"]  # differentiable: the router's gradient goes through them


class TokenRoutedDecoder(RoutedBase):
    router: TokenRouter
    work: Tensor

    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        if routing.granularity != "token":
            raise ConfigError(f"a token-routed decoder needs routing.granularity='token', got {routing.granularity!r}")
        super().__init__(cfg, routing)
        self.pool = TokenPool(cfg, routing.pool_size, co_routed=routing.token_attention == "co_routed")
        self.router = TokenRouter(cfg, routing)
        self.warm_starting = routing.warm_start_steps > 0  # before any update, update 0's routes
        # layer applications and tokens over all training forwards so far (all ranks): the work done
        self.register_buffer("work", torch.zeros(2, dtype=torch.long))

    # --- the DecoderEnds interface ------------------------------------------------------------

    @property
    def pool_size(self) -> int:
        """Entries each token chooses among: the layers, and skip if there is one."""
        return self.routing.n_entries

    @property
    def choices_per_step(self) -> int:
        """Entries one step chooses among: its own layers (all N, or N / K per step), and skip."""
        return len(self.router.step_layers[0]) + int(self.routing.skip)

    def set_training_step(self, step: int, total_steps: int) -> None:
        """Sampled routes at an annealed temperature; the first `warm_start_steps` updates route
        every token to step k's fixed layer instead, so that each layer learns something before
        the router weighs it: a layer the router sends no token never learns, and a reward then
        finds nothing in it. Both follow from the step alone, so a resume is exact."""
        super().set_training_step(step, total_steps)
        self.warm_starting = step < self.routing.warm_start_steps

    def set_trained_steps(self, steps: int, total_steps: int) -> None:
        """Routes as the update that made checkpoint `steps` took them: fixed during the warm start."""
        super().set_trained_steps(steps, total_steps)
        self.warm_starting = max(steps - 1, 0) < self.routing.warm_start_steps

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
        """K, or less when the capacity cannot take every token: each of a step's layers takes at
        most capacity_factor / (entries the step chooses among) of the tokens."""
        factor, layers = self.routing.capacity_factor, len(self.router.step_layers[0])
        share = 1.0 if factor is None else min(1.0, factor * layers / self.choices_per_step)
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

    def reward_term(self, output: DecoderOutput, targets: Tensor) -> Tensor | None:
        """With `reward: readout`, in training: `readout_reward` for this forward."""
        info: TokenRoutingInfo = output.routing
        return readout_reward(self, info.readout, targets) if info.readout is not None else None

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
        learned = self.routing.route_policy == "learned" and not self.warm_starting
        choices, processed, all_logits, all_probabilities, used = [], [], [], [], set()
        updates: list[Tensor] = []
        scores: list[Tensor] = []
        weights = self.pool.new_weights()  # stacked once per forward, if a step batches its groups
        for step in range(self.n_steps):
            step_cache = steps[step] if steps is not None else None
            logits = self.router(resid, step)
            choice = route[..., step] if route is not None else self._choose(logits, step)
            probabilities = self.router.probabilities(logits)
            admitted = self.admit(choice, probabilities, offset, step_cache, step)
            layer_out, sizes = self.pool(resid, choice, admitted, offset, step_cache, key_padding_mask, weights)
            used |= {index for index, size in enumerate(sizes) if size}
            score = (
                choice_score(probabilities.flatten(0, 1), choice.flatten(), self.routing.gradient) if learned else None
            )
            if score is not None and self.routing.reward == "readout" and torch.is_grad_enabled():
                updates.append((layer_out - resid).detach())
                scores.append(score.view(batch, pos))
            resid = gate(resid.flatten(0, 1)[:, None], layer_out.flatten(0, 1)[:, None], score).view(resid.shape)
            choices.append(choice)
            processed.append(admitted)
            all_logits.append(logits)
            all_probabilities.append(probabilities)
        readout = None
        if updates:
            resid = self._without_direct_first_order(resid, updates, scores)
            readout = ReadoutTerms(resid.detach(), torch.stack(updates), torch.stack(scores))
        info = self._routing_info(
            torch.stack(choices, -1),
            torch.stack(processed, -1),
            torch.stack(all_logits, -2),
            torch.stack(all_probabilities, -2),
            used,
        )
        info.readout = readout
        return DecoderOutput(self.logits(resid), aux_loss=info.aux_loss, routing=info)

    @staticmethod
    def _without_direct_first_order(
        final: Float[Tensor, "batch pos d_model"], updates: list[Tensor], scores: list[Tensor]
    ) -> Float[Tensor, "batch pos d_model"]:
        """The final residual, unchanged in value, whose backward takes the direct part out of
        each step's gate reward: the gate gave step k's score <g_k, u_k> (g_k: dL/d residual after
        step k); a residual add passes dL/d final = g_K straight back, so <g_K, u_k> is the part
        of it that reaches the loss through the readout alone. Adding (s_k - sg(s_k)) * sg(-u_k)
        here subtracts exactly that, leaving the first-order effect through later steps; the
        readout reward puts back the direct part, exactly instead of to first order."""
        for update, score in zip(updates, scores, strict=True):
            final = final + (score - score.detach()).to(final.dtype)[..., None] * (-update)
        return final

    def admit(
        self,
        choice: Int[Tensor, "batch pos"],
        probabilities: Float[Tensor, "batch pos n_entries"],
        offset: int,
        cache: TokenStepCache | None,
        step: int = 0,
    ) -> Bool[Tensor, "batch pos"]:
        """The tokens a layer takes (transformer/routing/capacity.py): causal, first come first
        served along positions; a cache carries each sequence's counts to the next call. Only
        the choices count, never the probabilities: ranking a layer's tokens by probability over
        the whole sequence (expert choice) would let later tokens evict earlier ones. With
        per-step pools the capacity is shared among the step's own entries: each of its layers
        may take ceil(cf * pos / choices_per_step) of a sequence's first pos tokens."""
        routing, own = self.routing, self.router.step_layers[step]
        before = cache.taken if cache is not None else None
        if len(own) < routing.pool_size:  # count in the step's own entries: its layers, then skip
            choice = torch.where(choice >= routing.pool_size, len(own), choice - own.start)
        admitted, taken = admit(choice, len(own), self.choices_per_step, routing.capacity_factor, offset, before)
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
        for step, own in enumerate(self.router.step_layers):
            forced = route[..., step]
            if len(own) < self.routing.pool_size and bool(
                ((forced < own.start) | ((forced >= own.stop) & (forced < self.routing.pool_size))).any()
            ):
                raise IndexError(f"route sends a token at step {step} to a layer outside that step's own {own}")

    @staticmethod
    def _step_caches(cache: KVCache | None) -> list[TokenStepCache] | None:
        if cache is None:
            return None
        if not isinstance(cache, TokenKVCache):
            raise ValueError("a token-routed decoder keeps its keys by position and step: use model.new_cache()")
        return cache.steps

    def _choose(self, logits: Float[Tensor, "batch pos n_entries"], step: int) -> Int[Tensor, "batch pos"]:
        """The router's choice, or a baseline policy's: "fixed" (and the warm start) sends every
        token to step k's fixed layer (`RoutingConfig.fixed_layer`); "random" draws one of the
        step's entries uniformly per token, in training from the router's generator, in
        evaluation from a fresh one seeded with `routing.seed`."""
        policy, shape, routing = self.routing.route_policy, logits.shape[:2], self.routing
        if policy == "fixed" or self.warm_starting:
            layer = routing.fixed_layer(step, self.n_steps)
            return torch.full(shape, layer, dtype=torch.long, device=logits.device)
        if policy == "random":
            generator = self._random_policy_generator(step)
            own = self.router.step_layers[step]
            drawn = torch.randint(self.choices_per_step, shape, generator=generator)
            return torch.where(drawn >= len(own), routing.pool_size, drawn + own.start).to(logits.device)
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
        per_step = len(self.router.step_layers[0])
        balance = routing_losses.balance_loss(chosen[:, :n_layers], layer_probabilities, per_step)
        z = routing_losses.z_loss(logits.reshape(-1, steps, self.routing.n_entries))
        compute = flat[..., :n_layers].sum(dim=(-1, -2)).mean()
        weights = self.routing
        aux = weights.balance_weight * balance + weights.z_loss_weight * z + weights.compute_weight * compute
        if self.warm_starting:  # the router waits: exact zero gradients, still in DDP's graph
            aux = 0.0 * aux
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
        """Tokens choosing each entry and tokens each layer processed, per step (`tally`: no
        wait for a GPU), summed over ranks in training (one all-reduce)."""
        entries = self.routing.n_entries
        rows, taken = choices.flatten(0, 1), processed.flatten(0, 1)
        counts = torch.stack([tally(rows, entries), tally(rows, entries, where=taken)]).float()
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


def _token_losses(
    model: TokenRoutedDecoder, resid: Float[Tensor, "batch pos d_model"], targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    logits = model.logits(resid).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)


def readout_reward(
    model: TokenRoutedDecoder, terms: ReadoutTerms, targets: Int[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Zero in value; its gradient gives each choice's score the loss its step's update caused
    at the readout, exactly: R = (l(final) - l(final - update)) / tokens per token and step, with
    l the token's cross-entropy, the mean the language-model loss takes (every target is scored
    at token granularity). A token that skipped made no update: R = 0, the baseline every layer
    is measured against. Why not the gate's first-order reward: the readout normalises the
    residual, so scaling an update that dominates it changes almost nothing, while removing it
    changes everything (docs/routing.md, section 12). Cost: one readout per step, no backward."""
    with torch.no_grad():
        taken = _token_losses(model, terms.final, targets)
        rewards = torch.stack([taken - _token_losses(model, terms.final - update, targets) for update in terms.updates])
        rewards = rewards / targets.numel()
    return (rewards * (terms.scores - terms.scores.detach())).sum()


def as_token_routed(model: nn.Module, needed_by: str = "this") -> TokenRoutedDecoder:
    """`model` typed as the token-routed decoder it is, for callers that read per-token routes
    (after checking `model.route_granularity`)."""
    if not isinstance(model, TokenRoutedDecoder):
        raise NotRoutedError(f"{needed_by} needs a token-routed decoder, not a {type(model).__name__}")
    return model
