"""How learned skip comes about, update by update (docs/routing.md section 12, its figure).

The slow tests in tests/routing/test_token_learning.py check where token routing ends on
`copy_or_look_back` (tests/helpers/token_tasks.py): a copy token's target is its own input, so
it needs no layer; a look-back token's target is the token before it, so it needs attention.
They check only the end. This script trains the same tiny models on the same task, with the
same seeds, and records on the way, every 10 updates, on 512 held-out sequences (argmax routes,
as in evaluation): the share of copy tokens and of look-back tokens that skip, the layers each
kind takes, and each kind's loss (look-back: only those whose target follows the rule). Recipes:

- readout+warm: `reward: readout` and a warm start of 150 of 400 updates (the working recipe);
- first-order+warm: the gate's first-order reward, same warm start (negative control);
- readout, no warm: readout reward, no warm start (negative control);
- mod: per-step pools with pool_size = K = 2 and skip (each step: its own layer or skip, a causal
  Mixture-of-Depths), readout reward and the same warm start.

Setup as the tests' `_train_skip`: d_model 32, 2 heads, rotary, readable kernels, context 16,
batch 32, AdamW lr 1e-2, noise 0.3, `compute_weight` 0.1, no capacity; the model initialised with
`torch.manual_seed(seed)`, the training data drawn from a generator seeded with seed + 1, the
held-out data with 99, the router's own sampling stream `routing.seed` = 0 as in the tests (so a
seed changes the weights and the data, not the router's Gumbel noise). The evaluations draw no
random numbers, so the final points are the tests' own results (checked against `_train_skip`
for (a) and (d) at seed 1: equal to the printed digit). One CPU thread, deterministic.

The task generator is imported from tests/helpers/token_tasks.py, where the slow tests take it
from: one definition, so the figure is about the tests' task. Run from the repository root:

    PYTHONPATH=. python experiments/skip_learning.py          # 8 runs, about a minute (below)
    PYTHONPATH=. python experiments/skip_learning.py --plot   # only redraw the figure from the json

Writes experiments/results/skip_learning.json and docs/results/skip_learning.png. The committed
files took 39 s wall (training and evaluation 35 s, 3-7 s a run) on one thread under `nice -n 5`,
on a 2-core machine busy with other runs (load average 5-6), 2026-12-06; the same run took 62 s
at a higher load.
"""

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tests.helpers.token_tasks import COPY_TOKENS, LOOK_BACK_TOKENS, copy_or_look_back
from transformer.model.config import ModelConfig
from transformer.routing.config import RoutingConfig
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.objective import compute_objective

STEPS, EVERY, WARM_START = 400, 10, 150
BATCH, LENGTH, NOISE, COMPUTE_WEIGHT = 32, 17, 0.3, 0.1
HELD_OUT, HELD_OUT_SEED = 512, 99
KINDS = ("copy", "look_back")


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    reward: str
    warm_start_steps: int
    layers: int  # K = pool size; per-step pools, so step k offers its own layer k or skip


RECIPES = [
    Recipe("readout+warm", "(a) readout reward + warm start", "readout", WARM_START, 1),
    Recipe("first-order+warm", "(b) first-order reward + warm start", "first_order", WARM_START, 1),
    Recipe("readout, no warm", "(c) readout reward, no warm start", "readout", 0, 1),
    Recipe("mod", "(d) per-step pools, K = 2 (MoD): readout + warm start", "readout", WARM_START, 2),
]


def rule_entropy() -> float:
    """The best loss a prediction that knows the rule can reach: the rule's token with
    probability 1 - noise + noise / 16, every other token with noise / 16."""
    vocab = COPY_TOKENS + LOOK_BACK_TOKENS
    right, other = 1 - NOISE + NOISE / vocab, NOISE / vocab
    return -(right * math.log(right) + (vocab - 1) * other * math.log(other))


def build(recipe: Recipe, seed: int) -> TokenRoutedDecoder:
    cfg = ModelConfig(
        d_vocab=COPY_TOKENS + LOOK_BACK_TOKENS,
        d_model=32,
        n_heads=2,
        n_layers=recipe.layers,
        n_ctx=LENGTH - 1,
        positional="rotary",
        kernels="readable",
    )
    routing = RoutingConfig(
        granularity="token",
        pool_size=recipe.layers,
        pools="per_step",
        skip=True,
        compute_weight=COMPUTE_WEIGHT,
        capacity_factor=None,
        reward=recipe.reward,
        warm_start_steps=recipe.warm_start_steps,
    )
    torch.manual_seed(seed)
    return TokenRoutedDecoder(cfg, routing)


