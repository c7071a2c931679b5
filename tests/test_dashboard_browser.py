"""A real browser drives the running dashboard: `amoe dashboard` (started from another directory) + Debian chromium
through Playwright, on the fixture runs, on the committed results/ablations, on the committed demo runs (runs/:
their training curves are the committed dvclive files, what a fresh clone has) and on the committed long-tail
ablation (results/ablations-longtail, whose curves `amoe ablate` collected).

Every tab and widget is used once and the page is checked as a person sees it: tables read back through the
dataframe's own "Download as CSV" button, charts measured on screen and their colours read off the screen. Saves
artifacts/dashboard*.png (CI artifacts; README's docs/dashboard*.png come from scripts/screenshots). Skipped without
chromium or Playwright.
"""

from __future__ import annotations

import io
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image
from test_dashboard import _acc, write_fixture

from amoe_core.tracking.palette import variant_colours
from amoe_core.tracking.runs import student_runs
from amoe_core.tracking.variants import group_variants
from amoe_core.train.live import LiveLog

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = ROOT / "results" / "ablations"
DEMO = ROOT / "runs"  # `make demo`'s runs, committed: params, eval.json, train.json and the dvclive curves
LONG_TAIL = ROOT / "results" / "ablations-longtail"  # `amoe ablate`'s data-longtail experiments, with their curves


def _ablation_variants() -> list[str]:
    """The committed ablation's variant labels, in the report's order (tracking's grouping)."""
    return [v.label for v in group_variants(student_runs(ABLATIONS))]


def _results_md_cell(row: str, column: str) -> str:
    """A cell of docs/RESULTS.md's per-domain table: what `amoe report` computed from the same runs."""
    lines = (ROOT / "docs" / "RESULTS.md").read_text().splitlines()

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = next(line for line in lines if line.startswith("| model |"))
    return dict(zip(cells(header), cells(next(line for line in lines if line.startswith(f"| {row} |")))))[column]


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
ROW_PX = 22  # dashboards/charts.py: one bar row
AXES_PX = 140  # title, subtitle and x axis around a chart's rows; the old bug drew bars ~600 px below their axes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"dashboard exited with {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"dashboard not healthy at {url} after {timeout}s")


def _listening(pid: int, port: int) -> list[str]:
    """Local addresses (from `ss -ltnp`) that `pid` listens on with `port`."""
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True, check=True).stdout
    return [
        line.split()[3] for line in out.splitlines() if f"pid={pid}," in line and line.split()[3].endswith(f":{port}")
    ]


def _settle(page) -> None:
    """Wait for the rerun a widget change started to finish (the status widget shows while the script runs)."""
    try:  # a rerun may finish before the widget shows; a slow one shows it within a moment
        page.wait_for_selector('[data-testid="stStatusWidget"]', state="attached", timeout=1500)
    except Exception:
        pass
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=120_000)
    page.wait_for_timeout(300)
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    _settle(page)


def _select(page, label: str, option: str, scope=None) -> None:
    """Pick `option` in the visible selectbox labelled `label`."""
    _combobox(scope or page, label).click()
    page.get_by_role("option", name=option, exact=True).click()
    _settle(page)


def _combobox(scope, label: str):
    return scope.get_by_role("combobox", name=label, exact=True).locator("visible=true").first


def _csv(page, table) -> pd.DataFrame:
    """A table's content as a person downloads it (the dataframe toolbar's "Download as CSV")."""
    button = table.get_by_role("button", name="Download as CSV")
    for _ in range(5):  # the toolbar fades in while the pointer rests on the table
        # centred: at the viewport's top edge the sticky app header lies over the toolbar and takes the click
        table.evaluate("e => e.scrollIntoView({block: 'center'})")
        table.hover(position={"x": 30, "y": 15})
        try:
            button.wait_for(state="visible", timeout=3000)
            break
        except Exception:
            page.mouse.move(0, 0)
    with page.expect_download() as dl:
        # the click event on the button itself: under load the grid's scroller re-renders over it between
        # Playwright's hit test and the click, which is not what a person meets
        button.dispatch_event("click")
    return pd.read_csv(io.StringIO(Path(dl.value.path()).read_text(encoding="utf-8-sig")))


def _visible_charts(page):
    return page.locator('[data-testid="stVegaLiteChart"]:visible')


def _newest_run(runs: Path) -> str:
    """The run whose curves were written last (dvclive's summary, rewritten every step: the Live tab's default)."""
    return max(runs.glob("*/dvclive/metrics.json"), key=lambda p: p.stat().st_mtime).parent.parent.name


