"""Take the README's screenshot of `transformer dashboard` (docs/results/dashboard.png).

Starts the dashboard on the runs given, opens it in headless Debian Chromium through Selenium
(as tests/dashboard/test_browser.py does), samples from the first run with the default prompt
(further down the page), and saves a screenshot of the top: the curves and the summary table.

Usage: python tools/dashboard_screenshot.py RUN_OR_PARENT... [--out docs/results/dashboard.png]
"""

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/results/dashboard.png"))
    parser.add_argument("--size", default="1400,1500", help="window width,height in pixels")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--driver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "transformer", "dashboard", *args.runs, "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        options = webdriver.ChromeOptions()
        options.binary_location = args.chromium
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={args.size}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=args.driver))
        try:
            driver.get(url)
            time.sleep(4)  # the first refresh draws every chart
            driver.find_element("id", "generate").click()
            time.sleep(4)
            driver.execute_script("window.scrollTo(0, 0);")  # the click scrolled down to the button
            time.sleep(1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
