"""Two CPU ranks (gloo) take the same training step as one process on their concatenated batch,
routed model included: gradients averaged by DDP, layer usage counted over the global batch."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn
from torch.nn.parallel import DistributedDataParallel

from transformer import typecheck
from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training.distributed import ROUTING_STREAM, stream_seed
from transformer.training.objective import compute_objective

pytestmark = pytest.mark.distributed

WORLD = 2
CFG = ModelConfig(d_vocab=19, d_model=16, n_heads=2, n_layers=2, n_ctx=12)
# "log_p_baseline" subtracts a *per-rank* batch-mean baseline, so it would not match one
# process exactly; "log_p" and "p" do.
ROUTING = RoutingConfig(pool_size=4, route_prefix_len=4, gradient="log_p")
# Fixed routes through layers 0 and 2: layers 1 and 3 never run on any rank, and the waiting
# router gets zeros; two iterations, since DDP notices a missing gradient only at the next forward.
WARM_PER_STEP = RoutingConfig(pool_size=4, route_prefix_len=4, gradient="log_p", pools="per_step", warm_start_steps=5)


def _model(routed: bool, variant: str = "routed") -> DecoderEnds:
    torch.manual_seed(0)
    if not routed:
        return Decoder(CFG)
    model = RoutedDecoder(CFG, WARM_PER_STEP if variant == "per_step_warm" else ROUTING)
    with torch.no_grad():  # a router that already prefers some layers: uneven counts
        model.router.W_R.normal_(0.0, 2.0)
    return model


def _batch() -> torch.Tensor:
    return torch.randint(0, 19, (8, 13), generator=torch.Generator().manual_seed(1))


def _worker(rank: int, store: str, out_dir: str, routed: bool, variant: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    model = _model(routed, variant)
    model.seed_route_rng(lambda seed: stream_seed(seed, rank, ROUTING_STREAM))  # as the trainer does
    ddp = DistributedDataParallel(model)  # no find_unused_parameters: unused layers get zero gradients
    local = _batch().chunk(WORLD)[rank]
    for _ in range(2 if variant == "per_step_warm" else 1):
        model.zero_grad(set_to_none=True)
        objective = compute_objective(ddp, local)
        objective.loss.backward()
    grads = {name: p.grad.tolist() for name, p in model.named_parameters() if p.grad is not None}
    result = {"grads": grads, "n_params": len(list(model.parameters()))}
    if objective.routing is not None:
        result["choices"] = objective.routing.layer_choices.tolist()
        result["counts"] = objective.routing.counts.tolist()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _run_ranks(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch, variant: str = "routed"
) -> list[dict[str, object]]:
    monkeypatch.setenv(typecheck.ENV_SWITCH, "1")  # workers check shapes like this process
    spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path), routed, variant), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


# the plain model under DDP is covered through the real training step (test_trainer_distributed.py)
@pytest.mark.parametrize(("routed", "variant"), [(True, "routed"), (True, "per_step_warm")], ids=["routed", "warm"])
def test_two_ranks_match_one_process_on_the_global_batch(
    tmp_path: Path, routed: bool, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = _run_ranks(tmp_path, routed, monkeypatch, variant)
    model = _model(routed, variant)
    route = None
    if variant == "per_step_warm":
        assert all(r["choices"] == [[0, 2]] * 4 for r in results), "warm start: the fixed route on every rank"
    elif routed:
        route = torch.cat([torch.tensor(r["choices"]) for r in results])
        assert results[0]["choices"] != results[1]["choices"], "ranks should sample their own routes"
        # every rank saw the global usage counts, equal to counting the concatenated routes
        global_counts = torch.stack([torch.bincount(step, minlength=4) for step in route.T]).float()
        for r in results:
            assert torch.equal(torch.tensor(r["counts"]), global_counts)
        # routes reproduce from (seed, rank): the same draw in this process gives rank 1's routes
        replay = _model(True)
        assert isinstance(replay, RoutedDecoder)
        replay.router.seed_generator(stream_seed(ROUTING.seed, 1, ROUTING_STREAM))
        info = replay(_batch().chunk(WORLD)[1][:, :-1]).routing
        assert info.layer_choices.tolist() == results[1]["choices"]
    model.train()
    compute_objective(model, _batch(), route=route).loss.backward()
    for rank_result in results:
        grads = rank_result["grads"]
        assert isinstance(grads, dict)
        assert len(grads) == rank_result["n_params"], "every parameter, even unused layers', has a gradient"
        for name, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(torch.tensor(grads[name]), p.grad, rtol=0, atol=1e-6, msg=name)
