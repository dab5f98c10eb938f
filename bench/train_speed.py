"""Training speed of `transformer train` itself: 1 process against 2, plain against routed, and
plain against a nanoGPT-shaped loop.

Each run is the real command line, started as a subprocess from the repository root:

    python -m transformer train --set ...                                        (1 process)
    python -m torch.distributed.run --standalone --nproc_per_node=2 -m transformer train --set ...

at nanoGPT's CPU shakespeare-char recipe (its README's "I only have a macbook": 4 layers,
d_model 128, 4 heads, context 64, batch 12 per process, dropout 0, character tokenizer) on
the built-in corpus unless `--data` names a text file. Three models:

- plain:  `Decoder`, 4 layers;
- routed: `RoutedDecoder`, the same depth (K = 4 routing steps) over a pool twice as large
  (N = 8 layers), routing prefix 16.
- baseline: bench/nanogpt_loop.py, `BaselineGPT` (bench/gpt_baseline.py) trained by a loop shaped
  like nanoGPT's `train.py`, on the same data, vocabulary, sizes and batch, 1 process; float32 on
  the CPU whatever `--dtype` says (nanoGPT's rule). The goal: plain at least 1.2x its tokens/s.

Two processes (gloo on CPU) each train on their own batch of 12, so a step holds twice the
tokens; "tokens/s" is always the aggregate over processes, as the trainer logs it. Each process
runs `train.threads` torch threads: 1 by default (the fastest for models this small, and the
only setting that stays sane on a loaded machine), so 2 processes use twice the cores of 1;
`--threads 0` gives every configuration all the cores (1 process x 2 threads vs 2 x 1 on 2 cores).

Speed comes from the run's own `metrics.jsonl`: with `train.log_interval=1` every optimizer
step writes a "train" record whose `tokens_per_s` is that step's tokens over that step's wall
time (forward, backward, gradient all-reduce, clipping, AdamW; not evaluation or checkpoints).
The first `--skip` steps are warm-up and are dropped; the table shows the median of the rest
(with `--repeats R`, each configuration runs R times in rotating order and the table shows the
median over all its timed steps, so a change in machine load hits every configuration alike).
Each run gets its own temporary `train.out_dir` and `TRANSFORMER_CACHE`, so no run reuses
another's tokenised data and nothing is left behind.

Wall time on a machine shared with other jobs swings with their load; CPU time barely does.
So each configuration also runs a second time, stopped after the `--skip` warm-up steps, and
"cpu ms/step" is the CPU time (user + system, summed over every process of the run, from
`os.wait4`) of the full run minus that of the short one, over the timed steps: start-up,
tokenising, warm-up, the final evaluation and checkpoint cancel out. On a loaded machine,
compare configurations by CPU time; a process that waits for another (all-reduce) or for a
core costs wall time, not CPU time, so tokens/s still tells what 2 processes gain.

Memory, two figures per run:
- "max RSS": `ru_maxrss` of the run's process tree, from `os.wait4` on the child (the same
  accounting as `getrusage(RUSAGE_CHILDREN)`, but for this child alone): the largest resident
  set that any *single* process of the run reached (the trainer, or for 2 processes the
  torchrun launcher or one worker). It is a per-process peak, never a sum over processes.
- "sum RSS": the largest sum of resident sets over the whole process tree, sampled every
  0.2 s from /proc (Linux only; a sampled peak can miss a short spike). For 2 processes this
  is what the machine has to hold.
Both include everything the process loads (Python, torch, the corpus and its tokens), not
only the model and its training state; compare runs with each other, not with bench/
throughput.py's "added by training" figures.

Run from the repository root:  python bench/train_speed.py [--threads 0] [--repeats 2] [--data PATH]
                              [--configs plain:1,baseline:1] [--dtype bfloat16]
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# nanoGPT's shakespeare_char CPU recipe, in `transformer train`'s --set keys.
RECIPE = {
    "model.n_layers": 4,
    "model.d_model": 128,
    "model.n_heads": 4,
    "model.n_ctx": 64,
    "model.dropout": 0.0,
    "train.tokenizer": "char",
    "train.batch_size": 12,
    "train.grad_accum": 1,
}
ROUTED = {"routing.pool_size": 8, "routing.route_prefix_len": 16}
MODELS = ("plain", "routed")
PROCESS_COUNTS = (1, 2)
# bench/nanogpt_loop.py: BaselineGPT in a nanoGPT-shaped loop, one process (float32 on the CPU)
BASELINE = "baseline"
CONFIGS = [(model, processes) for processes in PROCESS_COUNTS for model in MODELS] + [(BASELINE, 1)]
PLAIN_VS_BASELINE_GOAL = 1.2  # plain tokens/s over baseline tokens/s, 1 process (issue 16)


@dataclass
class Run:
    model: str
    processes: int
    threads: int
    step_tokens_per_s: list[float]
    wall_s: float
    max_rss_mib: float
    sum_rss_mib: float | None
    cpu_s: float  # user + system CPU time of the whole process tree
    parameters: str


def settings(
    model: str, processes: int, threads: int, max_steps: int, args: argparse.Namespace, out_dir: Path
) -> list[str]:
    """The --set options of one run: the recipe, the model, and a run that only trains."""
    values: dict[str, object] = dict(RECIPE)
    values.update(ROUTED if model == "routed" else {})
    values.update(
        {
            "train.data": args.data,
            "train.max_steps": max_steps,
            "train.warmup_steps": 0,  # the learning rate does not change the speed; keep it simple
            "train.log_interval": 1,
            "train.eval_interval": args.steps,  # evaluates once, after the last (timed) step
            "train.eval_batches": 2,
            "train.checkpoint_interval": args.steps,
            "train.sample_tokens": 0,
            "train.device": args.device,
            "train.dtype": args.dtype,
            "train.threads": threads,
            "train.out_dir": str(out_dir),
        }
    )
    options = ["--set", "routing=null"] if model == "plain" else []
    for key, value in values.items():
        options += ["--set", f"{key}={value}"]
    return options


def baseline_command(max_steps: int, threads: int, args: argparse.Namespace, out_dir: Path) -> list[str]:
    """The nanoGPT-shaped loop on the same data, sizes and batch as the recipe."""
    options = ["--out-dir", str(out_dir), "--data", args.data, "--max-steps", str(max_steps)]
    options += ["--threads", str(threads), "--device", args.device]
    return [sys.executable, str(REPO / "bench" / "nanogpt_loop.py"), *options]


def command(processes: int, options: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "transformer", "train", *options]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launcher, "-m", "transformer", "train", *options]


# --- Memory of a process tree -------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+)", status)
    return int(found.group(1)) if found else 0


def tree_rss_kib(root: int) -> int:
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        total += _rss_kib(pid)
        pending += _children(pid)
    return total


def run_to_end(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float | None, float]:
    """Runs `argv`; returns its exit status, ru_maxrss (MiB), the sampled peak sum RSS (MiB) and
    the CPU seconds of its process tree."""
    sampling = sys.platform == "linux"
    with log.open("w") as output:
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
        peak_sum = 0
        while True:
            # wait4 rather than Popen.wait: it also returns the rusage of this child's tree
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if sampling:
                peak_sum = max(peak_sum, tree_rss_kib(child.pid))
            time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keep Popen from waiting again
    max_rss = usage.ru_maxrss / 1024 if platform.system() != "Darwin" else usage.ru_maxrss / 2**20
    cpu_s = usage.ru_utime + usage.ru_stime
    return child.returncode, max_rss, peak_sum / 1024 if sampling else None, cpu_s


def measure(model: str, processes: int, threads: int, max_steps: int, args: argparse.Namespace) -> Run:
    """One run of `max_steps` steps in a fresh out_dir and cache."""
    with tempfile.TemporaryDirectory(prefix="train_speed_") as scratch:
        out_dir = Path(scratch) / "run"
        env = dict(os.environ)
        env["TRANSFORMER_CACHE"] = str(Path(scratch) / "cache")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["OMP_NUM_THREADS"] = str(threads)  # torchrun would otherwise warn and set 1
        log = Path(scratch) / "output.txt"
        began = time.perf_counter()
        if model == BASELINE:
            argv = baseline_command(max_steps, threads, args, out_dir)
        else:
            argv = command(processes, settings(model, processes, threads, max_steps, args, out_dir))
        code, max_rss, sum_rss, cpu_s = run_to_end(argv, env, log)
        wall_s = time.perf_counter() - began
        output = log.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"{model} on {processes} process(es) exited with {code}:\n{output[-4000:]}")
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    timed = [r["tokens_per_s"] for r in train if r["step"] > args.skip]
    found = re.search(r"([\d,]+) parameters", output)
    return Run(model, processes, threads, timed, wall_s, max_rss, sum_rss, cpu_s, found.group(1) if found else "?")


@dataclass
class Result:
    """All runs of one configuration."""

    runs: list[Run]
    short_runs: list[Run]  # the same command stopped after the warm-up steps: its fixed costs

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def tokens_per_s(self) -> float:
        return statistics.median(speed for run in self.runs for speed in run.step_tokens_per_s)

    @property
    def ms_per_step(self) -> float:
        tokens_per_step = RECIPE["train.batch_size"] * RECIPE["model.n_ctx"] * self.first.processes
        return 1000.0 * tokens_per_step / self.tokens_per_s

    @property
    def max_rss_mib(self) -> float:
        return max(run.max_rss_mib for run in self.runs)

    @property
    def sum_rss_mib(self) -> float | None:
        sums = [run.sum_rss_mib for run in self.runs if run.sum_rss_mib is not None]
        return max(sums) if sums else None

    @property
    def wall_s(self) -> float:
        return statistics.median(run.wall_s for run in self.runs)

    def cpu_ms_per_step(self, timed_steps: int) -> float:
        """CPU time of the timed steps alone, summed over processes: the full run's CPU time
        minus that of the short run (start-up, tokenising, warm-up, the final evaluation and
        checkpoint), per step."""
        full = statistics.median(run.cpu_s for run in self.runs)
        short = statistics.median(run.cpu_s for run in self.short_runs)
        return 1000.0 * (full - short) / timed_steps


# --- Report -------------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "load average unknown"


def threads_for(processes: int, args: argparse.Namespace) -> int:
    return args.threads if args.threads else max(1, (os.cpu_count() or 1) // processes)


def report(by_key: dict[tuple[str, int], Result], timed_steps: int) -> None:
    print(
        f"{'model':<7} {'procs':>5} {'threads':>7} {'params':>10} {'tokens/s':>9} {'ms/step':>8} "
        f"{'cpu ms/step':>11} {'max RSS MiB':>11} {'sum RSS MiB':>11} {'run s':>6}"
    )
    for (model, processes), result in by_key.items():
        run = result.first
        summed = f"{result.sum_rss_mib:.0f}" if result.sum_rss_mib is not None else "-"
        print(
            f"{model:<7} {processes:>5} {run.threads:>7} {run.parameters:>10} {result.tokens_per_s:>9,.0f} "
            f"{result.ms_per_step:>8.1f} {result.cpu_ms_per_step(timed_steps):>11.1f} "
            f"{result.max_rss_mib:>11.0f} {summed:>11} {result.wall_s:>6.1f}"
        )
    for model in MODELS:
        if (model, 1) not in by_key or (model, 2) not in by_key:
            continue
        one, two = by_key[model, 1], by_key[model, 2]
        # CPU per token: 2 processes do twice the tokens per step
        cpu_per_token = two.cpu_ms_per_step(timed_steps) / (2 * one.cpu_ms_per_step(timed_steps))
        print(
            f"{model}: 2 processes vs 1, aggregate tokens/s {two.tokens_per_s / one.tokens_per_s:.2f}x "
            f"(1 process x {one.first.threads} thread(s) vs 2 processes x {two.first.threads} thread(s), "
            f"{os.cpu_count()} cores); CPU time per token {cpu_per_token:.2f}x; "
            f"max RSS {two.max_rss_mib / one.max_rss_mib:.2f}x per process"
        )
    for processes in PROCESS_COUNTS:
        if ("plain", processes) not in by_key or ("routed", processes) not in by_key:
            continue
        plain, routed = by_key["plain", processes], by_key["routed", processes]
        cpu_ratio = routed.cpu_ms_per_step(timed_steps) / plain.cpu_ms_per_step(timed_steps)
        print(
            f"{processes} process(es): routed vs plain, tokens/s {routed.tokens_per_s / plain.tokens_per_s:.2f}x, "
            f"time per step {routed.ms_per_step / plain.ms_per_step:.2f}x, CPU time per step {cpu_ratio:.2f}x "
            f"(bench/routing_cost.py's goal: <= 1.1x); max RSS {routed.max_rss_mib / plain.max_rss_mib:.2f}x"
        )
    if ("plain", 1) in by_key and (BASELINE, 1) in by_key:
        plain, baseline = by_key["plain", 1], by_key[BASELINE, 1]
        speed = plain.tokens_per_s / baseline.tokens_per_s
        verdict = "meets goal" if speed >= PLAIN_VS_BASELINE_GOAL else "MISSES goal"
        print(
            f"1 process: plain (transformer train) vs baseline (nanoGPT loop), tokens/s {speed:.2f}x "
            f"(goal >= {PLAIN_VS_BASELINE_GOAL}x: {verdict}); by CPU time per step "
            f"{baseline.cpu_ms_per_step(timed_steps) / plain.cpu_ms_per_step(timed_steps):.2f}x; "
            f"max RSS {plain.max_rss_mib / baseline.max_rss_mib:.2f}x"
        )


def parse_configs(text: str) -> list[tuple[str, int]]:
    configs = []
    for item in text.split(","):
        model, _, processes = item.partition(":")
        if (model, int(processes or 0)) not in CONFIGS:
            choices = ",".join(f"{m}:{p}" for m, p in CONFIGS)
            raise argparse.ArgumentTypeError(f"{item!r} is not one of {choices}")
        configs.append((model, int(processes)))
    return configs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        default="builtin",
        help="train.data: 'builtin' (default), a text file such as tinyshakespeare.txt, or a folder",
    )
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run")
    parser.add_argument("--skip", type=int, default=10, help="first steps left out as warm-up")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, in rotating order")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="train.threads, torch threads per process (default 1, fastest for models this "
        "small; 0: the cores divided by the processes)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: 2 processes need 2 GPUs (NCCL)")
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=CONFIGS,
        help="which runs, as MODEL:PROCESSES pairs, e.g. plain:1,baseline:1 (default: "
        + ",".join(f"{model}:{processes}" for model, processes in CONFIGS)
        + ")",
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="train.dtype of the trainer's runs (auto: bf16 autocast on CUDA, float32 on CPU); the baseline "
        "keeps nanoGPT's rule (float32 on CPU, bf16 autocast on CUDA)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps <= args.skip or args.skip < 1 or args.repeats < 1:
        print("--steps must be larger than --skip (>= 1), --repeats at least 1", file=sys.stderr)
        return 2
    if args.data != "builtin" and not Path(args.data).exists():
        print(f"--data {args.data}: no such file or folder", file=sys.stderr)
        return 2
    load_before = load_average()
    print(
        f"python {platform.python_version()} | {args.device} ({os.cpu_count()} cores), {load_before} | "
        f"data {args.data} | 4 layers, d_model 128, 4 heads, ctx 64, batch 12 per process, char tokenizer; "
        f"routed: pool 8, 4 steps, prefix 16 | {args.steps} steps per run, median tokens/s of steps "
        f"{args.skip + 1}..{args.steps}, {args.repeats} run(s) each",
        flush=True,
    )
    keys = list(dict.fromkeys(args.configs))
    by_key = {key: Result([], []) for key in keys}
    for repeat in range(args.repeats):
        for i in range(len(keys)):
            model, processes = keys[(i + repeat) % len(keys)]
            threads = threads_for(processes, args)
            run = measure(model, processes, threads, args.steps, args)
            by_key[model, processes].runs.append(run)
            by_key[model, processes].short_runs.append(measure(model, processes, threads, args.skip, args))
            print(
                f"  run {repeat + 1}: {model}, {processes} process(es): "
                f"{statistics.median(run.step_tokens_per_s):,.0f} tokens/s",
                flush=True,
            )
    report(by_key, args.steps - args.skip)
    print(f"{load_average()} after the runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
