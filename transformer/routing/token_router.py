"""The token router: at each routing step, which pool entry should *this token* go through next?

It reads the token's own normed residual plus a learned per-step embedding, nothing else. A
token's residual at step k depends only on tokens at or before it (every layer is causal), so
its choice does too: token routing is causal by construction, needs no routing prefix, and
every target can be scored. (The sequence router, transformer/routing/router.py, has to pool a
prefix to choose once for a whole sequence.)

The entries are the pool's N layers and, with `RoutingConfig.skip`, an identity entry N that
costs nothing. As in the sequence router, the readout W_R starts at zero (first choices
uniform), logits are float32 whatever the parameter dtype, training samples by Gumbel-argmax
from the router's own generator and evaluation takes the argmax without drawing anything.
"""

import torch
from jaxtyping import Float
from torch import Tensor

from transformer.model.config import ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.routing.router import GumbelRouter


class TokenRouter(GumbelRouter):
    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        super().__init__(cfg, routing, routing.n_entries)

    def forward(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch pos n_entries"]:
        summary: Tensor = self.ln(resid) + self.W_step[step]
        # float32 even under bf16 autocast: rounding must not decide routes
        with torch.autocast(summary.device.type, enabled=False):
            logits: Tensor = summary.float() @ self.W_R.float() + self.b_R.float()
        return logits
