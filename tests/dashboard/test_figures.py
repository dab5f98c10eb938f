"""The dashboard's figures and tables hold the numbers they are given: traces named per run,
a log axis for FLOPs, highlighted config rows, heatmaps equal to the views' arrays."""

from pathlib import Path

import numpy as np
import pytest

from transformer.analysis import prompt_views as pv
from transformer.analysis.plotting.runs import ModelSize, RunHistory
from transformer.training.config import load_run_config

figures = pytest.importorskip("transformer.dashboard.figures")


def history(label: str, losses: list[float], flops_per_token: float = 10.0) -> RunHistory:
    train = [
        {"kind": "train", "step": s + 1, "tokens": 64 * (s + 1), "loss": v, "lr": 1e-3} for s, v in enumerate(losses)
    ]
    evals = [{"kind": "eval", "step": len(losses), "tokens": 64 * len(losses), "val_loss": losses[-1] + 0.1}]
    return RunHistory(label, Path(label), train, evals, size=ModelSize(100, 80, flops_per_token))


def test_the_loss_chart_has_a_train_and_a_val_curve_per_run_and_flops_on_a_log_axis() -> None:
    runs = [history("a", [3.0, 2.5]), history("b", [3.2, 2.0], flops_per_token=20.0)]
    chart = figures.loss_figure(runs, "flops")
    assert [t.name for t in chart.data] == ["a train", "a val", "b train", "b val"]
    assert list(chart.data[2].x) == [64 * 20.0, 128 * 20.0] and list(chart.data[2].y) == [3.2, 2.0]
    assert list(chart.data[1].customdata) == pytest.approx([np.exp(2.6)])  # hover: perplexity
    assert chart.layout.xaxis.type == "log"
    assert figures.loss_figure(runs, "step").layout.xaxis.type is None


def test_the_summary_and_config_tables_hold_each_run_and_highlight_differences() -> None:
    a, b = history("a", [3.0, 2.5]), history("b", [3.2, 2.0])
    summary = figures.summary_table([a, b])
    rows = summary.children[1].children
    assert [row.children[0].children for row in rows] == ["a", "b"]
    assert rows[1].children[6].children == "2.1000"  # best val loss
    a.config = load_run_config(None, ["routing=null", "train.out_dir=runs/a"])
    b.config = load_run_config(None, ["train.out_dir=runs/b"])
    rows = figures.config_table([a, b], only_differences=False).children[1].children
    marked = {row.children[0].children: row.className for row in rows}
    assert marked["train.out_dir"] == marked["routing.pool_size"] == "differs"
    assert marked["model.d_model"] == "same"
    only = figures.config_table([a, b], only_differences=True).children[1].children
    assert {row.children[0].children for row in only} == {k for k, v in marked.items() if v == "differs"}


def test_prompt_views_draw_their_arrays() -> None:
    attention = pv.AttentionView(["a", "b"], np.array([[[[1.0, 0.0], [0.25, 0.75]]]]))
    chart = figures.attention_figure(attention, "run")
    assert len(chart.data) == 1 and list(chart.data[0].z[1]) == [0.25, 0.75]
    routes = pv.RouteView(["a", "b", "c"], np.array([[0, 1, 2], [2, 2, 0]]), ["layer 0", "layer 1", "skip"])
    chart = figures.route_figure(routes, "run")
    assert [list(row) for row in chart.data[0].z] == [[0, 1, 2], [2, 2, 0]]
    assert list(chart.data[0].colorbar.ticktext) == ["layer 0", "layer 1", "skip"]
