"""`dvc plots show` renders offline: the repo's template (.dvc/plots-offline.html) inlines vega, vega-lite, vega-embed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def _dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(os.sys.executable).with_name("dvc"))
    return subprocess.run([dvc, *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_plots_show_uses_the_offline_template_and_draws(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for name in ("config", "plots-offline.html"):
        shutil.copy(REPO / ".dvc" / name, repo / ".dvc" / name)
    (repo / "loss.csv").write_text("step,loss\n" + "".join(f"{i},{1 / (i + 1):.4f}\n" for i in range(20)))
    (repo / "dvc.yaml").write_text("plots:\n  - loss.csv:\n      x: step\n      y: loss\n")
    _dvc("plots", "show", "-o", "out", cwd=repo)
    html = (repo / "out" / "index.html").read_text()
    assert "<script src=" not in html  # nothing fetched from a CDN
    assert "vegaEmbed" in html and "0.0526" in html  # the library and the data are both in the page

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto((repo / "out" / "index.html").as_uri())
        page.wait_for_selector("canvas, svg.marks", timeout=30000)
        assert page.locator("canvas, svg.marks").count() >= 1
        browser.close()
