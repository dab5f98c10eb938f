"""Backprop by hand (transformer/manual/) against autograd: step time and peak memory, side by side.

One training step = forward, cross-entropy, backward, AdamW step, zero_grad, on one fixed batch,
at bench/throughput.py's size (4 layers, d_model 128, 4 heads, context 64, batch 12, vocab 65).
Three paths, the same model and initial weights:

- manual:   `ManualDecoder(model).loss_and_grads` (no autograd), `set_grads`, AdamW;
- readable: autograd through `Decoder(ModelConfig(kernels="readable"))`, the same algebra;
- fast:     autograd through `kernels="fast"` (SDPA, fused norms and GELU).

Timing interleaves the paths in rotating order (a change of machine load hits all alike) and
reports each path's median run; memory is the peak added by training over the built model, each
path in its own fresh child process (bench/throughput.py's `PeakMemory`). The manual path must
end at the readable path's loss: the same function and the same gradients.

Run from the repository root:  python bench/manual_backprop.py [--threads 1] [--device cuda]
"""

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from machine import cpu_name, load_average, sync
from throughput import BATCH, D_MODEL, N_CTX, N_HEADS, N_LAYERS, PeakMemory, build_model, make_batch, train_step
from torch import Tensor

from transformer.manual.decoder import ManualDecoder
from transformer.model.decoder import Decoder

PATHS = ("manual", "readable", "fast")
Step = Callable[[], Tensor]


def build_step(path: str, device: torch.device) -> Step:
    torch.manual_seed(0)
    model = build_model("fast" if path == "fast" else "readable").to(device)
    assert isinstance(model, Decoder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens, targets = make_batch(device)
    if path != "manual":
        return lambda: train_step(model, optimizer, tokens, targets)
    manual = ManualDecoder(model)

    def manual_step() -> Tensor:
        loss, grads = manual.loss_and_grads(tokens, targets)
        manual.set_grads(grads)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return manual_step


def peak_memory_mib(path: str, device: torch.device, steps: int) -> float:
    step = build_step(path, device)
    memory = PeakMemory(device)
    memory.start()
    for _ in range(max(steps, 2)):  # AdamW allocates its moments in the first step
        step()
    return memory.stop_mib()


def peak_memory_in_child(path: str, argv: Sequence[str]) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-of", path]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"memory measurement of {path} failed:\n{finished.stderr}")
    return float(finished.stdout.strip().splitlines()[-1])


def time_paths(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, float]]:
    device = torch.device(args.device)
    steps = {path: build_step(path, device) for path in PATHS}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    runs: dict[str, list[float]] = {path: [] for path in PATHS}
    losses: dict[str, float] = {}
    for repeat in range(args.repeats):
        for i in range(len(PATHS)):
            path = PATHS[(i + repeat) % len(PATHS)]
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = steps[path]()
            sync(device)
            runs[path].append((time.perf_counter() - start) * 1000.0 / args.steps)
            losses[path] = float(loss)
    return runs, losses


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per path; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        print(peak_memory_mib(args.memory_of, torch.device(args.device), args.warmup))
        return 0
    peaks = {path: peak_memory_in_child(path, argv) for path in PATHS}
    runs, losses = time_paths(args)
    device_name = cpu_name() if args.device == "cpu" else torch.cuda.get_device_name()
    print(
        f"torch {torch.__version__} | {args.device} ({device_name}) | float32 | {torch.get_num_threads()} threads "
        f"| {load_average()} | layers {N_LAYERS}, d_model {D_MODEL}, heads {N_HEADS}, ctx {N_CTX}, batch {BATCH} "
        f"| median of {args.repeats} runs x {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"{'path':<9} {'ms/step':>8} {'peak +MiB':>10} {'loss':>8}  ms/step of each run")
    median = {path: statistics.median(runs[path]) for path in PATHS}
    for path in PATHS:
        each = " ".join(f"{run:.0f}" for run in runs[path])
        print(f"{path:<9} {median[path]:>8.1f} {peaks[path]:>10.1f} {losses[path]:>8.5f}  {each}")
    for reference in ("readable", "fast"):
        print(
            f"manual vs {reference:<8}: time {median['manual'] / median[reference]:.2f}x, "
            f"peak memory {peaks['manual'] / max(peaks[reference], 1e-9):.2f}x"
        )
    print(f"manual loss - readable loss after the last step: {losses['manual'] - losses['readable']:+.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
