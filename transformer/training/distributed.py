"""Running on one process or many: who am I, which device, and how ranks talk.

`torchrun` starts one process per device and tells each its RANK, LOCAL_RANK and
WORLD_SIZE through the environment. Without them, this is a single process. The backend
follows the device: NCCL between CUDA GPUs, gloo between CPU processes.

A collective waits for every rank; a rank that died or stalled (SIGSTOP, a hung filesystem)
would keep the others waiting forever. The process group's timeout (`train.dist_timeout_s`)
bounds that wait: the collective then fails on every live rank, and `peer_lost` turns the
failure into a one-line error, so each rank exits and torchrun ends the job. To name the rank
that stopped answering, the live ranks then meet once more at gloo's monitored barrier on a
side group made at start (it works beside NCCL too): rank 0 learns which ranks never came.

Under torchrun the process group (and DDP) is used even for one process, so a one-GPU
`torchrun --nproc_per_node=1` run exercises the same path as eight (bench/gpu_check.sh relies on it).
"""

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from transformer.devices import resolve_device
from transformer.errors import UserError

DEFAULT_TIMEOUT_S = 600.0
ROLL_CALL_S = 10.0  # the live ranks fail within moments of each other: the roll call waits this long at most
_roll_call_group: dist.ProcessGroup | None = None


class PeerLost(UserError):
    """Another rank died or stopped answering: this one cannot go on alone."""


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


def start(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Process:
    """Join the process group torchrun set up (if any) and pick this process's device; a
    collective that waits more than `timeout_s` for a peer fails instead of hanging."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device, "train.device")
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    launched = world_size > 1 or "TORCHELASTIC_RUN_ID" in os.environ  # torchrun sets it, for any world size
    if launched and not dist.is_initialized():
        dist.init_process_group(backend=backend_for(chosen), timeout=timedelta(seconds=timeout_s))
    if world_size > 1:
        global _roll_call_group
        _roll_call_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    grouped = dist.is_initialized()
    return Process(rank=rank, local_rank=local_rank, world_size=world_size, device=chosen, grouped=grouped)


def stop() -> None:
    global _roll_call_group
    _roll_call_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def missing_ranks(timeout_s: float) -> str | None:
    """After a failed collective: the ranks that do not reach a barrier of the live ones ("1, 3"),
    as rank 0 sees them; None where that cannot be told (on other ranks, or a peer that died)."""
    if _roll_call_group is None:
        return None
    try:
        wait = timedelta(seconds=min(timeout_s, ROLL_CALL_S))
        dist.monitored_barrier(group=_roll_call_group, timeout=wait, wait_all_ranks=True)
    except RuntimeError as error:
        found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(error))
        return found.group(1).strip() if found else None
    return None


def peer_lost(error: BaseException, process: Process, timeout_s: float) -> PeerLost | None:
    """The user-facing error for a collective that failed because a peer is gone; None for any
    other failure (a bug keeps its traceback)."""
    if not process.distributed:
        return None
    text = str(error)
    markers = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "watchdog")
    if not isinstance(error, dist.DistError) and not any(marker in text.lower() for marker in markers):
        return None
    detail = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    missing = missing_ranks(timeout_s)
    who = f"rank {missing} did not answer" if missing is not None else "a peer died or did not answer"
    return PeerLost(
        f"rank {process.rank} of {process.world_size}: {who} within train.dist_timeout_s={timeout_s:g} s, "
        f"so this rank stops too ({detail[:200]}); resume with --resume latest once every node is healthy"
    )


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, rank, purpose): each rank samples its own
    data windows and routes, and the same ranks reproduce them for the same seed."""
    return (seed * 1_000_003 + rank * 7919 + stream * 104_729) % 2**63


DATA_STREAM, ROUTING_STREAM, DROPOUT_STREAM, EVAL_STREAM, VAL_WINDOWS_STREAM = 1, 2, 3, 4, 5