def measure(model: TokenRoutedDecoder, tokens: Tensor) -> dict[str, Any]:
    """Per kind, on held-out tokens with the routes the model takes now (argmax; fixed during
    the warm start): the share of steps skipped, the share skipped at each step, the layers
    taken per token, and the loss. Position 0 is left out (no token before it)."""
    was_training = model.training
    model.eval()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        output = model(inputs)
    model.train(was_training)
    layers = model.routing.pool_size
    taken = (output.routing.layer_choices[:, 1:] < layers).float()  # [batch, pos, steps]
    losses = F.cross_entropy(output.logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    losses = losses[:, 1:]
    copy = inputs[:, 1:] < COPY_TOKENS
    ruled = ~copy & (inputs[:, :-1] >= COPY_TOKENS)  # look-back tokens whose target follows the rule
    point: dict[str, Any] = {}
    for kind, mask, scored in (("copy", copy, copy), ("look_back", ~copy, ruled)):
        point[f"{kind}_skip"] = round(1 - float(taken[mask].mean()), 6)
        point[f"{kind}_skip_per_step"] = [round(1 - float(v), 6) for v in taken[mask].mean(0)]
        point[f"{kind}_layers"] = round(float(taken[mask].sum(-1).mean()), 6)
        point[f"{kind}_loss"] = round(float(losses[scored].mean()), 6)
    return point


def train_one(recipe: Recipe, seed: int, held_out: Tensor) -> dict[str, Any]:
    model = build(recipe, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.Generator().manual_seed(seed + 1)
    curve = [{"update": 0} | measure(model, held_out)]
    model.train()
    start = time.perf_counter()
    for step in range(STEPS):
        model.set_training_step(step, STEPS)
        objective = compute_objective(model, copy_or_look_back(BATCH, LENGTH, NOISE, data))
        optimizer.zero_grad()
        objective.loss.backward()
        optimizer.step()
        if (step + 1) % EVERY == 0:
            curve.append({"update": step + 1} | measure(model, held_out))
    seconds = time.perf_counter() - start
    final = curve[-1]
    print(
        f"{recipe.name:18s} seed {seed}: skip copy {final['copy_skip']:.3f} look-back {final['look_back_skip']:.3f}, "
        f"layers {final['copy_layers']:.2f} / {final['look_back_layers']:.2f}, "
        f"loss {final['copy_loss']:.3f} / {final['look_back_loss']:.3f} ({seconds:.0f} s)",
        flush=True,
    )
    return {"recipe": recipe.name, "seed": seed, "seconds": round(seconds, 1), "curve": curve}


def plot(results: dict[str, Any], figure: Path) -> None:
    """One panel per recipe: each kind's skip rate (mod: layers taken per token) over updates, a
    thin line per seed, the warm start shaded, and the final held-out loss per kind written in.
    Curves often coincide (every kind skipping, or both seeds alike), so each curve carries a
    marker every 40 updates at its own offset: a curve under another still shows its markers.
    The legend sits below the panels, where it covers nothing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colours = {"copy": "tab:blue", "look_back": "tab:red"}
    markers = {"copy": "o", "look_back": "s"}
    names = {"copy": "copy tokens (target = own input)", "look_back": "look-back tokens (need attention)"}
    styles: list[Any] = ["-", (0, (3, 1.5))]
    seeds = sorted({run["seed"] for run in results["runs"]})
    curves = len(KINDS) * len(seeds)
    entropy = results["setup"]["rule_entropy"]
    fig, grid = plt.subplots(2, 2, figsize=(11, 7.6))
    for ax, recipe in zip(grid.flat, RECIPES, strict=True):
        runs = sorted((run for run in results["runs"] if run["recipe"] == recipe.name), key=lambda run: run["seed"])
        per_step = recipe.layers > 1
        if recipe.warm_start_steps:
            ax.axvspan(0, recipe.warm_start_steps, color="0.9", zorder=0)
            ax.axvline(recipe.warm_start_steps, color="0.4", linewidth=0.8, linestyle=":")
            ax.text(
                recipe.warm_start_steps / 2,
                0.5,
                f"warm start\n({recipe.warm_start_steps} updates):\nfixed routes",
                ha="center",
                va="center",
                transform=ax.get_xaxis_transform(),
                fontsize=8,
                color="0.35",
            )
        finals = []
        for k, kind in enumerate(KINDS):
            for s, run in enumerate(runs):
                updates = [point["update"] for point in run["curve"]]
                values = [point[f"{kind}_layers" if per_step else f"{kind}_skip"] for point in run["curve"]]
                offset = k * len(runs) + s  # 0..curves-1: which of every `curves` points carries the marker
                ax.plot(
                    updates,
                    values,
                    linestyle=styles[s % len(styles)],
                    color=colours[kind],
                    linewidth=1.0,
                    marker=markers[kind],
                    markersize=4.5,
                    markerfacecolor=colours[kind] if s == 0 else "white",
                    markevery=slice(offset, None, curves),
                )
            losses = ", ".join(f"{run['curve'][-1][f'{kind}_loss']:.2f}" for run in runs)
            finals.append(f"{'copy' if kind == 'copy' else 'look-back (with a rule)'}: {losses}")
        lines = ["final loss, seeds " + ", ".join(map(str, seeds)) + ":", *finals]
        lines.append(f"(best possible, the rule's entropy: {entropy:.3f})")
        if per_step:  # which of its steps' layers a kind kept
            lines.append("share skipping the first, second step:")
            for kind in KINDS:
                shares = [
                    sum(run["curve"][-1][f"{kind}_skip_per_step"][k] for run in runs) / len(runs) for k in range(2)
                ]
                label = "copy" if kind == "copy" else "look-back"
                lines.append(f"{label}: {shares[0]:.2f}, {shares[1]:.2f} (mean of seeds)")
        ax.text(
            0.97,
            0.96 if per_step else 0.5,
            "\n".join(lines),
            ha="right",
            va="top" if per_step else "center",
            transform=ax.transAxes,
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
        )
        top = recipe.layers if per_step else 1.0
        ax.set_ylim(-0.06 * top, 1.06 * top)
        ax.set_xlim(0, STEPS)
        ax.set_title(recipe.title, fontsize=10)
        ax.set_xlabel("training updates")
        ax.set_ylabel("layers taken per token (of 2)" if per_step else "share of tokens that skip the layer")
        if per_step:
            ax.set_yticks([0, 0.5, 1, 1.5, 2])
        ax.grid(alpha=0.3)
    handles: list[Any] = [
        Line2D([], [], color=colours[kind], marker=markers[kind], linewidth=1.5, label=names[kind]) for kind in KINDS
    ]
    handles += [
        Line2D(
            [],
            [],
            color="0.3",
            linestyle=styles[s % len(styles)],
            marker="o",
            markerfacecolor=face,
            label=f"seed {seed}",
        )
        for s, (seed, face) in enumerate(zip(seeds, ["0.3"] + ["white"] * len(seeds), strict=False))
    ]
    handles.append(Patch(color="0.9", label="warm start: every token takes the layers"))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(
        "Learning to skip on copy_or_look_back: held-out routes (argmax) every 10 updates, compute penalty 0.1 nats",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)


def dump(results: dict[str, Any]) -> str:
    """JSON with one line per curve point: small, and a rerun's diff shows what moved."""
    runs = results["runs"]
    head = json.dumps({key: value for key, value in results.items() if key != "runs"}, indent=1)[:-2]
    body = ",\n".join(
        "  {"
        + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in run.items() if key != "curve")
        + ', "curve": [\n'
        + ",\n".join("   " + json.dumps(point) for point in run["curve"])
        + "\n  ]}"
        for run in runs
    )
    text = head + ',\n "runs": [\n' + body + "\n ]\n}\n"
    assert json.loads(text) == results
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("experiments/results/skip_learning.json"))
    parser.add_argument("--figure", type=Path, default=Path("docs/results/skip_learning.png"))
    parser.add_argument("--plot", action="store_true", help="only redraw --figure from --out")
    args = parser.parse_args()
    if args.plot:
        plot(json.loads(args.out.read_text()), args.figure)
        return
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    held_out = copy_or_look_back(HELD_OUT, LENGTH, NOISE, torch.Generator().manual_seed(HELD_OUT_SEED))
    start = time.perf_counter()
    runs = [train_one(recipe, seed, held_out) for recipe in RECIPES for seed in args.seeds]
    results = {
        "task": "copy_or_look_back (tests/helpers/token_tasks.py)",
        "setup": {
            "steps": STEPS,
            "every": EVERY,
            "batch": BATCH,
            "length": LENGTH,
            "noise": NOISE,
            "compute_weight": COMPUTE_WEIGHT,
            "held_out": HELD_OUT,
            "held_out_seed": HELD_OUT_SEED,
            "rule_entropy": rule_entropy(),
            "threads": 1,
        },
        "recipes": [recipe.__dict__ for recipe in RECIPES],
        "seconds": round(time.perf_counter() - start, 1),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(results))
    plot(results, args.figure)
    print(f"{len(runs)} runs in {results['seconds']:.0f} s; wrote {args.out} and {args.figure}")


if __name__ == "__main__":
    main()
