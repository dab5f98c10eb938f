"""`transformer train` on a GPU: a checkpoint written there loads on the CPU with the same
function; an update waits for the device only where it must; and a `torchrun
--nproc_per_node=1` run trains through NCCL and DDP for 20 steps. Skipped without CUDA (the
`cuda` marker)."""

import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config, write_corpus
from transformer.inference.loading import load_trained
from transformer.training import trainer as trainer_module
from transformer.training.trainer import train

pytestmark = pytest.mark.cuda
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "routed"])
def test_a_checkpoint_saved_on_the_gpu_loads_on_the_cpu(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    result = train(tiny_run_config(tmp_path, routed, "train.device=cuda", "train.max_steps=4"))
    on_gpu = load_trained(result.run_dir, device="cuda")
    on_cpu = load_trained(result.run_dir, device="cpu")
    assert all(p.device.type == "cpu" for p in on_cpu.model.parameters())
    assert all(p.device.type == "cuda" for p in on_gpu.model.parameters())
    tokens = torch.randint(0, on_cpu.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu_logits = on_cpu.model(tokens).logits
        gpu_logits = on_gpu.model(tokens.cuda()).logits.cpu()
    torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4)
    assert on_cpu.step == 4


@contextmanager
def counting_waits(into: list[int]) -> Iterator[None]:
    """Appends how many times the host waited for the device inside the block."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
    into.append(sum("synchroniz" in str(w.message) for w in caught))


@pytest.mark.parametrize("routed", [False, True], ids=["plain", "token-routed"])
def test_an_update_waits_for_the_device_once_plus_once_per_routing_step(
    tmp_path: Path, routed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer's update (micro-batch, backward, the next batch's prefetch, clipping, the
    finiteness check, AdamW) waits once, to read the loss, the gradient norm and the skip flag;
    a token-routed decoder's dispatch once more per routing step. The steps that log read the
    routing figures as well, so only the others are counted; the first update is not
    (lazy initialisation)."""
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    waits: list[int] = []
    run_class = trainer_module._Run
    original = run_class._optimizer_step

    def counted(self: trainer_module._Run, with_metrics: bool) -> object:
        if with_metrics or self.step == 0:
            return original(self, with_metrics)
        with counting_waits(waits):
            return original(self, with_metrics)

    monkeypatch.setattr(run_class, "_optimizer_step", counted)
    granularity = ["routing.granularity=token"] if routed else []
    config = tiny_run_config(
        tmp_path, routed, *granularity, "train.device=cuda", "train.max_steps=6", "train.log_interval=3"
    )
    train(config)
    steps = config.model.n_layers if routed else 0
    assert waits == [1 + steps] * 3, waits  # updates 2, 4 and 5 (1 is not counted; 3 and 6 log)


def test_torchrun_one_process_trains_twenty_steps_through_nccl(tmp_path: Path) -> None:
    """Under torchrun the trainer joins a process group and wraps the model in DDP even for one
    process (transformer/training/distributed.py), so this run goes through NCCL's all-reduce."""
    corpus = write_corpus(tmp_path / "corpus")
    out_dir = tmp_path / "run"
    settings = [
        *("model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.n_ctx=16", "routing=null"),
        *(f"train.data={corpus}", f"train.out_dir={out_dir}", "train.device=cuda", "train.max_steps=20"),
        *("train.batch_size=4", "train.log_interval=1", "train.eval_interval=20", "train.sample_tokens=0"),
    ]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += ["-m", "transformer", "train", *(f"--set={setting}" for setting in settings)]
    env = {**os.environ, "NCCL_DEBUG": "INFO", "TRANSFORMER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "NCCL INFO" in finished.stdout + finished.stderr, "the process group ran on NCCL"
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 20 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
