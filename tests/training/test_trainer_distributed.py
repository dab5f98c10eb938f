"""The real training step under DDP: two gloo ranks give the parameters one process gets from
the same global batch and the same routes, routed model included."""

import os
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.multiprocessing.spawn import spawn

from tests.helpers.tiny_runs import tiny_run_config
from transformer import typecheck
from transformer.data.tokens import TokenData
from transformer.routing.router import GumbelRouter, Router
from transformer.training import checkpoint as ckpt
from transformer.training.trainer import train

pytestmark = pytest.mark.distributed

WORLD = 2
# one optimizer step; "log_p": its gradient is the same however the batch is split between ranks
OVERRIDES = (
    "train.max_steps=1",
    "train.warmup_steps=0",
    "train.lr=1e-3",
    "routing.gradient=log_p",
    "train.eval_batches=1",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record_inputs(record: dict[str, list[torch.Tensor]]) -> None:
    """Patch the data and the router to record the windows and routes this process used."""
    sample_windows, choose = TokenData.sample_windows, Router.choose

    def recording_windows(self: TokenData, split: str, *args: object, **kwargs: object) -> torch.Tensor:
        windows = sample_windows(self, split, *args, **kwargs)  # type: ignore[arg-type]
        if split == "train":
            record["windows"].append(windows)
        return windows

    def recording_choose(self: GumbelRouter, logits: torch.Tensor) -> torch.Tensor:
        choice = choose(self, logits)
        if self.training:
            record["routes"].append(choice)
        return choice

    TokenData.sample_windows = recording_windows  # type: ignore[method-assign]
    Router.choose = recording_choose  # type: ignore[method-assign]


def join_as_rank(rank: int, port: int) -> None:
    """The environment torchrun would give this rank of WORLD, on one thread."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


def _worker(rank: int, tmp_path: Path, port: int, routed: bool) -> None:
    join_as_rank(rank, port)
    record: dict[str, list[torch.Tensor]] = {"windows": [], "routes": []}
    _record_inputs(record)
    train(tiny_run_config(tmp_path, routed, *OVERRIDES))
    torch.save(record, tmp_path / f"inputs{rank}.pt")


def _replay(tmp_path: Path, routed: bool, windows: torch.Tensor, routes: list[torch.Tensor]) -> Path:
    """One process, batch = both ranks' windows, routes = both ranks' routes, step by step."""
    replay_dir = tmp_path / "single"
    config = tiny_run_config(replay_dir, routed, *OVERRIDES, f"train.batch_size={windows.shape[0]}")
    sample_windows, choose = TokenData.sample_windows, Router.choose
    pending = list(routes)

    def given_windows(self: TokenData, split: str, *args: object, **kwargs: object) -> torch.Tensor:
        return windows if split == "train" else sample_windows(self, split, *args, **kwargs)  # type: ignore[arg-type]

    def given_route(self: GumbelRouter, logits: torch.Tensor) -> torch.Tensor:
        return pending.pop(0) if self.training and pending else choose(self, logits)

    try:
        TokenData.sample_windows = given_windows  # type: ignore[method-assign]
        Router.choose = given_route  # type: ignore[method-assign]
        train(config)
    finally:
        TokenData.sample_windows, Router.choose = sample_windows, choose  # type: ignore[method-assign]
    return Path(config.train.out_dir)


# The plain case is slow: the routed one runs the same DDP path and more (routes, route streams).
@pytest.mark.parametrize("routed", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["routed", "plain"])
def test_two_rank_training_step_equals_one_process_on_the_global_batch(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(typecheck.ENV_SWITCH, "1")
    spawn(_worker, args=(tmp_path, _free_port(), routed), nprocs=WORLD, join=True)
    inputs = [torch.load(tmp_path / f"inputs{r}.pt") for r in range(WORLD)]
    assert not torch.equal(inputs[0]["windows"][0], inputs[1]["windows"][0]), "ranks read different windows"
    windows = torch.cat([i["windows"][0] for i in inputs])
    steps = 2  # model.n_layers: the training step's routes come first (evaluation samples more later)
    routes = [torch.cat([i["routes"][k] for i in inputs]) for k in range(steps)]
    single_dir = _replay(tmp_path, routed, windows, routes)
    distributed = load_file(str(ckpt.resolve(Path(tmp_path / "run"), "latest") / ckpt.WEIGHTS))
    single = load_file(str(ckpt.resolve(single_dir, "latest") / ckpt.WEIGHTS))
    assert distributed.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(distributed[name], single[name], rtol=0, atol=1e-6, msg=name)
    # Adam's first moment after one step is (1 - beta1) * gradient: the gradients agree too
    # (the parameters alone could hide a gradient difference, since Adam's first step is ~ lr * sign)
    single_state = ckpt.read_state(ckpt.resolve(single_dir, "latest"))
    state = ckpt.read_state(ckpt.resolve(Path(tmp_path / "run"), "latest"))
    for index, moments in single_state["optimizer"]["state"].items():
        torch.testing.assert_close(
            state["optimizer"]["state"][index]["exp_avg"],
            moments["exp_avg"],
            rtol=0,
            atol=1e-7,
            msg=f"parameter {index}",
        )
    assert state["step"] == 1 and state["optimizer"]["state"], "one real update was taken"
    assert len(state["data_rng"]) == WORLD, "every rank's data stream is in the checkpoint"
    if routed:
        assert len(state["router_rng"]) == WORLD
        assert not torch.equal(state["router_rng"][0], state["router_rng"][1])
