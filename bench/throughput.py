"""Training throughput of the plain Decoder against a conventional nn.Linear GPT.

One training step = forward, cross-entropy, backward, AdamW step, zero_grad, on one fixed
batch of random tokens. Three paths, all at nanoGPT's CPU recipe size (4 layers, d_model 128,
4 heads, context 64, batch 12, vocab 65, no dropout) and with the same parameter count:

- readable: `Decoder(ModelConfig(kernels="readable"))`, explicit scores/mask/softmax;
- fast:     `Decoder(ModelConfig(kernels="fast"))`, F.scaled_dot_product_attention;
- baseline: bench/gpt_baseline.py, an nn.Embedding/nn.LayerNorm/fused-qkv nn.Linear GPT.

Timing runs the three paths in one process, interleaved and in rotating order, so that a
change in machine load hits every path alike: `warmup` untimed steps each, then `repeats`
timed runs of `steps` steps; the table shows each path's median run (all runs are printed
too). Two clocks per run: wall time (what tokens/s is computed from) and, on CPU, the
process's CPU time (summed over its threads). On a machine shared with other jobs, wall time
swings with their load while CPU time barely does, so compare CPU times there.

Memory is measured apart, each path in its own fresh child process (so one path's allocations
cannot colour another's figure): the peak *added by training* on top of the built model, over
max(warmup, 2) steps: activations, gradients, AdamW's two moments and allocator slack.
- CUDA: torch.cuda.max_memory_allocated() minus memory_allocated() just before the first step.
- CPU: peak resident set size (VmHWM, reset through /proc/self/clear_refs just before the
  first step) minus the RSS at that moment. Where that reset is unavailable (not Linux) it
  falls back to ru_maxrss, which can also include peaks from before training.

Run from the repository root:  python bench/throughput.py [--device cuda] [--dtype bfloat16|bfloat16-autocast]
"""

import argparse
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from gpt_baseline import BaselineGPT
from machine import cpu_name, proc_status_kib, reset_peak_rss, sync
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder, DecoderOutput
from transformer.training.optim import fused_available

PATHS = ("readable", "fast", "baseline")
# nanoGPT's shakespeare_char CPU recipe (its README's "I only have a macbook"), dropout 0.
D_VOCAB, D_MODEL, N_HEADS, N_LAYERS, N_CTX, BATCH = 65, 128, 4, 4, 64, 12
FAST_VS_BASELINE_GOAL = 1.2  # fast tokens/s / baseline tokens/s should be at least this
READABLE_VS_FAST_GOAL = 1.5  # readable ms/step / fast ms/step should be at most this
AUTOCAST = "bfloat16-autocast"


def build_model(path: str) -> nn.Module:
    if path == "baseline":
        return BaselineGPT(D_VOCAB, D_MODEL, N_HEADS, N_LAYERS, N_CTX, 4 * D_MODEL)
    cfg = ModelConfig(
        d_vocab=D_VOCAB,
        d_model=D_MODEL,
        n_heads=N_HEADS,
        n_layers=N_LAYERS,
        n_ctx=N_CTX,
        kernels=path,
        bias=True,
        tie_embeddings=False,
        dropout=0.0,
    )
    return Decoder(cfg)


def make_batch(device: torch.device) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, D_VOCAB, (BATCH, N_CTX), generator=generator)
    targets = torch.randint(0, D_VOCAB, (BATCH, N_CTX), generator=generator)
    return tokens.to(device), targets.to(device)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, tokens: Tensor, targets: Tensor, autocast: bool = False
) -> Tensor:
    """`autocast`: the forward under bfloat16 autocast, as `transformer train` runs with
    `train.dtype=bfloat16` (parameters, gradients and AdamW stay float32)."""
    with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=autocast):
        output = model(tokens)
        logits = output.logits if isinstance(output, DecoderOutput) else output  # the baseline returns bare logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


# --- Memory -----------------------------------------------------------------------------------


class PeakMemory:
    """Peak bytes added between `start()` and `stop_mib()` (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_bytes = 0
        self.hwm_reset = False

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        elif sys.platform == "linux":
            self.hwm_reset = reset_peak_rss()
            self.start_bytes = proc_status_kib("VmRSS") * 1024

    def stop_mib(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.hwm_reset:
            peak = proc_status_kib("VmHWM") * 1024
        else:
            max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = max_rss if platform.system() == "Darwin" else max_rss * 1024  # bytes vs KiB
        return max(0, peak - self.start_bytes) / 2**20


# --- Timing -----------------------------------------------------------------------------------


@dataclass
class Trainee:
    """One path's model and optimizer, and its timed runs (ms per step, one entry per run)."""

    path: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    loss: float = float("nan")


def build_trainee(path: str, args: argparse.Namespace) -> Trainee:
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    torch.manual_seed(0)
    model = build_model(path).to(device=torch.device(args.device), dtype=dtype)
    model.train()
    parameters = list(model.parameters())
    if path == "baseline" or args.optimizer == "default":  # nanoGPT fuses AdamW on CUDA only
        fused = args.device == "cuda"
    else:  # what `transformer train` uses (transformer/training/optim.py)
        fused = fused_available(parameters)
    return Trainee(path, model, torch.optim.AdamW(parameters, lr=1e-3, fused=fused or None))


def peak_memory_mib(path: str, args: argparse.Namespace) -> float:
    """Runs in a fresh child process: the peak memory added by max(warmup, 2) training steps."""
    device = torch.device(args.device)
    trainee = build_trainee(path, args)
    tokens, targets = make_batch(device)
    memory = PeakMemory(device)
    memory.start()
    for _ in range(max(args.warmup, 2)):  # AdamW allocates its moments in the first step
        train_step(trainee.model, trainee.optimizer, tokens, targets, args.dtype == AUTOCAST)
    return memory.stop_mib()


