"""The token-route figure of `transformer routes`: a stretch of text, one row per routing step,
each token's cell coloured by the entry it took (skip light grey, a token the capacity dropped
drawn faint), the token's character written in its cell.

Drawn like the other figures (transformer/analysis/plotting/figures.py): matplotlib's object
API on the Agg canvas, no pyplot, so drawing changes no global state. The figure's size follows
from the number of tokens and steps (`figure_inches`), so a test can check the PNG's pixels.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Bool, Int
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from transformer.analysis.plotting.figures import RUN_COLOURS, _style

SKIP_COLOUR = "#dddddd"
CELL_WIDTH, CELL_HEIGHT = 0.25, 0.4  # inches per token and per step: 30 and 48 pixels
MARGIN_WIDTH, MARGIN_HEIGHT = 1.25, 1.5  # inches for the step labels, title and legend
DPI = 120


def figure_inches(tokens: int, steps: int) -> tuple[float, float]:
    return (MARGIN_WIDTH + CELL_WIDTH * max(tokens, 8), MARGIN_HEIGHT + CELL_HEIGHT * steps)


def token_route_figure(
    shown: Sequence[str],
    choices: Int[np.ndarray, "pos steps"],
    processed: Bool[np.ndarray, "pos steps"],
    n_layers: int,
    skip: bool,
    title: str,
) -> Figure:
    """`shown`: one character per token (`token_routes.shown_token`); `choices[t, k]`: token t's
    entry at step k, n_layers meaning skip."""
    n_tokens, n_steps = choices.shape
    colours = [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(n_layers)] + ([SKIP_COLOUR] if skip else [])
    with _style():
        figure = Figure(figsize=figure_inches(n_tokens, n_steps), dpi=DPI)
        ax = figure.add_subplot()
        ax.imshow(
            choices.T,
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(colours) - 0.5,
            aspect="auto",
            interpolation="nearest",
        )
        dropped = (choices < n_layers) & ~processed
        if dropped.any():  # a faint veil over tokens that chose a layer but were over its capacity
            veil = np.zeros((n_steps, n_tokens, 4))
            veil[dropped.T] = (1.0, 1.0, 1.0, 0.65)
            ax.imshow(veil, aspect="auto", interpolation="nearest")
        for t, char in enumerate(shown):
            for k in range(n_steps):
                ax.text(t, k, char, ha="center", va="center", fontsize=8, family="monospace")
        ax.set_yticks(range(n_steps), [f"step {k}" for k in range(n_steps)])
        ax.set_xticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(title)
        entries = [f"layer {i}" for i in range(n_layers)] + (["skip"] if skip else [])
        handles = [Patch(color=colour, label=entry) for colour, entry in zip(colours, entries, strict=True)]
        if dropped.any():
            handles.append(Patch(facecolor="white", edgecolor="#999999", label="dropped (faint)"))
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        figure.subplots_adjust(
            left=MARGIN_WIDTH * 0.8 / figure.get_figwidth(),
            right=1 - 0.1 / figure.get_figwidth(),
            bottom=0.55 / figure.get_figheight(),
            top=1 - 0.45 / figure.get_figheight(),
        )
    return figure


def write_png(figure: Figure, path: Path) -> Path:
    """At the figure's own dpi, whatever a matplotlibrc says, so its pixels are figure_inches * DPI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=figure.dpi)
    return path
