"""The numbers `transformer dashboard` shows, without a browser: runs found, curves, the summary
and config tables, growing logs re-read, usage, the loss at a compute budget."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from transformer.analysis import dashboard_data as dd
from transformer.analysis.plotting.runs import load_history
from transformer.training.run_log import read_log


@pytest.fixture
def runs(dashboard_runs: dict[str, Path]) -> dict[str, Path]:
    return dashboard_runs


def test_a_parent_folder_gives_every_run_below_it_and_a_run_folder_gives_itself(runs: dict[str, Path]) -> None:
    parent = runs["plain"].parent
    assert dd.find_runs([parent]) == sorted(path.resolve() for path in runs.values())
    assert dd.find_runs([runs["plain"], parent]) == [runs["plain"].resolve()] + sorted(
        path.resolve() for path in runs.values() if path != runs["plain"]
    )


def test_a_folder_without_runs_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(dd.DashboardError, match="holds no run"):
        dd.find_runs([tmp_path])
    with pytest.raises(dd.DashboardError, match="not a folder"):
        dd.find_runs([tmp_path / "nowhere"])


def test_curves_are_the_logged_numbers_against_steps_tokens_and_flops(runs: dict[str, Path]) -> None:
    history = load_history(runs["plain"], "plain")
    train_records = [r for r in read_log(runs["plain"] / "metrics.jsonl") if r["kind"] == "train"]
    by_step = dd.series(history, "train", "loss")
    assert by_step.x == [1, 2, 3, 4, 5, 6]
    assert by_step.y == [r["loss"] for r in train_records]
    by_tokens = dd.series(history, "train", "loss", "tokens")
    assert by_tokens.x == [r["tokens"] for r in train_records]
    assert by_tokens.x[0] == 4 * 16  # batch_size x n_ctx per step
    assert history.size is not None
    by_flops = dd.series(history, "eval", "val_loss", "flops")
    assert by_flops.x == [3 * 64 * history.size.flops_per_token, 6 * 64 * history.size.flops_per_token]
    with pytest.raises(dd.DashboardError, match="x axis"):
        dd.series(history, "train", "loss", "hours")


def test_the_summary_gives_size_best_loss_and_compute(runs: dict[str, Path]) -> None:
    history = load_history(runs["routed"], "routed")
    evals = [r for r in read_log(runs["routed"] / "metrics.jsonl") if r["kind"] == "eval"]
    row = dd.summary_row(history)
    assert history.size is not None
    best = min(evals, key=lambda r: r["val_loss"])
    assert (row.best_val_loss, row.best_val_step) == (best["val_loss"], best["step"])
    assert row.final_val_loss == evals[-1]["val_loss"]
    assert (row.kind, row.steps, row.tokens) == ("routed", 6, 6 * 64)
    assert row.total_flops == 6 * 64 * history.size.flops_per_token
    assert row.parameters is not None and row.active_parameters is not None
    assert row.parameters > row.active_parameters  # a pool of 3 layers, of which 2 run per token
    assert dd.summary_row(load_history(runs["plain"], "plain")).kind == "plain"


def test_the_config_table_marks_exactly_the_keys_that_differ(runs: dict[str, Path]) -> None:
    histories = [load_history(runs[name], name) for name in ("routed", "plain")]
    table = dd.compare_configs(histories)
    differing = {key for key, differs in zip(table.keys, table.differs, strict=True) if differs}
    assert "train.out_dir" in differing and "model.d_model" not in differing
    assert differing >= {"routing.pool_size"}  # the plain run has no routing section at all
    row = table.values[table.keys.index("routing.pool_size")]
    assert row == ["3", dd.MISSING]
    assert table.values[table.keys.index("model.d_model")] == ["16", "16"]


def test_a_growing_log_is_re_read_and_an_unchanged_one_is_not(runs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "growing"
    copy.mkdir()
    log = copy / "metrics.jsonl"
    log.write_text((runs["plain"] / "metrics.jsonl").read_text())
    run_set = dd.RunSet([copy])
    assert not run_set.refresh() and run_set.version == 0
    with log.open("a") as file:
        file.write(json.dumps({"kind": "eval", "step": 7, "tokens": 448, "val_loss": 0.125}) + "\n")
    assert run_set.refresh() and run_set.version == 1
    assert dd.summary_row(run_set.history("growing")).best_val_loss == 0.125
    assert not run_set.refresh()


def test_usage_history_is_the_logged_usage(runs: dict[str, Path]) -> None:
    history = load_history(runs["routed"], "routed")
    usage = dd.usage_history(history)
    assert usage.steps == [1, 2, 3, 4, 5, 6]
    assert usage.usage.shape == (6, 2, 3)  # logged steps, routing steps, pool
    np.testing.assert_allclose(usage.usage.sum(axis=-1), 1.0, atol=1e-6)
    assert usage.usage[-1].tolist() == history.train[-1]["usage"]
    names = [s.name for s in dd.entropy_series(history)]
    assert "routed train usage_entropy" in names and "routed eval decision_entropy" in names
    with pytest.raises(dd.DashboardError, match="plain"):
        dd.usage_history(load_history(runs["plain"], "plain"))


def test_perplexity_is_e_to_the_loss() -> None:
    assert dd.perplexity(None) is None
    assert dd.perplexity(1.0) == pytest.approx(math.e)


def test_the_loss_at_a_budget_is_read_off_the_eval_curve_in_log_flops(runs: dict[str, Path]) -> None:
    history = load_history(runs["plain"], "plain")
    curve = dd.series(history, "eval", "val_loss", "flops")  # evaluations at steps 3 and 6
    assert dd.loss_at_compute(history, curve.x[0]) == pytest.approx(curve.y[0])
    assert dd.loss_at_compute(history, curve.x[1]) == pytest.approx(curve.y[1])
    middle = math.sqrt(curve.x[0] * curve.x[1])  # halfway on the log axis
    assert dd.loss_at_compute(history, middle) == pytest.approx((curve.y[0] + curve.y[1]) / 2)
    assert dd.loss_at_compute(history, curve.x[1] * 1.01) is None  # beyond what the run has done
    assert dd.loss_at_compute(history, 10 ** math.log10(curve.x[1])) == pytest.approx(curve.y[1])  # the slider's way
    routed = load_history(runs["routed"], "routed")
    low, high = dd.common_compute([history, routed]) or (0.0, 0.0)
    assert low == max(curve.x[0], dd.series(routed, "eval", "val_loss", "flops").x[0]) and high > low


def test_a_run_that_has_not_logged_yet_is_shown_empty_until_it_does(tmp_path: Path) -> None:
    log = tmp_path / "starting" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text("")  # the trainer opens its log before the first step ends
    run_set = dd.RunSet([log.parent])
    row = dd.summary_row(run_set.history("starting"))
    assert (row.steps, row.tokens, row.best_val_loss, row.total_flops) == (0, None, None, None)
    log.write_text(json.dumps({"kind": "train", "step": 1, "tokens": 64, "loss": 5.0}) + "\n")
    assert run_set.refresh() and dd.summary_row(run_set.history("starting")).steps == 1
