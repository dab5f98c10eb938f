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
from jaxtyping import Float, Int
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.norm import make_norm
from transformer.routing.config import RoutingConfig


class TokenRouter(nn.Module):
    def __init__(self, cfg: ModelConfig, routing: RoutingConfig) -> None:
        super().__init__()
        self.ln = make_norm(cfg)
        self.W_step = nn.Parameter(torch.randn(cfg.n_layers, cfg.d_model) * cfg.init_std)
        self.W_R = nn.Parameter(torch.zeros(cfg.d_model, routing.n_entries))
        self.b_R = nn.Parameter(torch.zeros(routing.n_entries))
        self.temperature = routing.temperature_start
        self.generator = torch.Generator().manual_seed(routing.seed)

    def seed_generator(self, seed: int) -> None:
        """Restart route sampling from `seed` (each distributed rank uses its own)."""
        self.generator.manual_seed(seed)

    def forward(self, resid: Float[Tensor, "batch pos d_model"], step: int) -> Float[Tensor, "batch pos n_entries"]:
        summary: Tensor = self.ln(resid) + self.W_step[step]
        # float32 even under bf16 autocast: rounding must not decide routes
        with torch.autocast(summary.device.type, enabled=False):
            logits: Tensor = summary.float() @ self.W_R.float() + self.b_R.float()
        return logits

    def choose(self, logits: Float[Tensor, "batch pos n_entries"]) -> Int[Tensor, "batch pos"]:
        """Training: a sample from softmax(logits / tau) per token. Evaluation: the argmax."""
        if not self.training:
            return logits.argmax(dim=-1)
        uniform = torch.rand(logits.shape, generator=self.generator, dtype=torch.float32)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        return (logits / self.temperature + gumbel.to(logits.device)).argmax(dim=-1)

    def probabilities(self, logits: Float[Tensor, "batch pos n_entries"]) -> Float[Tensor, "batch pos n_entries"]:
        """The distribution `choose` samples from (at tau = 1 in evaluation)."""
        tau = self.temperature if self.training else 1.0
        return (logits / tau).softmax(dim=-1)
