"""Does learned routing beat its baselines at equal training compute? (issue: routing vs baselines)

Five variants on the built-in corpus, each trained for the same number of training FLOPs:
- learned: the router picks K of the N pool layers per sequence (the routed decoder);
- random:  the same pool, each step's layer drawn uniformly at random (train and eval);
- fixed:   the same pool, step k always takes layer k (N - K layers never used);
- plain-K: a plain decoder of depth K (the per-token compute of the routed model);
- plain-N: a plain decoder of depth N (the parameters of the pool; 2x compute per token at
  N = 2K, so it sees fewer tokens for the same FLOPs).
Every model is scored on the same held-out windows and the same targets (positions >= P, the
routing prefix), so plain and routed losses compare. Routed variants also report usage and
decision entropy and the mutual information between route and topic group (against a
shuffled-label baseline).

    python experiments/routing_vs_baselines.py                 # CPU-sized: ~15 min on 2 cores
    python experiments/routing_vs_baselines.py --quick         # a smoke run, ~1 min
    python experiments/routing_vs_baselines.py --device cuda --budget-tokens 20_000_000
"""

import argparse
import json
import math
import multiprocessing
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transformer.analysis.routes import mutual_information
from transformer.data.corpus import builtin_documents
from transformer.data.tokenizer import train_tokenizer
from transformer.inference.loading import load_trained
from transformer.routing.losses import entropy
from transformer.training.config import RunConfig, build_model, load_run_config
from transformer.training.lm_loss import lm_loss
from transformer.training.run_log import flops_per_token
from transformer.training.trainer import train

VARIANTS = ("learned", "random", "fixed", "plain-K", "plain-N")
POOL, STEPS, PREFIX = 6, 3, 16


@dataclass
class Plan:
    variant: str
    seed: int
    config: RunConfig


def variant_overrides(variant: str) -> list[str]:
    if variant == "plain-K":
        return ["routing=null", f"model.n_layers={STEPS}"]
    if variant == "plain-N":
        return ["routing=null", f"model.n_layers={POOL}"]
    policy = {"learned": "learned", "random": "random", "fixed": "fixed"}[variant]
    return [
        f"model.n_layers={STEPS}",
        f"routing.pool_size={POOL}",
        f"routing.route_prefix_len={PREFIX}",
        f"routing.route_policy={policy}",
    ]


