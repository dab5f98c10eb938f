"""The routed decoder: K steps, each applying a router-chosen layer from a pool of N.

tokens -> Embed (+ positions) -> for each step k: router reads the routing prefix, picks a
pool layer per sequence, the pool applies it -> final norm -> Unembed -> logits.

Everything around the layers is the plain decoder's own code (`DecoderEnds`), and the layers
are the plain `TransformerLayer`: with N = K and the route forced to step k -> layer k, the
logits equal the plain decoder's bit for bit (tests/routing/test_decoder.py).

With a `KVCache` (generation), the route is fixed by the first call, which must hold the whole
routing prefix; later calls feed only new tokens through the same layers (see
transformer/model/kv_cache.py).

What a routed model does differently in training, generation and checkpoints (scored targets,
prompt length, temperature schedule, route stream, logged metrics) is `DecoderEnds`'
interface, overridden here, so no caller needs to know which decoder it holds; the few that
need routes themselves get the model typed as a `RoutedDecoder` from `as_routed`.
"""

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from transformer.errors import UserError
from transformer.model.config import ModelConfig
from transformer.model.decoder import DecoderOutput
from transformer.model.kv_cache import FixedRoute, KVCache
from transformer.routing import losses as routing_losses
from transformer.routing.config import RoutingConfig
from transformer.routing.gate import choice_score, gate
from transformer.routing.pool import LayerPool
from transformer.routing.routed_base import RoutedBase
from transformer.routing.router import Router


@dataclass
class RoutingInfo:
    """What the router did on one forward pass, and the auxiliary losses it owes."""

    layer_choices: Int[Tensor, "batch steps"]
    router_logits: Float[Tensor, "batch steps n_pool"]
    probabilities: Float[Tensor, "batch steps n_pool"]
    counts: Float[Tensor, "steps n_pool"]  # sequences per layer per step (global when training)
    usage_entropy: Float[Tensor, ""]
    decision_entropy: Float[Tensor, ""]
    balance_loss: Float[Tensor, ""]
    z_loss: Float[Tensor, ""]
    aux_loss: Float[Tensor, ""]  # balance_weight * balance_loss + z_loss_weight * z_loss


