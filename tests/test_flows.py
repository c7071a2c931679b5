"""Prefect flows under prefect_test_harness, on stand-in stages defined here, plus DVC deciding what is stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402

from amoe_core.errors import AmoeError  # noqa: E402
from flows import pipeline, tasks  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def harness():
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=60):
        yield


LAST_PARAMS: dict = {}  # stage -> the params its stand-in was last called with


@pytest.fixture
def calls(monkeypatch):
    """Stand-in stages: each records (stage, params seen, kwargs) instead of doing work; no retry delay."""
    record: list[tuple] = []

    def stage_function(name):
        def fn(params, **kwargs):
            LAST_PARAMS[name] = params
            record.append((name, params.distill.run, params.ingest.max_side, kwargs))
            return {"stage": name}

        return fn

    def submit(params, stage):
        record.append(("submit:" + stage, params.distill.run, params.ingest.max_side, {}))
        return {"job": "local"}

    monkeypatch.setattr(tasks, "stage_function", stage_function)
    monkeypatch.setattr(tasks, "submit", submit)
    monkeypatch.setattr(tasks, "run_stage", tasks.run_stage.with_options(retry_delay_seconds=0))
    monkeypatch.setattr(tasks, "run_distill", tasks.run_distill.with_options(retry_delay_seconds=0))
    return record


def test_pipeline_chains_every_stage_in_order_with_overrides(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dvc.yaml here: stages are called directly
    results = pipeline.pipeline_flow(overrides=["distill.run=exp1", "ingest.max_side=128"])
    assert [c[0] for c in calls] == [
        "demo-pool",
        "ingest",
        "teachers-demo",
        "embed",
        "cluster",
        "sample",
        "submit:distill",
        "evaluate",
        "report",
    ]
    assert all(c[1] == "exp1" and c[2] == 128 for c in calls)  # every stage saw the same resolved params
    assert LAST_PARAMS["report"].report.runs_dir == Path("runs")  # the pipeline reports on its own runs
    assert [r["via"] for r in results] == ["direct"] * 6 + ["submit", "direct", "direct"]


def test_evaluation_flow_passes_stage_arguments(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline.evaluation_flow(run="r7", teachers=True)
    assert calls == [("evaluate", "demo", 512, {"run": "r7", "teachers": True})]


def test_transient_failure_is_retried_user_error_is_not(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    attempts = {"n": 0}

    def flaky(name):
        def fn(params, **kwargs):
            attempts["n"] += 1
            if name == "embed" and attempts["n"] < 3:
                raise OSError("stale NFS handle")  # transient: retried (2 retries -> 3rd attempt succeeds)
            if name == "cluster":
                raise AmoeError("cluster.k must not increase")  # user error: fails at once
            return {}

        return fn

    monkeypatch.setattr(tasks, "stage_function", flaky)
    assert pipeline.stage_flow("embed", use_dvc=False)["ran"] is True
    assert attempts["n"] == 3
    attempts["n"] = 0
    state = pipeline.stage_flow("cluster", use_dvc=False, return_state=True)
    assert state.is_failed() and attempts["n"] == 1
    with pytest.raises(AmoeError, match="cluster.k must not increase"):
        state.result()


DVC_YAML = """
stages:
  ingest:
    cmd: python -c "import pathlib; c = pathlib.Path('count.txt'); c.write_text((c.read_text() if c.exists() else '') + 'x'); pathlib.Path('out.txt').write_text('ok')"
    params:
    - ingest.max_side
    outs:
    - out.txt
