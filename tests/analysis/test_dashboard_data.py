"""The numbers `transformer dashboard` shows, without a browser: runs found, curves, the summary
and config tables, growing logs re-read, attention patterns, routes and samples of a prompt."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny_runs import tiny_run_config
from transformer.analysis import dashboard_data as dd
from transformer.analysis.plotting.runs import load_history
from transformer.analysis.token_routes import token_choices
from transformer.inference.generation import GenerationError, generate
from transformer.inference.loading import load_trained
from transformer.model.decoder import Decoder
from transformer.routing.decoder import as_routed
from transformer.routing.token_decoder import TokenRoutedDecoder
from transformer.training.run_log import read_log
from transformer.training.trainer import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A routed and a plain run of 6 steps, under one parent folder."""
    root = tmp_path_factory.mktemp("dashboard_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        made = {}
        for name, routed in (("routed", True), ("plain", False)):
            config = tiny_run_config(root / "work" / name, routed, f"train.out_dir={root / 'runs' / name}")
            made[name] = Path(train(config).run_dir)
        yield made


@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dashboard_token_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        yield Path(train(tiny_run_config(root, True, "routing.granularity=token")).run_dir)


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


def test_attention_patterns_are_causal_distributions_equal_to_the_readable_pattern(runs: dict[str, Path]) -> None:
    run = load_trained(runs["plain"])
    view = dd.attention_view(run, "def main():")
    layers, heads, queries, keys = view.patterns.shape
    assert (layers, heads, queries, keys) == (2, 2, 11, 11)
    assert view.tokens[:3] == ["d", "e", "f"]
    np.testing.assert_allclose(view.patterns.sum(axis=-1), 1.0, atol=1e-6)
    assert np.triu(view.patterns, k=1).max() == 0.0  # no query sees a later key
    # the first layer's pattern, recomputed by hand from its weights
    model = run.model
    assert isinstance(model, Decoder)
    ids = torch.tensor([run.tokenizer.encode("def main():")])
    attn = dd.attentions(model)[0]
    first_norm = model.layers[0].ln1
    assert callable(first_norm)
    with torch.no_grad():
        x = first_norm(model.embed_tokens(ids))
        q, k = attn._project(x, attn.W_Q, attn.b_Q), attn._project(x, attn.W_K, attn.b_K)
        if attn.rotary is not None:
            q, k = attn.rotary(q, 0), attn.rotary(k, 0)
        bias = attn.alibi(11, 11, 0) if attn.alibi is not None else None
        expected = attn.pattern(q, k, attn._allowed(11, None, x.device), bias)[0]
    np.testing.assert_allclose(view.patterns[0], expected.double().numpy(), atol=1e-6)
    assert "pattern" not in attn.__dict__ and attn.fast == (model.cfg.kernels == "fast")  # restored


def test_routes_of_a_prompt_follow_the_model(runs: dict[str, Path]) -> None:
    routed = load_trained(runs["routed"])
    view = dd.route_view(routed, "class A:")
    assert view.choices.shape == (2, 8) and view.entries == ["layer 0", "layer 1", "layer 2"]
    path = as_routed(routed.model)(torch.tensor([routed.tokenizer.encode("class A:")])).routing.layer_choices[0]
    assert (view.choices == path.numpy()[:, None]).all()
    with pytest.raises(dd.DashboardError):
        dd.route_view(load_trained(runs["plain"]), "class A:")
    with pytest.raises(dd.DashboardError, match="plain decoders"):
        dd.attention_view(routed, "class A:")


def test_a_sample_is_the_seeded_generation_and_a_short_prompt_is_refused(runs: dict[str, Path]) -> None:
    run = load_trained(runs["routed"])
    text = dd.sample_text(run, "import os", 12, 0.8, seed=3)
    ids = torch.tensor([run.tokenizer.encode("import os")])
    expected = generate(run.model, ids, 12, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert text == run.tokenizer.decode(expected.tokens[0].tolist())
    assert text.startswith("import os") and text == dd.sample_text(run, "import os", 12, 0.8, seed=3)
    with pytest.raises(GenerationError, match="routing prefix"):
        dd.sample_text(run, "ab", 5, 1.0, seed=0)


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


@pytest.mark.slow
def test_a_token_routed_run_is_named_so_and_each_token_shows_its_own_choices(token_run: Path) -> None:
    assert dd.summary_row(load_history(token_run, "token")).kind == "token-routed"
    run = load_trained(token_run)
    assert isinstance(run.model, TokenRoutedDecoder)
    view = dd.route_view(run, "class A:")
    choices, _ = token_choices(run.model, torch.tensor([run.tokenizer.encode("class A:")]))
    assert view.choices.shape == (2, 8) and (view.choices == choices[0].T.numpy()).all()
    assert view.entries == ["layer 0", "layer 1", "layer 2"]
