"""Counting how many tokens (or sequences) chose each layer, without making a GPU wait.

`torch.bincount` sizes its result from the data, so on a GPU it reads the input's minimum and
maximum back to the host: two waits per call, several per routing step. Comparing the values
with 0 .. n - 1 and summing gives the same integers in a result whose size is known in advance:
nothing is read back (and the CPU gets the same numbers)."""

import torch
from jaxtyping import Bool, Int
from torch import Tensor


def tally(
    values: Int[Tensor, "rows ..."], n: int, where: Bool[Tensor, "rows ..."] | None = None
) -> Int[Tensor, "... n"]:
    """How many of `values`, along the first dimension, equal each of 0 .. n - 1 (counting only
    where `where` holds). A value outside 0 .. n - 1 counts nowhere: callers that must refuse
    one compare the total with the number of rows."""
    hits = values[..., None] == torch.arange(n, device=values.device)
    if where is not None:
        hits = hits & where[..., None]
    return hits.sum(dim=0)
