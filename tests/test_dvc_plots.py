"""`dvc plots show` renders offline (.dvc/plots-offline.html inlines vega, vega-lite, vega-embed) and the repo's plot
definitions overlay runs on one chart, with the resolution plot split by dataset and feature."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from amoe_core.tracking.palette import REFERENCE, TEACHER_COLOURS, variant_colours
from amoe_core.tracking.runs import student_runs
from amoe_core.tracking.variants import group_variants

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


def _write_runs(repo: Path) -> None:
    """Two demo-shaped runs and the teachers' baseline: resolution.csv and the dvclive step files."""
    for i, run in enumerate(("balanced", "random")):
        rows = [
            f"{d},{f},{r},{k},{0.5 + 0.1 * i + r / 1000 + k / 10000:.4f}"
            for d in ("clipart", "fmnist")
            for f in ("student:ensemble", "student:native")
            for k in (10, 20)
            for r in (32, 64, 112)
        ]
        (repo / "runs" / run).mkdir(parents=True)
        (repo / "runs" / run / "resolution.csv").write_text("dataset,feature,resolution,k,accuracy\n" + "\n".join(rows))
        metrics = repo / "runs" / run / "dvclive" / "plots" / "metrics"
        (metrics / "loss").mkdir(parents=True)
        (metrics / "loss" / "total.tsv").write_text(
            "step\ttotal\n" + "".join(f"{s}\t{1 / s + i}\n" for s in range(1, 9))
        )
        (metrics / "tokens_per_s.tsv").write_text(
            "step\ttokens_per_s\n" + "".join(f"{s}\t{1000 + i}\n" for s in range(1, 9))
        )
    (repo / "runs" / "_teachers").mkdir()
    (repo / "runs" / "_teachers" / "resolution.csv").write_text(
        "dataset,feature,resolution,k,accuracy\nfmnist,teacher:dino,64,20,0.83\nclipart,teacher:dino,64,20,0.34\n"
    )


def test_repo_plots_overlay_runs_and_split_resolution_by_dataset_and_feature(tmp_path: Path) -> None:
    import yaml

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copy(REPO / ".dvc" / "plots-offline.html", repo / ".dvc" / "plots-offline.html")
    shutil.copytree(REPO / ".dvc" / "plots", repo / ".dvc" / "plots")
    _write_runs(repo)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]  # the repo's own top-level plot definitions
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))

    # the committed demo runs: "balanced" is the reference variant, "random" differs by its selection
    variants = {v.label: [r.id for r in v.runs] for v in group_variants(student_runs(REPO / "runs"))}
    assert variants == {"reference": ["balanced"], "selection=random": ["random"]}
    colours = variant_colours(variants)
    coloured = {
        "balanced": colours["reference"],
        "random": colours["selection=random"],
        "_teachers": TEACHER_COLOURS[0],
    }
    assert coloured["balanced"] == REFERENCE and len(set(coloured.values())) == 3
    shown = json.loads(_dvc("plots", "show", "--json", cwd=repo))
    assert not shown.get("errors"), shown["errors"]
    charts = shown["data"] if "data" in shown else shown
    titles = list(charts)
    assert len(titles) == 3 and all("/" not in t and " " in t for t in titles)  # titles in words, not paths
    for title, (plot,) in ((t, charts[t]) for t in titles):
        spec = plot["content"]
        files = {v["filename"] for v in spec["data"]["values"]}
        assert sum("balanced" in f for f in files) == 1 and sum("random" in f for f in files) == 1, files
        encoding = spec["spec"]["encoding"] if "resolution" in title else spec["encoding"]
        if "resolution" in title:
            assert spec["facet"]["row"]["field"] == "dataset" and spec["facet"]["column"]["field"] == "feature"
            assert "_teachers" in " ".join(files)
        # one colour per run, in every panel: its variant's, the dashboard's and the report's (tracking/palette.py)
        assert encoding["color"]["field"] == "run"
        scale = encoding["color"]["scale"]
        assert dict(zip(scale["domain"], scale["range"])) == coloured

    _dvc("plots", "show", "-o", "dvc_plots", cwd=repo)
    html = (repo / "dvc_plots" / "index.html").read_text()
    assert "<script src=" not in html and html.count("vegaEmbed(") == 3
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((repo / "dvc_plots" / "index.html").as_uri())
        page.wait_for_function("document.querySelectorAll('canvas, svg.marks').length >= 3", timeout=30000)
        browser.close()
    assert not errors


def test_dvc_plots_output_is_gitignored() -> None:
    out = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO)
    assert out.returncode == 0


def test_the_templates_colours_are_current() -> None:
    """A run added to dvc.yaml's plots, or a params change that regroups the variants, needs the script run again."""
    script = REPO / "scripts" / "dvc-plot-colours"
    out = subprocess.run([os.sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
