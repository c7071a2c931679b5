"""eval.json's one home (amoe_core.tracking.eval_record): schema walk, metrics, and a damaged file read as one warning."""

from __future__ import annotations

import json
import logging
import typing

import yaml

from amoe_core.config import SweepConfig
from amoe_core.eval.summary import summary_lines
from amoe_core.sweep.objective import eval_score
from amoe_core.tracking import eval_record
from amoe_core.tracking.runs import RunDir, student_runs
from amoe_core.tracking.variants import Variant, headline, knn_avg_per_seed
from dashboards import loaders
from flows import artifacts

EV = {
    "knn": {"a": {"student:ensemble": {"64px": {"k10": 0.5, "k20": 0.6}}, "student:native": {"64px": {"k20": 0.1}}}},
    "linear": {"a": {"student:ensemble": {"64px": 0.7}}},
    "zero_shot": {"a": {"teacher:sig": {"64px": 0.25}, "student:sig": {"32px": 0.125, "64px": 0.2}}},
    "segmentation": {"a": {"student:native": {"64px": {"miou": 0.4, "pixel_acc": 0.9}}}},
    "fidelity": {"sig": {"summary_cos": 0.5}},
    "pca_maps": "pca_maps.png",
}


def test_every_metric_reads_its_leaf_and_sweep_accepts_exactly_these():
    v = eval_record.value
    assert v(EV, "knn", "a", "student:ensemble", "64px") == 0.6  # k20 is the headline k
    assert v(EV, "knn", "a", "student:ensemble", "64px", "k10") == 0.5
    assert v(EV, "linear", "a", "student:ensemble", "64px") == 0.7
    assert v(EV, "zero_shot", "a", "teacher:sig", "64px") == 0.25
    assert v(EV, "segmentation", "a", "student:native", "64px") == 0.4
    assert v(EV, "segmentation.pixel_acc", "a", "student:native", "64px") == 0.9
    assert v(EV, "segmentation", "a", "student:native", "32px") is None
    assert v(EV, "zero_shot", "b", "teacher:sig", "64px") is None
    # sweep.metric's choices are the record's metrics, and the sweep scores any of them
    assert set(typing.get_args(SweepConfig.model_fields["metric"].annotation)) == set(eval_record.METRICS)
    assert eval_score(EV, "segmentation", "student:native", 64, 20) == 0.4
    assert eval_score(EV, "zero_shot", "student:sig", 32, 20) == 0.125


def test_rows_are_tidy_and_skip_malformed_leaves():
    ev = {**EV, "zero_shot": {"a": {"teacher:sig": {"64px": "oops", "x": 1.0, "32px": 0.5}}}}
    assert eval_record.rows(ev, "zero_shot") == [
        {"dataset": "a", "feature": "teacher:sig", "resolution": 32, "metric": "top1", "value": 0.5}
    ]
    seg = eval_record.rows(EV, "segmentation")
    assert {(r["metric"], r["value"]) for r in seg} == {("miou", 0.4), ("pixel_acc", 0.9)}
    assert eval_record.headline_feature(["student:native", "student:ensemble"]) == "student:ensemble"


def test_terminal_summary_and_prefect_artifact_show_zero_shot_and_segmentation():
    rows = dict(artifacts._dense_rows(EV))
    assert rows["zero-shot a, student:sig (32px)"] == "12.5%"
    assert rows["segmentation miou a, student:native (64px)"] == "40.0%"
    assert rows["segmentation pixel_acc a, student:native (64px)"] == "90.0%"
    lines = summary_lines(EV, "64px", "k20")
    assert "a teacher:sig at 64px: zero-shot 25.0%" in lines
    assert "a student:sig at 32px: zero-shot 12.5%" in lines
    assert "a student:native at 64px: segmentation miou 40.0%, pixel_acc 90.0%" in lines


def _run(root, name, ev_text):
    d = root / name
    d.mkdir(parents=True)
    (d / "params.yaml").write_text(yaml.safe_dump({"distill": {"run": name, "seed": 0}}))
    (d / "eval.json").write_text(ev_text)
    return RunDir(d)


def test_a_damaged_eval_json_is_one_warning_naming_it_and_the_other_runs_still_show(tmp_path, caplog):
    _run(tmp_path, "good", json.dumps(EV))
    _run(tmp_path, "torn", json.dumps(EV)[:57])  # a half-written file (killed writer, full disk)
    _run(tmp_path, "list", "[1, 2]")  # valid JSON, wrong shape
    runs = student_runs(tmp_path)
    with caplog.at_level(logging.WARNING):
        table = loaders.runs_table(runs, tmp_path)
        for _ in range(3):  # read again and again (dashboard reruns): still one warning per file
            assert headline(runs)[0] == ["a"]
            [r.eval() for r in runs]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert any(str(tmp_path / "torn" / "eval.json") in w and "damaged" in w for w in warned)
    assert any(str(tmp_path / "list" / "eval.json") in w and "not an object" in w for w in warned)
    assert sorted(table.run) == ["good", "list", "torn"]
    knn = table.set_index("run").filter(like="kNN")
    assert knn.loc["good"].iloc[0] == 60.0 and knn.loc[["torn", "list"]].isna().all().all()

    assert knn_avg_per_seed(Variant("v", {}, runs), ["a"], "64px", "k20", "student:ensemble") == [0.6]


def test_report_section_lists_teachers_and_variants_and_is_absent_without_results(tmp_path):
    from amoe_core.experiments.report import _dense_section

    runs = [_run(tmp_path, f"s{i}", json.dumps(EV)) for i in range(2)]
    v = Variant("reference", {}, runs)
    teacher_ev = {"zero_shot": {"a": {"teacher:sig": {"32px": 0.5}}}}
    lines = _dense_section([v], teacher_ev)
    assert lines[0] == "## Zero-shot and segmentation"
    table = "\n".join(lines)
    assert "a zero-shot (32px)" in table and "a mIoU (64px)" in table
    assert "| model | feature | a zero-shot (32px) | a zero-shot (64px) | a mIoU (64px) |" in table
    assert "| teacher `sig` | teacher:sig | 50.0 | - | - |" in table
    assert "| student (reference) | student:native |" in table and "40.0 ± 0.0" in table
    assert _dense_section([Variant("r", {}, [_run(tmp_path, "k", json.dumps({"knn": EV["knn"]}))])], {}) == []
