"""What `transformer dashboard` shows, as plain data: no web library is imported here.

The dashboard (transformer/dashboard/app.py) only lays out and draws what this module
measures, so every number on the page is tested without a browser (tests/analysis/
test_dashboard_data.py), and the browser test only has to check that the numbers arrive.

- Runs are found from the paths given: a run folder (it holds `metrics.jsonl`) or a parent
  whose sub-folders are runs. Histories come from `plotting.runs.load_history`, the same
  reader as `transformer plot`, so both tools agree on resumed steps, torn lines and FLOPs.
- A run still training grows its log; `RunSet.refresh` re-reads only the runs whose log
  changed (size and modification time), so polling every few seconds costs a `stat` per run.
- What a checkpoint does with one prompt (attention, routes, a sample) is in `prompt_views.py`.
"""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transformer.analysis.plotting.runs import METRICS, PlotError, RunHistory, default_labels, load_history


class DashboardError(PlotError):
    """Nothing to show, or a request the dashboard cannot serve; one line that says why."""


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run, and the runs among the sub-folders (any depth) of each that is not."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise DashboardError(f"{path} is not a folder: give run folders (train.out_dir) or a folder holding them")
        if (path / METRICS).is_file():
            found.append(path)
            continue
        inside = sorted(log.parent for log in path.rglob(METRICS))
        if not inside:
            raise DashboardError(f"{path} holds no run: no {METRICS} in it or in any folder below it")
        found += inside
    unique = list(dict.fromkeys(run.resolve() for run in found))
    return unique


def _stamp(run_dir: Path) -> tuple[int, int]:
    stat = (run_dir / METRICS).stat()
    return stat.st_size, stat.st_mtime_ns


def _load(run_dir: Path, label: str) -> RunHistory:
    """The run's history; a run that has not logged its first step yet is shown empty, not refused."""
    try:
        return load_history(run_dir, label)
    except PlotError as error:
        if "no train or eval records yet" not in str(error):
            raise
        return RunHistory(label, run_dir, [], [], notes=[str(error)])


class RunSet:
    """The runs on show, re-read when their logs change. `version` counts the changes seen, so
    a page can ask "anything new since version v?" without comparing histories."""

    def __init__(self, run_dirs: Sequence[Path]) -> None:
        if not run_dirs:
            raise DashboardError("no runs to show")
        self.run_dirs = list(run_dirs)
        self.labels = default_labels(self.run_dirs)
        self._stamps = [_stamp(run_dir) for run_dir in self.run_dirs]
        self.histories = [_load(d, label) for d, label in zip(self.run_dirs, self.labels, strict=True)]
        self.version = 0

    def refresh(self) -> bool:
        """Re-reads the runs whose log grew (or was rewritten); True when any did."""
        changed = False
        for index, run_dir in enumerate(self.run_dirs):
            stamp = _stamp(run_dir)
            if stamp != self._stamps[index]:
                self._stamps[index] = stamp
                self.histories[index] = _load(run_dir, self.labels[index])
                changed = True
        if changed:
            self.version += 1
        return changed

    def history(self, label: str) -> RunHistory:
        for history in self.histories:
            if history.label == label:
                return history
        raise DashboardError(f"no run named {label!r}: the runs are {self.labels}")


# --- curves ----------------------------------------------------------------------------------

X_AXES = ("step", "tokens", "flops")


@dataclass
class Series:
    """One line of a chart: x and y of the records that have both."""

    name: str
    x: list[float]
    y: list[float]


def series(history: RunHistory, kind: str, key: str, x_axis: str = "step") -> Series:
    """`key` of the run's `kind` ("train" or "eval") records against `x_axis`: "step",
    "tokens" or "flops" (tokens times the model's FLOPs per token; empty without a model size)."""
    if x_axis not in X_AXES:
        raise DashboardError(f"x axis {x_axis!r} is not one of {list(X_AXES)}")
    records = history.train if kind == "train" else history.eval
    x, y = [], []
    for record in records:
        value = record.get(key)
        at = history.flops(record) if x_axis == "flops" else record.get(x_axis)
        if value is None or at is None:
            continue
        x.append(float(at))
        y.append(float(value))
    return Series(f"{history.label} {kind} {key}", x, y)


def loss_at_compute(history: RunHistory, flops: float) -> float | None:
    """The run's validation loss at a training-compute budget, read off its eval curve by
    linear interpolation in log FLOPs (the axis the comparison is drawn on); None outside the
    FLOPs the run has evaluated at, or without a model size. The equal-compute question "which
    run is better for the same work?" is answered at one x for all runs, not at their last steps."""
    curve = series(history, "eval", "val_loss", "flops")
    slack = 1e-9  # a budget that went through log10 and back is off in the last digits
    if not curve.x or flops <= 0 or not curve.x[0] * (1 - slack) <= flops <= curve.x[-1] * (1 + slack):
        return None
    return float(np.interp(math.log(flops), np.log(curve.x), curve.y))


