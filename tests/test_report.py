"""`amoe report`: variants grouped by differing params, mean ± std over seeds, identical output on regeneration."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from amoe_core.config import dump_params, load_params
from amoe_core.errors import AmoeError
from amoe_core.eval.report import build_report, group_variants
from amoe_core.tracking.runs import RunDir, list_runs


def _eval(fm: float, ca: float) -> dict:
    def knn(x: float) -> dict:
        return {"32px": {"k20": x - 0.1}, "64px": {"k20": x}, "112px": {"k20": x + 0.01}}

    return {
        "knn": {"fmnist": {"student:ensemble": knn(fm)}, "clipart": {"student:ensemble": knn(ca)}},
        "linear": {"fmnist": {"student:ensemble": {"64px": fm}}, "clipart": {"student:ensemble": {"64px": ca}}},
        "fidelity": {"dino": {"summary_cos": 0.9, "patch_cos": 0.8, "cka": 0.7, "spearman": 0.6}},
    }


def _make_run(root: Path, run_id: str, overrides: list[str], ev: dict, tokens_per_s: float) -> None:
    p = load_params(None, overrides + [f"distill.run={run_id}"])
    run = RunDir.create(root, run_id)
    run.write_params(dump_params(p))
    for step in range(10):
        run.log_metrics({"step": step, "tokens_per_s": tokens_per_s, "loss/total": 1.0 / (step + 1)})
    run.write_eval(ev)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (fm, ca) in enumerate([(0.80, 0.40), (0.82, 0.44)]):
        _make_run(root, f"arkd-s{seed}", [f"seed={seed}"], _eval(fm, ca), 1000.0)
        _make_run(root, f"none-s{seed}", [f"seed={seed}", "loss.relational=none"], _eval(fm - 0.1, ca - 0.1), 900.0)
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


def test_variants_group_seeds_and_name_the_differing_setting(runs: Path) -> None:
    variants = group_variants([r for r in list_runs(runs) if r.id != "_teachers"])
    assert [v.label for v in variants] == ["relational=arkd", "relational=none"]
    assert [v.seeds for v in variants] == [[0, 1], [0, 1]]


def test_report_numbers_and_regeneration_is_identical(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "RESULTS.md"
    text = build_report(runs, out)
    fm = [0.80, 0.82]
    expected = f"{100 * statistics.fmean(fm):.1f} ± {100 * statistics.stdev(fm):.1f}"
    row = next(line for line in text.splitlines() if line.startswith("| student (relational=arkd)"))
    assert expected in row
    # Expert check: fmnist 81/85 = 95% of dino; clipart 42/45 = 93% of siglip; average 61.5 beats both teachers.
    line = next(line for line in text.splitlines() if line.startswith("- **relational=arkd**"))
    assert "fmnist: 95% of expert `dino` (ok)" in line and "clipart: 93% of expert `siglip` (ok)" in line
    assert "beats every single teacher" in line
    assert "relational=arkd: 61.5" in text  # findings: loss ablation ranked with mean over seeds
    assert "| relational=arkd | dino | 90.0 ± 0.0 | 80.0 ± 0.0 | 70.0 ± 0.0 | 60.0 ± 0.0 |" in text
    png = out.parent / "results_resolution.png"
    first = (out.read_bytes(), png.read_bytes())
    build_report(runs, out)
    assert (out.read_bytes(), png.read_bytes()) == first


def test_report_without_evaluated_runs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AmoeError, match="no evaluated runs"):
        build_report(tmp_path / "runs", tmp_path / "R.md")
    assert not (tmp_path / "R.md").exists()
