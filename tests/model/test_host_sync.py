"""A plain decoder's training step never reads a tensor's value back to the host: checked
without a GPU, in every CI run.

On the meta device a tensor has a shape and no data, so every op that needs a value on the host
(`.item()`, `int(tensor)`, `bool(tensor)`, `.tolist()`, a boolean mask's `nonzero`) raises
there; a step that runs end to end on it cannot make a GPU wait. (The CPU is no such test: Embed
reads the ids there on purpose, since nothing is queued on a CPU.) tests/model/test_cuda.py
proves the same on a GPU with torch's sync debug mode, where one is at hand."""

import pytest
import torch

from tests.helpers.routed_models import tiny_config
from transformer.model.decoder import Decoder
from transformer.training.objective import compute_objective

META = torch.device("meta")


def step_on_meta(**config: object) -> torch.Tensor:
    """Forward, the training objective, backward, clipping and an AdamW update, all on meta."""
    with META:
        decoder = Decoder(tiny_config(**config))
    parameters = list(decoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, foreach=True)
    tokens = torch.empty(3, 13, dtype=torch.long, device=META)
    objective = compute_objective(decoder, tokens)
    objective.loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return objective.loss


VARIANTS = [
    {},
    {"positional": "rotary"},
    {"positional": "alibi"},
    {"norm": "rmsnorm", "mlp": "swiglu", "bias": False},
    {"tie_embeddings": True, "dropout": 0.1},
    {"attn_only": True},
]


@pytest.mark.parametrize("kernels", ["readable", "fast"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_a_training_step_reads_no_value_back_to_the_host(kernels: str, variant: dict[str, object]) -> None:
    loss = step_on_meta(kernels=kernels, **variant)
    assert loss.device == META and loss.shape == ()


def test_a_host_read_on_meta_raises() -> None:
    """The check above could pass vacuously if meta tensors let values be read: they must not."""
    x = torch.ones(3, device=META)
    for read in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x[x > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()
