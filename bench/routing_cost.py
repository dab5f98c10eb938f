"""What routing costs: the routed decoder's training step against plain decoders of its width.

Three models at nanoGPT's CPU shakespeare-char size (d_model 128, 4 heads, context 64,
batch 12, vocab 65), all with the package's defaults otherwise (fast attention):

- plain-4: `Decoder`, 4 layers: the compute each token gets in the routed model;
- plain-8: `Decoder`, 8 layers: the layer parameters the routed model holds;
- routed:  `RoutedDecoder`, a pool of N=8 layers, K=4 steps (routing prefix 16): each
  sequence runs through 4 layers, so its compute should be close to plain-4's;
- per-step: the same with `pools="per_step"`: step k chooses between its own 2 layers;
- token-all / token-co: `TokenRoutedDecoder`, the same pool and steps, every token choosing
  its own layer at every step (capacity factor 1.25), queries over the keys of every token
  of the step (`token_attention="all"`) or of its co-routed tokens only (`"co_routed"`);
- token-all-loop / token-co-loop (only with --models): the same with the per-layer dispatch the
  readable kernels run (`pool.batched = False`), the "before" arm of the batched dispatch.

One training step = `compute_objective(model, tokens).loss` (next-token loss, plus the
routed model's balance and z-losses), backward, the AdamW step `transformer train` takes
(`make_optimizer`: fused where torch has the kernel), zero_grad, on one fixed batch
of random tokens; the routed models sample their routes as in training. The goal: a routed
step costs at most 1.1x a plain-4 step. Timing runs the models interleaved, in rotating
order, in one process, so that a change in machine load hits them alike: `warmup` untimed
steps each, then `repeats` timed runs of `steps` steps; the table shows each model's
median run. Two clocks: wall time (tokens/s comes from it) and, on CPU, the process's CPU
time, which swings far less than wall time on a machine shared with other jobs.

Peak memory is measured in a fresh child process per model: the peak added by max(warmup, 2)
training steps on top of the built model (activations, gradients, AdamW's moments, allocator
slack). CUDA: max_memory_allocated() minus memory_allocated() before the first step. CPU:
the peak resident set size (VmHWM, reset through /proc/self/clear_refs before the first step)
minus the RSS then; without that reset (not Linux), ru_maxrss, which may include earlier peaks.

`--profile` then splits a routed step into its pieces (see `profile_routed`), to show where
the time beyond plain-4 goes.

Run from the repository root:  python bench/routing_cost.py [--threads 1] [--batch 64] [--profile]
"""

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name, load_average, proc_status_kib, reset_peak_rss, sync
from torch import Tensor, nn

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.routing import decoder as routed_module
from transformer.routing.config import RoutingConfig
from transformer.routing.decoder import RoutedDecoder, as_routed
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training import objective as objective_module
from transformer.training.config import TrainSettings
from transformer.training.objective import compute_objective
from transformer.training.optim import make_optimizer

MODELS = ("plain-4", "plain-8", "routed", "per-step", "token-all", "token-co")
# The token-routed models with the per-layer dispatch (one call per chosen layer and step), what
# the fast kernels ran before the batched dispatch (stacked.py): the "before" arm of a comparison.
LOOPED = ("token-all-loop", "token-co-loop")
# nanoGPT's shakespeare_char CPU recipe (its README's "I only have a macbook"), dropout 0.
D_VOCAB, D_MODEL, N_HEADS, N_CTX = 65, 128, 4, 64
STEPS_K, POOL_N, PREFIX = 4, 8, 16
ROUTED_VS_PLAIN4_GOAL = 1.1  # routed ms/step / plain-4 ms/step should be at most this
TOKEN_VS_PLAIN4_GOAL = 1.25  # token-routed (capacity factor 1.25) ms/step / plain-4 ms/step


