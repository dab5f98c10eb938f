"""The figures of `transformer plot`, drawn with matplotlib's object API on the Agg canvas.

No `pyplot`: a `Figure` made directly owns its canvas, draws without a display and is freed
when it goes out of scope, so plotting changes no global state of the caller. This module
imports matplotlib at the top; `transformer.analysis.plotting` imports it only when asked to plot,
so the package itself does not need matplotlib.

Conventions, the same in every figure: one colour per run (the order given on the command
line), training curves thin and faint with a moving average on top, evaluations as markers,
losses in nats per token with perplexity (exp of the loss) on the right-hand axis, and
compute on a log axis.
"""

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from transformer.analysis.plotting.runs import RouteCounts, RunHistory

RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
USAGE_COLOUR, DECISION_COLOUR, REFERENCE_COLOUR = "#1f77b4", "#ff7f0e", "#555555"
STYLE: dict[str, Any] = {
    "font.size": 10.5,
    "axes.titlesize": 11.5,
    "axes.labelsize": 10.5,
    "figure.titlesize": 13,
    "legend.fontsize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.dpi": 140,
}
MAX_PATH_BARS = 20


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


@contextmanager
def _style() -> Iterator[None]:
    # matplotlib types rc keys as one Literal of every known name; a plain dict of str keys is not one
    with matplotlib.rc_context(cast(Any, STYLE)):
        yield