def peak_memory_in_child(path: str, argv: Sequence[str]) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-of", path]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"memory measurement of {path} failed:\n{finished.stderr}")
    return float(finished.stdout.strip().splitlines()[-1])


def time_paths(args: argparse.Namespace) -> list[Trainee]:
    """Timed runs of the three paths, interleaved (and in rotating order) so that a change in
    machine load during the benchmark hits every path alike instead of skewing the ratios."""
    device = torch.device(args.device)
    trainees = [build_trainee(path, args) for path in PATHS]
    tokens, targets = make_batch(device)
    for trainee in trainees:
        for _ in range(args.warmup):
            train_step(trainee.model, trainee.optimizer, tokens, targets, args.dtype == AUTOCAST)
    for repeat in range(args.repeats):
        for i in range(len(trainees)):
            trainee = trainees[(i + repeat) % len(trainees)]
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                loss = train_step(trainee.model, trainee.optimizer, tokens, targets, args.dtype == AUTOCAST)
            sync(device)
            trainee.wall_ms.append((time.perf_counter() - wall) * 1000.0 / args.steps)
            trainee.cpu_ms.append((time.process_time() - cpu) * 1000.0 / args.steps)
            trainee.loss = float(loss)
    return trainees


# --- Report -----------------------------------------------------------------------------------


@dataclass
class Result:
    path: str
    parameters: int
    wall_ms: list[float]
    cpu_ms: list[float]
    peak_mib: float
    final_loss: float

    @property
    def ms_per_step(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def cpu_ms_per_step(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def tokens_per_s(self) -> float:
        return BATCH * N_CTX / (self.ms_per_step / 1000.0)


def report(results: dict[str, Result], args: argparse.Namespace) -> None:
    on_cpu = args.device == "cpu"
    device_name = cpu_name() if on_cpu else torch.cuda.get_device_name()
    print(
        f"torch {torch.__version__} | {args.device} ({device_name}) | {args.dtype} | "
        f"{torch.get_num_threads()} threads | layers {N_LAYERS}, d_model {D_MODEL}, heads {N_HEADS}, "
        f"ctx {N_CTX}, batch {BATCH}, vocab {D_VOCAB} | step = fwd+bwd+AdamW | median of "
        f"{args.repeats} runs x {args.steps} steps after {args.warmup} warm-up"
    )
    memory_kind = "peak RSS" if on_cpu else "peak alloc"
    print(
        f"{'path':<9} {'params':>8} {'tokens/s':>9} {'ms/step':>8} {'cpu ms/step':>11} "
        f"{memory_kind + ' +MiB':>15} {'loss':>6}  wall ms/step of each run"
    )
    for result in results.values():
        cpu = f"{result.cpu_ms_per_step:.1f}" if on_cpu else "-"
        runs = " ".join(f"{run:.0f}" for run in result.wall_ms)
        print(
            f"{result.path:<9} {result.parameters:>8,} {result.tokens_per_s:>9,.0f} "
            f"{result.ms_per_step:>8.1f} {cpu:>11} {result.peak_mib:>15.1f} "
            f"{result.final_loss:>6.3f}  {runs}"
        )
    readable, fast, baseline = results["readable"], results["fast"], results["baseline"]
    verdict = {True: "meets goal", False: "MISSES goal"}
    fast_vs_baseline = fast.tokens_per_s / baseline.tokens_per_s
    readable_vs_fast = readable.ms_per_step / fast.ms_per_step
    cpu_note = ""
    if on_cpu:
        cpu_note = f"; by CPU time {baseline.cpu_ms_per_step / fast.cpu_ms_per_step:.2f}x"
    print(
        f"fast vs baseline, speed:  {fast_vs_baseline:.2f}x{cpu_note}  "
        f"(goal >= {FAST_VS_BASELINE_GOAL:.1f}x: {verdict[fast_vs_baseline >= FAST_VS_BASELINE_GOAL]})"
    )
    if on_cpu:
        cpu_note = f"; by CPU time {readable.cpu_ms_per_step / fast.cpu_ms_per_step:.2f}x"
    print(
        f"readable vs fast, time:   {readable_vs_fast:.2f}x{cpu_note}  "
        f"(goal <= {READABLE_VS_FAST_GOAL:.1f}x: {verdict[readable_vs_fast <= READABLE_VS_FAST_GOAL]})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", AUTOCAST),
        default="float32",
        help="bfloat16: every path's parameters cast to bfloat16; bfloat16-autocast: float32 parameters, the "
        "forward under bfloat16 autocast (train.dtype=bfloat16 in `transformer train`)",
    )
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per path; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path before timing")
    parser.add_argument(
        "--optimizer",
        choices=("ours", "default"),
        default="ours",
        help="ours: readable and fast use `transformer train`'s fused AdamW, the baseline nanoGPT's "
        "(fused on CUDA only); default: every path torch's default AdamW (to measure the lever)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)  # child process
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        print("--steps and --repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        print(peak_memory_mib(args.memory_of, args))
        return 0
    peaks = {path: peak_memory_in_child(path, argv) for path in PATHS}
    results = {
        trainee.path: Result(
            path=trainee.path,
            parameters=sum(p.numel() for p in trainee.model.parameters()),
            wall_ms=trainee.wall_ms,
            cpu_ms=trainee.cpu_ms,
            peak_mib=peaks[trainee.path],
            final_loss=trainee.loss,
        )
        for trainee in time_paths(args)
    }
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