def build_model(name: str) -> nn.Module:
    if name.endswith("-loop"):
        model = build_model(name.removesuffix("-loop"))
        assert isinstance(model, TokenRoutedDecoder)
        model.pool.batched = False
        return model
    depth = 8 if name == "plain-8" else STEPS_K
    cfg = ModelConfig(d_vocab=D_VOCAB, d_model=D_MODEL, n_heads=N_HEADS, n_layers=depth, n_ctx=N_CTX)
    if name in ("token-all", "token-co"):
        attention = "all" if name == "token-all" else "co_routed"
        routing = RoutingConfig(pool_size=POOL_N, granularity="token", token_attention=attention, capacity_factor=1.25)
        return TokenRoutedDecoder(cfg, routing)
    if name in ("routed", "per-step"):
        pools = "per_step" if name == "per-step" else "shared"
        return RoutedDecoder(cfg, RoutingConfig(pool_size=POOL_N, route_prefix_len=PREFIX, pools=pools))
    return Decoder(cfg)


def make_tokens(batch: int, device: torch.device) -> Tensor:
    """Inputs and targets in one tensor of n_ctx + 1 ids, as compute_objective takes them."""
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, D_VOCAB, (batch, N_CTX + 1), generator=generator).to(device)


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 the way `transformer train` does it: autocast, float32 weights and AdamW."""
    if args.dtype == "bfloat16":
        return torch.autocast(args.device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Trainee:
    """One model with its optimizer, and its timed runs (ms per step, one entry per run)."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def step(self, tokens: Tensor, args: argparse.Namespace, route: Tensor | None = None) -> None:
        with autocast(args):
            loss = compute_objective(self.model, tokens, route=route).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_trainee(name: str, args: argparse.Namespace) -> Trainee:
    torch.manual_seed(0)
    model = build_model(name).to(torch.device(args.device))
    model.train()
    return Trainee(name, model, make_optimizer(model, TrainSettings()))


# --- Memory -----------------------------------------------------------------------------------


def peak_memory_mib(name: str, args: argparse.Namespace) -> float:
    """Runs in a fresh child process: the peak memory added by max(warmup, 2) training steps."""
    device = torch.device(args.device)
    trainee = build_trainee(name, args)
    tokens = make_tokens(args.batch, device)
    hwm_reset = False
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        hwm_reset = sys.platform == "linux" and reset_peak_rss()
        start = proc_status_kib("VmRSS") * 1024 if hwm_reset else 0
    for _ in range(max(args.warmup, 2)):  # AdamW allocates its moments in the first step
        trainee.step(tokens, args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    elif hwm_reset:
        peak = proc_status_kib("VmHWM") * 1024
    else:
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max_rss if platform.system() == "Darwin" else max_rss * 1024  # bytes vs KiB
    return max(0, peak - start) / 2**20


def peak_memory_in_child(name: str, argv: Sequence[str]) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-of", name]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{finished.stderr}")
    return float(finished.stdout.strip().splitlines()[-1])


# --- Timing -----------------------------------------------------------------------------------


def timed_run(trainee: Trainee, tokens: Tensor, args: argparse.Namespace, route: Tensor | None = None) -> None:
    device = torch.device(args.device)
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainee.step(tokens, args, route)
    sync(device)
    trainee.wall_ms.append((time.perf_counter() - wall) * 1000.0 / args.steps)
    trainee.cpu_ms.append((time.process_time() - cpu) * 1000.0 / args.steps)


def time_models(args: argparse.Namespace) -> list[Trainee]:
    """Timed runs of the models, interleaved and in rotating order (see the module docstring)."""
    trainees = [build_trainee(name, args) for name in args.models]
    tokens = make_tokens(args.batch, torch.device(args.device))
    for trainee in trainees:
        for _ in range(args.warmup):
            trainee.step(tokens, args)
    for repeat in range(args.repeats):
        for i in range(len(trainees)):
            timed_run(trainees[(i + repeat) % len(trainees)], tokens, args)
    return trainees


# --- Profile of the routed step -----------------------------------------------------------------


