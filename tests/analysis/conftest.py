"""Tiny trained runs shared by the dashboard's data tests (one training per session).

The token cache is pointed at the runs' folder only while they train, not while they are
used, so no later test of the session sees the variable set."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.tiny_runs import tiny_run_config
from transformer.training.trainer import train


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A routed and a plain run of 6 steps, under one parent folder."""
    root = tmp_path_factory.mktemp("dashboard_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        made = {}
        for name, routed in (("routed", True), ("plain", False)):
            config = tiny_run_config(root / "work" / name, routed, f"train.out_dir={root / 'runs' / name}")
            made[name] = Path(train(config).run_dir)
    yield made


@pytest.fixture(scope="session")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("dashboard_token_run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        run_dir = Path(train(tiny_run_config(root, True, "routing.granularity=token")).run_dir)
    yield run_dir
