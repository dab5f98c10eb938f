"""What the sequence-routed and the token-routed decoders share around their routers.

Both draw routes from the router's own random stream at a temperature annealed over training,
balance layer usage over the micro-batches of one optimizer step, and let evaluation sample
routes as training does without shifting training's stream. Those answers to the
`DecoderEnds` interface live here once; each decoder adds only what its granularity changes.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor

from transformer.model.config import ModelConfig
from transformer.model.decoder import DecoderEnds, DecoderKind
from transformer.routing.config import RoutingConfig
from transformer.routing.router import GumbelRouter, temperature_after, temperature_at


class RoutedBase(DecoderEnds):
    kind: ClassVar[DecoderKind] = "routed"
    router: GumbelRouter  # set by each decoder: its own kind of router

    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        super().__init__(cfg)
        self.routing = routing
        self._window_counts: Tensor | None = None
        self._in_window = False
        self._eval_generator = torch.Generator().manual_seed(routing.seed)

    @property
    def route_temperature(self) -> float:
        return self.router.temperature

    def set_training_step(self, step: int, total_steps: int) -> None:
        """Routes are sampled at a temperature annealed over training; it follows from the step
        alone, so a resumed run picks it up where it stopped."""
        self.router.temperature = temperature_at(self.routing, step, total_steps)

    def set_trained_steps(self, steps: int, total_steps: int) -> None:
        """Sampled routes (evaluation, analysis) at the temperature training had reached."""
        self.router.temperature = temperature_after(self.routing, steps, total_steps)

    def seed_route_rng(self, derive: Callable[[int], int]) -> None:
        self.router.seed_generator(derive(self.routing.seed))

    def route_rng_state(self) -> Tensor:
        return self.router.generator.get_state()

    def set_route_rng_state(self, state: Tensor | None) -> None:
        if state is None:
            raise ValueError("a routed decoder needs the route stream's state to continue it")
        self.router.generator.set_state(state)

    @contextmanager
    def sampled_routes(self, seed: int) -> Iterator[None]:
        """Routes drawn as in training (Gumbel-argmax at the router's temperature) from a generator
        seeded with `seed`, swapped in for the router's own, the rest of the model in eval mode
        (no dropout): evaluating never shifts the training run's routing stream."""
        own_generator, was_training = self.router.generator, self.training
        self.eval()
        self.router.generator = torch.Generator().manual_seed(seed)
        self.router.train()
        try:
            yield
        finally:
            self.router.generator = own_generator
            self.train(was_training)

    @contextmanager
    def counting_window(self) -> Iterator[None]:
        """Count layer usage for the balance loss across the forwards inside the block (the
        micro-batches of one optimizer step): micro-batch m balances against the counts of
        micro-batches 0..m (the counts of later ones do not exist yet), so the last one sees the
        whole step. Outside a window each forward counts alone."""
        self._in_window, self._window_counts = True, None
        try:
            yield
        finally:
            self._in_window, self._window_counts = False, None

    def _window_total(self, counts: Tensor) -> Tensor:
        """`counts` of this forward plus those of the window's earlier forwards."""
        if self._in_window:
            if self._window_counts is not None:
                counts = counts + self._window_counts
            self._window_counts = counts
        return counts

    def _random_policy_generator(self, step: int) -> torch.Generator:
        """Where the "random" baseline policy draws: in training the router's own stream; in
        evaluation a fresh one seeded with `routing.seed` at every forward, so evaluating never
        shifts the training stream and always sees the same routes."""
        if not self.training:
            if step == 0:
                self._eval_generator = torch.Generator().manual_seed(self.routing.seed)
            return self._eval_generator
        return self.router.generator

    def _usage_metrics(self, info: Any) -> dict[str, Any]:
        """What every routed training record carries; `info`'s counts cover the whole counting
        window (every micro-batch of the step, on every rank)."""
        return {
            "usage_entropy": float(info.usage_entropy),
            "decision_entropy": float(info.decision_entropy),
            "usage": (info.counts / info.counts.sum(-1, keepdim=True)).tolist(),
            "temperature": self.router.temperature,
        }