class Stopwatch:
    """Time per named piece, summed over calls; `start`/`stop` may nest under other names. CPU
    time on CPU (steady on a loaded machine), wall time after a synchronize on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clock = time.process_time if device.type == "cpu" else time.perf_counter
        self.total_ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._started: dict[str, float] = {}

    def start(self, name: str) -> None:
        sync(self.device)
        self._started[name] = self.clock()

    def stop(self, name: str) -> None:
        sync(self.device)
        self.total_ms[name] += (self.clock() - self._started.pop(name)) * 1000.0
        self.calls[name] += 1

    @contextlib.contextmanager
    def piece(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.piece(name):
                return function(*args, **kwargs)

        return timed


@contextlib.contextmanager
def instrumented(model: RoutedDecoder, watch: Stopwatch, group_sizes: list[int]) -> Iterator[None]:
    """Times the routed forward's pieces without editing the package: hooks on the router, the
    pool and each pool layer; the gate, the aux losses, the ends and the LM loss wrapped in place."""
    handles = [
        model.router.register_forward_pre_hook(lambda *_: watch.start("router")),
        model.router.register_forward_hook(lambda *_: watch.stop("router")),
        model.pool.register_forward_pre_hook(lambda *_: watch.start("pool")),
        model.pool.register_forward_hook(lambda *_: watch.stop("pool")),
    ]

    def layer_started(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        group_sizes.append(inputs[0].shape[0])
        watch.start("pool layers")

    for layer in model.pool.layers:
        handles.append(layer.register_forward_pre_hook(layer_started))
        handles.append(layer.register_forward_hook(lambda *_: watch.stop("pool layers")))
    patched: list[tuple[Any, str, Any]] = [
        (routed_module, "gate", watch.wrap("gate", routed_module.gate)),
        (routed_module, "choice_score", watch.wrap("gate", routed_module.choice_score)),
        (objective_module, "lm_loss", watch.wrap("ends + LM loss", objective_module.lm_loss)),
        (model.router, "choose", watch.wrap("router", model.router.choose)),
        (model.router, "probabilities", watch.wrap("router", model.router.probabilities)),
        (model, "_routing_info", watch.wrap("aux losses", model._routing_info)),
        (model, "embed_tokens", watch.wrap("ends + LM loss", model.embed_tokens)),
        (model, "logits", watch.wrap("ends + LM loss", model.logits)),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    try:
        for owner, name, replacement in patched:
            setattr(owner, name, replacement)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, name, original in originals:
            if owner is model or owner is model.router:
                delattr(owner, name)  # drop the instance attribute: the class method shows again
            else:
                setattr(owner, name, original)


def phase_split(trainee: Trainee, tokens: Tensor, args: argparse.Namespace, watch: Stopwatch) -> None:
    with watch.piece("forward"), autocast(args):
        loss = compute_objective(trainee.model, tokens).loss
    with watch.piece("backward"):
        loss.backward()
    with watch.piece("optimizer"):
        trainee.optimizer.step()
        trainee.optimizer.zero_grad(set_to_none=True)


def layer_call_ms(batch: int, args: argparse.Namespace, calls: int) -> float:
    """Forward + backward of one TransformerLayer on `batch` sequences (CPU ms, or wall on CUDA)."""
    device = torch.device(args.device)
    layer = build_model("plain-4").to(device).layers[0]  # type: ignore[index]
    x = torch.randn(batch, N_CTX, D_MODEL, device=device, requires_grad=True)
    runs = []
    for repeat in range(args.repeats + 1):
        sync(device)
        clock = time.process_time if device.type == "cpu" else time.perf_counter
        began = clock()
        for _ in range(calls):
            with autocast(args):
                out = layer(x)
            out.float().sum().backward()
        sync(device)
        if repeat:  # the first run warms up
            runs.append((clock() - began) * 1000.0 / calls)
    return statistics.median(runs)


def profile_routed(args: argparse.Namespace) -> None:
    """Where a routed step's time goes, next to plain-4's: (1) the step split into forward,
    backward and optimizer, and the routed forward into its pieces; (2) the same step with the
    route forced to layer k at step k for every sequence (one full group per step, as many
    layer calls as plain-4; the other 7 layers skipped), interleaved with plain-4, and the
    per-call cost of one layer: they separate the cost of small groups (more layer calls) from
    routing's own work and the optimizer over twice the parameters."""
    device = torch.device(args.device)
    tokens = make_tokens(args.batch, device)
    plain, routed = build_trainee("plain-4", args), build_trainee("routed", args)
    for trainee in (plain, routed):
        for _ in range(max(args.warmup, 2)):
            trainee.step(tokens, args)
    watches = {"plain-4": Stopwatch(device), "routed": Stopwatch(device)}
    group_sizes: list[int] = []
    for _ in range(args.repeats):
        phase_split(plain, tokens, args, watches["plain-4"])
        with instrumented(as_routed(routed.model), watches["routed"], group_sizes):
            phase_split(routed, tokens, args, watches["routed"])
    per_step = {
        name: {piece: ms / args.repeats for piece, ms in watch.total_ms.items()} for name, watch in watches.items()
    }
    r, p = per_step["routed"], per_step["plain-4"]
    clock = "cpu" if device.type == "cpu" else "wall"
    print(
        f"\nprofile of one step, batch {args.batch}, mean of {args.repeats} instrumented steps "
        f"({clock} ms; the hooks add a little to the routed forward):"
    )
    print(f"{'':<40} {'plain-4':>8} {'routed':>8} {'extra':>8}")
    for phase in ("forward", "backward", "optimizer"):
        print(f"{phase:<40} {p[phase]:>8.1f} {r[phase]:>8.1f} {r[phase] - p[phase]:>+8.1f}")
    steps = args.repeats * STEPS_K
    print(
        f"routed forward, by piece ({len(group_sizes) / steps:.1f} layer calls per routing step, of {POOL_N}: "
        f"layers nobody chose are skipped; group sizes {min(group_sizes)} to {max(group_sizes)}):"
    )
    dispatch = r["pool"] - r["pool layers"]
    pieces = {
        "embed, unembed, LM loss": r["ends + LM loss"],
        "router (summary, logits, sample)": r["router"],
        "pool layers": r["pool layers"],
        "pool dispatch (sort/split/cat/unsort)": dispatch,
        "gate": r["gate"],
        "aux losses (counts, balance, z)": r["aux losses"],
    }
    pieces["the rest (Python, stack)"] = r["forward"] - sum(pieces.values())
    for piece, ms in pieces.items():
        print(f"  {piece:<38} {'':>8} {ms:>8.1f}")

    forced = Trainee("routed, route k->k", routed.model, routed.optimizer)
    free = Trainee("routed, sampled", routed.model, routed.optimizer)
    dense = Trainee("plain-4", plain.model, plain.optimizer)
    route = torch.arange(STEPS_K, device=device).repeat(args.batch, 1)
    runs: list[tuple[Trainee, Tensor | None]] = [(free, None), (forced, route), (dense, None)]
    for repeat in range(args.repeats):
        for i in range(len(runs)):
            trainee, given = runs[(i + repeat) % len(runs)]
            timed_run(trainee, tokens, args, given)
    pick = (lambda t: t.cpu_ms) if device.type == "cpu" else (lambda t: t.wall_ms)
    sampled_ms, forced_ms, plain_ms = (statistics.median(pick(t)) for t in (free, forced, dense))
    calls = len(group_sizes) / args.repeats
    print(f"\nablation ({clock} ms per step, median of {args.repeats} interleaved runs x {args.steps} steps):")
    print(
        f"  routed, sampled routes ({calls:.0f} layer calls, groups of ~{args.batch / POOL_N:.1f})  {sampled_ms:>8.1f}"
    )
    print(f"  routed, route forced k->k ({STEPS_K} layer calls on the whole batch)  {forced_ms:>8.1f}")
    print(f"  plain-4 ({STEPS_K} layer calls)                                {plain_ms:>8.1f}")
    print(f"  cost of small groups (sampled - forced)                  {sampled_ms - forced_ms:>+8.1f}")
    print(f"  routing's own work and 2x parameters (forced - plain-4)  {forced_ms - plain_ms:>+8.1f}")
    sizes = sorted({0, 1, max(1, round(args.batch / POOL_N)), args.batch})
    costs = {size: layer_call_ms(size, args, calls=10) for size in sizes}
    print(
        f"  one layer, forward + backward ({clock} ms) on a group of: "
        + ", ".join(f"{size}: {ms:.2f}" for size, ms in costs.items())
        + " (0: what each skipped layer would cost if it ran)"
    )


