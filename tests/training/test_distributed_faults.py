"""A rank that stops answering (SIGSTOP) or dies ends the others within train.dist_timeout_s,
each with a one-line error naming its rank, instead of leaving them blocked forever."""

import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_runs import tiny_run_config
from transformer.errors import UserError

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORLD, TIMEOUT_S = 2, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, tmp_path: Path, port: int, fault: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        TRANSFORMER_CACHE=str(tmp_path / "cache"),
    )
    import torch

    import transformer.training.trainer as trainer_module
    from transformer.training.objective import compute_objective as real

    torch.set_num_threads(1)
    calls = {"n": 0}

    def faulty(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            (tmp_path / "fault_at").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGSTOP if fault == "stall" else signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(trainer_module, "compute_objective", faulty)  # noqa: B010 (a patch mypy cannot see through)
    config = tiny_run_config(tmp_path, False, "train.max_steps=1000", f"train.dist_timeout_s={TIMEOUT_S}")
    try:
        trainer_module.train(config)
    except UserError as error:
        (tmp_path / f"error{rank}.txt").write_text(f"{time.time()!r}\n{error}")


@pytest.mark.parametrize("fault", ["stall", "death"])
def test_a_stalled_or_dead_peer_ends_the_other_rank_in_bounded_time_naming_it(tmp_path: Path, fault: str) -> None:
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    ranks = [context.Process(target=_worker, args=(rank, tmp_path, port, fault)) for rank in range(WORLD)]
    for process in ranks:
        process.start()
    try:
        ranks[0].join(timeout=120)
        assert not ranks[0].is_alive(), "rank 0 still blocked on its stopped peer"
    finally:
        for process in ranks:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
            process.join()
    ended, message = (tmp_path / "error0.txt").read_text().split("\n", 1)
    waited = float(ended) - float((tmp_path / "fault_at").read_text())
    who = "rank 1 did not answer" if fault == "stall" else "a peer died or did not answer"
    assert message.startswith(f"rank 0 of 2: {who} within train.dist_timeout_s={TIMEOUT_S} s"), message
    assert "\n" not in message
    assert waited < 2 * TIMEOUT_S + 30, f"waited {waited:.1f} s"  # the timeout, the roll call, a loaded machine
    if fault == "stall":
        assert waited >= TIMEOUT_S - 0.5, "a stalled peer is given the whole timeout"
    assert ranks[0].exitcode == 0, "the error was handled, not a crash"
