"""The token router: at each routing step, which pool entry should *this token* go through next?

It reads the token's own normed residual plus a learned per-step embedding, nothing else. A
token's residual at step k depends only on tokens at or before it (every layer is causal), so
its choice does too: token routing is causal by construction, needs no routing prefix, and
every target can be scored. (The sequence router, transformer/routing/router.py, has to pool a
prefix to choose once for a whole sequence.)

The entries are the pool's N layers and, with `RoutingConfig.skip`, an identity entry N that
costs nothing. With per-step pools (`RoutingConfig.pools`) step k may take only its own layers
(and skip): the other layers' logits are -inf, so their probability is exactly 0 and no sample
picks them. As in the sequence router, the readout W_R starts at zero (first choices
uniform), logits are float32 whatever the parameter dtype, training samples by Gumbel-argmax
from the router's own generator and evaluation takes the argmax without drawing anything.
"""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from transformer.model.config import ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.routing.router import GumbelRouter


class TokenRouter(GumbelRouter):
    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        routing.check_fits(cfg)
        super().__init__(cfg, routing, routing.n_entries)
        self.pool_size = routing.pool_size
        self.step_layers = [routing.step_layers(step, cfg.n_layers) for step in range(cfg.n_layers)]

    def forward(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch pos n_entries"]:
        summary: Tensor = self.ln(resid) + self.W_step[step]
        # float32 even under bf16 autocast: rounding must not decide routes
        with torch.autocast(summary.device.type, enabled=False):
            logits: Tensor = summary.float() @ self.W_R.float() + self.b_R.float()
        own = self.step_layers[step]
        if len(own) < self.pool_size:
            others = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
            others[own.start : own.stop] = False
            others[self.pool_size :] = False  # skip stays open at every step
            logits = logits.masked_fill(others, -math.inf)
        return logits