# --- Report -----------------------------------------------------------------------------------


def report(trainees: list[Trainee], peaks: dict[str, float], args: argparse.Namespace) -> None:
    on_cpu = args.device == "cpu"
    device_name = cpu_name() if on_cpu else torch.cuda.get_device_name()
    print(
        f"torch {torch.__version__} | {args.device} ({device_name}, {os.cpu_count()} cores, {load_average()}) | "
        f"{args.dtype} | {torch.get_num_threads()} threads | d_model {D_MODEL}, heads {N_HEADS}, ctx {N_CTX}, "
        f"batch {args.batch}, vocab {D_VOCAB}; routed: pool N={POOL_N}, steps K={STEPS_K}, prefix {PREFIX} | "
        f"step = objective fwd+bwd+AdamW | median of {args.repeats} runs x {args.steps} steps "
        f"after {args.warmup} warm-up"
    )
    memory_kind = "peak RSS" if on_cpu else "peak alloc"
    print(
        f"{'model':<14} {'params':>10} {'tokens/s':>9} {'ms/step':>8} {'cpu ms/step':>11} "
        f"{memory_kind + ' +MiB':>15}  wall ms/step of each run"
    )
    medians: dict[str, tuple[float, float]] = {}
    for trainee in trainees:
        wall, cpu = statistics.median(trainee.wall_ms), statistics.median(trainee.cpu_ms)
        medians[trainee.name] = (wall, cpu)
        parameters = sum(p.numel() for p in trainee.model.parameters())
        runs = " ".join(f"{run:.0f}" for run in trainee.wall_ms)
        cpu_text = f"{cpu:.1f}" if on_cpu else "-"
        print(
            f"{trainee.name:<14} {parameters:>10,} {args.batch * N_CTX / (wall / 1000.0):>9,.0f} {wall:>8.1f} "
            f"{cpu_text:>11} {peaks[trainee.name]:>15.1f}  {runs}"
        )
    comparisons = [("routed", "plain-8")]
    comparisons += [(name, "plain-4") for name in MODELS[2:] + LOOPED]
    comparisons += [(name, f"{name}-loop") for name in MODELS[4:]]
    for name, other in comparisons:
        if name not in medians or other not in medians:
            continue
        model = medians[name]
        goal = None
        if other == "plain-4":
            goal = TOKEN_VS_PLAIN4_GOAL if name.startswith("token") else ROUTED_VS_PLAIN4_GOAL
        wall_ratio = model[0] / medians[other][0]
        cpu_note = f"; by CPU time {model[1] / medians[other][1]:.2f}x" if on_cpu else ""
        memory_ratio = peaks[name] / peaks[other] if peaks[other] > 0 else float("nan")
        if other.endswith("-loop"):
            verdict = "the batched dispatch against the per-layer one"
        elif goal is None:
            verdict = "no goal: same layer parameters, twice the layer compute"
        else:
            ratio = model[1] / medians[other][1] if on_cpu else wall_ratio
            met = "meets goal" if ratio <= goal else "MISSES goal"
            verdict = f"goal <= {goal:.2f}x ({'CPU' if on_cpu else 'wall'} time): {met}"
        print(f"{name} vs {other}, time: {wall_ratio:.2f}x{cpu_note}  ({verdict}); memory {memory_ratio:.2f}x")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: autocast, as `transformer train` does (weights stay float32)",
    )
    parser.add_argument("--batch", type=int, default=12, help="sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model; the median is reported")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="then split a routed step into its pieces")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS + LOOPED,
        default=list(MODELS),
        help="models to time (default: all but the -loop ones, the per-layer dispatch for before/after)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    parser.add_argument("--memory-of", choices=MODELS + LOOPED, help=argparse.SUPPRESS)  # child process
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if min(args.steps, args.repeats, args.batch) < 1 or args.warmup < 0:
        print("--steps, --repeats and --batch must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_of is not None:
        print(peak_memory_mib(args.memory_of, args))
        return 0
    child_argv = [arg for arg in argv if arg != "--profile"]
    if args.no_memory:
        peaks = {name: float("nan") for name in args.models}
    else:
        peaks = {name: peak_memory_in_child(name, child_argv) for name in args.models}
    report(time_models(args), peaks, args)
    if args.profile:
        profile_routed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