def save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# --- helpers --------------------------------------------------------------------------------


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that have a finite `key` (non-finite values are logged as null)."""
    pairs = [(float(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def moving_average(values: Sequence[float], points: int = 25) -> list[float]:
    """Trailing mean over about len/points values: the trend through per-step noise."""
    window = max(1, len(values) // points)
    sums = np.cumsum(np.asarray(values, dtype=float))
    lagged = np.concatenate([np.zeros(window), sums[:-window]]) if len(values) > window else np.zeros(len(values))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return list((sums - lagged[: len(values)]) / counts)


def _perplexity_axis(ax: Axes) -> None:
    """Perplexity = exp(loss) on the right: the same curve, read in the other unit."""
    secondary = ax.secondary_yaxis(
        "right", functions=(lambda x: np.exp(np.clip(x, -50, 50)), lambda y: np.log(np.maximum(y, 1e-30)))
    )
    secondary.set_ylabel("perplexity (exp of loss)")


def _train_curve(ax: Axes, x: Sequence[float], y: Sequence[float], colour: str, label: str) -> None:
    ax.plot(x, y, color=colour, alpha=0.25, linewidth=0.8)
    ax.plot(x, moving_average(y), color=colour, linewidth=1.8, label=label)


def _eval_curve(ax: Axes, x: Sequence[float], y: Sequence[float], colour: str, label: str) -> None:
    ax.plot(
        x,
        y,
        color=colour,
        linestyle="--",
        linewidth=1.2,
        marker="o",
        markersize=4.5,
        markeredgecolor="black",
        markeredgewidth=0.6,
        label=label,
    )


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True, color=REFERENCE_COLOUR)


def _size_line(history: RunHistory) -> str:
    size = history.size
    if size is None:
        return history.label
    return (
        f"{history.label}: {size.parameters:,} parameters, {size.active:,} active per token, "
        f"{size.flops_per_token:.3g} training FLOPs per token"
    )


def _flops_series(history: RunHistory, records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(history.flops(r), r.get(key)) for r in records]
    kept = [(float(x), float(y)) for x, y in pairs if x is not None and x > 0 and y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


# --- one run ----------------------------------------------------------------------------------


def loss_figure(history: RunHistory, colour: str) -> Figure:
    with _style():
        figure = Figure(figsize=(12, 4.6), layout="constrained")
        by_step, by_flops = figure.subplots(1, 2)
        for ax, x_of, xlabel in ((by_step, None, "optimizer step"), (by_flops, "flops", "training compute (FLOPs)")):
            if x_of is None:
                train_x, train_y = _series(history.train, "loss")
                val_x, val_y = _series(history.eval, "val_loss")
            else:
                train_x, train_y = _flops_series(history, history.train, "loss")
                val_x, val_y = _flops_series(history, history.eval, "val_loss")
                if not train_x and not val_x:
                    _note(ax, "FLOPs unknown: the run has no checkpoint\nto count the model's parameters")
                    ax.set_title("Loss vs compute")
                    continue
                ax.set_xscale("log")
            if train_x:
                _train_curve(ax, train_x, train_y, colour, "train loss (moving average; faint: per step)")
            if val_x:
                _eval_curve(ax, val_x, val_y, colour, "validation loss")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("loss (nats per token)")
            ax.set_title("Loss vs steps" if x_of is None else "Loss vs compute")
            ax.legend(loc="upper right" if x_of is None else "lower left")  # away from the curve's start
            _perplexity_axis(ax)
        figure.suptitle(_size_line(history))
    return figure


def lr_figure(history: RunHistory, colour: str) -> Figure:
    """The learning rate; for a routed run also the routing temperature, the other schedule."""
    temperature = _series(history.train, "temperature")
    with _style():
        figure = Figure(figsize=(12 if temperature[0] else 7, 4), layout="constrained")
        axes = figure.subplots(1, 2 if temperature[0] else 1, squeeze=False)[0]
        steps, lr = _series(history.train, "lr")
        axes[0].plot(steps, lr, color=colour, linewidth=1.8)
        axes[0].set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate (warmup, then cosine decay)")
        axes[0].set_ylim(bottom=0)
        if temperature[0]:
            axes[1].plot(*temperature, color=colour, linewidth=1.8)
            axes[1].set(
                xlabel="optimizer step",
                ylabel="temperature τ",
                title="Routing temperature (Gumbel sampling in training)",
            )
            axes[1].set_ylim(bottom=0)
        figure.suptitle(f"{history.label}: schedules")
    return figure


def throughput_figure(history: RunHistory, colour: str) -> Figure:
    steps, rate = _series(history.train, "tokens_per_s")
    with _style():
        figure = Figure(figsize=(8, 4), layout="constrained")
        ax = figure.subplots()
        if rate:
            _train_curve(ax, steps, rate, colour, "tokens/s (moving average; faint: per logged step)")
            median = float(np.median(rate))
            ax.axhline(
                median, color=REFERENCE_COLOUR, linestyle="--", linewidth=1.2, label=f"median {median:,.0f} tokens/s"
            )
            ax.legend(loc="lower right")
            ax.set_ylim(0, float(np.percentile(rate, 99)) * 1.15)
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))  # a slow first step must not flatten the rest
        ax.set(
            xlabel="optimizer step",
            ylabel="throughput (tokens/s)",
            title=f"{history.label}: training throughput (evaluation and checkpoint time excluded)",
        )
    return figure


def usage_heatmap_figure(history: RunHistory) -> Figure:
    """For each routing step: which pool layers the training batch's sequences went through."""
    records = [r for r in history.train if "usage" in r]
    steps = np.array([float(r["step"]) for r in records])
    usage = np.array([r["usage"] for r in records], dtype=float)  # [records, routing steps, pool]
    n_routing, pool = usage.shape[1], usage.shape[2]
    with _style():
        figure = Figure(figsize=(11, 1.3 + n_routing * (0.28 * pool + 0.9)), layout="constrained")
        axes = figure.subplots(n_routing, 1, sharex=True, squeeze=False)[:, 0]
        mesh = None
        for k, ax in enumerate(axes):
            mesh = ax.pcolormesh(
                _edges(steps),
                np.arange(pool + 1) - 0.5,
                usage[:, k, :].T,
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
                shading="flat",
            )
            ax.set_yticks(range(pool))
            ax.set_ylabel("pool layer")
            ax.set_title(f"routing step {k}", loc="left")
            ax.grid(False)
        axes[-1].set_xlabel("optimizer step")
        if mesh is not None:
            figure.colorbar(mesh, ax=list(axes), label="fraction of the batch's sequences", shrink=0.9)
        figure.suptitle(
            f"{history.label}: layer usage per routing step (training batches, sampled routes; "
            f"even use = {1 / pool:.2f})"
        )
    return figure