class RoutedDecoder(RoutedBase):
    router: Router

    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        super().__init__(cfg, routing)
        self.pool = LayerPool(cfg, routing.pool_size)
        self.router = Router(cfg, routing)
        self._fixed_layers = [routing.fixed_layer(step, cfg.n_layers) for step in range(cfg.n_layers)]
        self.warm_starting = routing.warm_start_steps > 0  # before any update, update 0's routes

    @property
    def pool_size(self) -> int:
        return self.routing.pool_size

    @property
    def choices_per_step(self) -> int:
        return len(self.router.step_layers[0])

    @property
    def route_granularity(self) -> str:
        return "sequence"

    @property
    def first_scored_target(self) -> int:
        """Targets before the routing prefix P are predicted by a model with no route yet."""
        return self.routing.route_prefix_len

    @property
    def min_prompt_len(self) -> int:
        """The router chooses every layer from the first P positions, so they must exist."""
        return self.routing.route_prefix_len

    def active_parameters(self) -> int:
        """A token runs K of the pool's N layers: each pool weight counts K / N times."""
        pool = [p.numel() for p in self.pool.parameters()]
        scaled = sum(numel * self.n_steps // self.pool_size for numel in pool)
        return super().active_parameters() - sum(pool) + scaled

    def set_training_step(self, step: int, total_steps: int) -> None:
        """Routes are sampled at a temperature annealed over training; the first
        `warm_start_steps` updates route in the fixed order instead. Both follow from the step
        alone, so a resumed run picks them up where it stopped."""
        super().set_training_step(step, total_steps)
        self.warm_starting = step < self.routing.warm_start_steps

    def set_trained_steps(self, steps: int, total_steps: int) -> None:
        """Sampled routes (evaluation, analysis) at the temperature training had reached, and in
        the fixed order if every update so far was a warm-start one."""
        super().set_trained_steps(steps, total_steps)
        self.warm_starting = max(steps - 1, 0) < self.routing.warm_start_steps

    def training_metrics(self, output: DecoderOutput) -> dict[str, Any]:
        return self._usage_metrics(output.routing)

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        key_padding_mask: Bool[Tensor, "batch pos"] | None = None,
        route: Int[Tensor, "batch steps"] | None = None,
        cache: KVCache | None = None,
    ) -> DecoderOutput:
        """`route` forces the layer chosen at each step (for tests, baselines and analysis).
        `cache`: the first call routes as usual and stores the route; later calls reuse it."""
        if route is not None and route.shape != (tokens.shape[0], self.n_steps):
            raise ValueError(f"route must have shape (batch, steps) = {(tokens.shape[0], self.n_steps)}")
        if route is not None and self.routing.pools == "per_step":
            first = torch.tensor([own.start for own in self.router.step_layers], device=route.device)
            if bool(((route < first) | (route >= first + len(self.router.step_layers[0]))).any()):
                raise ValueError(
                    f"with per-step pools, step k's route must name one of its layers {self.router.step_layers}"
                )
        fixed = cache.route if cache is not None else None
        if fixed is not None and route is not None and not torch.equal(route, fixed.choices):
            raise ValueError("this KV cache was filled on another route: start a new cache to change routes")
        resid = self.embed_tokens(tokens, cache.length if cache is not None else 0)
        all_choices, all_logits, all_probabilities = [], [], []
        idle = set(range(self.pool_size))  # pool layers no step has run yet
        learned = self.routing.route_policy == "learned" and not self.warm_starting
        for step in range(self.n_steps):
            if fixed is None:
                logits = self.router(resid, step)
                choice = route[:, step] if route is not None else self._choose(logits, step)
                probabilities = self.router.probabilities(logits)
            else:  # the prefix was read on the first call; these tokens come after it
                choice, logits, probabilities = fixed.at(step)
            layer_out = self.pool(
                resid, choice, key_padding_mask, cache.layers[step] if cache is not None else None, idle
            )
            score = choice_score(probabilities, choice, self.routing.gradient) if learned else None
            resid = gate(resid, layer_out, score)
            all_choices.append(choice)
            all_logits.append(logits)
            all_probabilities.append(probabilities)
        resid = self.pool.keep_in_graph(resid, idle)  # zero gradients for the layers no step ran
        choices = torch.stack(all_choices, dim=1)
        router_logits = torch.stack(all_logits, dim=1)
        router_probabilities = torch.stack(all_probabilities, dim=1)
        if cache is not None and fixed is None:
            cache.route = FixedRoute(choices, router_logits, router_probabilities)
        info = self._routing_info(choices, router_logits, router_probabilities)
        return DecoderOutput(self.logits(resid), aux_loss=info.aux_loss, routing=info)

    def _choose(self, logits: Float[Tensor, "batch n_pool"], step: int) -> Int[Tensor, " batch"]:
        """The router's choice, or a baseline policy's (`RoutingConfig.route_policy`): "fixed"
        (and the warm start) takes step k's fixed layer (`RoutingConfig.fixed_layer`); "random"
        draws one of the step's layers uniformly, in training from the router's generator, in
        evaluation from a fresh one seeded with `routing.seed`, so that evaluating never shifts
        the training stream and always sees the same routes."""
        policy, batch = self.routing.route_policy, logits.shape[0]
        if policy == "fixed" or self.warm_starting:
            return torch.full((batch,), self._fixed_layers[step], dtype=torch.long, device=logits.device)
        if policy == "random":
            generator = self._random_policy_generator(step)
            own = self.router.step_layers[step]
            return (torch.randint(len(own), (batch,), generator=generator) + own.start).to(logits.device)
        return self.router.choose(logits)

    def _routing_info(
        self,
        choices: Int[Tensor, "batch steps"],
        logits: Float[Tensor, "batch steps n_pool"],
        probabilities: Float[Tensor, "batch steps n_pool"],
    ) -> RoutingInfo:
        counts = self._window_total(
            routing_losses.count_choices(choices, self.routing.pool_size, all_ranks=self.training)
        )
        balance = routing_losses.balance_loss(counts, probabilities, len(self.router.step_layers[0]))
        z = routing_losses.z_loss(logits)
        aux = self.routing.balance_weight * balance + self.routing.z_loss_weight * z
        if self.warm_starting:  # the router waits: exact zero gradients, still in DDP's graph
            aux = 0.0 * aux
        return RoutingInfo(
            layer_choices=choices,
            router_logits=logits,
            probabilities=probabilities,
            counts=counts,
            usage_entropy=routing_losses.usage_entropy(counts),
            decision_entropy=routing_losses.decision_entropy(probabilities.detach()),
            balance_loss=balance,
            z_loss=z,
            aux_loss=aux,
        )


class NotRoutedError(UserError):
    """A request that needs routes, made of a plain decoder."""


def as_routed(model: nn.Module, needed_by: str = "this") -> RoutedDecoder:
    """`model` typed as the routed decoder it is; for callers that need routes themselves
    (route tables, route temperatures), after checking `model.kind`."""
    if not isinstance(model, RoutedDecoder):
        why = " (config routing: null)" if getattr(model, "kind", None) == "plain" else ""
        raise NotRoutedError(f"{needed_by} needs a sequence-routed decoder, not a {type(model).__name__}{why}")
    return model
