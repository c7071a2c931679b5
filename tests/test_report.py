"""`amoe report`: variants grouped by differing params, mean ± std over seeds, identical output on regeneration."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from amoe_core.config import dump_params, load_params
from amoe_core.errors import AmoeError
from amoe_core.eval.summary import summary_lines
from amoe_core.experiments.findings import Effect, verdict
from amoe_core.experiments.report import build_report
from amoe_core.tracking.runs import RunDir, list_runs, student_runs
from amoe_core.tracking.variants import group_variants
from amoe_core.train.live import LiveLog

REPO = Path(__file__).resolve().parents[1]


def _eval(fm: float, ca: float) -> dict:
    def knn(x: float) -> dict:
        return {"32px": {"k20": x - 0.1}, "64px": {"k20": x}, "112px": {"k20": x + 0.01}}

    return {
        "knn": {"fmnist": {"student:ensemble": knn(fm)}, "clipart": {"student:ensemble": knn(ca)}},
        "linear": {"fmnist": {"student:ensemble": {"64px": fm}}, "clipart": {"student:ensemble": {"64px": ca}}},
        "fidelity": {"dino": {"summary_cos": 0.9, "patch_cos": 0.8, "cka": 0.7, "spearman": 0.6}},
    }


def _make_run(root: Path, run_id: str, overrides: list[str], ev: dict, tokens_per_s: float, summary: bool) -> None:
    p = load_params(None, overrides + [f"distill.run={run_id}"])
    run = RunDir.create(root, run_id)
    run.write_params(dump_params(p))
    live = LiveLog(run.live_dir, resume=False)
    for step in range(1, 11):  # the first fifth is warm-up: its slow steps must not count
        tps = tokens_per_s / 10 if step <= 2 else tokens_per_s
        live.log({"step": step, "tokens_per_s": tps, "images_per_s": tps / 20, "loss/total": 1.0 / step})
    live.close()
    if summary:
        run.write_train_summary()
    run.write_eval(ev)


# (overrides, fmnist, clipart kNN at 64px per seed, tokens/s)
VARIANTS = {
    "arkd": ([], [(0.80, 0.40), (0.82, 0.44), (0.81, 0.42)], 1000.0),
    "none": (["loss.relational=none"], [(0.70, 0.30), (0.72, 0.34), (0.71, 0.32)], 1000.0),
    "random": (
        ["distill.selection=data/curation/selection/random.parquet"],
        [(0.83, 0.43), (0.85, 0.47), (0.84, 0.45)],
        1000.0,
    ),
    "fixed": (["packing.mode=fixed"], [(0.81, 0.41), (0.80, 0.43), (0.82, 0.42)], 500.0),
}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for name, (overrides, scores, tps) in VARIANTS.items():
        for seed, (fm, ca) in enumerate(scores):
            # seed 0 has train.json; the others have only their curves (a run killed before its end writes no train.json)
            _make_run(root, f"{name}-s{seed}", overrides + [f"distill.seed={seed}"], _eval(fm, ca), tps, seed == 0)
    for selection, (fm, ca) in (("balanced", (0.75, 0.35)), ("random", (0.78, 0.36))):  # data scaling, one seed
        overrides = ["sample.target=1000", f"distill.selection=data/curation/selection/{selection}.parquet"]
        _make_run(root, f"data-1000-{selection}", overrides, _eval(fm, ca), 1000.0, True)
    teachers = RunDir.create(root, "_teachers")  # `amoe evaluate --teachers` writes eval.json only
    teachers.write_eval(
        {
            "knn": {
                "fmnist": {"teacher:dino": {"64px": {"k20": 0.85}}, "teacher:siglip": {"64px": {"k20": 0.60}}},
                "clipart": {"teacher:dino": {"64px": {"k20": 0.20}}, "teacher:siglip": {"64px": {"k20": 0.45}}},
            }
        }
    )
    return root


def test_variants_are_labelled_by_their_departure_from_the_reference(runs: Path) -> None:
    variants = group_variants([r for r in list_runs(runs) if r.id != "_teachers"])
    assert [v.label for v in variants] == [
        "reference", "mode=fixed", "relational=none", "selection=random", "selection=random, target=1000", "target=1000"
    ]  # fmt: skip
    assert [v.seeds for v in variants] == [[0, 1, 2]] * 4 + [[0], [0]]
    assert sorted(variants[0].settings) == ["distill.selection", "loss.relational", "packing.mode", "sample.target"]


def _avg(scores: list[tuple[float, float]]) -> list[float]:
    return [(fm + ca) / 2 for fm, ca in scores]


def test_report_numbers_findings_and_regeneration_is_identical(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "RESULTS.md"
    text = build_report(runs, out)
    lines = text.splitlines()
    fm = [fm for fm, _ in VARIANTS["arkd"][1]]
    # the recipe every run shares is stated once (steps and learning rate are not columns: no variant changes them)
    p = load_params(None, [])
    assert f"Every run: student `{p.student.name}`, {p.distill.steps} steps, learning rate {p.distill.lr}." in lines[2]
    row = next(line for line in lines if line.startswith("| student (reference)"))
    assert f"{100 * statistics.fmean(fm):.1f} ± {100 * statistics.stdev(fm):.1f}" in row
    # Expert check: fmnist 81/85 = 95.29% of dino, shown rounded down; clipart 42/45 = 93.3% of siglip; average 61.5 beats both teachers.
    line = next(line for line in lines if line.startswith("- **reference**"))
    assert "fmnist: 95.2% of expert `dino` (ok)" in line and "clipart: 93.3% of expert `siglip` (ok)" in line
    assert "beats every single teacher" in line
    assert "| reference | dino | 90.0 ± 0.0 | 80.0 ± 0.0 | 70.0 ± 0.0 | 60.0 ± 0.0 |" in text
    # throughput: median after warm-up, the same whether read from train.json or recomputed from the curves
    assert "| reference | 1,000 ± 0 | 50 ± 0 |" in text and "| mode=fixed | 500 ± 0 | 25 ± 0 |" in text

    # findings: arkd vs none by 10 points; s.e. of the difference = sqrt(1.5^2 / 3 + 1.5^2 / 3) = 1.2 points,
    # detectable = 2.84 s.e. = 3.5 points
    assert "kNN avg at 64px, arkd 61.5 vs none 51.5: ours +10.0 ± 1.2, detectable 3.5, paper +0.09: **holds**" in text
    assert (
        "balanced 61.5 vs random 64.5: ours -3.0 ± 1.2, detectable 3.5, paper +2.42: **does not hold: reversed**"
        in text
    )
    assert "reversed**; clipart 42.0 vs 45.0, fmnist 81.0 vs 84.0" in text  # per domain: no hidden trade-off
    assert "tokens/s, packed / fixed: 2.00x (paper 2.67x): **holds**" in text
    # packing's claim is "no forgetting": equal accuracy at the low resolution is a hold, not a miss (fixed's seeds
    # spread 0.5: s.e. = sqrt(1.5^2 / 3 + 0.5^2 / 3) = 0.9)
    assert (
        "kNN avg at 32px, packed 51.5 vs fixed 51.5: ours +0.0 ± 0.9, detectable 2.6: **holds: no loss beyond" in text
    )
    assert "| reference | 32.0 ± 2.0 | 42.0 ± 2.0 | 43.0 ± 2.0 | 71.0 ± 1.0 | 81.0 ± 1.0 | 82.0 ± 1.0 |" in text
    # data scaling: the 1000-image selections (one seed each) beside the reference's 4000 (three seeds)
    assert "| 1,000 | 55.0 (1 seed) | 57.0 (1 seed) |" in text
    assert "| 4,000 | 61.5 ± 1.5 (3 seeds) | 64.5 ± 1.5 (3 seeds) |" in text
    assert (out.parent / "results_data_scaling.png").stat().st_size > 0

    pngs = [out.parent / "results_resolution.png", out.parent / "results_data_scaling.png"]
    first = [out.read_bytes(), *(p.read_bytes() for p in pngs)]
    build_report(runs, out)
    assert [out.read_bytes(), *(p.read_bytes() for p in pngs)] == first


def test_the_header_states_only_the_recipe_all_runs_share(tmp_path: Path) -> None:
    """A training length that differs between runs is a column of the variants table, not a claim of the header."""
    for run_id, steps in [("short", 100), ("long", 200)]:
        _make_run(tmp_path / "runs", run_id, [f"distill.steps={steps}"], _eval(0.8, 0.4), 1000.0, summary=True)
    lines = build_report(tmp_path / "runs", tmp_path / "RESULTS.md").splitlines()
    assert lines[2].endswith(f"Every run: student `{load_params(None, []).student.name}`, learning rate 0.001.")
    assert "| variant | distill.steps | seeds | runs |" in lines


def test_report_without_evaluated_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AmoeError, match="no evaluated runs"):
        build_report(tmp_path / "runs", tmp_path / "R.md")
    assert not (tmp_path / "R.md").exists()


def test_committed_results_regenerate_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/RESULTS.md is exactly what `amoe report` makes of the committed ablation runs (results/ablations)."""
    monkeypatch.chdir(REPO)
    text = build_report(Path("results/ablations"), tmp_path / "RESULTS.md")
    assert text == (REPO / "docs" / "RESULTS.md").read_text()
    variants = [v for v in group_variants(list_runs("results/ablations")) if v.runs[0].id != "_teachers"]
    # the three ablations, >= 3 seeds each (the issue asks for them): loss, batching, data (selection)
    ablated = [v for v in variants if len(v.seeds) >= 3]
    assert [v.label for v in ablated] == [
        "reference", "mode=fixed", "relational=none", "relational=rkd", "selection=random"
    ] and all(v.seeds == [0, 1, 2] for v in ablated)  # fmt: skip
    # every run trained with the ablation's settings in params.yaml (ablate.overrides), not the demo's
    overrides = dict(o.split("=", 1) for o in load_params(REPO / "params.yaml").ablate.overrides)
    for run in (r for v in variants for r in v.runs):
        for key, value in overrides.items():
            section, name = key.split(".")
            assert str(run.params()[section][name]) == value, (run.id, key)
    # the data-scaling points: one seed per size and selection
    assert sorted(v.label for v in variants if v not in ablated) == [
        "selection=random, target=1000", "selection=random, target=2000", "target=1000", "target=2000"
    ]  # fmt: skip


