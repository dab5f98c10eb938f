"""`transformer train --set routing.granularity=token` trains through the decoder interface
alone: the trainer, its evaluation, checkpoints, an exact resume, the logged metrics (layers
per token among them) and the closing sample from the token KV cache."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.tiny_runs import tiny_run_config
from transformer.commands.main import main
from transformer.inference.loading import load_trained
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training import checkpoint as ckpt
from transformer.training.run_log import read_log
from transformer.training.trainer import train

TOKEN = ("routing.granularity=token", "routing.skip=true", "routing.compute_weight=0.01", "routing.capacity_factor=1.0")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))


def _as_cli(config_args: list[str]) -> list[str]:
    return [item for assignment in config_args for item in ("--set", assignment)]


# and with the readout reward after a warm start of 3 updates, so that the resume at 2 crosses it
SKIP_LEARNING = ("routing.reward=readout", "routing.warm_start_steps=3")


@pytest.mark.parametrize(
    "extra", [pytest.param((), id="first_order"), pytest.param(SKIP_LEARNING, id="readout", marks=pytest.mark.slow)]
)
def test_the_cli_trains_a_token_routed_run_that_resumes_bit_for_bit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...]
) -> None:
    """Four steps from the command line == two steps, stop, resume, two more: weights (the
    work counter too), optimizer moments and the train log's losses."""
    short = ("train.max_steps=4", "train.eval_interval=2", "train.checkpoint_interval=2", *extra)
    straight = tiny_run_config(tmp_path / "a", True, *TOKEN, *short)
    corpus, out = straight.train.data, Path(straight.train.out_dir)
    assignments = [
        "model.d_model=16",
        "model.n_heads=2",
        "model.n_layers=2",
        "model.n_ctx=16",
        f"train.data={corpus}",
        f"train.out_dir={out}",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "train.eval_batches=2",
        "train.log_interval=1",
        "train.sample_tokens=20",
        "train.lr=3e-3",
        "routing.pool_size=3",
        *TOKEN,
        *short,
    ]
    assert main(["train", *_as_cli(assignments)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("routed decoder") and "sample:" in printed
    split = tiny_run_config(tmp_path / "b", True, *TOKEN, *short)
    assert train(split, stop_at=2).steps == 2
    assert train(split, resume="latest").steps == 4
    split_dir = Path(split.train.out_dir)
    a, b = (load_file(str(ckpt.resolve(d, "latest") / ckpt.WEIGHTS)) for d in (out, split_dir))
    assert a.keys() == b.keys() and "work" in a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    states = [ckpt.read_state(ckpt.resolve(d, "latest")) for d in (out, split_dir)]
    for moments_a, moments_b in zip(*(s["optimizer"]["state"].values() for s in states), strict=True):
        assert torch.equal(moments_a["exp_avg"], moments_b["exp_avg"])
    logs = [read_log(d / "metrics.jsonl") for d in (out, split_dir)]
    losses = [{r["step"]: r["loss"] for r in log if r["kind"] == "train"} for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_the_log_reports_the_work_done_and_the_checkpoint_counts_it(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, True, *TOKEN)
    train(config)
    records = read_log(Path(config.train.out_dir) / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    for record in steps:
        assert 0.0 < record["layers_per_token"] <= 2.0  # K = 2 steps
        assert 0.0 <= record["dropped_fraction"] <= 1.0 and 0.0 <= record["skip_fraction"] <= 1.0
        assert len(record["usage"]) == 2 and len(record["usage"][0]) == 4  # 3 layers and skip
    evaluations = [r for r in records if r["kind"] == "eval"]
    assert evaluations and all("sampled_route_loss" in r and len(r["usage"][0]) == 4 for r in evaluations)
    run = load_trained(Path(config.train.out_dir))
    model = run.model
    assert isinstance(model, TokenRoutedDecoder)
    applied, tokens = model.work.tolist()
    assert tokens == 6 * 4 * 16  # every training token, counted once
    pool = sum(p.numel() for p in model.pool.parameters())
    others = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("pool.")) - model.embed.W_E.numel()
    others -= model.cfg.n_ctx * model.cfg.d_model  # the learned position table: a lookup
    assert model.active_parameters() == others + round(pool * applied / tokens / 3)
    assert model.active_parameters() < others + pool * 2 / 3  # less than K of the N layers
