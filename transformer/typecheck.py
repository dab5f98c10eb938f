"""Runtime shape checking: how to switch it on where pytest's hook cannot reach, and a canary.

The test suite runs with jaxtyping's import hook (`--jaxtyping-packages=transformer,...` in
pyproject.toml), which wraps every annotated function in `transformer/` with typeguard. That
hook lives only in the pytest process: workers started by `torchrun` or `mp.spawn` import the
package afresh, unchecked. Setting `TRANSFORMER_TYPECHECK=1` in a worker's environment makes
`transformer/__init__.py` install the same hook before any module is imported.

The canary functions below are deliberately wrong or lax. Without runtime checks they return
quietly; with checks on they raise. `tests/test_typecheck.py` calls them to prove the checks
are really on, since a misconfigured checker fails silently rather than loudly.
"""

from jaxtyping import Float, Int
from torch import Tensor

ENV_SWITCH = "TRANSFORMER_TYPECHECK"  # read in transformer/__init__.py, before this module loads


def canary_wrong_return(x: Float[Tensor, "rows cols"]) -> Float[Tensor, "rows cols"]:
    """Returns the transpose: a shape lie for any non-square input."""
    return x.T


def canary_row_sums(x: Float[Tensor, "rows cols"]) -> Float[Tensor, " rows"]:
    """Correct for a matrix, but torch would happily sum a 3-D or integer tensor too."""
    return x.sum(dim=-1)


def canary_count(tokens: Int[Tensor, " pos"]) -> int:
    """Counts tokens; only the annotation forbids passing floats."""
    return int(tokens.numel())
