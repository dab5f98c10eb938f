"""Two CPU ranks (gloo) take the same token-routed training step as one process on their
concatenated batch: gradients to 1e-6, capacity and skip included, usage counted over the
global batch, and DDP needs no find_unused_parameters although one layer never runs."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn
from torch.nn.parallel import DistributedDataParallel

from tests.helpers.token_models import token_model
from transformer import typecheck
from transformer.model.config import ModelConfig
from transformer.routing import stacked
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.distributed import ROUTING_STREAM, stream_seed
from transformer.training.objective import compute_objective

pytestmark = pytest.mark.distributed

WORLD = 2
CFG = ModelConfig(d_vocab=19, d_model=16, n_heads=2, n_layers=2, n_ctx=12)
IDLE = 3  # the router never picks this layer


def _model(reward: str) -> TokenRoutedDecoder:
    # "log_p_baseline" subtracts a per-rank mean: two ranks would not be one process exactly
    model = token_model(
        CFG, seed=0, prime=2.0, pool_size=4, skip=True, compute_weight=0.01, gradient="log_p", reward=reward
    )
    with torch.no_grad():
        model.router.b_R[IDLE] = -1e4
    return model


def _batch() -> torch.Tensor:
    return torch.randint(0, 19, (8, 13), generator=torch.Generator().manual_seed(1))


def _batch_every_step(monkeypatch: pytest.MonkeyPatch | None = None) -> list[int]:
    """Every step with several groups through the batched dispatch (stacked.py), however
    padded; returns a list that grows by one per batched step."""
    batched: list[int] = []
    original = stacked.Batched.__init__

    def counted(self: stacked.Batched, *args: object) -> None:
        batched.append(1)
        original(self, *args)  # type: ignore[arg-type]

    if monkeypatch is None:  # a spawned worker: its own copy of the modules
        stacked.PADDING_LIMIT = float("inf")
        setattr(stacked.Batched, "__init__", counted)  # noqa: B010
    else:
        monkeypatch.setattr(stacked, "PADDING_LIMIT", float("inf"))
        monkeypatch.setattr(stacked.Batched, "__init__", counted)
    return batched


def _worker(rank: int, store: str, out_dir: str, reward: str, batch_every_step: bool) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    batched = _batch_every_step() if batch_every_step else []
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    model = _model(reward).train()
    model.seed_route_rng(lambda seed: stream_seed(seed, rank, ROUTING_STREAM))  # as the trainer does
    ddp = DistributedDataParallel(model)  # no find_unused_parameters
    local = _batch().chunk(WORLD)[rank]
    objective = compute_objective(ddp, local)
    objective.loss.backward()
    grads = {name: p.grad.tolist() for name, p in model.named_parameters() if p.grad is not None}
    info = objective.output.routing
    result = {
        "grads": grads,
        "n_params": len(list(model.parameters())),
        "choices": info.layer_choices.tolist(),
        "counts": info.counts.tolist(),
        "applied": info.applied.tolist(),
        "work": model.work.tolist(),
        "batched_steps": len(batched),
    }
    model.zero_grad()
    compute_objective(ddp, local).loss.backward()  # a second step: DDP would now fail on a missed gradient
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("reward", "batch_every_step"),
    [("first_order", False), ("readout", False), ("first_order", True)],
    ids=["first-order", "readout", "batched-dispatch"],
)
def test_two_ranks_match_one_process_on_the_global_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reward: str, batch_every_step: bool
) -> None:
    """With the readout reward too: its loss differences are per-rank means, like the LM loss,
    so DDP's average of the ranks' gradients is the global batch's. `batched-dispatch`: every
    step with several groups through stacked.py, on the ranks and in the reference process."""
    monkeypatch.setenv(typecheck.ENV_SWITCH, "1")  # workers check shapes like this process
    args = (str(tmp_path / "store"), str(tmp_path), reward, batch_every_step)
    spawn(_worker, args=args, nprocs=WORLD, join=True)
    if batch_every_step:
        _batch_every_step(monkeypatch)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    route = torch.cat([torch.tensor(r["choices"]) for r in results])
    assert results[0]["choices"] != results[1]["choices"], "ranks should sample their own routes"
    assert int((route == IDLE).sum()) == 0 and int((route == 4).sum()) > 0, "skip used, the idle layer not"
    model = _model(reward).train()
    output = compute_objective(model, _batch(), route=route)
    output.loss.backward()
    info = output.output.routing
    assert 0 < float(info.dropped_fraction), "the capacity should drop tokens"
    for r in results:  # usage counted over the global batch, on every rank
        assert torch.equal(torch.tensor(r["counts"]), info.counts)
        assert torch.equal(torch.tensor(r["applied"]), info.applied)
        assert r["work"] == model.work.tolist()
    for rank_result in results:
        assert rank_result["batched_steps"] > 0 or not batch_every_step
        grads = rank_result["grads"]
        assert isinstance(grads, dict)
        assert len(grads) == rank_result["n_params"], "every parameter, the idle layer's too, has a gradient"
        for name, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(torch.tensor(grads[name]), p.grad, rtol=0, atol=1e-6, msg=name)
            if name.startswith(f"pool.layers.{IDLE}."):
                assert not torch.tensor(grads[name]).any()
