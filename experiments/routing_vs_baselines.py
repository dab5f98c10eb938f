"""Does learned routing beat its baselines at equal training compute? (issue 14: routing that pays)

Every variant gets the same training FLOPs (run_log.flops_per_token on active parameters; a
token-routed model counts the layers that processed a token), on the built-in corpus and on any
corpus given with --corpus PATH. Pool N = 6 layers, K = 3 steps, d_model 64, context 64.

- plain-K, plain-N: plain decoders of depth K (the routed models' per-token compute) and N (the pool).
- token-all, token-co: token routing (every token picks a pool layer at every step from its own
  residual), no capacity limit; a layer's queries see every token of the step ("all") or only
  the tokens routed to it ("co_routed"). token-all-cap: "all" at capacity factor 1.25.
- token-skip: token-all plus an identity entry (learned skip with the first-order reward;
  evidence only, see docs/routing.md §12).
- mod: plain-K with skip, a Mixture-of-Depths made causal: K = 3 layers, step k offers each
  token its own layer k or skip, chosen from the token's own residual (no top-k over the
  sequence); a compute penalty of 0.01 nats per layer, the readout reward and a warm start of
  60 updates (docs/routing.md §12). It gets plain-K's steps; the layers it skips are FLOPs it
  saves (column layers/token). A warm start is at most a fifth of a run (here and in
  seq-per_step-warm), so that --quick runs reach the router too.
- seq-shared, seq-per_step: per-sequence routing from a prefix of P = 16 characters, over the
  shared pool or per-step pools (step k picks among its own N / K layers); seq-per_step-warm adds
  a warm start from the fixed order.
- *-random: the same model with routes drawn uniformly (the control for each learned variant).
- fixed: the sequence-routed pool in a fixed order (step k -> layer k; 3 layers never run).

Every model is scored on the same held-out windows. Plain and token-routed models are scored on
all targets; sequence-routed ones only on targets >= P (what they train on), so every model is
also scored on targets >= P and rows compare on that column.

    python experiments/routing_vs_baselines.py --quick          # every variant, 20 steps: ~2 min on 2 cores
    python experiments/routing_vs_baselines.py --variants plain-K token-all --seeds 0 1 2 --out runs/rvb
    python experiments/routing_vs_baselines.py --corpus ../shared/data/tinyshakespeare.txt ...
    python experiments/routing_vs_baselines.py --plot runs/rvb/results.json ... --figure docs/results/compare.png
    python experiments/routing_vs_baselines.py --table runs/rvb/results.json runs/rvb-extra/results.json  # one table

docs/results.md says which runs made the json files in experiments/results/, and how long they took.
"""

import argparse
import json
import math
import multiprocessing
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transformer.analysis.routes import mutual_information
from transformer.data.corpus import load_documents
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.inference.loading import load_trained
from transformer.routing.losses import entropy
from transformer.training.config import RunConfig, build_model, load_run_config
from transformer.training.lm_loss import lm_loss
from transformer.training.run_log import flops_per_token, read_log
from transformer.training.trainer import train

POOL, STEPS, PREFIX = 6, 3, 16
# every variant is overrides on this config (the default run before token routing paid)
BASE = Path(__file__).parent.parent / "transformer" / "configs" / "tiny-sequence-routed.yaml"
WARM_START = 60  # updates in the fixed order before the router decides (at most a fifth of the run)
SEQ = ["routing.granularity=sequence", f"routing.route_prefix_len={PREFIX}"]
TOKEN = ["routing.granularity=token", "routing.capacity_factor=null"]
LEARNED_OVERRIDES: dict[str, list[str]] = {
    "token-all": TOKEN + ["routing.token_attention=all"],
    "token-co": TOKEN + ["routing.token_attention=co_routed"],
    "token-all-cap": ["routing.granularity=token", "routing.token_attention=all", "routing.capacity_factor=1.25"],
    "token-skip": TOKEN + ["routing.token_attention=all", "routing.skip=true"],
    "seq-shared": SEQ + ["routing.pools=shared"],
    "seq-per_step": SEQ + ["routing.pools=per_step"],
    "seq-per_step-warm": SEQ + ["routing.pools=per_step", f"routing.warm_start_steps={WARM_START}"],
    "mod": [  # K layers, step k: its own layer or skip (Mixture-of-Depths, causal)
        "routing.granularity=token",
        f"routing.pool_size={STEPS}",
        "routing.pools=per_step",
        "routing.skip=true",
        "routing.capacity_factor=null",
        "routing.compute_weight=0.01",
        "routing.reward=readout",
        f"routing.warm_start_steps={WARM_START}",
    ],
}
VARIANTS = ["plain-K", "plain-N", "fixed"] + [
    name for learned in LEARNED_OVERRIDES for name in (learned, f"{learned}-random")
]


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
    if variant == "fixed":
        learned, policy = "seq-shared", "fixed"
    elif variant.endswith("-random"):
        learned, policy = variant.removesuffix("-random"), "random"
    else:
        learned, policy = variant, "learned"
    return [
        f"model.n_layers={STEPS}",
        f"routing.pool_size={POOL}",
        f"routing.route_policy={policy}",
        *LEARNED_OVERRIDES[learned],
    ]


