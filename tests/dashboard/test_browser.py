"""`transformer dashboard` in a real browser: two tiny runs, the command started on a free port,
the page loaded by a headless Chromium, and the numbers on it compared with the runs' logs.

Selenium drives Debian's own `chromium` through its `chromium-driver` (same source package,
so driver and browser always match; `.ci/run` installs both). Playwright would bring its
own browser build, downloaded at install time, which a machine without internet cannot do.
Skipped when Chromium, its driver, Selenium or Dash is missing. Set TRANSFORMER_SCREENSHOT
to a path to keep the screenshot (docs/results/dashboard.png is made this way).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.tiny_runs import tiny_run_config
from transformer.training.run_log import read_log
from transformer.training.trainer import train

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # ~50 s on 2 busy cores; .ci/run runs it

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).is_file()), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).is_file()), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A plain and a routed run of 6 steps in one parent folder, as `transformer dashboard runs/` expects."""
    root = tmp_path_factory.mktemp("dashboard_browser")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFORMER_CACHE", str(root / "cache"))
        for name, routed in (("plain", False), ("routed", True)):
            train(tiny_run_config(root / "work" / name, routed, f"train.out_dir={root / 'runs' / name}"))
    yield root / "runs"


@pytest.fixture(scope="module")
def page(runs: Path) -> Iterator[tuple[Any, str]]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("dash")
    webdriver = pytest.importorskip("selenium.webdriver")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [
        sys.executable,
        "-m",
        "transformer",
        "dashboard",
        str(runs),
        "--port",
        str(port),
        "--poll-seconds",
        "0.5",
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(url, server)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        options.add_argument("--window-size=1400,2600")
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
        try:
            driver.get(url)
            yield driver, url
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=10)


def wait_for_server(url: str, server: "subprocess.Popen[str]", seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            raise AssertionError(f"the dashboard exited with {server.returncode}: {output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"the dashboard did not answer at {url} within {seconds} s")


def wait_until(driver: Any, script: str, seconds: float = 60.0) -> Any:
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true within {seconds} s: {script}")


SUMMARY_ROWS = (
    "Array.from(document.querySelectorAll('#summary tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))"
)
TRACES = (
    "Array.from(document.querySelectorAll('#loss .js-plotly-plot'))"
    ".flatMap(p => (p.data || []).map(t => ({name: t.name, y: Array.from(t.y)})))"
)


def best_val(log: Path) -> float:
    return min(float(r["val_loss"]) for r in read_log(log) if r["kind"] == "eval")


def test_the_page_shows_both_runs_tables_and_plots_with_the_logged_numbers(
    page: tuple[Any, str], runs: Path, tmp_path: Path
) -> None:
    driver, _ = page
    rows = wait_until(driver, f"{SUMMARY_ROWS}.length == 2 && {SUMMARY_ROWS}")
    by_run = {row[0]: row for row in rows}
    assert set(by_run) == {"plain", "routed"}
    assert (by_run["plain"][1], by_run["routed"][1]) == ("plain", "routed")
    for name in ("plain", "routed"):
        assert by_run[name][6] == f"{best_val(runs / name / 'metrics.jsonl'):.4f}"  # best val loss column
        assert by_run[name][4] == "6"  # steps

    traces = {t["name"]: t["y"] for t in wait_until(driver, f"{TRACES}.length == 4 && {TRACES}")}
    assert set(traces) == {"plain train", "plain val", "routed train", "routed val"}
    logged = [r["val_loss"] for r in read_log(runs / "routed" / "metrics.jsonl") if r["kind"] == "eval"]
    assert traces["routed val"] == pytest.approx(logged)

    at_budget = driver.execute_script(
        "return Array.from(document.querySelectorAll('#equal-compute tbody tr')).map(r => r.cells[1].textContent);"
    )
    assert len(at_budget) == 2 and all(float(loss) > 0 for loss in at_budget)  # both runs read at one budget

    differs = driver.execute_script(
        "return Array.from(document.querySelectorAll('#config tr.differs td:first-child')).map(c => c.textContent);"
    )
    assert {"train.out_dir", "routing.pool_size"} <= set(differs) and "model.d_model" not in differs
    assert driver.execute_script("return document.querySelectorAll('#usage-routed .js-plotly-plot').length;") == 1
    assert driver.execute_script("return document.querySelectorAll('#usage-plain').length;") == 0
    for graph in ("lr", "throughput", "entropy-routed"):
        assert driver.execute_script(f"return document.querySelector('#{graph} .main-svg') !== null;"), graph

    keep = os.environ.get("TRANSFORMER_SCREENSHOT")
    shot = Path(keep) if keep else tmp_path / "dashboard.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_a_growing_log_reaches_the_page_and_the_prompt_panel_samples_and_draws(
    page: tuple[Any, str], runs: Path
) -> None:
    driver, _ = page
    wait_until(driver, f"{SUMMARY_ROWS}.length == 2")
    with (runs / "plain" / "metrics.jsonl").open("a") as log:  # as if the run went on and evaluated again
        log.write(json.dumps({"kind": "eval", "step": 7, "tokens": 448, "val_loss": 0.125}) + "\n")
    wait_until(driver, f"{SUMMARY_ROWS}.some(r => r[0] == 'plain' && r[6] == '0.1250' && r[4] == '7')")

    keys = pytest.importorskip("selenium.webdriver.common.keys").Keys
    for field, value in (("prompt", "def main():"), ("new-tokens", "20")):
        element = driver.find_element("id", field)
        element.send_keys(keys.CONTROL, "a")  # as a user would: clear() bypasses the page's own state
        element.send_keys(keys.DELETE)
        element.send_keys(value)
        assert driver.execute_script(f"return document.getElementById('{field}').value;") == value
    driver.find_element("id", "generate").click()  # the first run, plain
    text = wait_until(driver, "document.getElementById('sample').textContent", seconds=90)
    assert text.startswith("def main():") and len(text) > len("def main():")  # 20 tokens, not always 20 chars
    driver.find_element("id", "look").click()
    heatmaps = wait_until(
        driver,
        "Array.from(document.querySelectorAll('#prompt-view .js-plotly-plot')).flatMap(p => p.data || [])",
        seconds=90,
    )
    assert len(heatmaps) == 4  # 2 layers x 2 heads
    assert all(len(h["z"]) == len("def main():") for h in heatmaps)
