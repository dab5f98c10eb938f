"""Exercise 3 (docs/modules/positions.md): the sinusoidal position table.

Write `sinusoidal_table`; `SinusoidalPositions` builds its table with it, and
`AbsolutePositions.forward` slices it. Check with `transformer exercise positions`.
"""

from jaxtyping import Float
from torch import Tensor

__all__ = ["sinusoidal_table"]


def sinusoidal_table(n_ctx: int, d_model: int) -> Float[Tensor, "n_ctx d_model"]:
    """Row p, column 2i: sin(p / 10000^(2i / d_model)); column 2i + 1: cos of the same angle.

    Hints: build the angles as an outer product of positions [n_ctx, 1] and frequencies
    [1, d_model / 2]; compute in float64 and return float32 (`.float()`), so that rows for large
    p stay exact; fill the even and odd columns with slices `table[:, 0::2]`, `table[:, 1::2]`.
    Mind an odd d_model: there is one cosine column fewer than sine columns."""
    raise NotImplementedError("exercise: sinusoidal_table (docs/modules/positions.md)")
