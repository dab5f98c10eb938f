"""Attention patterns and per-head scores as PNG figures (matplotlib: the `viz` extra).

matplotlib is imported inside each function, as in transformer/analysis/plotting/, so the
rest of the package never needs it.
"""

from pathlib import Path

from jaxtyping import Float
from torch import Tensor


def plot_patterns(
    patterns: Float[Tensor, "n_heads q k"], title: str, path: Path, labels: list[str] | None = None
) -> Path:
    """One heat map per head: row = query position, column = key position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_heads = patterns.shape[0]
    fig, axes = plt.subplots(1, n_heads, figsize=(3.6 * n_heads, 3.8), squeeze=False)
    for head, ax in enumerate(axes[0]):
        image = ax.imshow(patterns[head].float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {head}")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        if labels is not None:
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="attention")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_head_scores(scores: dict[str, Float[Tensor, "n_layers n_heads"]], path: Path) -> Path:
    """One grid per score (rows: layers, columns: heads), the value written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 2.8), squeeze=False)
    for ax, (name, grid) in zip(axes[0], scores.items(), strict=True):
        values = grid.float().cpu().numpy()
        ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
        for row in range(values.shape[0]):
            for col in range(values.shape[1]):
                value = float(values[row, col])
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="black" if value < 0.6 else "white")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1]))
        ax.set_yticks(range(values.shape[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_matrix(matrix: Float[Tensor, "rows cols"], title: str, xlabel: str, ylabel: str, path: Path) -> Path:
    """A circuit as a heat map, centred on zero (red: raises, blue: lowers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = matrix.float().cpu().numpy()
    bound = float(abs(values).max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