"""


def test_dvc_decides_what_is_recomputed(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, check=True)
    Path("dvc.yaml").write_text(DVC_YAML)
    Path("params.yaml").write_text("ingest:\n  max_side: 512\n")
    count = Path("count.txt")

    assert pipeline.stage_flow("ingest")["via"] == "dvc" and count.read_text() == "x"
    again = pipeline.stage_flow("ingest")
    assert again == {"stage": "ingest", "ran": False, "via": "dvc"} and count.read_text() == "x"  # up to date
    Path("params.yaml").write_text("ingest:\n  max_side: 256\n")
    assert pipeline.stage_flow("ingest")["ran"] is True and count.read_text() == "xx"  # a changed param reruns
    # with overrides (a what-if run from the UI) the stage function runs directly; DVC's outputs are untouched
    assert pipeline.stage_flow("ingest", overrides=["ingest.max_side=64"])["via"] == "direct"
    assert calls[-1][:3] == ("ingest", "demo", 64) and count.read_text() == "xx"


def test_serve_builds_one_deployment_per_flow():
    from flows import serve

    deps = serve.deployments(cron="0 3 * * *")
    assert sorted(d.name for d in deps) == sorted(f.name for f in pipeline.FLOWS)
    scheduled = [d.name for d in deps if d.schedules]
    assert scheduled == ["amoe-pipeline"]


def test_stage_choices_are_the_registry_and_each_has_a_command():
    from amoe_core.cli import build_parser
    from amoe_core.stages import STAGES
    from flows.artifacts import STAGES as DESCRIBED

    assert [s.value for s in pipeline.Stage] == list(STAGES) == list(DESCRIBED)
    parser = build_parser()
    for command, what in DESCRIBED.values():
        args = parser.parse_args(command.split()[1:])  # every reproducing command is a real `amoe` command
        assert args.handler is not None and what


def test_evaluate_ends_with_an_artifact_of_its_results(calls, tmp_path, monkeypatch):
    """The artifact reads the run's real files: kNN of the headline feature, train summary, run directory."""
    import json

    from prefect.artifacts import Artifact

    from amoe_core.config import dump_params, load_params
    from amoe_core.tracking.runs import RunDir
    from amoe_core.train.live import LiveLog

    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r7")
    run.write_params(dump_params(load_params(None, ["distill.run=r7"])))
    live = LiveLog(run.live_dir, resume=False)
    for step in range(1, 6):
        live.log({"step": step, "tokens_per_s": 1000.0 + step, "loss/total": 1.0 / step})
    live.close()
    run.write_train_summary()
    knn = {"64px": {"k20": 0.8125}, "32px": {"k20": 0.5}}
    run.eval_file.write_text(json.dumps({"knn": {"fmnist": {"student:ensemble": knn, "student:native": knn}}}))

    pipeline.evaluation_flow(run="r7", overrides=["evaluate.batch_size=32"])
    md = Artifact.get("amoe-evaluate").data
    assert f"`{run.path.resolve()}`" in md
    assert "| kNN fmnist, student:ensemble (64px, k20) | 81.2% |" in md  # 81.25 rounds half to even
    assert "| steps | 5 |" in md and "| final loss | 0.2000 |" in md
    assert "amoe evaluate r7 -S evaluate.batch_size=32" in md
    assert "dvc exp run -S evaluate.batch_size=32" in md


def test_report_artifact_carries_the_findings_and_descriptions_render(tmp_path):
    """The `report` artifact quotes the report's findings (the numbers, not only where the file is); a stage's
    description keeps its `<placeholders>` in backticks, where markdown does not take them for HTML tags."""
    import re

    from amoe_core.config import load_params
    from amoe_core.experiments.findings import HEADING
    from flows.artifacts import STAGES, markdown

    report = tmp_path / "RESULTS.md"
    findings = [HEADING, "", "| finding | ours | verdict |", "|---|---|---|", "| loss | +0.1 ± 0.6 | too small |", ""]
    report.write_text("\n".join(["# Results", "", "## Variants", "", "x", "", *findings, "## Data scaling", "y"]))
    params = load_params(None, [f"report.out={report}"])
    md = markdown("report", params, [], {"ran": True, "via": "dvc"})
    assert "| loss | +0.1 ± 0.6 | too small |" in md and "## Data scaling" not in md and "## Variants" not in md
    report.unlink()
    assert HEADING not in markdown("report", params, [], {"ran": True, "via": "dvc"})  # no report yet: no section
    for _, what in STAGES.values():
        outside_code = re.sub(r"`[^`]*`", "", what)
        assert "<" not in outside_code, what
