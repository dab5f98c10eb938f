"""Training speed on one GPU at GPT-2-small size: tokens/s, step time and MFU, plain or routed
(token- or sequence-routed).

One training step = `compute_objective` (LM loss, plus a routed decoder's balance and z-losses)
under bf16 autocast, backward, gradient clipping, the fused AdamW update, zero_grad: what
`transformer train` does per step. The tokens are synthetic (uniform random ids: the GPU
machine has no network, and speed does not depend on the text), drawn once.

- model: 12 layers x 768, 12 heads, context 1024, vocabulary 50,304, tied embeddings, no
  dropout (GPT-2 small). Routed, K = 12 steps over a pool of N = 24 layers: `token`, the
  routing `transformer train` runs by default (configs/tiny-routed.yaml: each token chooses
  its layer at every step, attention over all tokens, no capacity, the batched dispatch), or
  `sequence` (one route per sequence from a prefix of 64 tokens);
- batch: `--batch`, or the largest of BATCHES whose step runs (an out-of-memory tries the next),
  to fill the GPU;
- MFU: model FLOPs per token (`transformer.training.run_log.flops_per_token`: 6 per active
  weight plus attention) x tokens/s over the GPU's bf16 dense peak, from the device-name table
  the trainer uses (H100/H200 SXM 989 TFLOPS, A100 312, ...); a name not in the table is
  measured instead: the best of a few 8192^3 bf16 matmuls (a lower bound of the peak, so the
  MFU it gives is an upper bound: the line says which).

`--cpu-smoke` runs the same code on the CPU with a tiny model and a few steps, to know the
script works before a GPU is at hand. Prints one `RESULT {json}` line for bench/gpu_check.sh.

Run from the repository root:  python bench/gpu_bench.py --model plain [--compile]
"""

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.objective import compute_objective
from transformer.training.optim import fused_available
from transformer.training.run_log import PEAK_FLOPS, flops_per_token

MODELS = ("plain", "token", "sequence")
BATCHES = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)


@dataclass(frozen=True)
class Size:
    n_layers: int
    d_model: int
    n_heads: int
    n_ctx: int
    d_vocab: int


GPT2_SMALL = Size(n_layers=12, d_model=768, n_heads=12, n_ctx=1024, d_vocab=50_304)
TINY = Size(n_layers=2, d_model=64, n_heads=4, n_ctx=64, d_vocab=512)


def build(kind: str, size: Size, device: torch.device) -> DecoderEnds:
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=size.d_vocab,
        d_model=size.d_model,
        n_heads=size.n_heads,
        n_layers=size.n_layers,
        n_ctx=size.n_ctx,
        kernels="fast",
        dropout=0.0,
        tie_embeddings=True,
    )
    if kind == "plain":
        return Decoder(cfg).to(device)
    if kind == "token":
        routing = RoutingConfig(
            granularity="token", pool_size=2 * size.n_layers, token_attention="all", capacity_factor=None
        )
        return TokenRoutedDecoder(cfg, routing).to(device)
    routing = RoutingConfig(pool_size=2 * size.n_layers, route_prefix_len=min(64, size.n_ctx // 4))
    return RoutedDecoder(cfg, routing).to(device)


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak bf16 FLOP/s, where it came from)."""
    if device.type != "cuda":
        return None, "cpu: no peak"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops, f"table ({key})"
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best, "measured 8192^3 bf16 matmul (lower bound of the peak)"


def make_step(
    model: DecoderEnds, forward: Callable[..., object], device: torch.device, dtype: str
) -> Callable[[torch.Tensor], torch.Tensor]:
    parameters = list(model.parameters())
    fused = fused_available(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=3e-4, weight_decay=0.1, fused=fused or None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step(tokens: torch.Tensor) -> torch.Tensor:
        with autocast:
            objective = compute_objective(forward, tokens)  # type: ignore[arg-type]
        objective.loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return objective.lm_loss.detach()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fits(step: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, device: torch.device) -> bool:
    try:
        step(tokens)
        sync(device)
        return True
    except torch.OutOfMemoryError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="plain")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile=true)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: the largest that fits)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: check the script runs")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, size, batches = torch.device("cpu"), TINY, (4, 2)
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
    elif not torch.cuda.is_available():
        print("no CUDA device: use --cpu-smoke to check the script on the CPU", file=sys.stderr)
        return 2
    else:
        device, size, batches = torch.device("cuda"), GPT2_SMALL, BATCHES
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build(args.model, size, device)
    model.train()
    model.set_training_step(1000, 2000)  # routed: past any warm start, routes sampled as mid-training
    forward = torch.compile(model) if args.compile else model
    step = make_step(model, forward, device, args.dtype)
    generator = torch.Generator().manual_seed(0)

    def batch_of(n: int) -> torch.Tensor:
        return torch.randint(0, size.d_vocab, (n, size.n_ctx + 1), generator=generator).to(device)

    candidates = [args.batch] if args.batch else list(batches)
    started = time.perf_counter()
    batch = next((n for n in candidates if fits(step, batch_of(n), device)), None)
    if batch is None:
        print(f"no batch of {candidates} fits", file=sys.stderr)
        return 1
    tokens = batch_of(batch)
    for _ in range(args.warmup):
        step(tokens)
    sync(device)
    warmup_s = time.perf_counter() - started
    times, losses = [], []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        losses.append(step(tokens))
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens_per_step = batch * size.n_ctx
    flops = flops_per_token(model.active_parameters(), size.n_layers, size.d_model, size.n_ctx) * tokens_per_step
    peak, peak_source = peak_flops(device)
    mfu = flops / step_s / peak if peak else None
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "model": args.model,
        "compile": args.compile,
        "dtype": args.dtype,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "params": sum(p.numel() for p in model.parameters()),
        "active_params": model.active_parameters(),
        "batch": batch,
        "tokens_per_s": tokens_per_step / step_s,
        "step_ms": step_s * 1000,
        "step_ms_runs": [round(t * 1000, 1) for t in times],
        "mfu": mfu,
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": peak_source,
        "max_alloc_gib": memory,
        "warmup_s": warmup_s,
        "last_loss": float(losses[-1]),
    }
    mfu_text = f"{mfu:.1%}" if mfu is not None else "-"
    print(
        f"{args.model:<8} compile={str(args.compile):<5} {args.dtype} batch {batch}: {result['tokens_per_s']:,.0f} "
        f"tokens/s, {result['step_ms']:.1f} ms/step, MFU {mfu_text} (peak: {peak_source}); "
        f"warm-up {warmup_s:.0f} s, loss {result['last_loss']:.3f}"
    )
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