def is_sequence_routed(variant: str) -> bool:
    return variant == "fixed" or variant.startswith("seq-")


def model_flops(overrides: list[str], vocab: int) -> float:
    """Training FLOPs per token before training: a token-routed model without capacity limit
    counts all K layers (what it does unless it learns to skip; the run's own count is reported)."""
    model = build_model(load_run_config(BASE, overrides).with_vocab(vocab))
    return flops_per_token(model.active_parameters(), model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx)


def plan_runs(args: argparse.Namespace, corpus: str, vocab: int) -> list[Plan]:
    reference = model_flops(variant_overrides("plain-K"), vocab)  # the budget is plain-K's tokens
    plans = []
    for variant in args.variants:
        for seed in args.seeds:
            seeds = [f"train.seed={seed}"] + ([] if variant.startswith("plain") else [f"routing.seed={seed}"])
            overrides = (
                variant_overrides(variant)
                + seeds
                + [
                    f"train.data={corpus}",
                    f"train.out_dir={args.out / f'{variant}-seed{seed}'}",
                    "train.device=cpu",
                    "train.threads=1",
                    "train.sample_tokens=0",
                    "train.eval_batches=4",
                    f"train.checkpoint_interval={10**9}",
                    "train.log_interval=5",
                ]
            )
            per_token = model_flops(overrides, vocab)
            tokens_per_step = 16 * 64  # the base config's batch and context
            steps = max(10, round(args.budget_tokens * reference / per_token / tokens_per_step))
            warmup = min(100, steps // 10)
            if any(o.startswith("routing.warm_start_steps=") for o in overrides):  # a fifth of a short run at most
                overrides.append(f"routing.warm_start_steps={min(WARM_START, steps // 5)}")
            config = load_run_config(
                BASE,
                overrides
                + [
                    f"train.max_steps={steps}",
                    f"train.warmup_steps={warmup}",
                    f"train.eval_interval={max(1, steps // 8)}",
                ],
            )
            plans.append(Plan(variant, seed, config))
    return plans


def run_one(plan: Plan) -> str:
    torch.set_num_threads(1)
    train(plan.config)
    return plan.config.train.out_dir


def is_trained(plan: Plan) -> bool:
    """The run's last checkpoint is there: `--reuse` scores it instead of training it again."""
    last = Path(plan.config.train.out_dir) / "checkpoints" / f"step_{plan.config.train.max_steps:07d}"
    return last.is_dir()


def char_class(text: str) -> str:
    if text.isalpha():
        return "letter"
    if text.isdigit():
        return "digit"
    if text.isspace():
        return "space"
    return "punct" if text.isprintable() else "other"


@torch.no_grad()
def score(plan: Plan, windows: torch.Tensor, labels: torch.Tensor | None) -> dict[str, Any]:
    run = load_trained(Path(plan.config.train.out_dir))
    model = run.model
    inputs, targets = windows[:, :-1], windows[:, 1:]
    log = read_log(Path(plan.config.train.out_dir) / "metrics.jsonl")
    train_records = [r for r in log if r["kind"] == "train"]
    train_records = train_records[1:] or train_records  # the first steps include warm-up costs
    tokens_per_step = plan.config.train.batch_size * model.cfg.n_ctx
    per_token = flops_per_token(model.active_parameters(), model.cfg.n_layers, model.cfg.d_model, model.cfg.n_ctx)
    result: dict[str, Any] = {
        "variant": plan.variant,
        "seed": plan.seed,
        "steps": plan.config.train.max_steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_flops": per_token * tokens_per_step * plan.config.train.max_steps,
        "ms_per_step": 1000 * statistics.median(tokens_per_step / r["tokens_per_s"] for r in train_records),
        "curve": [[r["step"] * tokens_per_step * per_token, r["val_loss"]] for r in log if r["kind"] == "eval"],
        "layers_per_token": float(model.cfg.n_layers),
    }
    output = model(inputs)
    info = output.routing
    if info is not None:
        result["usage_entropy"] = float(entropy(info.counts / info.counts.sum(-1, keepdim=True)).mean())
        if not plan.variant.endswith("-random") and plan.variant != "fixed":  # baselines never consult the router
            result["decision_entropy"] = float(entropy(info.probabilities).mean())
        if is_sequence_routed(plan.variant):
            if labels is not None:  # route (the 3-step path) against the window's topic group
                paths, ys = [tuple(row) for row in info.layer_choices.tolist()], labels.tolist()
                result["mi_label"] = "topic group of the window"
        else:  # each token's path against the class of the character it reads
            result["layers_per_token"] = float(info.processed.float().sum(-1).mean())
            paths = [tuple(row) for row in info.layer_choices.reshape(-1, model.cfg.n_layers).tolist()]
            ys = [char_class(run.tokenizer.decode([i])) for i in inputs.reshape(-1).tolist()]
            result["mi_label"] = "class of the input character"
        if "mi_label" in result:
            mi = mutual_information(paths, ys, permutations=20, seed=plan.seed)
            result.update(route_label_mi=mi.observed, mi_shuffled=mi.shuffled_mean, mi_p_value=mi.p_value)
    result["val_loss_from_P"] = float(lm_loss(output.logits, targets, first_target=PREFIX))
    if not is_sequence_routed(plan.variant):
        result["val_loss_all"] = float(lm_loss(output.logits, targets, first_target=0))
    return result


def evaluation_windows(
    corpus: str, tokenizer: TextTokenizer, n_ctx: int, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out windows from the trainer's validation split: documents 9, 19, ... of a
    multi-document corpus (each window labelled with the topic group, 8 groups, of its document),
    or the last 10% of a single text (no labels)."""
    documents = load_documents(corpus)
    generator = torch.Generator().manual_seed(seed)
    if len(documents) == 1:
        ids = tokenizer.encode(documents[0])
        val = ids[round(len(ids) * 0.9) :]
        starts = torch.randint(len(val) - n_ctx - 1, (count,), generator=generator).tolist()
        return torch.tensor([val[s : s + n_ctx + 1] for s in starts]), None
    held_out = [i for i in range(len(documents)) if i % 10 == 9]
    windows, labels = [], []
    while len(windows) < count:
        index = held_out[int(torch.randint(len(held_out), (1,), generator=generator))]
        ids = tokenizer.encode(documents[index])
        if len(ids) <= n_ctx + 1:
            continue
        start = int(torch.randint(len(ids) - n_ctx - 1, (1,), generator=generator))
        windows.append(ids[start : start + n_ctx + 1])
        labels.append(index * 8 // len(documents))
    return torch.tensor(windows), torch.tensor(labels)


def summarise(results: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | seeds | val loss, all targets | val loss, targets >= P | usage entropy | decision entropy "
        "| route-label MI (bits) | shuffled MI | layers/token | steps | ms/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
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

        ms = statistics.mean(r["ms_per_step"] for r in rows)
        lines.append(
            f"| {variant} | {len(rows)} | {stat('val_loss_all')} | {stat('val_loss_from_P')} | {stat('usage_entropy')} "
            f"| {stat('decision_entropy')} | {stat('route_label_mi')} | {stat('mi_shuffled')} "
            f"| {stat('layers_per_token')} | {rows[0]['steps']} | {ms:.1f} |"
        )
    lines.append(f"\nln N = {math.log(POOL):.3f} nats (even use of the pool); {len(results)} runs.")
    return "\n".join(lines)


def plot_curves(result_files: list[Path], figure: Path) -> None:
    """One panel per corpus: each variant's validation loss (the trainer's own held-out batches,
    on the targets the model trains on) over training FLOPs, the mean over seeds as a line and
    the seeds' min..max as a band; the legend sits outside the axes so that no curve hides under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [json.loads(path.read_text()) for path in result_files]
    corpora = sorted({panel["corpus"] for panel in panels}, key=lambda c: (c != "builtin", c))
    fig, axes = plt.subplots(1, len(corpora), figsize=(6.5 * len(corpora) + 2.5, 4.8), squeeze=False)
    families = [variant for variant in VARIANTS if not variant.endswith("-random")]
    colours = plt.colormaps["tab20"]
    for ax, corpus in zip(axes[0], corpora, strict=True):
        runs = [run for panel in panels if panel["corpus"] == corpus for run in panel["runs"]]
        low, high = math.inf, -math.inf
        for variant in VARIANTS:
            curves = [run["curve"] for run in runs if run["variant"] == variant]
            if not curves:
                continue
            length = min(len(curve) for curve in curves)
            flops = torch.tensor([[point[0] for point in curve[:length]] for curve in curves]).mean(0)
            losses = torch.tensor([[point[1] for point in curve[:length]] for curve in curves])
            mean = losses.mean(0)
            low, high = min(low, float(mean.min())), max(high, float(mean[min(2, length - 1)]))
            random = variant.endswith("-random")
            style = "--" if random else ":" if variant.startswith("plain") else "-"
            colour = colours(2 * families.index(variant.removesuffix("-random")) % 20 + int(random))
            label = f"{variant} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
            ax.plot(flops, mean, style, color=colour, label=label, linewidth=1.6)
            if len(curves) > 1:
                ax.fill_between(flops, losses.min(0).values, losses.max(0).values, color=colour, alpha=0.15)
        ax.set_title(Path(corpus).name if corpus != "builtin" else "built-in corpus")
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_ylim(low - 0.05, high + 0.05)  # from the third evaluation on: the early drop would flatten the rest
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="builtin", help="builtin, or a text file / folder passed by path")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--budget-tokens", type=int, default=400_000, help="training tokens of plain-K; all get its FLOPs"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/routing-vs-baselines"))
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once, one CPU thread each")
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="one seed, a tiny budget: checks the pipeline")
    parser.add_argument(
        "--reuse", action="store_true", help="score runs already trained in --out instead of refusing the folder"
    )
    parser.add_argument("--plot", type=Path, nargs="+", help="only draw FIGURE from these results.json files")
    parser.add_argument("--table", type=Path, nargs="+", help="only print the table of these results.json files")
    parser.add_argument("--figure", type=Path, default=Path("docs/results/compare.png"))
    args = parser.parse_args()
    if args.plot:
        plot_curves(args.plot, args.figure)
        return
    if args.table:
        print(summarise([run for path in args.table for run in json.loads(path.read_text())["runs"]]))
        return
    if args.quick:
        args.seeds, args.budget_tokens, args.eval_windows = [0], 20_000, 32
    if args.out.exists() and any(args.out.iterdir()) and not args.reuse:
        parser.error(f"{args.out} is not empty: give a new --out, or --reuse to score the runs there")
    tokenizer = train_tokenizer("char", load_documents(args.corpus))
    plans = plan_runs(args, args.corpus, tokenizer.vocab_size)
    print(f"{len(plans)} runs; steps: " + ", ".join(f"{p.variant}={p.config.train.max_steps}" for p in plans))
    to_train = [plan for plan in plans if not (args.reuse and is_trained(plan))]
    if len(to_train) < len(plans):
        print(f"reusing {len(plans) - len(to_train)} trained runs")
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        for done in pool.imap_unordered(run_one, to_train):
            print("finished", done, flush=True)
    trained_tokenizer = load_trained(Path(plans[0].config.train.out_dir)).tokenizer
    windows, labels = evaluation_windows(args.corpus, trained_tokenizer, 64, args.eval_windows, seed=1234)
    torch.set_num_threads(1)
    results = [score(plan, windows, labels) for plan in plans]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"corpus": args.corpus, "runs": results}, indent=2))
    table = summarise(results)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
