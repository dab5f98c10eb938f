"""`train.tensorboard: true`: the same numbers as metrics.jsonl, under the same names, in an
event file that TensorBoard's own reader reads back; a missing TensorBoard is one line."""

import sys
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.tiny_runs import tiny_run_config
from transformer.training.run_log import RunLog, read_log
from transformer.training.tensorboard_log import MISSING_TENSORBOARD, TensorBoardError, scalars
from transformer.training.trainer import train


def test_scalars_are_the_record_numbers_under_kind_slash_name() -> None:
    record = {"kind": "train", "step": 4, "loss": 2.5, "mfu": None, "usage": [[0.25, 0.75], [1.0, 0.0]], "tag": "x"}
    assert scalars(record) == {
        "train/loss": 2.5,
        "train/usage/0/0": 0.25,
        "train/usage/0/1": 0.75,
        "train/usage/1/0": 1.0,
        "train/usage/1/1": 0.0,
    }


def test_the_event_file_holds_every_logged_number_at_its_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    run_dir = train(tiny_run_config(tmp_path, True, "train.tensorboard=true", "train.max_steps=3")).run_dir
    events = accumulator.EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected: dict[str, dict[int, float]] = {}
    for record in read_log(Path(run_dir) / "metrics.jsonl"):
        for tag, value in scalars(record).items():
            expected.setdefault(tag, {})[record["step"]] = value
    assert {"train/loss", "train/lr", "eval/val_loss", "train/usage/1/2"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, by_step in expected.items():
        written = {event.step: event.value for event in events.Scalars(tag)}
        assert written == pytest.approx(by_step, rel=1e-6), tag  # TensorBoard stores float32


def test_no_event_file_unless_asked(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "metrics.jsonl", enabled=True)
    log.write({"kind": "train", "step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "tensorboard").exists()


def test_asking_without_tensorboard_installed_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(TensorBoardError, match=r"pip install 'transformer\[tensorboard\]'"):
        RunLog(tmp_path / "metrics.jsonl", enabled=False, tensorboard=True)  # every rank checks
    monkeypatch.setenv("TRANSFORMER_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(
        [
            "train",
            "--config",
            "transformer/configs/tiny-plain.yaml",
            "--set",
            "train.tensorboard=true",
            "--set",
            f"train.out_dir={tmp_path / 'run'}",
            "--set",
            "train.max_steps=1",
        ],
        capsys,
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == f"transformer train: error: {MISSING_TENSORBOARD}"
