"""`transformer routes` on a tiny token-routed run (with skip): the excerpt shows one entry per
token per step, usage by class and by position are distributions that account for every
token, the figure is a PNG of the size its layout asks for, and bad requests are one line."""

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli
from tests.helpers.tiny_runs import tiny_run_config, two_topic_sources
from transformer.analysis.plotting.token_route_figure import DPI, figure_inches
from transformer.training.trainer import train

WINDOWS, N_CTX, SHOW = 12, 16, 16  # N_CTX: tiny_run_config's


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("token_routes_run")
    sources = two_topic_sources(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        config = tiny_run_config(root, True, "routing.granularity=token", "routing.skip=true")
        train(config)
        yield {**sources, "run": Path(config.train.out_dir)}


def args_for(setup: dict[str, Path], *extra: str) -> list[str]:
    return [
        "routes",
        "--run",
        str(setup["run"]),
        "--data",
        str(setup["syntax"]),
        "--data",
        str(setup["types"]),
        "--labels",
        "syntax",
        "types",
        "--windows",
        str(WINDOWS),
        "--show",
        str(SHOW),
        "--permutations",
        "20",
        *extra,
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_json_usage_by_class_and_position_accounts_for_every_token(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    figure = tmp_path / "routes.png"
    code, out, err = run_cli(args_for(setup, "--json", "--figure", str(figure)), capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["granularity"] == "token" and (record["n_layers"], record["skip"], record["steps"]) == (3, True, 2)
    assert record["tokens"] == 2 * WINDOWS * N_CTX == sum(record["tokens_per_class"].values())
    for usage in (record["usage_by_class"], record["usage_by_position"]):
        assert len(usage) == 2
        for step in usage:
            assert all(len(fractions) == 4 and sum(fractions) == pytest.approx(1.0) for fractions in step.values())
    assert record["positions"] == ["0-3", "4-7", "8-11", "12-15"]
    assert {"letters", "whitespace", "punctuation"} <= set(record["classes"])
    # the per-class usage, weighted by class sizes, is the overall usage
    n = record["tokens_per_class"]
    for k in range(2):
        weighted = [sum(record["usage_by_class"][k][c][e] * n[c] for c in n) / record["tokens"] for e in range(4)]
        assert weighted == pytest.approx(record["usage"][k])
    assert len(record["class_mutual_information"]) == 2 and len(record["label_mutual_information"]) == 2
    excerpt = record["excerpt"]
    assert len(excerpt["shown"]) == SHOW and [len(row) for row in excerpt["choices"]] == [SHOW, SHOW]
    assert record["figure"] == str(figure)
    width, height = figure_inches(SHOW, 2)
    assert png_size(figure) == (round(width * DPI), round(height * DPI)) == (150 + 30 * SHOW, 180 + 48 * 2)


def test_the_text_shows_each_tokens_entry_under_the_text_and_out_writes_the_figure(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(args_for(setup, "--out", str(tmp_path / "plots")), capsys)
    assert code == 0, err
    lines = out.splitlines()
    text = next(line for line in lines if line.startswith("text    "))
    rows = [line for line in lines if line.startswith(("step 0  ", "step 1  "))][:2]
    assert len(text) - 8 == SHOW and all(len(row) - 8 == SHOW for row in rows)
    assert all(set(row[8:]) <= set("012-x") for row in rows)
    assert "usage by token class" in out and "usage by position" in out and "skip rate by position" in out
    assert "I(entry at step 1; token class)" in out and "I(entry at step 0; label)" in out
    assert (tmp_path / "plots" / "token_routes.png").exists() and f"figure: {tmp_path / 'plots'}" in out


def test_a_bad_request_is_a_one_line_error(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for extra, message in ((("--show", "0"), "must be positive"), (("--figure", "/proc/no/f.png"), "cannot write")):
        code, out, err = run_cli(args_for(setup, *extra), capsys)
        assert code == 2 and out == "", out
        assert err.count("\n") == 1 and err.startswith("transformer routes: error: ") and message in err, err
