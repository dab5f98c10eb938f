"""`transformer plot`: the figures of a tiny routed run and a tiny plain run, through the real
entry point, and the numbers behind them: the FLOPs axis counts what the trainer counts, the
usage heatmap is the logged usage, and the path histogram's routes are the ones evaluation took."""

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_runs import STILL_ROUTES, prime_routers, tiny_run_config
from transformer.analysis.plotting import figures
from transformer.analysis.plotting.runs import folder_names, last_per_step, load_history, model_size, route_counts
from transformer.commands.main import main
from transformer.inference.loading import load_trained
from transformer.training import checkpoint as ckpt
from transformer.training.run_log import flops_per_token, read_log
from transformer.training.trainer import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROUTED_FIGURES = {"loss.png", "lr.png", "throughput.png", "usage_heatmap.png", "entropy.png", "paths.png"}
PLAIN_FIGURES = {"loss.png", "lr.png", "throughput.png"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A routed and a plain run of 6 steps; eval_batches=8 gives 32 validation windows, enough
    for the routed run's argmax routes to use two layers at each step (a non-trivial usage)."""
    root = tmp_path_factory.mktemp("plot_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        prime_routers(patch)
        made = {}
        for name, routed in (("routed", True), ("plain", False)):
            config = tiny_run_config(root / name, routed, "train.eval_batches=8", *STILL_ROUTES)
            made[name] = Path(train(config).run_dir)
        yield made


def assert_pngs(folder: Path, names: set[str]) -> None:
    assert {path.name for path in folder.glob("*.png")} == names
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 5_000, f"{name} is {len(data)} bytes: an empty canvas?"


def test_one_routed_run_writes_every_figure_into_its_plots_folder(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plot", str(runs["routed"])]) == 0
    assert_pngs(runs["routed"] / "plots", ROUTED_FIGURES)
    printed = capsys.readouterr().out.split()
    assert sorted(Path(line).name for line in printed) == sorted(ROUTED_FIGURES)


def test_a_token_routed_run_without_weights_says_its_flops_assume_every_layer(token_run: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(token_run, tmp_path / "copy"))
    (ckpt.resolve(copy, "latest") / ckpt.WEIGHTS).unlink()
    history = load_history(copy, "token")
    assert history.size is not None and history.config is not None
    assert history.size == model_size(history.config)  # the most the capacity allows, not the run's work
    assert any("no weights file" in note for note in history.notes), history.notes


def test_a_token_routed_run_gets_every_figure_but_the_per_window_paths(
    token_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token has its own route, a window none: paths.png is the sequence-routed figure, and
    asking a token-routed run for it used to stop the command (the default run is token-routed)."""
    out = tmp_path / "token-plots"
    assert main(["plot", str(token_run), "--out", str(out)]) == 0
    assert_pngs(out, ROUTED_FIGURES - {"paths.png"})
    assert "error" not in capsys.readouterr().err


def test_two_runs_get_a_comparison_and_only_routed_runs_get_routing_figures(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "figures"
    assert (
        main(["plot", str(runs["routed"]), str(runs["plain"]), "--out", str(out), "--labels", "routed N=3", "plain"])
        == 0
    )
    assert_pngs(out, {"compare.png"})
    assert_pngs(out / "routed_N_3", ROUTED_FIGURES)
    assert_pngs(out / "plain", PLAIN_FIGURES)


def test_labels_with_dots_slashes_or_repeats_stay_inside_out_in_distinct_folders(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    """Before: `--labels .. plain` wrote the plain run's figures into OUT/.. (outside OUT), and
    two equal labels drew both runs into one folder, the second over the first."""
    out = tmp_path / "nest" / "figures"
    run_pair = [str(runs["plain"]), str(runs["plain"])]
    assert main(["plot", *run_pair, "--out", str(out), "--labels", "..", "../.."]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["compare.png", "run", "run-2"]
    assert [path.name for path in (tmp_path / "nest").iterdir()] == ["figures"]  # nothing beside OUT
    assert main(["plot", *run_pair, "--out", str(tmp_path / "same"), "--labels", "a/b", "a_b"]) == 0
    assert_pngs(tmp_path / "same" / "a_b", PLAIN_FIGURES)
    assert_pngs(tmp_path / "same" / "a_b-2", PLAIN_FIGURES)


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        (["..", ".", "/", ""], ["run", "run-2", "run-3", "run-4"]),
        (["../../etc", "a/../b", "~/x", "-rf"], ["etc", "a_.._b", "x", "rf"]),
        (["Run", "run", "RUN-2"], ["Run", "run-2", "RUN-2-2"]),  # case-insensitive file systems
        (["compare.png", "x" * 300], ["compare.png-2", "x" * 80]),  # never the comparison figure's name
    ],
)
def test_folder_names_are_single_safe_distinct_components(labels: list[str], names: list[str]) -> None:
    made = folder_names(labels)
    assert made == names
    for name in made:
        assert Path(name).name == name and name not in (".", "..") and not name.startswith(".")


def test_compute_axis_counts_the_flops_the_trainer_counts(runs: dict[str, Path]) -> None:
    """x = tokens x flops_per_token of the real model, counted here from the loaded weights
    (the plot counts them on the meta device, without loading anything)."""
    histories = [load_history(runs[name], name) for name in ("routed", "plain")]
    for history in histories:
        model = load_trained(history.run_dir).model
        cfg = model.cfg
        expected = flops_per_token(model.active_parameters(), cfg.n_layers, cfg.d_model, cfg.n_ctx)
        assert history.size is not None
        assert history.size.flops_per_token == expected
        assert history.size.parameters == sum(p.numel() for p in model.parameters())
    routed = histories[0].size
    assert routed is not None and routed.active < routed.parameters, "a routed token uses K of N pool layers"
    ax = figures.compare_figure(histories).axes[0]
    assert ax.get_xscale() == "log"
    for line, history in zip(ax.get_lines(), histories, strict=True):
        assert history.size is not None
        tokens = [record["tokens"] for record in history.eval]
        assert list(line.get_xdata()) == [t * history.size.flops_per_token for t in tokens]  # type: ignore[arg-type]
        assert list(line.get_ydata()) == [record["val_loss"] for record in history.eval]  # type: ignore[arg-type]


def test_a_token_routed_run_counts_the_flops_its_tokens_did(token_run: Path) -> None:
    """A token-routed model's active weights depend on the layers its tokens took: the plot
    reads the work the checkpoint recorded and counts what the trainer counts, where without
    it a capacity that dropped tokens would be counted as all K layers."""
    history = load_history(token_run, "token")
    model = load_trained(token_run).model
    cfg = model.cfg
    assert history.size is not None and history.config is not None, history.notes
    assert history.size.flops_per_token == flops_per_token(
        model.active_parameters(), cfg.n_layers, cfg.d_model, cfg.n_ctx
    )
    assert history.size.active < model_size(history.config).active, "the capacity dropped some layer applications"


def test_usage_heatmap_shows_the_logged_usage(runs: dict[str, Path]) -> None:
    history = load_history(runs["routed"], "routed")
    logged = torch.tensor([record["usage"] for record in history.train])  # [records, steps, pool]
    figure = figures.usage_heatmap_figure(history)
    for step, ax in enumerate(figure.axes[: logged.shape[1]]):
        shown = torch.tensor(ax.collections[0].get_array().reshape(3, -1))  # type: ignore[union-attr]
        assert torch.allclose(shown, logged[:, step, :].T.double())
        assert torch.allclose(shown.sum(0), torch.ones(len(history.train), dtype=torch.float64)), (
            "each column is one batch's sequences: fractions summing to 1"
        )


def test_paths_are_the_routes_evaluation_took(runs: dict[str, Path]) -> None:
    """The histogram's first windows are the trainer's validation windows, routed from their
    prefix only: their layer usage equals the eval record the trainer logged at that step."""
    counts = route_counts(runs["routed"])
    logged = last_per_step(read_log(runs["routed"] / "metrics.jsonl"), "eval")[-1]
    assert logged["step"] == counts.checkpoint_step == 6
    assert counts.eval_windows == 32 and counts.windows >= 256
    assert max(max(row) for row in logged["usage"]) < 1.0, "a usage with one layer only would prove little"
    assert counts.usage(counts.eval_windows) == [pytest.approx(row, abs=1e-9) for row in logged["usage"]]
    assert 0.0 < counts.entropy() <= 2 * torch.log(torch.tensor(3.0)).item()


def test_a_resumed_runs_repeated_steps_keep_the_last_record() -> None:
    records = [
        {"kind": "train", "step": 1, "loss": 5.0},
        {"kind": "train", "step": 2, "loss": 4.0},  # written, then the run crashed
        {"kind": "eval", "step": 2, "val_loss": 4.5},
        {"kind": "train", "step": 2, "loss": 3.9},  # the resumed run's step 2
        {"kind": "train", "step": 3, "loss": 3.5},
    ]
    assert [r["loss"] for r in last_per_step(records, "train")] == [5.0, 3.9, 3.5]
    assert [r["val_loss"] for r in last_per_step(records, "eval")] == [4.5]


def test_a_line_torn_by_a_crash_is_skipped_with_a_note(tmp_path: Path) -> None:
    lines = [
        json.dumps({"kind": "train", "step": 1, "loss": 5.0}),
        '{"kind": "tr',  # killed mid-write
        json.dumps({"kind": "train", "step": 2, "loss": 4.0}),
        "[1, 2]",
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    history = load_history(tmp_path, "torn")
    assert [r["step"] for r in history.train] == [1, 2]
    assert any("skipped line(s) [2, 4]" in note for note in history.notes), history.notes
    assert history.size is None and any("no checkpoint" in note for note in history.notes), history.notes


def test_bad_runs_are_one_line_errors(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(tmp_path)], "metrics.jsonl does not exist"),
        ([str(runs["routed"]), str(runs["plain"]), "--labels", "one"], "--labels gave 1 names for 2 runs"),
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("\n")
    cases.append(([str(tmp_path / "empty")], "no train or eval records"))
    for argv, message in cases:
        assert main(["plot", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("transformer plot: error: ") and message in err, err
        assert err.count("\n") == 1, err


def test_missing_matplotlib_is_a_one_line_error(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import transformer.analysis.plotting

    monkeypatch.delattr(transformer.analysis.plotting, "figures", raising=False)
    monkeypatch.delitem(sys.modules, "transformer.analysis.plotting.figures", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    assert main(["plot", str(runs["plain"])]) == 2
    assert capsys.readouterr().err == (
        "transformer plot: error: transformer plot needs matplotlib: pip install 'transformer[viz]'\n"
    )
