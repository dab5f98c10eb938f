"""`transformer routes`: which path each sequence takes, and what the path says about its source.
A token-routed run instead shows each token's entry at each step (commands/token_routes.py).

Each `--data` source is one label. Windows of n_ctx tokens are tiled over each source's token
stream and `--windows` of them are drawn at random (`--seed`); the router's argmax path of each
window is counted per label, and the mutual information I(path; label) is compared with its
shuffled-label baseline (transformer/analysis/routes.py, docs/analysis.md).

Heavy imports happen inside the handler, so `transformer --help` stays fast.
"""

import argparse
import json
import math
from typing import Any

from transformer.commands.errors import CommandError
from transformer.commands.options import add_run_options, chosen_device, seed_int
from transformer.commands.token_routes import FIGURE_NAME, figure_path, token_routes_command, token_summary


def add_routes_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "routes",
        help="the path each sequence takes through a routed run, and its mutual information with a label",
        description="Count the argmax paths of windows from one or more sources (one label per source) and "
        "measure I(path; label) against a shuffled-label baseline.",
    )
    add_run_options(parser)
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SOURCE",
        help="a source of windows (builtin, a file, a folder, hf:...); repeat for each label",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="NAME",
        help="one name per --data source (default: the sources as given)",
    )
    parser.add_argument("--windows", type=int, default=200, metavar="N", help="windows drawn from each source")
    parser.add_argument("--permutations", type=int, default=100, help="label shuffles for the baseline")
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the window draw and the label shuffles")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    token = parser.add_argument_group("token-routed runs")
    token.add_argument("--figure", metavar="PATH", default=None, help="write the token-route figure (PNG) here")
    token.add_argument("--out", metavar="DIR", default=None, help=f"write the token-route figure as DIR/{FIGURE_NAME}")
    token.add_argument("--show", type=int, default=64, metavar="N", help="tokens of text in the excerpt and figure")
    token.add_argument("--position-buckets", type=int, default=4, metavar="B", help="position ranges to count usage in")
    parser.set_defaults(handler=run_routes, prog=parser.prog)


def run_routes(args: argparse.Namespace) -> int:
    record = routes_command(args)
    text = token_summary if record.get("granularity") == "token" else summary
    print(json.dumps(record) if args.json else text(record))
    return 0


def routes_command(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from transformer.analysis.routes import (
        analyse_routes,
        argmax_choices,
        as_paths,
        pick_windows,
        tiled_windows,
        token_stream,
    )
    from transformer.data.corpus import load_documents
    from transformer.inference.loading import load_trained
    from transformer.routing.decoder import as_routed

    labels = list(args.data) if args.labels is None else list(args.labels)
    if len(labels) != len(args.data):
        raise CommandError(f"{len(labels)} --labels for {len(args.data)} --data sources: give one label per source")
    if len(set(labels)) != len(labels):
        raise CommandError(f"labels must differ, got {labels}")
    if args.windows < 1 or args.permutations < 1:
        raise CommandError("--windows and --permutations must be positive")
    run = load_trained(args.run, args.checkpoint, chosen_device(args))
    if run.model.kind != "routed":
        raise CommandError(f"routes needs a routed run; {args.run} holds a plain decoder (config routing: null)")
    if run.model.route_granularity == "token":
        return token_routes_command(args, run, labels)
    if figure_path(args) is not None:
        raise CommandError("--figure and --out draw token routes; this run routes whole sequences (see the table)")
    model = as_routed(run.model)
    n_ctx = model.cfg.n_ctx
    generator = torch.Generator().manual_seed(args.seed)
    paths, window_labels = [], []
    for source, label in zip(args.data, labels, strict=True):
        windows = tiled_windows(token_stream(load_documents(source), run.tokenizer), n_ctx, n_ctx)
        if len(windows) == 0:
            raise CommandError(f"{source} has fewer than n_ctx = {n_ctx} tokens: no window to route")
        picked = pick_windows(windows, args.windows, generator)
        paths += as_paths(argmax_choices(model, picked))
        window_labels += [label] * len(picked)
    report = analyse_routes(
        paths, window_labels, model.pool_size, args.permutations, args.seed, labels, model.choices_per_step
    )
    return {
        "run": str(args.run),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "sources": dict(zip(labels, args.data, strict=True)),
        "route_prefix_len": model.routing.route_prefix_len,
        "seed": args.seed,
        **report.as_dict(),
    }


def summary(record: dict[str, Any]) -> str:
    labels = record["labels"]
    pool, steps = record["pool_size"], record["steps"]
    lines = [
        f"routes of {record['checkpoint']} (step {record['step']}): {steps} steps through a pool of {pool} layers "
        f"({record['possible_paths']} possible paths), decided by the first {record['route_prefix_len']} tokens",
        "windows per label: " + ", ".join(f"{label} {n}" for label, n in record["windows_per_label"].items()),
        "",
    ]
    width = max([len(label) for label in labels] + [5])
    path_width = max(len(_path(row["path"])) for row in record["paths"])
    header = f"{'path':<{path_width}}  " + "  ".join(f"{label:>{width}}" for label in labels) + f"  {'total':>{width}}"
    lines += [header, "-" * len(header)]
    for row in record["paths"]:
        cells = "  ".join(f"{row['counts'][label]:>{width}}" for label in labels)
        lines.append(f"{_path(row['path']):<{path_width}}  {cells}  {row['total']:>{width}}")
    lines.append("")
    lines.append(
        f"distinct paths: {record['distinct_paths']} of {record['possible_paths']}; "
        f"H(path) {record['path_entropy_bits']:.3f} bits, H(label) {record['label_entropy_bits']:.3f} bits"
    )
    for step, (fractions, entropy) in enumerate(zip(record["usage"], record["usage_entropy_bits"], strict=True)):
        lines.append(
            f"step {step} usage: "
            + " ".join(f"{f:.2f}" for f in fractions)
            + f" (entropy {entropy:.3f} of {math.log2(pool):.3f} bits)"
        )
    lines.append("I(path; label): " + _information(record["mutual_information"]))
    for step, info in enumerate(record["per_step_mutual_information"]):
        lines.append(f"I(layer at step {step}; label): " + _information(info))
    lines.append(
        "The plug-in MI of a finite sample is biased upward; only the excess over the shuffled "
        "baseline (and a small p) says the route depends on the label."
    )
    return "\n".join(lines)


def _path(path: list[int]) -> str:
    return "-".join(str(layer) for layer in path)


def _information(info: dict[str, float]) -> str:
    return (
        f"{info['observed']:.4f} bits; shuffled labels {info['shuffled_mean']:.4f} ± {info['shuffled_std']:.4f} "
        f"({int(info['permutations'])} permutations); excess {info['excess']:.4f} bits, p = {info['p_value']:.3f}"
    )
