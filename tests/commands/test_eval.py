"""`transformer eval`: its loss is the loss computed independently on the same windows, its
perplexity is exp of that loss, routed runs report both route modes, and bad input is one line."""

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import run_cli
from tests.helpers.tiny_runs import tiny_run_config
from transformer.data.corpus import load_documents
from transformer.data.tokens import prepare_corpus
from transformer.inference.loading import load_trained
from transformer.routing.decoder import RoutedDecoder
from transformer.routing.router import temperature_after
from transformer.training.distributed import EVAL_STREAM, VAL_WINDOWS_STREAM, stream_seed
from transformer.training.evaluation import evaluate
from transformer.training.lm_loss import lm_loss
from transformer.training.objective import compute_objective
from transformer.training.run_log import read_log
from transformer.training.trainer import train

N_CTX, PREFIX = 16, 4  # tiny_run_config's n_ctx and route_prefix_len


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A tiny routed and a tiny plain run (6 steps each), trained once for the whole module."""
    root = tmp_path_factory.mktemp("eval_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        folders = {}
        for kind in ("routed", "plain"):
            config = tiny_run_config(root / kind, kind == "routed")
            train(config)
            folders[kind] = Path(config.train.out_dir)
        yield folders


def validation_windows(run_dir: Path) -> torch.Tensor:
    """The run's validation split cut into windows, written here without eval's code."""
    run = load_trained(run_dir)
    settings = run.config.train
    data = prepare_corpus(settings.data, run.tokenizer, settings.val_fraction)
    val = torch.from_numpy(data.val.astype("int64"))
    count = (len(val) - 1) // N_CTX
    return torch.stack([val[i * N_CTX : i * N_CTX + N_CTX + 1] for i in range(count)])


def printed(pattern: str, text: str) -> tuple[float, float]:
    match = re.search(pattern + r": (\d+\.\d{4}) nats/token, perplexity (\d+\.\d{2})", text)
    assert match, text
    return float(match.group(1)), float(match.group(2))


def assert_perplexity_is_exp_of_loss(loss: float, ppl: float) -> None:
    """Loss printed to 4 decimals (±5e-5, so exp(loss) to ±5e-5 relative), ppl to 2 (±0.005)."""
    assert abs(math.exp(loss) - ppl) <= ppl * 5.1e-5 + 0.0051, (loss, ppl, math.exp(loss))


def test_routed_loss_and_perplexity_match_an_independent_computation(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["eval", "--run", str(runs["routed"])], capsys)
    assert code == 0, err
    argmax_loss, argmax_ppl = printed(r"loss \(argmax routes\)", out)
    sampled_loss, sampled_ppl = printed(r"loss \(sampled routes\)", out)
    assert_perplexity_is_exp_of_loss(argmax_loss, argmax_ppl)
    assert_perplexity_is_exp_of_loss(sampled_loss, sampled_ppl)
    assert f"from its routing prefix P = {PREFIX} on" in out and "--first-target" in out

    windows = validation_windows(runs["routed"])
    model = load_trained(runs["routed"]).model
    with torch.no_grad():
        independent = float(compute_objective(model, windows).lm_loss)  # argmax routes, targets >= P
    code, out, _ = run_cli(["eval", "--run", str(runs["routed"]), "--json"], capsys)
    record = json.loads(out)
    assert (record["windows"], record["windows_left_out"]) == (len(windows), 0)  # 45 windows: 3 batches of 15
    assert record["loss"] == pytest.approx(independent, abs=1e-5)
    assert argmax_loss == pytest.approx(independent, abs=5e-5)
    assert record["perplexity"] == pytest.approx(math.exp(independent), rel=1e-5)
    assert record["sampled_route_perplexity"] == pytest.approx(math.exp(record["sampled_route_loss"]))
    assert record["scored_targets_per_window"] == N_CTX - PREFIX + 1  # targets at positions 4..16
    assert len(record["usage"]) == 2 and all(sum(step) == pytest.approx(1.0) for step in record["usage"])


def test_plain_run_scores_every_target_unless_told_to_start_where_a_routed_run_does(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    windows = validation_windows(runs["plain"])
    model = load_trained(runs["plain"]).model
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    every, from_prefix = (float(lm_loss(logits, windows[:, 1:], first)) for first in (0, PREFIX))

    code, out, err = run_cli(["eval", "--run", str(runs["plain"]), "--json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["decoder"] == "plain" and "sampled_route_loss" not in record
    assert record["scored_targets_per_window"] == N_CTX and record["loss"] == pytest.approx(every, abs=1e-5)

    args = ["eval", "--run", str(runs["plain"]), "--first-target", str(PREFIX)]
    code, out, _ = run_cli(args, capsys)
    loss, ppl = printed("loss", out)
    assert_perplexity_is_exp_of_loss(loss, ppl)
    assert loss == pytest.approx(from_prefix, abs=5e-5)
    assert abs(every - from_prefix) > 1e-3  # the two rules give different numbers here
    assert f"targets at positions {PREFIX}..{N_CTX}" in out and f"--first-target {PREFIX}" in out


def test_data_option_evaluates_all_windows_of_a_source(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = "\n\n".join(load_documents("builtin")[33:35])
    (tmp_path / "other.txt").write_text(text, encoding="utf-8")
    tokenizer = load_trained(runs["routed"]).tokenizer
    n_tokens = len(tokenizer.encode(text)) + 1  # the document and its end-of-text
    code, out, err = run_cli(
        ["eval", "--run", str(runs["routed"]), "--data", str(tmp_path / "other.txt"), "--json", "--route-samples", "0"],
        capsys,
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["tokens"] == n_tokens
    assert record["windows"] + record["windows_left_out"] == (n_tokens - 1) // N_CTX
    assert record["windows_left_out"] < record["batches"]  # batch size chosen to leave few out
    assert record["sampled_route_loss"] is None
    code, out, _ = run_cli(
        [
            "eval",
            "--run",
            str(runs["routed"]),
            "--data",
            str(tmp_path / "other.txt"),
            "--json",
            "--batches",
            "2",
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert json.loads(out)["windows"] == 8


def test_the_training_runs_final_evaluation_is_reproduced(runs: dict[str, Path]) -> None:
    """Same windows and seed as the trainer's last evaluation: the same numbers as its log,
    provided the router samples at the temperature training had reached."""
    run = load_trained(runs["routed"])
    settings = run.config.train
    data = prepare_corpus(settings.data, run.tokenizer, settings.val_fraction)
    generator = torch.Generator().manual_seed(stream_seed(settings.seed, 0, VAL_WINDOWS_STREAM))
    batches = [data.sample_windows("val", settings.batch_size, N_CTX, generator) for _ in range(settings.eval_batches)]
    logged = [r for r in read_log(runs["routed"] / "metrics.jsonl") if r["kind"] == "eval"][-1]
    assert isinstance(run.model, RoutedDecoder) and run.config.routing is not None
    last_update = [r for r in read_log(runs["routed"] / "metrics.jsonl") if r["kind"] == "train"][-1]
    temperature = temperature_after(run.config.routing, run.step, settings.max_steps)
    assert temperature == pytest.approx(last_update["temperature"]) and temperature < 1.0  # 0.60, not 2.0
    run.model.router.temperature = temperature
    reproduced = evaluate(run.model, batches, settings.eval_route_samples, stream_seed(settings.seed, 0, EVAL_STREAM))
    assert reproduced.val_loss == pytest.approx(logged["val_loss"], abs=1e-6)
    assert reproduced.sampled_route_loss == pytest.approx(logged["sampled_route_loss"], abs=1e-6)


def test_bad_run_directory_checkpoint_or_request_is_a_one_line_error(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(runs["routed"] / "checkpoints" / "best", broken)
    (broken / "state.pt").write_bytes(b"not a checkpoint")
    cases = {
        "does not exist": ["--run", str(tmp_path / "nowhere")],
        "no checkpoint in": ["--run", str(tmp_path)],
        "checkpoint .* does not exist": ["--run", str(runs["routed"]), "--checkpoint", str(tmp_path / "gone")],
        "state.pt does not match the sha256": ["--run", str(runs["routed"]), "--checkpoint", str(broken)],
        "before the routing prefix": ["--run", str(runs["routed"]), "--first-target", str(PREFIX - 1)],
        "no such file": ["--run", str(runs["plain"]), "--data", str(tmp_path / "missing.txt")],
    }
    for message, args in cases.items():
        code, out, err = run_cli(["eval", *args], capsys)
        assert code == 2 and out == "", (args, out)
        assert err.count("\n") == 1 and err.startswith("transformer eval: error: "), err
        assert re.search(message, err), err


def test_cuda_on_a_machine_without_it_is_a_one_line_error(
    runs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["eval", "--run", str(runs["plain"]), "--device", "cuda"], capsys)
    assert (code, out) == (2, "")
    assert err == (
        "transformer eval: error: --device=cuda: no CUDA device is available here; use --device=cpu "
        "(or --device=auto, which takes CUDA where there is one)\n"
    )


@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny token-routed run with a skip entry (6 steps)."""
    root = tmp_path_factory.mktemp("eval_token_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        config = tiny_run_config(root, True, "routing.granularity=token", "routing.skip=true")
        train(config)
        yield Path(config.train.out_dir)


def test_a_token_routed_run_reports_every_target_and_the_work_its_routes_did(
    token_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["eval", "--run", str(token_run), "--json", "--route-samples", "1"], capsys)
    assert code == 0, err
    record = json.loads(out)
    windows = validation_windows(token_run)[: record["windows"]]
    model = load_trained(token_run).model
    model.eval()
    with torch.no_grad():
        output = model(windows[:, :-1])
    info = output.routing
    n_layers = 3  # tiny_run_config's pool; entry 3 is skip
    assert record["granularity"] == "token" and record["scored_targets_per_window"] == N_CTX
    assert record["loss"] == pytest.approx(float(lm_loss(output.logits, windows[:, 1:], 0)), abs=1e-5)
    assert all(len(step) == n_layers + 1 and sum(step) == pytest.approx(1.0) for step in record["usage"])
    choices, processed = info.layer_choices, info.processed
    assert record["layers_per_token"] == pytest.approx(float(processed.sum(-1).float().mean()), abs=1e-6)
    assert record["skip_fraction"] == pytest.approx(float((choices == n_layers).float().mean()), abs=1e-6)
    wanted = choices < n_layers
    dropped = float((wanted & ~processed).sum() / wanted.sum())
    assert record["dropped_fraction"] == pytest.approx(dropped, abs=1e-6)
    assert record["sampled_route_loss"] is not None and record["route_temperature"] == model.route_temperature

    code, out, _ = run_cli(["eval", "--run", str(token_run), "--route-samples", "0"], capsys)
    assert "token-routed model's rule: every target" in out
    assert f"layers per token {record['layers_per_token']:.3f} of 2 steps" in out
    assert f"skip {record['skip_fraction']:.3f} of choices" in out
