"""FSDP (train.parallel=fsdp, PyTorch's FSDP2 on gloo): two sharded ranks take the step one
process takes on the global batch, and a run resumed from an FSDP checkpoint continues exactly."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.multiprocessing.spawn import spawn

from tests.helpers.tiny_runs import tiny_run_config
from tests.training.test_trainer_distributed import (
    OVERRIDES,
    WORLD,
    _free_port,
    _record_inputs,
    _replay,
    join_as_rank,
)
from transformer import typecheck
from transformer.model.config import ConfigError
from transformer.training import checkpoint as ckpt
from transformer.training.config import TrainSettings
from transformer.training.trainer import train

FSDP = ("train.parallel=fsdp", "train.eval_batches=2")  # FSDP: every rank runs as many forwards


def _one_step_worker(rank: int, tmp_path: Path, port: int, routed: bool) -> None:
    join_as_rank(rank, port)
    record: dict[str, list[torch.Tensor]] = {"windows": [], "routes": []}
    _record_inputs(record)
    train(tiny_run_config(tmp_path, routed, *OVERRIDES, *FSDP))
    torch.save(record, tmp_path / f"inputs{rank}.pt")


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.resolve(run_dir, "latest") / ckpt.WEIGHTS))


# The plain decoder is sharded layer by layer: many more collectives than the routed decoder's
# one unit, each a wait for the other process on a loaded 2-core machine (~2-5 min there): slow.
PLAIN_IS_SLOW = pytest.param(False, id="plain", marks=[pytest.mark.slow, pytest.mark.timeout(900)])


@pytest.mark.distributed
@pytest.mark.parametrize("routed", [pytest.param(True, id="routed"), PLAIN_IS_SLOW])
def test_two_rank_fsdp_step_equals_one_process_on_the_global_batch(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(typecheck.ENV_SWITCH, "1")
    spawn(_one_step_worker, args=(tmp_path, _free_port(), routed), nprocs=WORLD, join=True)
    inputs = [torch.load(tmp_path / f"inputs{r}.pt") for r in range(WORLD)]
    assert not torch.equal(inputs[0]["windows"][0], inputs[1]["windows"][0]), "ranks read different windows"
    windows = torch.cat([i["windows"][0] for i in inputs])
    routes = [torch.cat([i["routes"][k] for i in inputs]) for k in range(2)]  # the step's two routing steps
    single_dir = _replay(tmp_path, routed, windows, routes)
    sharded, single = _weights(tmp_path / "run"), _weights(single_dir)
    assert sharded.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=0, atol=1e-6, msg=name)
    # The gathered optimizer state is numbered as one process numbers it, moments in full
    sharded_state = ckpt.read_state(ckpt.resolve(tmp_path / "run", "latest"))["optimizer"]
    single_state = ckpt.read_state(ckpt.resolve(single_dir, "latest"))["optimizer"]
    assert sharded_state["param_groups"] == single_state["param_groups"]
    for index, moments in single_state["state"].items():
        torch.testing.assert_close(sharded_state["state"][index]["exp_avg"], moments["exp_avg"], rtol=0, atol=1e-7)


def _resume_worker(rank: int, tmp_path: Path, ports: list[int]) -> None:
    """Three runs on the same two ranks: six steps straight; three steps; resumed to six."""
    straight = tiny_run_config(tmp_path / "straight", False, *FSDP)
    halves = tiny_run_config(tmp_path / "halves", False, *FSDP)
    for port, (config, resume, stop_at) in zip(
        ports, [(straight, None, None), (halves, None, 3), (halves, "latest", None)], strict=True
    ):
        join_as_rank(rank, port)
        train(config, resume=resume, stop_at=stop_at)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_run_resumed_from_its_checkpoint_continues_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    spawn(_resume_worker, args=(tmp_path, [_free_port() for _ in range(3)]), nprocs=WORLD, join=True)
    straight, resumed = _weights(tmp_path / "straight" / "run"), _weights(tmp_path / "halves" / "run")
    assert ckpt.read_state(ckpt.resolve(tmp_path / "halves" / "run", "latest"))["step"] == 6
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_an_unknown_parallel_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="train.parallel='zero'"):
        TrainSettings(parallel="zero")
