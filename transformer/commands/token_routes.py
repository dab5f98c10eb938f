"""`transformer routes` for a token-routed run: which entry each token took at each step, over
the text, and whether the choice depends on the token's class, its position or its source.

Windows are drawn as for a sequence-routed run (commands/routes.py); every token of every
window counts (transformer/analysis/token_routes.py). The excerpt (text and figure) is the
first `--show` tokens of the first drawn window of the first source.

Heavy imports happen inside the functions, so `transformer --help` stays fast.
"""

import argparse
from pathlib import Path
from typing import Any

from transformer.commands.errors import CommandError

FIGURE_NAME = "token_routes.png"
MISSING_MATPLOTLIB = "the token-route figure needs matplotlib: pip install 'transformer[viz]'"


def figure_path(args: argparse.Namespace) -> Path | None:
    """Where the figure goes: --figure PATH, else OUT/token_routes.png with --out, else nowhere."""
    if args.figure is not None:
        return Path(args.figure)
    return Path(args.out) / FIGURE_NAME if args.out is not None else None


def token_routes_command(args: argparse.Namespace, run: Any, labels: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    from transformer.analysis.routes import pick_windows, tiled_windows, token_stream
    from transformer.analysis.token_routes import analyse_token_routes, shown_token, token_choices, token_classes
    from transformer.data.corpus import load_documents
    from transformer.routing.token_decoder import as_token_routed

    if args.show < 1 or args.position_buckets < 1:
        raise CommandError("--show and --position-buckets must be positive")
    model = as_token_routed(run.model, "token routes")
    n_ctx, routing = model.cfg.n_ctx, model.routing
    generator = torch.Generator().manual_seed(args.seed)
    choices, processed, classes, token_labels, excerpt = [], [], [], [], None
    for source, label in zip(args.data, labels, strict=True):
        windows = tiled_windows(token_stream(load_documents(source), run.tokenizer), n_ctx, n_ctx)
        if len(windows) == 0:
            raise CommandError(f"{source} has fewer than n_ctx = {n_ctx} tokens: no window to route")
        picked = pick_windows(windows, args.windows, generator)
        chosen, done = token_choices(model, picked)
        if excerpt is None:
            ids = picked[0, : args.show].tolist()
            excerpt = {
                "label": label,
                "shown": [shown_token(i, run.tokenizer) for i in ids],
                "choices": chosen[0, : len(ids)].T.tolist(),  # [step][token]
                "processed": done[0, : len(ids)].T.tolist(),
            }
        choices.append(chosen.flatten(0, 1).numpy())
        processed.append(done.flatten(0, 1).numpy())
        classes += token_classes(picked.flatten().tolist(), run.tokenizer)
        token_labels += [label] * picked.numel()
    every = np.concatenate(choices)
    positions = np.tile(np.arange(n_ctx), len(every) // n_ctx)
    report = analyse_token_routes(
        every,
        np.concatenate(processed),
        classes,
        positions,
        token_labels,
        routing.pool_size,
        routing.skip,
        n_ctx,
        args.position_buckets,
        args.permutations,
        args.seed,
    )
    record: dict[str, Any] = {
        "run": str(args.run),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "sources": dict(zip(labels, args.data, strict=True)),
        "labels": labels,
        "windows_per_label": {label: token_labels.count(label) // n_ctx for label in labels},
        "seed": args.seed,
        **report.as_dict(),
        "excerpt": excerpt,
        "figure": None,
    }
    path = figure_path(args)
    if path is not None and excerpt is not None:
        record["figure"] = str(_draw(path, excerpt, record))
    return record


def _draw(path: Path, excerpt: dict[str, Any], record: dict[str, Any]) -> Path:
    import numpy as np

    try:
        from transformer.analysis.plotting.token_route_figure import token_route_figure, write_png
    except ImportError:
        raise CommandError(MISSING_MATPLOTLIB) from None
    title = (
        f"token routes of {Path(record['checkpoint']).name} (step {record['step']}), "
        f"first {len(excerpt['shown'])} tokens of a {excerpt['label']} window"
    )
    figure = token_route_figure(
        excerpt["shown"],
        np.array(excerpt["choices"]).T,
        np.array(excerpt["processed"]).T,
        record["n_layers"],
        record["skip"],
        title,
    )
    try:
        return write_png(figure, path)
    except OSError as error:
        raise CommandError(f"cannot write the figure to {path}: {error.strerror or error}") from None


def _entry(choice: int, processed: bool, n_layers: int) -> str:
    if choice >= n_layers:
        return "-"
    return "0123456789abcdefghijklmnopqrstuvwxyz"[choice] if processed else "x"


def token_summary(record: dict[str, Any]) -> str:
    n_layers, skip, steps = record["n_layers"], record["skip"], record["steps"]
    entries = [f"L{i}" for i in range(n_layers)] + (["skip"] if skip else [])
    lines = [
        f"token routes of {record['checkpoint']} (step {record['step']}): each token takes one of {n_layers} layers"
        + (" or skip" if skip else "")
        + f" at each of {steps} steps",
        f"tokens: {record['tokens']:,} ("
        + ", ".join(f"{name} {n:,}" for name, n in record["tokens_per_class"].items())
        + "); windows per label: "
        + ", ".join(f"{label} {n}" for label, n in record["windows_per_label"].items()),
        "",
    ]
    excerpt = record["excerpt"]
    lines.append(
        f"the entry each token took (first {len(excerpt['shown'])} tokens of a {excerpt['label']} window; "
        "a digit is the layer, '-' skip, 'x' a layer's choice the capacity dropped):"
    )
    lines.append(f"{'text':<8}" + "".join(excerpt["shown"]))
    for k in range(steps):
        row = zip(excerpt["choices"][k], excerpt["processed"][k], strict=True)
        lines.append(f"{f'step {k}':<8}" + "".join(_entry(c, p, n_layers) for c, p in row))
    lines += ["", *_usage_table("token class", record["usage_by_class"], entries)]
    skips, layers = record["skip_by_class"], record["layers_per_token_by_class"]
    lines.append(
        "by class: "
        + ", ".join(f"{name} skip {skips[name]:.2f} layers/token {layers[name]:.2f}" for name in record["classes"])
    )
    lines += ["", *_usage_table("position", record["usage_by_position"], entries)]
    if skip:
        lines.append(
            "skip rate by position: "
            + ", ".join(f"{name} {rate:.2f}" for name, rate in record["skip_by_position"].items())
        )
    lines.append(f"dropped (over capacity): {record['dropped_fraction']:.3f} of the choices of a layer")
    lines.append("")
    for key, what in (("class", "token class"), ("position", "position bucket"), ("label", "label")):
        if key == "label" and len(record["labels"]) < 2:
            continue
        for k, info in enumerate(record[f"{key}_mutual_information"]):
            lines.append(f"I(entry at step {k}; {what}): " + information_line(info))
    lines.append(
        "The plug-in MI of a finite sample is biased upward; only the excess over the shuffled "
        "baseline (and a small p) says the route depends on the class."
    )
    if record["figure"] is not None:
        lines.append(f"figure: {record['figure']}")
    return "\n".join(lines)


def _usage_table(group: str, usage: list[dict[str, list[float]]], entries: list[str]) -> list[str]:
    names = list(usage[0])
    width = max([len(name) for name in names] + [len(group)])
    cell = " ".join(f"{entry:>4}" for entry in entries)
    header = f"{group:<{width}}  " + "  |  ".join(f"step {k}: {cell}" for k in range(len(usage)))
    rows = [f"usage by {group} (fraction of the group's tokens taking each entry):", header]
    for name in names:
        cells = "  |  ".join(
            " " * len(f"step {k}: ") + " ".join(f"{f:>4.2f}" for f in step[name]) for k, step in enumerate(usage)
        )
        rows.append(f"{name:<{width}}  {cells}")
    return rows


def information_line(info: dict[str, float]) -> str:
    return (
        f"{info['observed']:.4f} bits; shuffled {info['shuffled_mean']:.4f} ± {info['shuffled_std']:.4f} "
        f"({int(info['permutations'])} permutations); excess {info['excess']:.4f} bits, p = {info['p_value']:.3f}"
    )