def plan_runs(args: argparse.Namespace) -> list[Plan]:
    vocab = train_tokenizer("char", builtin_documents()).vocab_size
    plans = []
    for variant in VARIANTS:
        for seed in args.seeds:
            seeds = [f"train.seed={seed}"] + ([] if variant.startswith("plain") else [f"routing.seed={seed}"])
            overrides = (
                variant_overrides(variant)
                + seeds
                + [
                    f"train.out_dir={args.out / f'{variant}-seed{seed}'}",
                    f"train.device={args.device}",
                    "train.threads=1",
                    "train.sample_tokens=0",
                    f"train.eval_interval={10**9}",
                    f"train.checkpoint_interval={10**9}",
                    "train.log_interval=10",
                ]
            )
            config = load_run_config(None, overrides)
            model = build_model(config.with_vocab(vocab))
            per_token = flops_per_token(
                model.active_parameters(), model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx
            )
            tokens_per_step = config.train.batch_size * model.cfg.n_ctx
            steps = max(1, round(args.budget_tokens * _reference_flops(vocab) / per_token / tokens_per_step))
            warmup = min(config.train.warmup_steps, steps // 10)
            config = load_run_config(None, overrides + [f"train.max_steps={steps}", f"train.warmup_steps={warmup}"])
            plans.append(Plan(variant, seed, config))
    return plans


def _reference_flops(vocab: int) -> float:
    """FLOPs per token of the routed model: the budget is `budget_tokens` of *its* training."""
    model = build_model(load_run_config(None, variant_overrides("learned")).with_vocab(vocab))
    return flops_per_token(model.active_parameters(), model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx)


def run_one(plan: Plan) -> str:
    torch.set_num_threads(1)
    train(plan.config)
    return plan.config.train.out_dir


@torch.no_grad()
def score(plan: Plan, windows: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    run = load_trained(Path(plan.config.train.out_dir))
    model = run.model
    inputs, targets = windows[:, :-1], windows[:, 1:]
    result: dict[str, Any] = {
        "variant": plan.variant,
        "seed": plan.seed,
        "steps": plan.config.train.max_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    output = model(inputs)
    if output.routing is not None:
        info = output.routing
        paths = info.layer_choices
        path_list = [tuple(row) for row in paths.tolist()]
        usage = info.counts / info.counts.sum(-1, keepdim=True)
        mi = mutual_information(path_list, labels.tolist(), permutations=100, seed=plan.seed)
        result.update(
            usage_entropy=float(entropy(usage).mean()),
            route_label_mi=mi.observed,
            mi_shuffled=mi.shuffled_mean,
            mi_excess=mi.excess,
            mi_p_value=mi.p_value,
            distinct_paths=len(set(path_list)),
        )
        if plan.variant == "learned":  # the baselines' router is never consulted
            result["decision_entropy"] = float(entropy(info.probabilities).mean())
    result["val_loss"] = float(lm_loss(output.logits, targets, first_target=PREFIX))
    return result


def evaluation_windows(plan: Plan, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out windows, each labelled with the topic group (8 groups of the sorted help topics)
    of the document it starts in."""
    run = load_trained(Path(plan.config.train.out_dir))
    documents = builtin_documents()
    n_ctx = run.model.cfg.n_ctx
    generator = torch.Generator().manual_seed(seed)
    held_out = [i for i in range(len(documents)) if i % 10 == 9]  # the trainer's validation documents
    windows, labels = [], []
    while len(windows) < count:
        index = held_out[int(torch.randint(len(held_out), (1,), generator=generator))]
        ids = run.tokenizer.encode(documents[index])
        if len(ids) <= n_ctx + 1:
            continue
        start = int(torch.randint(len(ids) - n_ctx - 1, (1,), generator=generator))
        windows.append(ids[start : start + n_ctx + 1])
        labels.append(index * 8 // len(documents))
    return torch.tensor(windows), torch.tensor(labels)


def summarise(results: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | val loss (nats/char) | usage entropy | decision entropy | route-topic MI (bits) "
        "| shuffled MI | steps | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue

        def stat(key: str, rows: list[dict[str, Any]] = rows) -> str:
            values = [r[key] for r in rows if key in r]
            if not values:
                return "–"
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} ± {spread:.3f}"

        lines.append(
            f"| {variant} | {stat('val_loss')} | {stat('usage_entropy')} | {stat('decision_entropy')} | "
            f"{stat('route_label_mi')} | {stat('mi_shuffled')} | {rows[0]['steps']} | "
            f"{rows[0]['parameters']:,} |"
        )
    lines.append(f"\nln N = {math.log(POOL):.3f} nats (even use of the pool); {len(results)} runs.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--budget-tokens",
        type=int,
        default=1_000_000,
        help="training tokens of the routed model; the others get the same FLOPs",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/routing-vs-baselines"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--eval-windows", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="one seed, a tiny budget: checks the pipeline")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget_tokens, args.eval_windows = [0], 20_000, 64
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty: give a new --out (runs are never overwritten)")
    plans = plan_runs(args)
    print(
        f"{len(plans)} runs; steps per variant: "
        + ", ".join(f"{p.variant}={p.config.train.max_steps}" for p in plans if p.seed == args.seeds[0])
    )
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers) as pool:
        for done in pool.imap_unordered(run_one, plans):
            print("finished", done, flush=True)
    windows, labels = evaluation_windows(plans[0], args.eval_windows, seed=1234)
    results = [score(plan, windows, labels) for plan in plans]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = summarise(results)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