def common_compute(histories: Sequence[RunHistory]) -> tuple[float, float] | None:
    """The FLOPs range every run has evaluated over (None when they share none): the budgets at
    which all of them can be compared."""
    curves = [series(h, "eval", "val_loss", "flops") for h in histories]
    if any(not c.x for c in curves):
        return None
    low, high = max(c.x[0] for c in curves), min(c.x[-1] for c in curves)
    return (low, high) if low <= high else None


# --- tables ----------------------------------------------------------------------------------


@dataclass
class SummaryRow:
    run: str
    kind: str  # "plain", "routed" (sequence) or "token-routed"
    parameters: int | None
    active_parameters: int | None
    steps: int
    tokens: int | None
    best_val_loss: float | None
    best_val_step: int | None
    final_val_loss: float | None
    total_flops: float | None  # training compute up to the last logged step
    median_tokens_per_s: float | None


def run_kind(history: RunHistory) -> str:
    routing = history.config.routing if history.config is not None else None
    if routing is not None:
        return "token-routed" if routing.granularity == "token" else "routed"
    return "routed" if history.routed else "plain"


def summary_row(history: RunHistory) -> SummaryRow:
    evals = [r for r in history.eval if r.get("val_loss") is not None]
    best = min(evals, key=lambda r: float(r["val_loss"])) if evals else None
    last = max(history.train + history.eval, key=lambda r: int(r["step"]), default={"step": 0})
    rates = [float(r["tokens_per_s"]) for r in history.train if r.get("tokens_per_s") is not None]
    return SummaryRow(
        run=history.label,
        kind=run_kind(history),
        parameters=history.size.parameters if history.size else None,
        active_parameters=history.size.active if history.size else None,
        steps=int(last["step"]),
        tokens=int(last["tokens"]) if last.get("tokens") is not None else None,
        best_val_loss=float(best["val_loss"]) if best else None,
        best_val_step=int(best["step"]) if best else None,
        final_val_loss=float(evals[-1]["val_loss"]) if evals else None,
        total_flops=history.flops(last),
        median_tokens_per_s=statistics.median(rates) if rates else None,
    )


@dataclass
class ConfigComparison:
    """One row per config key (`section.name`), one value per run; `differs[i]` marks the rows
    where the runs disagree, which the page highlights."""

    runs: list[str]
    keys: list[str]
    values: list[list[str]]  # [key][run]
    differs: list[bool]


MISSING = "—"  # a key one run's config has and another's lacks (no routing section, say)


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """`{"model": {"d_model": 16}}` -> `{"model.d_model": "16"}`; a null section is one key."""
    flat: dict[str, str] = {}
    for section, body in config.items():
        if isinstance(body, dict):
            for name, value in body.items():
                flat[f"{section}.{name}"] = str(value)
        else:
            flat[section] = str(body)
    return flat


def compare_configs(histories: Sequence[RunHistory]) -> ConfigComparison:
    flats = [flat_config(h.config.to_dict()) if h.config is not None else {} for h in histories]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    values = [[flat.get(key, MISSING) for flat in flats] for key in keys]
    return ConfigComparison(
        runs=[h.label for h in histories],
        keys=keys,
        values=values,
        differs=[len(set(row)) > 1 for row in values],
    )


# --- routing ---------------------------------------------------------------------------------


@dataclass
class UsageHistory:
    """Logged usage of a routed run: `usage[r, k, e]` is the fraction of the training batch
    that routing step k sent to entry e at the r-th logged step `steps[r]`."""

    steps: list[int]
    usage: np.ndarray[Any, np.dtype[np.float64]]


def usage_history(history: RunHistory) -> UsageHistory:
    records = [r for r in history.train if r.get("usage") is not None]
    if not records:
        raise DashboardError(f"{history.label} logged no routing usage: it is a plain decoder")
    return UsageHistory([int(r["step"]) for r in records], np.array([r["usage"] for r in records], dtype=float))


ENTROPY_KEYS = ("usage_entropy", "decision_entropy")


def entropy_series(history: RunHistory) -> list[Series]:
    """Usage and decision entropy, train and validation, against steps (nats; ln N is even use)."""
    return [series(history, kind, key) for kind in ("train", "eval") for key in ENTROPY_KEYS]


def perplexity(loss: float | None) -> float | None:
    return math.exp(loss) if loss is not None else None
