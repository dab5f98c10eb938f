"""`transformer plot`: a run's metrics as PNG figures (docs/plots.md says how to read each).

- `runs.py` reads what a figure shows: the metrics log, the model's size and FLOPs, the routes.
- `figures.py` draws it with matplotlib, which is an optional dependency (the `viz` extra):
  it is imported only here, inside `plot_runs`, so the rest of the package never needs it.
"""

import sys
from pathlib import Path

from transformer.analysis.plotting.runs import (
    PlotError,
    RunHistory,
    default_labels,
    folder_names,
    load_history,
    route_counts,
)
from transformer.data.corpus import DataError
from transformer.training.checkpoint import CheckpointError

__all__ = ["PlotError", "plot_runs"]

MISSING_MATPLOTLIB = "transformer plot needs matplotlib: pip install 'transformer[viz]'"


def plot_runs(run_dirs: list[Path], out: Path | None = None, labels: list[str] | None = None) -> list[Path]:
    """Writes the figures of each run (in OUT/LABEL/ when there are several runs, with
    compare.png in OUT; LABEL made a safe, distinct folder name by `folder_names`) and
    returns the paths written. `out` defaults to RUN/plots for one
    run and ./plots for several."""
    try:
        from transformer.analysis.plotting import figures
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] == "matplotlib":
            raise PlotError(MISSING_MATPLOTLIB) from None
        raise
    if not run_dirs:
        raise PlotError("give at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise PlotError(f"--labels gave {len(labels)} names for {len(run_dirs)} runs")
    names = labels if labels is not None else default_labels(run_dirs)
    histories = [load_history(run_dir, name) for run_dir, name in zip(run_dirs, names, strict=True)]
    if out is None:
        out = run_dirs[0] / "plots" if len(run_dirs) == 1 else Path("plots")
    written = []
    folders = [out] if len(histories) == 1 else [out / name for name in folder_names(names)]
    for index, (history, folder) in enumerate(zip(histories, folders, strict=True)):
        written += _plot_one(history, folder, figures.run_colour(index))
    if len(histories) > 1:
        written.append(figures.save(figures.compare_figure(histories), out / "compare.png"))
    return written


def _plot_one(history: RunHistory, folder: Path, colour: str) -> list[Path]:
    from transformer.analysis.plotting import figures

    for note in history.notes:
        _warn(f"{history.label}: {note}")
    written = [
        figures.save(figures.loss_figure(history, colour), folder / "loss.png"),
        figures.save(figures.lr_figure(history, colour), folder / "lr.png"),
        figures.save(figures.throughput_figure(history, colour), folder / "throughput.png"),
    ]
    if history.routed:
        written.append(figures.save(figures.usage_heatmap_figure(history), folder / "usage_heatmap.png"))
        written.append(figures.save(figures.entropy_figure(history), folder / "entropy.png"))
        if history.token_routed:  # a route per token, not per window: `transformer routes --figure` draws them
            return written
        try:
            counts = route_counts(history.run_dir)
        except (CheckpointError, DataError) as error:
            _warn(f"{history.label}: no paths.png: {error}")
        else:
            written.append(figures.save(figures.paths_figure(counts, history.label), folder / "paths.png"))
    return written


def _warn(message: str) -> None:
    print(f"transformer plot: warning: {message}", file=sys.stderr)
