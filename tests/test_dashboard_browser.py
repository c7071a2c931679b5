"""A real browser loads the running dashboard: `streamlit run` on 127.0.0.1 + Debian chromium driven by Playwright.

Saves artifacts/dashboard.png (a CI artifact path). Skipped when chromium or Playwright is not installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_dashboard import write_fixture

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"streamlit exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"streamlit not healthy at {url} after {timeout}s")


@pytest.mark.slow
def test_dashboard_renders_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    fx = write_fixture(tmp_path)
    port = _free_port()
    env = {
        **os.environ,
        "AMOE_RUNS_DIR": str(fx["runs"]),
        "AMOE_CURATION_DIR": str(fx["curation"]),
        "AMOE_OPTUNA_STORAGE": fx["storage"],
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "dashboards/app.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
    ]  # address 127.0.0.1 comes from .streamlit/config.toml
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        shot = ROOT / "artifacts" / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
                page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=60_000)
                page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60_000)
                assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 3  # loss curves + expert loads
                # a rendered chart draws a canvas or svg; an errored one shows only text
                assert page.locator(
                    '[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg'
                ).count()
                assert page.get_by_text("AMoE runs").count() >= 1
                assert page.locator('[data-testid="stException"]').count() == 0
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
