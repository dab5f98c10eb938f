"""Next-token cross-entropy, scoring only predictions whose whole context the model may use.

For a routed decoder the route depends on the first P tokens (the routing prefix). A
prediction at position t < P - 1 would be made by layers chosen using tokens it has not
seen yet, so only targets at positions >= P are scored (`first_target = P`). For a plain
decoder every target counts.
"""

import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


def lm_loss(
    logits: Float[Tensor, "batch pos d_vocab"],
    targets: Int[Tensor, "batch pos"],
    first_target: int = 0,
) -> Float[Tensor, ""]:
    """Mean cross-entropy (nats/token). `targets[:, t]` is the token after `inputs[:, t]`,
    i.e. sequence position t + 1: targets at sequence positions >= first_target are scored."""
    start = max(first_target - 1, 0)
    if start >= logits.shape[1]:
        raise ValueError(
            f"no target left to score: sequence of {logits.shape[1] + 1} tokens, first scored "
            f"target at position {first_target}; use sequences longer than the routing prefix"
        )
    scored = logits[:, start:]
    return F.cross_entropy(scored.flatten(0, 1).float(), targets[:, start:].flatten())
