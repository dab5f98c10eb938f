"""`transformer routes` on a tiny trained routed run with two sources: the path table accounts
for every window of every label, the JSON agrees with the table, and errors are one line."""

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.tiny_runs import STILL_ROUTES, prime_routers, tiny_run_config, two_topic_sources
from transformer.training.trainer import train

WINDOWS = 20


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A tiny routed and a tiny plain run, and two sources: two different sets of help topics."""
    root = tmp_path_factory.mktemp("routes_runs")
    sources = two_topic_sources(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        prime_routers(patch)
        folders = dict(sources)
        for kind in ("routed", "plain"):
            config = tiny_run_config(root / kind, kind == "routed", *STILL_ROUTES)
            train(config)
            folders[kind] = Path(config.train.out_dir)
        yield folders


def routes_args(setup: dict[str, Path], *extra: str) -> list[str]:
    return [
        "routes",
        "--run",
        str(setup["routed"]),
        "--data",
        str(setup["syntax"]),
        "--data",
        str(setup["types"]),
        "--windows",
        str(WINDOWS),
        *extra,
    ]


def test_the_path_table_accounts_for_every_window_of_every_label(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(routes_args(setup, "--labels", "syntax", "types"), capsys)
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("path"))
    assert lines[header].split() == ["path", "syntax", "types", "total"]
    rows = []
    for line in lines[header + 2 :]:
        if not line.strip():
            break
        path, *counts = line.split()
        assert len(path.split("-")) == 2 and all(0 <= int(layer) < 3 for layer in path.split("-"))  # 2 steps, 3 layers
        rows.append([int(count) for count in counts])
    table = np.array(rows)
    assert table[:, 0].sum() == WINDOWS and table[:, 1].sum() == WINDOWS  # every window once per label
    assert (table[:, 0] + table[:, 1] == table[:, 2]).all()
    assert f"windows per label: syntax {WINDOWS}, types {WINDOWS}" in out
    assert "I(path; label):" in out and "shuffled labels" in out and "I(layer at step 1; label)" in out


def test_json_output_parses_and_its_mutual_information_is_that_of_its_table(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(routes_args(setup, "--json", "--permutations", "50", "--seed", "3"), capsys)
    assert code == 0, err
    record = json.loads(out)
    labels = [str(setup["syntax"]), str(setup["types"])]  # labels default to the sources as given
    assert record["labels"] == labels
    table = np.array([[row["counts"][label] for label in labels] for row in record["paths"]])
    assert (table.sum(0) == WINDOWS).all() and record["distinct_paths"] == len(table) <= record["possible_paths"] == 9
    # I = sum p(x, y) log2 p(x, y) / (p(x) p(y)), written out here from the table
    p = table / table.sum()
    outer = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    by_hand = float(np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / outer), 0.0)))
    info = record["mutual_information"]
    assert info["observed"] == pytest.approx(by_hand, abs=1e-9)
    assert info["observed"] <= min(record["path_entropy_bits"], record["label_entropy_bits"]) + 1e-12
    assert record["label_entropy_bits"] == pytest.approx(1.0)  # two labels, 20 windows each
    assert info["permutations"] == 50 and info["shuffled_mean"] > 0  # the bias of 40 samples
    assert info["excess"] == pytest.approx(info["observed"] - info["shuffled_mean"])
    assert len(record["per_step_mutual_information"]) == 2 and len(record["usage"]) == 2
    assert all(sum(step) == pytest.approx(1.0) for step in record["usage"])
    assert all(0 <= h <= math.log2(3) + 1e-12 for h in record["usage_entropy_bits"])


def test_a_plain_run_or_a_bad_request_is_a_one_line_error(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = {
        "routes needs a routed run": ["--run", str(setup["plain"]), "--data", str(setup["syntax"])],
        "give one label per source": [
            "--run",
            str(setup["routed"]),
            "--data",
            str(setup["syntax"]),
            "--labels",
            "a",
            "b",
        ],
        "does not exist": ["--run", str(tmp_path / "nowhere"), "--data", str(setup["syntax"])],
        "no such file": ["--run", str(setup["routed"]), "--data", str(tmp_path / "missing.txt")],
        "draw token routes": ["--run", str(setup["routed"]), "--data", str(setup["syntax"]), "--figure", "f.png"],
    }
    for message, args in cases.items():
        code, out, err = run_cli(["routes", *args], capsys)
        assert code == 2 and out == "", (args, out)
        assert err.count("\n") == 1 and err.startswith("transformer routes: error: ") and message in err, err