def _edges(centres: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Cell edges around possibly uneven step positions: halfway between neighbours."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])


def entropy_figure(history: RunHistory) -> Figure:
    ln_n = math.log(history.pool_size)
    with _style():
        figure = Figure(figsize=(12, 4.6), layout="constrained")
        ax = figure.subplots()
        for key, colour, what in (
            ("usage_entropy", USAGE_COLOUR, "usage entropy"),
            ("decision_entropy", DECISION_COLOUR, "decision entropy"),
        ):
            steps, values = _series(history.train, key)
            if steps:
                tau = " at τ" if key == "decision_entropy" else ", sampled routes"
                _train_curve(ax, steps, values, colour, f"{what} (train{tau})")
            steps, values = _series(history.eval, key)
            if steps:
                tau = ", τ = 1" if key == "decision_entropy" else ", argmax routes"
                _eval_curve(ax, steps, values, colour, f"{what} (validation{tau})")
        ax.axhline(
            ln_n,
            color=REFERENCE_COLOUR,
            linestyle=":",
            linewidth=1.5,
            label=f"ln N = {ln_n:.3f} (uniform over {history.pool_size} layers)",
        )
        ax.set_ylim(0, ln_n * 1.12)
        ax.set(
            xlabel="optimizer step",
            ylabel="entropy (nats)",
            title=f"{history.label}: routing entropy (usage: spread over layers; decision: router's doubt)",
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def paths_figure(counts: RouteCounts, label: str) -> Figure:
    ranked = counts.paths.most_common(MAX_PATH_BARS)
    possible = counts.pool_size**counts.n_steps
    with _style():
        figure = Figure(figsize=(max(9.0, 1.5 + 0.45 * len(ranked)), 5), layout="constrained")
        ax = figure.subplots()
        names = ["→".join(str(layer) for layer in path) for path, _ in ranked]
        ax.bar(range(len(ranked)), [n / counts.windows for _, n in ranked], width=0.7, color=RUN_COLOURS[0])
        ax.axhline(
            1 / possible,
            color=REFERENCE_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"every path equally often: 1/{possible} = {1 / possible:.3g}",
        )
        tilt = len(ranked) > 8
        ax.set_xticks(range(len(ranked)), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
        ax.set_xlim(-0.6, max(len(ranked), 6) - 0.4)
        ax.set(xlabel="path: pool layer at routing step 0 → 1 → …", ylabel="fraction of windows")
        ax.grid(False, axis="x")
        ax.legend(loc="upper right")
        shown = f"the {len(ranked)} most frequent shown" if len(counts.paths) > len(ranked) else "all shown"
        ax.set_title(
            f"{len(counts.paths)} of {possible} possible paths used ({shown}); path entropy "
            f"{counts.entropy():.3f} nats of at most ln {possible} = {math.log(possible):.3f}"
        )
        figure.suptitle(
            f"{label}: argmax routes of {counts.windows} validation windows, checkpoint at step "
            f"{counts.checkpoint_step}"
        )
    return figure


# --- several runs ---------------------------------------------------------------------------


def compare_figure(histories: Sequence[RunHistory]) -> Figure:
    """Validation loss against training compute: which run is better for the same FLOPs."""
    by_flops = all(h.size is not None for h in histories)
    with _style():
        figure = Figure(figsize=(9, 5.2), layout="constrained")
        ax = figure.subplots()
        for index, history in enumerate(histories):
            if by_flops:
                x, y = _flops_series(history, history.eval, "val_loss")
            else:
                pairs = [(r.get("tokens"), r.get("val_loss")) for r in history.eval]
                x = [float(t) for t, v in pairs if t and v is not None]
                y = [float(v) for t, v in pairs if t and v is not None]
            size = f", {history.size.parameters:,} params" if history.size else ""
            _eval_curve(ax, x, y, run_colour(index), f"{history.label}{size}")
        ax.set_xscale("log")
        ax.set_xlabel("training compute (FLOPs)" if by_flops else "training tokens (FLOPs unknown for some run)")
        ax.set_ylabel("validation loss (nats per token)")
        ax.set_title("Equal-compute comparison: validation loss vs training " + ("FLOPs" if by_flops else "tokens"))
        ax.legend(loc="upper right")
        _perplexity_axis(ax)
        if len({h.routed for h in histories}) > 1:
            figure.supxlabel(
                "Not the same positions: a routed loss scores targets from its routing prefix P on, "
                "a plain loss every target (docs/training.md §7).",
                fontsize=8.5,
                color=REFERENCE_COLOUR,
            )
    return figure
