"""Running on one process or many: who am I, which device, and how ranks talk.

`torchrun` starts one process per device and tells each its RANK, LOCAL_RANK and
WORLD_SIZE through the environment. Without them, this is a single process. The backend
follows the device: NCCL between CUDA GPUs, gloo between CPU processes. Under torchrun the
process group (and DDP) is used even for one process, so a one-GPU `torchrun --nproc_per_node=1`
run exercises the same path as eight (bench/gpu_check.sh relies on it).
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from transformer.devices import resolve_device


@dataclass(frozen=True)
class Process:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    grouped: bool = False  # in a process group: launched by torchrun, whatever the world size

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.grouped or self.world_size > 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def start(device: str = "auto") -> Process:
    """Join the process group torchrun set up (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, "train.device")
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it, for any world size
    if launched and not dist.is_initialized():
        dist.init_process_group(backend=backend_for(chosen))
    grouped = dist.is_initialized()
    return Process(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen, grouped=grouped)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, rank, purpose): each rank samples its own
    data windows and routes, and the same ranks reproduce them for the same seed."""
    return (seed * 1_000_003 + rank * 7919 + stream * 104_729) % 2**63


DATA_STREAM, ROUTING_STREAM, DROPOUT_STREAM, EVAL_STREAM, VAL_WINDOWS_STREAM = 1, 2, 3, 4, 5
