"""The warm start: the first S updates route step k -> its fixed layer, with the router waiting
(exact zero gradients), then the learned route; a resume across S is bit for bit."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.routed_models import tiny_config
from tests.helpers.tiny_runs import tiny_run_config
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.training import checkpoint as ckpt
from transformer.training.run_log import read_log
from transformer.training.trainer import train

WARM = 3


def _primed(pools: str, warm_start_steps: int = WARM) -> RoutedDecoder:
    torch.manual_seed(0)
    routing = RoutingConfig(pool_size=6, route_prefix_len=4, pools=pools, warm_start_steps=warm_start_steps)
    routed = RoutedDecoder(tiny_config(), routing)
    with torch.no_grad():  # a router that, once it may, sends sequences all over the pool
        routed.router.W_R.normal_(0.0, 3.0)
    return routed


@pytest.mark.parametrize(("pools", "fixed"), [("shared", [0, 1, 2]), ("per_step", [0, 2, 4])])
def test_routes_are_fixed_before_the_warm_start_ends_and_learned_after(pools: str, fixed: list[int]) -> None:
    """After S the routes are exactly those of the same model trained without a warm start."""
    routed, cold = _primed(pools), _primed(pools, warm_start_steps=0)
    tokens = torch.randint(0, 23, (64, 12), generator=torch.Generator().manual_seed(1))
    for step in range(WARM + 3):
        routed.set_training_step(step, 100)
        cold.set_training_step(step, 100)
        routed.train()
        routed.zero_grad(set_to_none=True)
        drawn = routed.router.generator.get_state()
        output = routed(tokens)
        (output.logits.sum() + output.aux_loss).backward()
        choices = output.routing.layer_choices
        router_grads = [p.grad for p in routed.router.parameters()]
        assert all(g is not None for g in router_grads), "the router stays in the graph (DDP)"
        router_moved = sum(int(torch.count_nonzero(g)) for g in router_grads if g is not None)
        if step < WARM:
            assert choices.tolist() == [fixed] * 64, f"update {step}"
            assert float(output.aux_loss.detach()) == 0.0 and router_moved == 0, "the router waits"
        else:
            cold.router.generator.set_state(drawn)
            assert torch.equal(choices, cold.train()(tokens).routing.layer_choices), f"update {step}"
            assert choices.tolist() != [fixed] * 64 and router_moved > 0
    routed.set_training_step(WARM - 1, 100)
    routed.eval()
    assert routed(tokens).routing.layer_choices.tolist() == [fixed] * 64, "evaluation during the warm start too"


def test_a_loaded_checkpoint_routes_as_its_last_update_did() -> None:
    """Checkpoint `steps` was made by update steps - 1: fixed routes up to steps = S."""
    routed = _primed("per_step").eval()
    tokens = torch.randint(0, 23, (64, 12), generator=torch.Generator().manual_seed(2))
    for steps, warm in ((0, True), (WARM, True), (WARM + 1, False)):
        routed.set_trained_steps(steps, 100)
        fixed = routed(tokens).routing.layer_choices.tolist() == [[0, 2, 4]] * 64
        assert routed.warm_starting == warm and fixed == warm, steps


def test_resume_across_the_warm_start_is_bitwise_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 updates straight == 2 updates, stop, resume for 4 across S = 3: weights, moments, log."""
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    overrides = ("routing.pool_size=4", "routing.pools=per_step", f"routing.warm_start_steps={WARM}")
    straight = tiny_run_config(tmp_path / "a", True, *overrides)
    train(straight)
    split = tiny_run_config(tmp_path / "b", True, *overrides)
    assert train(split, stop_at=2).steps == 2
    assert train(split, resume="latest").steps == 6
    dir_a, dir_b = Path(straight.train.out_dir), Path(split.train.out_dir)
    a = load_file(str(ckpt.resolve(dir_a, "latest") / ckpt.WEIGHTS))
    b = load_file(str(ckpt.resolve(dir_b, "latest") / ckpt.WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    moments_a = ckpt.read_state(ckpt.resolve(dir_a, "latest"))["optimizer"]["state"]
    moments_b = ckpt.read_state(ckpt.resolve(dir_b, "latest"))["optimizer"]["state"]
    assert all(torch.equal(moments_a[i]["exp_avg"], moments_b[i]["exp_avg"]) for i in moments_a)
    log_a = [r for r in read_log(dir_a / "metrics.jsonl") if r["kind"] == "train"]
    log_b = [r for r in read_log(dir_b / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["loss"], r["usage"]) for r in log_a] == [(r["step"], r["loss"], r["usage"]) for r in log_b]
    # the trainer really warm-started: updates 1..S (log steps) sent everything to layers 0 and 2
    fixed_usage = [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    assert [r["usage"] == fixed_usage for r in log_a] == [True] * WARM + [False] * (6 - WARM)
