"""The router: at each routing step, which pool layer should this sequence go through next?

It reads a *causal-safe* summary of the residual stream: the mean of the normed residual
over the routing prefix, the first P positions only. (Pooling the whole sequence would let
every position's prediction depend on future tokens through the route: a leak that makes
a causal LM's loss look better than it is.) A learned per-step embedding tells the router
which step it is choosing for. The readout W_R starts at zero, so the first choices are
uniform. Logits are computed in float32 whatever the parameter dtype.

Training samples a layer by Gumbel-argmax at temperature tau, with noise from the router's
own `torch.Generator`, so dropout or any other use of the global RNG cannot shift routes and
a checkpoint can restore them exactly. Evaluation takes the argmax and draws nothing. On a GPU
the noise is drawn there, by a generator on the device reseeded from the router's own (CPU)
one at every draw. Drawn on the CPU and copied over, the noise of a token-routed forward at
GPT-2-small size (batch 64 x 1024 tokens, 24 layers, 12 steps) took ~110 ms of host time on a
2-core CPU, and each copy made the host wait for the device; this way the state to checkpoint
is still the one CPU generator. (So a GPU samples other routes than the CPU does
from the same seed: each is exact on resume, not equal to the other.)

With per-step pools (`RoutingConfig.pools`), step k reads out only its own layers' columns of
W_R; the others' logits are -inf, so their probability is exactly 0 and no sample picks them.

Token-level routing (each token choosing its layer) would replace the prefix mean by the
token's own normed residual; `summary` is the one method that would change.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.norm import make_norm
from transformer.routing.config import RoutingConfig


class GumbelRouter(nn.Module):
    """What the sequence and the token routers share: a norm and a per-step embedding for what
    they read, a zero-initialised readout to `n_choices` logits, and Gumbel-argmax sampling at
    a temperature from a generator of their own. They differ only in what they read."""

    def __init__(self, cfg: ModelConfig, routing: RoutingConfig, n_choices: int) -> None:
        super().__init__()
        self.ln = make_norm(cfg)
        self.W_step = nn.Parameter(torch.randn(cfg.n_layers, cfg.d_model) * cfg.init_std)
        self.W_R = nn.Parameter(torch.zeros(cfg.d_model, n_choices))
        self.b_R = nn.Parameter(torch.zeros(n_choices))
        self.temperature = routing.temperature_start
        self.generator = torch.Generator().manual_seed(routing.seed)
        self._device_generators: dict[torch.device, torch.Generator] = {}

    def seed_generator(self, seed: int) -> None:
        """Restart route sampling from `seed` (each distributed rank uses its own)."""
        self.generator.manual_seed(seed)

    def choose(self, logits: Float[Tensor, "*rows n_choices"]) -> Int[Tensor, "*rows"]:
        """Training: a sample from softmax(logits / tau) per row. Evaluation: the argmax."""
        if not self.training:
            return logits.argmax(dim=-1)
        uniform = self.uniform(logits.shape, logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        return (logits / self.temperature + gumbel).argmax(dim=-1)

    def uniform(self, shape: torch.Size, device: torch.device) -> Float[Tensor, "..."]:
        """U(0, 1) noise on `device`, all of it decided by the router's own generator: on the
        CPU drawn from it; elsewhere drawn on the device from a generator there, seeded by one
        draw from it (host-side: no copy, no wait)."""
        if device.type == "cpu":
            return torch.rand(shape, generator=self.generator, dtype=torch.float32)
        return self.reseeded_uniform(shape, device)

    def reseeded_uniform(self, shape: torch.Size, device: torch.device) -> Float[Tensor, "..."]:
        """U(0, 1) noise drawn on `device` by a generator there, reseeded from one draw of the
        router's own: what `uniform` does off the CPU (tests run it on the CPU as well)."""
        seed = int(torch.randint(2**62, (), generator=self.generator))
        generator = self._device_generators.get(device)
        if generator is None:
            generator = self._device_generators[device] = torch.Generator(device=device)
        generator.manual_seed(seed)
        return torch.rand(shape, generator=generator, dtype=torch.float32, device=device)

    def probabilities(self, logits: Float[Tensor, "*rows n_choices"]) -> Float[Tensor, "*rows n_choices"]:
        """The distribution `choose` samples from (at tau = 1 in evaluation)."""
        tau = self.temperature if self.training else 1.0
        return (logits / tau).softmax(dim=-1)


class Router(GumbelRouter):
    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        routing.check_fits(cfg)
        super().__init__(cfg, routing, routing.pool_size)
        self.prefix_len = routing.route_prefix_len
        self.pool_size = routing.pool_size
        self.step_layers = [routing.step_layers(step, cfg.n_layers) for step in range(cfg.n_layers)]

    def summary(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch d_model"]:
        if resid.shape[1] < self.prefix_len:
            raise ValueError(
                f"sequence of {resid.shape[1]} positions is shorter than the routing prefix "
                f"route_prefix_len={self.prefix_len}: the router needs the whole prefix"
            )
        prefix: Tensor = self.ln(resid[:, : self.prefix_len])
        return prefix.mean(dim=1) + self.W_step[step]

    def forward(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch n_pool"]:
        summary = self.summary(resid, step)
        own = self.step_layers[step]
        # float32 even under bf16 autocast: rounding must not decide routes
        with torch.autocast(summary.device.type, enabled=False):
            if len(own) == self.pool_size:
                logits: Tensor = summary.float() @ self.W_R.float() + self.b_R.float()
                return logits
            readout, bias = self.W_R[:, own.start : own.stop], self.b_R[own.start : own.stop]
            logits = summary.float() @ readout.float() + bias.float()
        return F.pad(logits, (own.start, self.pool_size - own.stop), value=-math.inf)


def temperature_after(routing: RoutingConfig, step: int, total_steps: int) -> float:
    """The temperature of the update that produced checkpoint `step` (update s runs at
    temperature_at(s - 1)): what a loaded model samples routes at, as training last did."""
    return temperature_at(routing, max(step - 1, 0), total_steps)


def temperature_at(routing: RoutingConfig, step: int, total_steps: int) -> float:
    """Cosine anneal from temperature_start to temperature_end over `total_steps`."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    mix = 0.5 * (1.0 + math.cos(math.pi * progress))
    return routing.temperature_end + (routing.temperature_start - routing.temperature_end) * mix