def _chart_boxes(page) -> list[tuple[float, float]]:
    """(element height, drawn canvas/svg height) of every visible chart."""
    out = []
    for i in range(_visible_charts(page).count()):
        chart = _visible_charts(page).nth(i)
        drawn = chart.locator("canvas, svg.marks").first.bounding_box()
        out.append((chart.bounding_box()["height"], drawn["height"]))
    return out


def _colours_on_screen(element, colours: dict[str, str]) -> set[str]:
    """The labels whose palette colour is drawn (exact pixels: a point's or a dot's inside) in `element`."""
    pixels = np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).reshape(-1, 3)
    drawn = set()
    for label, colour in colours.items():
        rgb = np.array([round(255 * c) for c in to_rgb(colour)])
        if (pixels == rgb).all(axis=1).sum() >= 10:  # a filled point is ~50 pixels; 10 rules out stray antialiasing
            drawn.add(label)
    return drawn


def _notice_or_data(page) -> str:
    """What a visible tab shows: "data" (a chart, table or image) or the text of its notice."""
    shown = '[data-testid="stVegaLiteChart"], [data-testid="stDataFrame"], [data-testid="stImage"]'
    if page.locator(f"{shown}").locator("visible=true").count():
        return "data"
    return " ".join(page.locator('[data-testid="stAlert"]:visible').all_inner_texts())


