"""Exercise 8 (docs/modules/mlp.md): GELU and the MLP block, the readable path.

Write `gelu` (the readable MLP's activation) and `MLP.forward`. The parameters already exist:
W_in [d_model, d_mlp], b_in, W_gate (SwiGLU only, else None), W_out [d_mlp, d_model], b_out;
`self.activation` is your `gelu` on the readable path. The fused path (`kernels="fast"`) stays
PyTorch's. Check with `transformer exercise mlp`.
"""

from jaxtyping import Float
from torch import Tensor

from transformer.model import mlp as solution

__all__ = ["gelu", "MLP"]


def gelu(x: Tensor) -> Tensor:
    """x * Phi(x), Phi the standard normal CDF: 0.5 * x * (1 + erf(x / sqrt(2))).

    Hint: the exact erf form, not the tanh estimate (a test tells them apart)."""
    raise NotImplementedError("exercise: gelu (docs/modules/mlp.md)")


class MLP(solution.MLP):
    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """GELU: activation(x @ W_in + b_in) @ W_out + b_out. SwiGLU (W_gate set):
        (silu(x @ W_gate) * (x @ W_in + b_in)) @ W_out + b_out. A bias that is None is skipped.

        Hint: `solution.silu` is x * sigmoid(x)."""
        if self.fast:
            return super().forward(x)
        raise NotImplementedError("exercise: MLP.forward (docs/modules/mlp.md)")
