"""How the ranks share the model: DDP (each rank holds all of it) or FSDP (each holds a shard).

`train.parallel` chooses. With DDP every rank keeps the whole model, its gradients and AdamW's
two moments, and gradients are all-reduced after the backward pass. With FSDP (PyTorch's FSDP2,
`torch.distributed.fsdp.fully_shard`) each rank keeps 1/world_size of the parameters, gradients
and optimizer state: the parameters of a unit are all-gathered just before its forward (and
backward) and freed after, and gradients are reduce-scattered so that each rank updates only its
shard. The model then fits where its weights plus optimizer state would not fit on one device.

Units: the plain decoder shards each layer and then the rest (embedding, final norm and
unembedding) as the root, so only one layer is gathered at a time. A routed decoder is sharded
as one root unit: which pool layers run depends on each rank's routes, and FSDP needs every rank
to gather the same units in the same order.

Checkpoints stay what a single process writes: full weights and an index-keyed optimizer state,
gathered to rank 0 with `torch.distributed.checkpoint.state_dict` (every rank must call the
gathering functions here, rank 0 alone gets the result), so a run resumes exactly under DDP,
FSDP or on one process.
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from transformer.model.decoder import Decoder
from transformer.training.distributed import Process

FULL_TO_RANK_0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def wrap_model(model: nn.Module, parallel: str, process: Process) -> nn.Module:
    """What the training forward runs. FSDP shards `model` in place (its parameters become
    DTensor shards), so build the optimizer from `model` after this call."""
    if not process.distributed:
        return model
    if parallel == "ddp":
        return DistributedDataParallel(
            model, device_ids=[process.local_rank] if process.device.type == "cuda" else None
        )
    mesh = init_device_mesh(process.device.type, (process.world_size,))
    if isinstance(model, Decoder):
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Inside, the backward synchronises gradients across ranks only if `enabled` (the last
    micro-batch of an update): the earlier ones accumulate locally."""
    if enabled:
        yield
    elif isinstance(wrapped, DistributedDataParallel):
        with wrapped.no_sync():
            yield
    elif isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def clip_gradients(model: nn.Module, max_norm: float) -> Tensor:
    """The total gradient norm before clipping, as a plain tensor (under FSDP torch returns it
    as a replicated DTensor, which the finite check and the log cannot mix with tensors)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def _resharded(model: nn.Module) -> None:
    """Register the shards again. An FSDP root keeps its gathered parameters after a forward
    under no_grad (an evaluation: no backward follows to free them); the optimizer and the
    state-dict functions know the shards."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the order `optimizer.state_dict()` numbers them."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` as one process would have it. Under FSDP: collective, and only
    rank 0 gets the state (the others an empty dict)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    _resharded(model)
    by_name: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=FULL_TO_RANK_0)
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_optimizer_names(model, optimizer))}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in by_name["param_groups"]],
    }


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state `full_optimizer_state` (or one process's `optimizer.state_dict()`) returned;
    under FSDP each rank keeps its own shard of the moments."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    _resharded(model)
    names = _optimizer_names(model, optimizer)
    by_name: Any = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def full_model(model: nn.Module, rebuild: Callable[[], nn.Module]) -> nn.Module | None:
    """A module holding all the weights, to save or to sample from: `model` itself unless it is
    sharded; then (collective) a copy built by `rebuild` on rank 0 and None on the others."""
    if not is_sharded(model):
        return model
    _resharded(model)
    weights: dict[str, Any] = get_model_state_dict(model, options=FULL_TO_RANK_0)
    if not weights:
        return None
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        copy = rebuild()  # no memory and no random draws: its tensors are replaced just below
    # each tensor its own storage: gathered ones may be views into one buffer, which safetensors refuses
    copy.load_state_dict({name: tensor.clone() for name, tensor in weights.items()}, assign=True)
    return copy