@pytest.fixture
def dashboard(tmp_path):
    pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    fx = write_fixture(tmp_path)
    elsewhere = tmp_path / "elsewhere"  # `amoe dashboard` works from any directory: no .streamlit/ config here
    elsewhere.mkdir()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("AMOE_RUNS_DIR", "AMOE_CURATION_DIR", "AMOE_OPTUNA_STORAGE"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "amoe_core.cli", "dashboard", "--port", str(port), "--runs", str(fx["runs"])]
    cmd += [
        "--runs",
        str(ABLATIONS),
        "--runs",
        str(DEMO),
        "--runs",
        str(LONG_TAIL),
        "--curation",
        str(fx["curation"]),
        "--storage",
        fx["storage"],
    ]
    proc = subprocess.Popen(cmd, cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        yield {"port": port, "pid": proc.pid, "fixture": fx}
    finally:
        proc.terminate()  # `amoe dashboard` execs streamlit: this pid is the server itself
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dashboard_refuses_a_network_address_without_the_flag(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "amoe_core.cli", "dashboard", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "not a loopback address" in out.stderr and "--allow-remote" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_every_tab_and_widget_in_chromium(dashboard):
    from playwright.sync_api import sync_playwright

    port = dashboard["port"]
    # bound to the loopback interface only, although started from a directory without .streamlit/config.toml
    assert _listening(dashboard["pid"], port) == [f"127.0.0.1:{port}"]
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
            # without the File System Access API the CSV button falls back to a plain download Playwright can catch
            page.add_init_script("delete window.showSaveFilePicker")
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
            _settle(page)
            sidebar = page.locator('[data-testid="stSidebar"]')
            # no field to type a path or storage URL into: only the launcher's roots are offered
            assert sidebar.locator('[data-testid="stTextInput"]').count() == 0

            # ---- Runs tab on the fixture: variants first, loss curves and expert load coloured by variant
            variants = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').first)
            assert list(variants.variant) == ["reference", "relational=rkd, c_max=128"]
            assert variants.set_index("variant").loc["reference", "seeds"] == "0, 1"
            assert _visible_charts(page).count() == 2  # loss terms + expert load
            box = page.locator('[data-testid="stMultiSelect"]:visible').filter(has_text="Loss terms")
            box.get_by_role("button", name=re.compile("^Remove")).first.click()  # drop one loss term
            _settle(page)
            assert _visible_charts(page).count() == 2
            sidebar.get_by_text("Show sweep trials").click()
            _settle(page)
            variants = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').first)
            assert "sweep demo-sweep/t0000" in set(variants.variant)
            sidebar.get_by_text("Show sweep trials").click()
            _settle(page)

            # ---- Live tab: the newest run, followed
            _tab(page, "Live")
            assert page.get_by_text(re.compile(r"step 5 of 5")).count() >= 1
            # the run goes on training: the view follows without any click (auto-refresh while its curves grow)
            live = LiveLog(dashboard["fixture"]["runs"] / _newest_run(dashboard["fixture"]["runs"]) / "dvclive", True)
            live.log({"step": 6, "lr": 1e-3, "tokens_per_s": 1.0, "loss/total": 0.5})
            live.close()
            page.get_by_text(re.compile(r"step 6 of 5")).wait_for(timeout=30_000)
            page.get_by_text(re.compile("^Auto-refresh every")).click()
            _settle(page)
            _select(page, "Run (most recently written first)", "alpha")
            assert page.get_by_text(re.compile(r"alpha: step 5")).count() >= 1

            # ---- Evaluation: resolution defaults to evaluate.main_resolution, k to 20
            _tab(page, "Evaluation")
            assert _combobox(page, "Resolution (px)").input_value() == "64"
            assert _combobox(page, "k").input_value() == "20"
            _select(page, "Resolution (px)", "112")
            _select(page, "k", "10")
            assert _visible_charts(page).count() == 1
            # zero-shot and segmentation: eval.json's numbers, the teachers beside the students (read back as CSV)
            for title in ("Zero-shot top-1 (%)", "Segmentation mIoU (%)", "Segmentation pixel accuracy (%)"):
                assert page.get_by_role("heading", name=title).locator("visible=true").count() == 1, title
            shown = page.locator('[data-testid="stDataFrame"]:visible')
            zs, seg = (_csv(page, shown.nth(i)) for i in (2, 3))  # after the kNN and linear-probe tables
            assert set(zs.feature) == {"student:siglip", "teacher:siglip"}, zs
            teacher = zs[(zs.variant == "teacher siglip") & (zs.dataset == "fmnist")].iloc[0]
            assert f"{float(teacher['64px']):.1f}" == f"{100 * _acc(5, 0, 1, 1, 7):.1f}"  # teacher:siglip's top-1
            assert set(seg.dataset) == {"voc"}, seg
            ref = seg[(seg.variant == "reference") & (seg.feature == "student:native")].iloc[0]
            a, b = (100 * (_acc(i, 0, 2, 1, 5) - 0.4) for i in (0, 1))  # the fixture's mIoU of the two seeds
            assert ref["64px"] == f"{statistics.fmean([a, b]):.1f} ± {statistics.stdev([a, b]):.1f}"

            # ---- Teachers vs student: switch 64 -> 32 px; charts keep heights that fit their rows
            _tab(page, "Teachers vs student")
            for res in ("64", "32"):
                if res == "32":
                    _select(page, "Resolution (px)", "32")
                boxes = _chart_boxes(page)
                assert len(boxes) == 4  # 2 datasets x 2 teachers
                for element, drawn in boxes:
                    rows = 2  # two variants (the teacher alone is a dashed rule)
                    assert rows * ROW_PX <= drawn <= rows * ROW_PX + AXES_PX, (
                        res,
                        element,
                        drawn,
                    )
                    assert abs(element - drawn) < 40, (res, element, drawn)  # nothing drawn far below its axes
            _select(page, "k", "100")

            # ---- Sweep, Curation, PCA
            _tab(page, "Sweep")
            _select(page, "Study", "demo-sweep")
            assert page.get_by_text("only 6 finished trials").count() == 1
            assert _visible_charts(page).count() == 2  # history + importance
            _tab(page, "Curation")
            assert page.get_by_text(re.compile("normalised entropy")).count() >= 1
            _tab(page, "PCA maps")
            assert page.locator('[data-testid="stImage"]:visible').count() == 3

            # ---- results/ablations: no None anywhere in the runs table; one legend entry per variant
            _tab(page, "Runs")
            _select(page, "Runs directory", str(ABLATIONS), scope=sidebar)
            assert _combobox(sidebar, "Runs directory").input_value() == str(ABLATIONS)
            variants = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').first)
            labels = _ablation_variants()
            assert list(variants.variant) == labels and labels[0] == "reference"
            # the sidebar's chips show each label whole: the longest is not cut short, and two never read the same
            longest = max(labels, key=len)
            assert len(longest) > 25  # "selection=random, target=1000": Streamlit cut chips at ~20 characters
            for label in labels:
                chip = sidebar.locator(f'[data-testid="stMultiSelect"] span[title="{label}"]')
                assert chip.inner_text() == label
                assert chip.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight"), label
                assert chip.is_visible()  # the box grows with its chips: none hidden below an inner scroll
            # the dashboard's mean ± std over seeds is the report's
            expected = _results_md_cell("student (reference)", "fmnist kNN")
            assert variants.set_index("variant").loc["reference", "kNN fmnist % (ensemble, 64px, k20)"] == expected
            page.get_by_text("Single runs").click()
            _settle(page)
            runs = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').nth(1))
            assert len(runs) == len(student_runs(ABLATIONS)) and not runs.isna().any().any(), runs[
                runs.isna().any(axis=1)
            ]
            assert "report.runs_dir" not in runs.columns
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
            _tab(page, "Evaluation")
            _select(page, "Resolution (px)", "64")
            _select(page, "k", "20")
            _visible_charts(page).first.scroll_into_view_if_needed()
            _visible_charts(page).first.screenshot(path=str(shots / "dashboard_resolution.png"))
            # every variant drawn in its palette colour, the same one as on the Teachers tab below
            colours = variant_colours([*labels, "teacher dino", "teacher siglip"])
            student_colours = {v: c for v, c in colours.items() if v in labels}
            assert _colours_on_screen(_visible_charts(page).first, student_colours) == set(labels)
            _tab(page, "Teachers vs student")
            for i in range(_visible_charts(page).count()):
                assert _colours_on_screen(_visible_charts(page).nth(i), student_colours) == set(labels)
            _select(page, "Resolution (px)", "32")
            for element, drawn in _chart_boxes(page):
                rows = len(labels)  # one dot per variant (the teacher alone is a dashed rule)
                assert rows * ROW_PX <= drawn <= rows * ROW_PX + AXES_PX and abs(element - drawn) < 40

            # ---- the sidebar's variant filter: dropping one variant drops its bars and its table row
            sidebar.get_by_role("button", name=f"Remove {labels[-1]}").click()
            _settle(page)
            for element, drawn in _chart_boxes(page):
                rows = len(labels) - 1  # one variant fewer
                assert rows * ROW_PX <= drawn <= rows * ROW_PX + AXES_PX and abs(element - drawn) < 40
            page.screenshot(path=str(shots / "dashboard_teachers.png"))
            # the legend follows: the dropped variant's colour is nowhere on the page's charts
            for i in range(_visible_charts(page).count()):
                assert labels[-1] not in _colours_on_screen(_visible_charts(page).nth(i), student_colours)
            _tab(page, "Runs")
            variants = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').first)
            assert list(variants.variant) == labels[:-1]
            # "Show sweep trials" keeps that selection
            sidebar.get_by_text("Show sweep trials").click()
            _settle(page)
            variants = _csv(page, page.locator('[data-testid="stDataFrame"]:visible').first)
            assert list(variants.variant) == labels[:-1]
            # every tab on the committed runs shows data or a notice naming the command that fills it
            for name in ("Runs", "Live", "Evaluation", "Teachers vs student", "Sweep", "Curation", "PCA maps"):
                _tab(page, name)
                shown = _notice_or_data(page)
                assert shown == "data" or "amoe " in shown, (name, shown)

            # ---- the committed demo runs (a fresh clone's runs/): training curves from their dvclive files
            _tab(page, "Runs")
            _select(page, "Runs directory", str(DEMO), scope=sidebar)
            demo = [v.label for v in group_variants(student_runs(DEMO))]
            assert demo == ["reference", "selection=random"]
            charts = _visible_charts(page)
            assert charts.count() >= 1 and page.get_by_text("No training curves").count() == 0
            demo_colours = {v: c for v, c in variant_colours(demo).items() if v in demo}
            assert _colours_on_screen(charts.first, demo_colours) == set(demo)  # both runs' lines, in their colours
            _tab(page, "Live")
            steps = {r.id: r.train_summary()["steps"] for r in student_runs(DEMO)}
            assert len(set(steps.values())) == 1  # both trained as long: whichever is newest shows the same count
            n = steps["balanced"]
            assert page.get_by_text(re.compile(rf"^(balanced|random): step {n} of {n} \(finished\)$")).count() == 1
            for name in ("Runs", "Live", "Evaluation", "Teachers vs student", "Sweep", "Curation", "PCA maps"):
                _tab(page, name)
                shown = _notice_or_data(page)
                assert shown == "data" or "amoe " in shown, (name, shown)

            # ---- the committed long-tail ablation (collected by `amoe ablate` with its runs' curves)
            _select(page, "Runs directory", str(LONG_TAIL), scope=sidebar)
            _tab(page, "Runs")
            lt = [v.label for v in group_variants(student_runs(LONG_TAIL))]
            assert lt[0] == "reference" and "selection=random" in lt
            charts = _visible_charts(page)
            assert charts.count() >= 1 and page.get_by_text("No training curves").count() == 0
            lt_colours = {v: c for v, c in variant_colours(lt).items() if v in lt}
            assert _colours_on_screen(charts.first, lt_colours) == set(lt)  # every variant's loss curve drawn
        finally:
            browser.close()