def test_committed_long_tail_results_regenerate_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/longtail/RESULTS.md is exactly what `amoe report` makes of the committed long-tail ablation
    (results/ablations-longtail): every run on the long-tail pool, its commits named, with its curves."""
    monkeypatch.chdir(REPO)
    runs_dir = Path("results/ablations-longtail")
    text = build_report(runs_dir, tmp_path / "RESULTS.md")
    assert text == (REPO / "docs" / "longtail" / "RESULTS.md").read_text()
    variants = group_variants(student_runs(runs_dir))
    assert all(r.params()["demo_pool"]["long_tail"] is True for v in variants for r in v.runs)
    # the finding's pair at the reference size has 3 seeds each (the issue asks for them)
    assert [(v.label, v.seeds) for v in variants if len(v.seeds) >= 3] == [
        ("reference", [0, 1, 2]), ("selection=random", [0, 1, 2])
    ]  # fmt: skip
    assert "## The data finding on the long-tail pool" in text and "| selected images | head concept share" in text
    baselines = sorted({e["baseline"][:7] for e in json.loads((runs_dir / "experiments.json").read_text()).values()})
    assert f"measured on commit{'s' * (len(baselines) > 1)} {', '.join(baselines)}." in text.splitlines()[2]
    assert all(r.metrics() for v in variants for r in v.runs)  # the training curves came along


def test_summary_lines_give_evaluate_a_readable_ending():
    ev = _eval(0.8125, 0.4)
    lines = summary_lines(ev, "64px", "k20")
    assert "fmnist student:ensemble at 64px: kNN k20 81.2%, linear 81.2%" in lines  # 81.25 -> half to even
    assert "clipart student:ensemble at 64px: kNN k20 40.0%, linear 40.0%" in lines
    assert "fidelity to dino: summary_cos 0.900, patch_cos 0.800, cka 0.700, spearman 0.600" in lines


def test_amoe_report_says_where_it_wrote_and_nothing_alarming(tmp_path: Path) -> None:
    """A first run on a fresh machine: matplotlib builds its font cache (a WARNING), faiss's loader logs INFO lines
    about the AVX builds it lacks. The user sees one line, where the report went."""
    import os
    import subprocess
    import sys

    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLCONFIGDIR": str(tmp_path / "fresh-mpl")}
    # faiss imported after logging is set up, as a curation or evaluation stage imports it
    code = (
        "import sys; from amoe_core.progress import setup_logging; setup_logging(); import faiss; "
        "from amoe_core.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "report", "-S", f"report.out={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"INFO amoe_core.experiments.report: wrote {out}"), lines
    assert out.read_text() == (REPO / "docs" / "RESULTS.md").read_text()


@pytest.mark.parametrize(
    ("diff", "se", "paper", "not_worse", "expected"),
    [
        (3.0, 1.0, 1.0, False, "holds"),  # beyond 2 s.e.
        (-3.0, 1.0, 1.0, False, "does not hold: reversed"),
        # within noise: the paper's 2.42 is below 2.84 s.e. = 2.84: this design could not have seen it
        (0.5, 1.0, 2.42, False, "too small to see here: the paper's +2.42 is below the detectable 2.8"),
        # within noise, and the paper's 3.0 is above the detectable 2.84: it would have shown, 4 times in 5
        (0.5, 1.0, 3.0, False, "does not hold: within seed noise, where the paper's effect would have shown"),
        (-1.5, 1.0, None, True, "holds: no loss beyond seed noise"),
        (-2.5, 1.0, None, True, "does not hold: worse"),
        (2.5, 1.0, None, True, "holds: better"),
        (0.4, 0.0, 1.0, False, "holds (one seed)"),
    ],
)
def test_verdict_tells_does_not_hold_from_too_small_to_see(
    diff: float, se: float, paper: float | None, not_worse: bool, expected: str
) -> None:
    assert verdict(Effect(diff, se), paper, not_worse) == expected


LONG_TAIL = ["demo_pool.long_tail=true", "evaluate.class_frequencies=data/demo/concept_frequencies.json"]
FREQ = {"a": 500, "b": 10, "c": 300, "d": 5}  # pool images per class: head a, c; tail b, d (the least frequent half)


def _long_tail_eval(per_class: dict[str, float]) -> dict:
    """eval.json of a long-tail run: per-class kNN (fmnist: a, b; clipart: c, d) and the averages it implies."""
    fm, ca = (per_class["a"] + per_class["b"]) / 2, (per_class["c"] + per_class["d"]) / 2
    ev = _eval(fm, ca)
    ev["knn_per_class"] = {
        "fmnist": {"student:ensemble": {"64px": {"k20": {"a": per_class["a"], "b": per_class["b"]}}}},
        "clipart": {"student:ensemble": {"64px": {"k20": {"c": per_class["c"], "d": per_class["d"]}}}},
    }
    ev["class_frequency"] = FREQ
    return ev


def test_long_tail_section_reads_head_and_tail_classes(runs: Path, tmp_path: Path) -> None:
    # balanced: tail classes b, d at 0.50 / 0.52 / 0.54 (mean of b and d), random 0.40 / 0.41 / 0.42; head equal
    tails = {"balanced": [0.50, 0.52, 0.54], "random": [0.40, 0.41, 0.42]}
    for selection, values in tails.items():
        for seed, t in enumerate(values):
            overrides = LONG_TAIL + [f"distill.selection=data/curation/selection/{selection}.parquet"]
            ev = _long_tail_eval({"a": 0.9 + 0.01 * seed, "c": 0.7, "b": t + 0.05, "d": t - 0.05})
            _make_run(runs, f"lt-{selection}-s{seed}", overrides + [f"distill.seed={seed}"], ev, 1000.0, True)
    for selection, t in (("balanced", 0.45), ("random", 0.40)):  # the data-scaling view on this pool, one seed
        overrides = LONG_TAIL + ["sample.target=1000", f"distill.selection=data/curation/selection/{selection}.parquet"]
        ev = _long_tail_eval({"a": 0.8, "c": 0.6, "b": t, "d": t})
        _make_run(runs, f"lt-1000-{selection}", overrides, ev, 1000.0, True)
    text = build_report(runs, tmp_path / "RESULTS.md")
    section = text.split("## The data finding on the long-tail pool", 1)[1]
    # (a + b + c + d) / 4: balanced (0.8 + 0.6 + 0.9) / 4 = 57.5, random 55.0; at 4,000 the three seeds above (std over seeds 1.25 and 0.75)
    assert (
        "| 1,000 | 57.5 (1 seed) | 55.0 (1 seed) |" in section
        and "| 4,000 | 66.2 ± 1.3 (3 seeds) | 60.8 ± 0.7 (3 seeds) |" in section
    )
    assert "Tail = the least frequent half of the evaluated classes by images in the pool: b (10), d (5); head: a (500), c (300)." in section  # fmt: skip
    # tail: balanced mean 52.0, random 41.0; s.e. = sqrt(2^2 / 3 + 1^2 / 3) = 1.29 points, detectable 2.84 s.e. = 3.7
    se = (0.02**2 / 3 + 0.01**2 / 3) ** 0.5 * 100
    assert f"**tail classes** at 64px, balanced 52.0 vs random 41.0 (3 / 3 seeds): ours +11.0 ± {se:.1f}, detectable {2.84 * se:.1f}: **holds**" in section  # fmt: skip
    # head: (a + c) / 2 per seed = 0.800, 0.805, 0.810 in both: no effect, s.e. = sqrt(2 * 0.5^2 / 3) = 0.4 points
    assert "**head classes** at 64px, balanced 80.5 vs random 80.5 (3 / 3 seeds): ours +0.0 ± 0.4" in section
    # the average over the datasets, (a + b + c + d) / 4, moves by half the tail's effect: +5.5; s.e. 0.8 (seeds: +1.25 and +0.75 per step)
    assert "**kNN avg** at 64px, balanced 66.2 vs random 60.8 (3 / 3 seeds): ours +5.5 ± 0.8" in section
    # the default pool's data finding still compares the default pool's selections only
    assert "balanced 61.5 vs random 64.5: ours -3.0 ± 1.2" in text


def _curation(target: int, head: tuple, tail: tuple, slope: float | None) -> dict:
    """The part of a curation report (sample.out/report.json) the long-tail section reads."""
    return {
        "target": target,
        "pool_images": 9000,
        "concepts": {"head": "dress"},
        "concept_head_share": dict(zip(("pool", "balanced", "random"), head)),
        "concept_tail_half_share": dict(zip(("pool", "balanced", "random"), tail)),
        "concept_level1_clusters_vs_size_slope": slope,
    }


def test_long_tail_section_shows_what_balancing_did_to_the_pools_concepts(runs: Path, tmp_path: Path) -> None:
    for selection in ("balanced", "random"):
        for seed in range(2):
            overrides = LONG_TAIL + [f"distill.selection=data/curation/selection/{selection}.parquet"]
            ev = _long_tail_eval({"a": 0.9, "c": 0.7, "b": 0.5 + 0.01 * seed, "d": 0.4})
            _make_run(runs, f"lt-s{seed}-{selection}", overrides + [f"distill.seed={seed}"], ev, 1000.0, True)
        overrides = LONG_TAIL + ["sample.target=1000", f"distill.selection=data/curation/selection/{selection}.parquet"]
        _make_run(runs, f"lt-1000-s0-{selection}", overrides, _long_tail_eval({"a": 0.8, "c": 0.6, "b": 0.4, "d": 0.4}), 1000.0, True)  # fmt: skip
    # as `amoe ablate` collects them: one per experiment; both seeds share one curation; "arkd" ran on the default pool
    (runs / "_curation").mkdir()
    reports = {
        "lt-s0": _curation(4000, (0.2, 0.1, 0.19), (0.05, 0.12, 0.055), 0.4567),
        "lt-s1": _curation(4000, (0.2, 0.1, 0.19), (0.05, 0.12, 0.055), 0.4567),
        "lt-1000-s0": _curation(1000, (0.2, 0.08, 0.21), (0.05, 0.15, 0.05), None),
        "arkd": _curation(4000, (0.09, 0.16, 0.085), (0.04, 0.09, 0.043), 0.68),
    }
    for name, rep in reports.items():
        (runs / "_curation" / f"{name}.json").write_text(json.dumps(rep))
    section = build_report(runs, tmp_path / "RESULTS.md").split("## The data finding on the long-tail pool", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and " of 9,000 |" in line]
    assert rows == [  # one row per size, in size order; the default pool's curation is not this pool's
        "| 1,000 of 9,000 | dress: 20.0 / 8.0 / 21.0 | 5.0 / 15.0 / 5.0 | - |",
        "| 4,000 of 9,000 | dress: 20.0 / 10.0 / 19.0 | 5.0 / 12.0 / 5.5 | 0.46 |",
    ]
